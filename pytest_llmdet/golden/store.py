"""The golden-file store: read with clear errors, write atomically under a cross-process lock, delete.

A write goes to a temporary file beside the golden file (`<name>.json.<random>.llmdet-tmp`, ignored by
name) and replaces it with `os.replace`, so a reader or a crash never sees half a file; a `filelock` lock
per golden file keeps pytest-xdist workers and concurrent pytest runs from interleaving. Unchanged content
is never rewritten. A temporary file exists only while its writer holds the lock, so one found under the
lock is a killed writer's leftover and is removed.

The locks and their bounded wait are golden/locks.py's. A change that reads the file first (accept, the unused
cleanup, a test's own write) reads, changes and writes it under the lock (`edit_golden`).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from pytest_llmdet.golden.format import MAX_FILE_BYTES, GoldenFile, GoldenFileError, dumps, loads
from pytest_llmdet.golden.location import SUFFIX as GOLDEN_SUFFIX
from pytest_llmdet.golden.location import pending_path
from pytest_llmdet.golden.locks import GoldenLockError, LockBudget, golden_lock

TMP_SUFFIX = ".llmdet-tmp"
_FOLDER_RETRIES = 3


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
           "edit_golden", "golden_lock", "read_golden", "temporary_target", "write_golden"]  # the locks: re-exported
