"""The golden-file store: read with clear errors, write atomically under a cross-process lock, delete.

A write goes to a temporary file beside the golden file (`<name>.json.<random>.llmdet-tmp`, ignored by
name) and replaces it with `os.replace`, so a reader or a crash never sees half a file; a `filelock` lock
per golden file keeps pytest-xdist workers and concurrent pytest runs from interleaving. Unchanged content
is never rewritten. A temporary file exists only while its writer holds the lock, so one found under the
lock is a killed writer's leftover and is removed.

Waiting for locks is bounded per run, not per file (`LockBudget`): a stuck process holding many golden files
costs one wait. A holder records its pid and command line beside the lock (`<key>.holder`), so the error names
it; a lock folder that cannot be written is named as such (not blamed on the snapshot folder).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import shlex
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pytest_llmdet.golden.format import MAX_FILE_BYTES, GoldenFile, GoldenFileError, dumps, loads
from pytest_llmdet.golden.location import SUFFIX as GOLDEN_SUFFIX
from pytest_llmdet.golden.location import pending_path

TMP_SUFFIX = ".llmdet-tmp"
LOCK_TIMEOUT_SECONDS = 120  # the most one run waits for golden-file locks, all files together
_FOLDER_RETRIES = 3
MAX_COMMAND_SHOWN = 160  # of a lock holder's command line, in an error


def lock_folder() -> Path:
    """The folder of the lock files: outside the project (so no lock files sit among the goldens), one per user
    (a folder another user created first in a shared /tmp would not be writable)."""
    user = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
    return Path(tempfile.gettempdir()) / f"pytest-llmdet-locks{user}"


def lock_path(path: Path) -> Path:
    """The lock file of one golden file, in `lock_folder()` (created if needed)."""
    key = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:32]
    folder = lock_folder()
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as error:
        raise _unusable_lock_folder(path, folder, error) from None
    return folder / f"{key}.lock"


@dataclass
class LockBudget:
    """How long one run may still wait for golden-file locks, all files together: a stuck process that holds
    the locks of many files costs the run one wait, not one per file."""

    seconds: float = field(default_factory=lambda: LOCK_TIMEOUT_SECONDS)
    waited: float = 0.0

    def remaining(self) -> float:
        return max(0.0, self.seconds - self.waited)


class GoldenLockError(OSError):
    """A golden file's lock could not be taken: held by another process past the run's budget, or its lock
    folder cannot be written. `reason`, `waiting` (how long it waited, and why; may be empty) and `advice` are
    written for the person who reads them."""

    def __init__(self, golden: Path, reason: str, advice: str, waiting: str = "") -> None:
        super().__init__(errno.EAGAIN, f"{golden}: {reason}{'; ' + waiting if waiting else ''}. {advice}")
        self.golden, self.reason, self.advice, self.waiting = golden, reason, advice, waiting

    def __str__(self) -> str:
        return str(self.strerror)


def _unusable_lock_folder(golden: Path, folder: Path, error: OSError) -> GoldenLockError:
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        problem = "is not a folder (something else is in its place)"
    else:
        problem = f"is not writable ({error.strerror or error})"
    return GoldenLockError(
        golden, f"the lock folder {folder} {problem}; pytest-llmdet keeps one lock file per golden file there",
        f"Make {folder} a writable folder (remove it: it holds only lock files), or point TMPDIR at a writable "
        "folder")


def _holder_path(lock: Path) -> Path:
    return lock.with_suffix(".holder")


def _own_command() -> list[str]:
    return list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])


def _record_holder(lock: Path) -> None:
    # Best effort, under the lock: who holds it, for the error of a process that waits in vain.
    try:
        with open(_holder_path(lock), "w", encoding="utf-8") as stream:
            stream.write(f"{os.getpid()}\n{shlex.join(_own_command())}\n")
    except OSError:
        pass


def _forget_holder(lock: Path) -> None:
    try:
        _holder_path(lock).unlink(missing_ok=True)
    except OSError:
        pass


def lock_holder(lock: Path) -> tuple[int, str] | None:
    """The pid and command line the holder of `lock` recorded; None when none is recorded, or the recorded
    process is no longer running (then whoever holds the lock did not record itself)."""
    try:
        pid_line, _, command = _holder_path(lock).read_text(encoding="utf-8").partition("\n")
        pid = int(pid_line)
    except (OSError, ValueError):
        return None
    command = command.strip()
    if os.name == "posix":  # elsewhere os.kill is not a harmless probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass  # alive, but another user's
        try:  # Linux: a recycled pid runs another command
            running = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:
            running = None
        if running is not None and shlex.join(os.fsdecode(part) for part in running) != command:
            return None
    return pid, command


def _check_lock_file(golden: Path, lock: Path) -> None:
    # Opened here first, so that a lock file that cannot be created or opened is reported as such at once
    # (some filelock versions retry a PermissionError until the timeout).
    try:
        os.close(os.open(lock, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as error:
        if not lock.exists():
            raise _unusable_lock_folder(golden, lock.parent, error) from None
        raise GoldenLockError(
            golden, f"its lock file {lock} cannot be opened ({error.strerror or error})",
            f"Remove {lock} (a lock file holds nothing), or point TMPDIR at a writable folder") from None


def held_by(lock: Path) -> str:
    """Who holds `lock`, in words: `pid 123 (pytest ...)`, or `another process` when it did not record itself."""
    holder = lock_holder(lock)
    if holder is None:
        return "another process"
    command = " ".join(holder[1].split())  # on one line, whatever its arguments hold
    command = command if len(command) <= MAX_COMMAND_SHOWN else command[: MAX_COMMAND_SHOWN - 1] + "…"
    return f"pid {holder[0]} ({command})"


def _timed_out(golden: Path, lock: Path, budget: LockBudget, waited: bool) -> GoldenLockError:
    holder = lock_holder(lock)
    reason = f"its lock file {lock} is held by {held_by(lock)}"
    limit = f"{budget.seconds:g} s"
    waiting = (f"gave up after {limit}: a run waits at most {limit} for golden-file locks, all files together"
               if waited else f"not waited for: this run already waited its {limit} for golden-file locks")
    if holder and os.name == "posix":
        advice = f"If that process is stuck, stop it (kill {holder[0]})"
    else:
        advice = f"If the process that holds it is stuck, stop it (`lsof {lock}` names it on Linux and macOS)"
    return GoldenLockError(golden, reason, advice, waiting)


@contextmanager
def golden_lock(path: Path, budget: LockBudget | None = None) -> Iterator[None]:
    """Hold the cross-process lock of golden file `path`, waiting at most what is left of `budget` (a fresh
    LOCK_TIMEOUT_SECONDS when None); GoldenLockError, naming the lock file and its holder, when it cannot."""
    from filelock import FileLock, Timeout

    budget = budget if budget is not None else LockBudget()
    lock = lock_path(path)
    _check_lock_file(path, lock)
    timeout = budget.remaining()
    file_lock = FileLock(str(lock), timeout=timeout)
    started = time.monotonic()
    try:
        file_lock.acquire()
    except Timeout:
        budget.waited = budget.seconds  # it waited all that was left
        raise _timed_out(path, lock, budget, waited=timeout > 0) from None
    except BaseException as error:  # interrupted while waiting (Ctrl-C, pytest-timeout): say for whom
        holder = lock_holder(lock)
        error.add_note(f"while waiting for its lock, held by {held_by(lock)}" if holder else
                       f"while waiting for its lock {lock}")
        raise
    budget.waited += time.monotonic() - started
    try:
        _record_holder(lock)
        yield
    finally:
        _forget_holder(lock)
        file_lock.release()


def read_file_bounded(path: Path, where: str | None = None) -> bytes | None:
    """The bytes of the regular file at `path` (at most MAX_FILE_BYTES + 1 of them), or None if there is none.

    A pipe, a device or a folder in its place is refused without reading it (reading a FIFO never ends,
    /dev/zero never ends); the file type is checked on the opened descriptor, so a swap after a check cannot
    slip one in. The size bound keeps a huge file from filling memory. GoldenFileError names `where`."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)  # O_NONBLOCK: opening a FIFO with no writer returns at once
    except FileNotFoundError:
        return None
    except OSError as error:
        raise GoldenFileError(f"{where or path} cannot be read: {error.strerror or error}") from None
    try:
        info = os.fstat(descriptor)
        if stat.S_ISDIR(info.st_mode):
            raise GoldenFileError(f"{where or path} cannot be read: Is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise GoldenFileError(f"{where or path} is not a regular file ({_kind(info.st_mode)} is in its place); "
                                  "remove it and re-run")
        if info.st_size > MAX_FILE_BYTES:
            raise GoldenFileError(
                f"{where or path} is {info.st_size / 1e6:.1f} MB, over the {MAX_FILE_BYTES // (1024 * 1024)} MB "
                "limit for a golden file: it is not one pytest-llmdet wrote")
        with os.fdopen(descriptor, "rb", closefd=False) as stream:
            return stream.read(MAX_FILE_BYTES + 1)  # enough to know it is too big, without reading it all
    except OSError as error:
        raise GoldenFileError(f"{where or path} cannot be read: {error.strerror or error}") from None
    finally:
        os.close(descriptor)


def read_golden(path: Path, where: str | None = None) -> GoldenFile | None:
    """The golden file at `path`, or None if there is none; GoldenFileError if it cannot be used."""
    raw = read_file_bounded(path, where)
    return None if raw is None else loads(raw, where or str(path))


def golden_digest(path: Path) -> str | None:
    """The SHA-256 of the golden file's bytes, or None when there is none (for a pending file to tell, on
    accept, whether the golden changed since the check that made it)."""
    raw = read_file_bounded(path)
    return None if raw is None else hashlib.sha256(raw).hexdigest()


def temporary_target(temporary: Path) -> Path | None:
    """The golden file a temporary file was written for, or None if `temporary` is not one of ours."""
    if not temporary.name.endswith(TMP_SUFFIX):
        return None
    stem, _, random_part = temporary.name.removesuffix(TMP_SUFFIX).rpartition(".")
    if not stem.endswith(GOLDEN_SUFFIX) or stem == GOLDEN_SUFFIX or not random_part:
        return None
    return temporary.with_name(stem)


def _temporaries_of(path: Path) -> list[Path]:
    # Compared by name, not by glob: golden names contain `[` and `]`, which glob reads as a character class.
    if not path.parent.is_dir():
        return []
    return [p for p in path.parent.iterdir() if temporary_target(p) == path]


def _remove_stale_temporaries(path: Path) -> None:
    # Called under the file's lock: a temporary file of this golden file is then a crashed writer's leftover.
    for leftover in _temporaries_of(path):
        leftover.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    # Makes the rename itself durable (a power cut after os.replace keeps the new file); not possible on
    # every platform or file system, and not needed for atomicity, so failures are ignored.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _create_temporary(path: Path) -> tuple[int, str]:
    # A concurrent delete_golden may remove the (then empty) folder between mkdir and mkstemp: retry.
    for attempt in range(1, _FOLDER_RETRIES + 1):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return tempfile.mkstemp(prefix=path.name + ".", suffix=TMP_SUFFIX, dir=path.parent)
        except FileNotFoundError:
            if attempt == _FOLDER_RETRIES:
                raise
    raise FileNotFoundError(path.parent)


def replace_atomically(path: Path, content: bytes) -> None:
    """Write `content` to a temporary file beside `path`, then move it into place: a reader sees the old file
    or the new one, never half of one. Unlocked and not fsynced: for files that are not golden files."""
    mode = _mode_of(path)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        _set_mode(handle, mode)
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _existing_size(path: Path) -> int | None:
    # The size of the golden file an update replaces (None: there is none). Anything but a regular file in its
    # place is the user's, not ours to replace: refused with the reason.
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise GoldenFileError(f"{path} cannot be read: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    if not stat.S_ISREG(info.st_mode):  # OSError: reported like a read-only folder, the file named once
        raise OSError(errno.EINVAL, f"not a regular file ({_kind(info.st_mode)} is in its place); remove it",
                      str(path))
    return info.st_size


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "a special file"


def _mode_of(path: Path) -> int:
    """The mode a replacement of `path` gets: the file's own, or for a new file what the umask gives."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return _new_file_mode()


def _set_mode(handle: int, mode: int) -> None:
    # mkstemp creates 0600: the replacement gets the mode of the file it replaces, like any editor's save
    if hasattr(os, "fchmod"):
        os.fchmod(handle, mode)


@functools.cache
def _new_file_mode() -> int:
    # The umask can only be read by setting it; set it back at once (read once per process).
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _encoded(path: Path, golden: GoldenFile) -> bytes:
    content = dumps(golden).encode("utf-8")
    if len(content) > MAX_FILE_BYTES:
        raise GoldenFileError(
            f"{path} would be {len(content) / 1e6:.1f} MB, over the {MAX_FILE_BYTES // (1024 * 1024)} MB "
            "limit for a golden file; it was not written. Snapshot shorter outputs or split the test."
        )
    return content


def _write_locked(path: Path, content: bytes) -> bool:
    # The caller holds the file's lock.
    _remove_stale_temporaries(path)
    old_size = _existing_size(path)  # refuses a pipe, a device or a folder in its place
    if old_size == len(content) and read_file_bounded(path) == content:
        return False
    mode = _mode_of(path)
    handle, temporary = _create_temporary(path)
    try:
        _set_mode(handle, mode)
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    return True


def _delete_locked(path: Path) -> bool:
    # The caller holds the file's lock. The pending file goes too: accepting it later would bring the deleted
    # golden file back.
    _remove_stale_temporaries(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    try:
        pending_path(path).unlink(missing_ok=True)
    except OSError:  # a folder of that name is not a pending file of ours: left alone
        pass
    return True


def write_golden(path: Path, golden: GoldenFile, locks: LockBudget | None = None) -> bool:
    """Write `golden` atomically unless the file already holds exactly these bytes; True if it wrote.

    On any error (a full disk, a read-only folder, a lock held past the run's budget `locks`) the golden file
    keeps its old content and no temporary file is left; the error propagates.
    """
    content = _encoded(path, golden)
    with golden_lock(path, locks):
        return _write_locked(path, content)


REMOVE = "remove"  # what an `edit_golden` change returns to delete the file


def edit_golden(path: Path, change: Callable[[GoldenFile | None], GoldenFile | str | None],
                locks: LockBudget | None = None, replace_unusable: bool = False) -> bool:
    """Read, change and write one golden file under its lock, so that what another process wrote in between is
    seen, never overwritten unseen; True if the file changed.

    `change(existing)` gets the file as it is now (None: there is none, or with `replace_unusable` one that
    cannot be used) and returns its new content, None to leave it as it is, or REMOVE to delete it; it may raise
    to refuse (the lock is released, nothing written). An unusable file raises GoldenFileError otherwise."""
    with golden_lock(path, locks):
        try:
            existing = read_golden(path)
        except GoldenFileError:
            if not replace_unusable:
                raise
            existing = None
        new = change(existing)
        if new is None:
            return False
        if new == REMOVE:
            removed = _delete_locked(path)
        else:
            return _write_locked(path, _encoded(path, new))
    _remove_empty_folder(path.parent)
    return removed


def delete_golden(path: Path, locks: LockBudget | None = None) -> bool:
    """Delete a golden file and its pending file (only ever on an explicit update); True if it existed."""
    with golden_lock(path, locks):
        removed = _delete_locked(path)
    if removed:
        _remove_empty_folder(path.parent)
    return removed


def _remove_empty_folder(folder: Path) -> None:
    try:
        folder.rmdir()  # only if now empty; a concurrent writer may just have added a file
    except OSError:
        pass


def clean_temporaries(folder: Path) -> int:
    """Remove leftover temporary files of killed writers in one snapshot folder; returns how many.

    Each is removed under its golden file's lock, so a temporary file of a writer that is still running is
    never touched; golden files themselves are never touched. Best effort, and never waiting: a locked
    file's temporary belongs to a live writer, and a file that cannot be removed (a read-only folder) is
    left for a later run.
    """
    removed = 0
    if not folder.is_dir():
        return 0
    for leftover in sorted(folder.iterdir()):
        target = temporary_target(leftover)
        if target is None:
            continue
        try:
            with golden_lock(target, LockBudget(seconds=0)):
                if leftover.exists():
                    leftover.unlink()
                    removed += 1
        except OSError:
            continue
    return removed


__all__ = ["REMOVE", "GoldenFileError", "GoldenLockError", "LockBudget", "clean_temporaries", "delete_golden",
           "edit_golden", "golden_lock", "read_golden", "temporary_target", "write_golden"]
