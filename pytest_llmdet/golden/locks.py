"""Golden-file locks: one cross-process lock per golden file (`filelock`), in a per-user folder outside the
project, with a wait bounded per run (`LockBudget`), not per file: a stuck process holding many golden files
costs one wait. A holder records its pid and command line beside the lock (`<key>.holder`), so an error names
it; a lock folder that cannot be written is named as such (not blamed on the snapshot folder)."""

from __future__ import annotations

import errno
import hashlib
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

LOCK_TIMEOUT_SECONDS = 120  # the most one run waits for golden-file locks, all files together
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


__all__ = ["LOCK_TIMEOUT_SECONDS", "GoldenLockError", "LockBudget", "golden_lock", "held_by", "lock_folder",
           "lock_holder", "lock_path"]
