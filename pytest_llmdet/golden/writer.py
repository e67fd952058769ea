"""The run's one writer of golden and pending files: what a test queued goes into its golden file at the test's
end (read, merged and written under the file's lock), what a check found goes into a pending file beside it, and
the messages for a write that did not complete. Every write goes through the store (atomic, locked)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmdet.errors import named_line
from pytest_llmdet.golden.format import GoldenEntry, GoldenFile, GoldenFileError
from pytest_llmdet.golden.location import pending_path
from pytest_llmdet.golden.locks import GoldenLockError, LockBudget
from pytest_llmdet.golden.pending import PendingFile, remove_pending, write_pending
from pytest_llmdet.golden.store import edit_golden, golden_digest
from pytest_llmdet.vocabulary import PendingStatus


@dataclass
class Queued:
    """What one test has for its golden file: each snapshot's new entry and which entry of the snapshot it
    replaces (None: the default, else a variant key)."""

    entries: dict[str, GoldenEntry] = field(default_factory=dict)
    targets: dict[str, str | None] = field(default_factory=dict)

    def add(self, name: str, entry: GoldenEntry, target: str | None) -> None:
        self.entries[name] = entry
        self.targets[name] = target

    @property
    def variants_only(self) -> bool:
        """Whether every entry replaces a variant: the file's fingerprint (its default's) then stays."""
        return bool(self.entries) and all(self.targets.get(name) is not None for name in self.entries)


@dataclass
class Pending(Queued):
    """What a check found for one test: each changed or new snapshot, its status and its report."""

    statuses: dict[str, PendingStatus] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)

    def keep(self, name: str, entry: GoldenEntry, target: str | None, status: PendingStatus, report: str) -> None:
        self.add(name, entry, target)
        self.statuses[name], self.reports[name] = status, report


def file_fingerprint(existing: GoldenFile | None, current: dict[str, Any] | None, queued: Queued,
                     record_variant: bool) -> dict[str, Any]:
    """The fingerprint a golden file gets: it names the environment of its default entries, so it is replaced only
    when one of them is (re)recorded here; a variant alone (and --llm-snapshot-variant) keeps the file's."""
    if existing is not None and (current is None or record_variant or queued.variants_only):
        return existing.fingerprint
    return current or {}


@dataclass
class SnapshotWriter:
    """Writes golden and pending files for the run; `locks` bounds the run's wait for golden-file locks."""

    locks: LockBudget = field(default_factory=LockBudget)

    def write(self, path: Path, test: str, queued: Queued, fingerprint: dict[str, Any] | None,
              record_variant: bool = False) -> bool:
        """Write a test's queued snapshots into its golden file; True if the file changed. The file is read again
        under its lock and the snapshots go into what it holds now (one that cannot be used is replaced, as an
        update was asked to); the snapshots the test did not compare stay."""
        def merged(existing: GoldenFile | None) -> GoldenFile:
            # each new entry goes into its snapshot as the file holds it now: another process's variant stays
            snapshots = dict(existing.snapshots) if existing else {}
            for name, entry in queued.entries.items():
                stored = snapshots.get(name)
                snapshots[name] = entry if stored is None else stored.replaced(queued.targets.get(name), entry)
            return GoldenFile(test=test, fingerprint=file_fingerprint(existing, fingerprint, queued, record_variant),
                              snapshots=dict(sorted(snapshots.items())))

        return edit_golden(path, merged, self.locks, replace_unusable=True)

    def settle_pending(self, path: Path, test: str, pending: Pending, compared: GoldenFile | None,
                       fingerprint: Callable[[], dict[str, Any] | None], drop: bool,
                       check: tuple[str, str] | None = None) -> bool:
        """At a test's end: keep what its check found as the pending file of golden file `path`, or with `drop`
        (an update supersedes it, or every snapshot matched) remove a stale one; True if it wrote one. A check
        creates no folder, and the file records the golden file's digest, for accept to tell whether that
        changed since, and `check` (the command of the check and its folder) what refreshes it."""
        if drop:
            remove_pending(path)
            return False
        if not pending.entries or not path.parent.is_dir():
            return False
        kept = compared.fingerprint if compared is not None and pending.variants_only else fingerprint() or {}
        write_pending(PendingFile(pending_path(path), test, kept, dict(pending.entries),
                                  {name: str(status) for name, status in pending.statuses.items()},
                                  dict(pending.reports), golden_sha256=golden_digest(path) or "",
                                  check_command=check[0] if check else None, check_dir=check[1] if check else None))
        return True


def write_error_message(shown: str, error: BaseException, command: str) -> str:
    """The failure message when golden file `shown` could not be written: a full disk, a read-only folder, a
    lock held by a stuck process, or the test interrupted or timed out while it wrote; `command` re-records."""
    if isinstance(error, GoldenLockError):
        waiting = f"{error.waiting[:1].upper()}{error.waiting[1:]}\n" if error.waiting else ""
        return (f"pytest-llmdet: could not write golden file {shown}: {error.reason}\n{waiting}"
                f"The file keeps its previous content. {error.advice}, then re-record with: {command}")
    if isinstance(error, OSError | GoldenFileError):
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return (f"pytest-llmdet: could not write golden file {shown}: {reason}\n"
                "The file keeps its previous content (writes are atomic). Fix the cause (disk space, folder "
                f"permissions), then re-record with: {command}")
    what = named_line(error)
    notes = "".join(f"; {note}" for note in getattr(error, "__notes__", ()))
    return (f"pytest-llmdet: golden file {shown} was not written: the write was interrupted ({what}){notes}\n"
            f"The file keeps its previous content (writes are atomic); re-record with: {command}")


def pending_error_message(path: Path, error: OSError | GoldenFileError) -> str:
    """The note when a pending file could not be written."""
    return f"could not write the pending file {pending_path(path)}: {getattr(error, 'strerror', None) or error}"


__all__ = ["Pending", "Queued", "SnapshotWriter", "file_fingerprint", "pending_error_message", "write_error_message"]
