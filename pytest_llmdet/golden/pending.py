"""Pending snapshots: the changed or new outputs of a check run, kept beside the goldens for review.

A check run outside CI writes, per test, `<golden file>.llmdet-pending` holding the entries an update would
write (and the failure report of each) and never touches a golden file; in CI it writes nothing. Pending files
are ignored by name (`*.llmdet-pending` in .gitignore). Accepting one writes its entries into the golden file
through the store (atomic, locked); rejecting deletes it. The review CLI (review.py) drives both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmdet.golden.format import GoldenEntry, GoldenFile, GoldenFileError, dumps, loads
from pytest_llmdet.golden.location import (
    PENDING_SUFFIX,
    SUFFIX,
    module_file_stem,
    pending_path,
    placed_as_named,
    safe_file_stem,
    test_name_of,
)
from pytest_llmdet.golden.store import (
    LockBudget,
    edit_golden,
    golden_digest,
    read_file_bounded,
    replace_atomically,
)

CHANGED, NEW = "changed", "new"


@dataclass
class PendingFile:
    """The pending snapshots of one test: the entries to accept, their status and their failure report."""

    path: Path
    test: str
    fingerprint: dict[str, Any]
    snapshots: dict[str, GoldenEntry]
    statuses: dict[str, str] = field(default_factory=dict)  # changed or new, by snapshot name
    reports: dict[str, str] = field(default_factory=dict)
    # the SHA-256 of the golden file the check compared with ("" when there was none; None: not known, a
    # pending file of pytest-llmdet 0.1): accept refuses when the golden file changed since
    golden_sha256: str | None = None
    # the check that made it, as run (its flags, its tests) and where it was run: what refreshes it
    check_command: str | None = None
    check_dir: str | None = None

    @property
    def golden(self) -> Path:
        return golden_of(self.path)


def golden_of(pending: Path) -> Path:
    """The golden file a pending file belongs to."""
    return pending.with_name(pending.name.removesuffix(PENDING_SUFFIX))


def write_pending(pending: PendingFile) -> None:
    """Write (replace) a pending file atomically. Its folder must exist: a check run creates no folder."""
    data = json.loads(dumps(GoldenFile(pending.test, pending.fingerprint, dict(sorted(pending.snapshots.items())))))
    data["pending"] = {"statuses": pending.statuses, "reports": pending.reports,
                       "golden_sha256": pending.golden_sha256}
    if pending.check_command is not None:  # only then: pending files of 0.1 are read as they were
        data["pending"].update(check_command=pending.check_command, check_dir=pending.check_dir)
    replace_atomically(pending.path,
                       (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))


def read_pending(path: Path) -> PendingFile:
    """A pending file; GoldenFileError (naming the file) when it cannot be used."""
    raw = read_file_bounded(path)  # a pipe or a device in its place is refused, never read
    if raw is None:
        raise GoldenFileError(f"{path} cannot be read: No such file or directory")
    if not path.name.endswith(SUFFIX + PENDING_SUFFIX):
        raise GoldenFileError(
            f"{path} is not a pending file of pytest-llmdet (those are named <golden file>{SUFFIX}{PENDING_SUFFIX}); "
            f"accepting it would write {golden_of(path)}, which is no golden file. Left as it is")
    golden = loads(raw, str(path))  # validated (depth included) before it is parsed again for its extra section
    target = golden_of(path)
    if not placed_as_named(target, golden.test):
        module, name = safe_file_stem(module_file_stem(golden.test)), safe_file_stem(test_name_of(golden.test))
        expected = f"{module}/{name}{SUFFIX}"
        raise GoldenFileError(
            f"{path} names test {golden.test!r}, whose golden file is <snapshot folder>/{expected}, not "
            f"{target.parent.name}/{target.name}: accepting it would write a file that is not that test's. "
            "Left as it is")
    extra = json.loads(raw).get("pending")
    if not isinstance(extra, dict) or not isinstance(extra.get("statuses"), dict) \
            or not isinstance(extra.get("reports"), dict) \
            or not isinstance(extra.get("golden_sha256", ""), (str, type(None))) \
            or not all(isinstance(extra.get(key, ""), (str, type(None))) for key in ("check_command", "check_dir")):
        raise GoldenFileError(f"{path}: missing or malformed 'pending' section")
    return PendingFile(path, golden.test, golden.fingerprint, golden.snapshots,
                       {str(k): str(v) for k, v in extra["statuses"].items()},
                       {str(k): str(v) for k, v in extra["reports"].items()}, extra.get("golden_sha256"),
                       extra.get("check_command"), extra.get("check_dir"))


class PendingConflict(GoldenFileError):
    """The golden file changed since the check that made the pending file: accepting would overwrite that."""


def check_unchanged(pending: PendingFile) -> None:
    """Refuse (PendingConflict, naming both files and what to run) when the golden file is not the one the
    check compared with: changed by a pull or an update since, or the pending file is too old to tell."""
    current = golden_digest(pending.golden) or ""
    if pending.golden_sha256 == current:
        return
    why = ("the pending file was made by an older pytest-llmdet, which did not record the golden file it saw"
           if pending.golden_sha256 is None else
           "the golden file was deleted since the check that made the pending file" if not current else
           "the golden file was created since the check that made the pending file" if not pending.golden_sha256
           else "the golden file changed since the check that made the pending file (a pull, an update?)")
    refresh = (f"from {shlex.quote(pending.check_dir)}: {pending.check_command}" if pending.check_command else
               f"pytest --llm-snapshot {shlex.quote(pending.test)} (from the rootdir, with the flags of that check)")
    raise PendingConflict(
        f"not accepted: {why}; accepting {pending.path} would overwrite {pending.golden} without a look at what "
        f"is in it now. Run the check again to refresh it, {refresh}; or reject it: python -m pytest_llmdet "
        f"reject {shlex.quote(str(pending.path))}")


def remove_pending(golden: Path) -> bool:
    """Delete the pending file of a golden file, if any; True if it existed."""
    path = pending_path(golden)
    if not path.is_file():  # the usual case: only look (an update must not even try to delete a file)
        return False
    path.unlink(missing_ok=True)
    return True


# Folders of tools, never of snapshots: a search skips them (a hidden snapshot folder such as .llm_snapshots is
# searched), and so does any virtual environment (a folder with pyvenv.cfg), whatever its name.
SKIPPED_FOLDERS = frozenset({".git", ".hg", ".svn", ".bzr", ".jj", ".venv", ".tox", ".nox", ".mypy_cache",
                             ".pytest_cache", ".ruff_cache", ".hypothesis", ".ipynb_checkpoints", ".eggs", ".idea",
                             ".vscode", ".cache", "__pycache__", "node_modules", "site-packages"})


def find_pending(roots: Iterable[Path]) -> list[Path]:
    """Every pending file below `roots` (a root may itself be a pending file), skipping the folders of tools
    (SKIPPED_FOLDERS and virtual environments); hidden snapshot folders are searched."""
    found: set[Path] = set()
    for root in roots:
        if root.is_file() and root.name.endswith(PENDING_SUFFIX):
            found.add(root)
            continue
        for folder, folders, files in os.walk(root):
            folders[:] = sorted(f for f in folders if f not in SKIPPED_FOLDERS
                                and not (Path(folder) / f / "pyvenv.cfg").is_file())
            found.update(Path(folder) / name for name in files if name.endswith(PENDING_SUFFIX))
    return sorted(found)


def accept(pending: PendingFile, names: Iterable[str] | None = None, locks: LockBudget | None = None) -> list[str]:
    """Write the named pending snapshots (all by default) into the golden file, as an update would, then
    drop them from the pending file; returns the names accepted. `locks`: how long to wait for locks, shared
    by the calls of one command.

    The golden file is checked against the one the check compared with, read and written under its lock: a
    file another process changed, even while this one waited for the lock, is refused (PendingConflict)."""
    chosen = [n for n in (pending.snapshots if names is None else names) if n in pending.snapshots]
    if not chosen:
        return []

    def merged(existing: GoldenFile | None) -> GoldenFile:
        check_unchanged(pending)
        snapshots = dict(existing.snapshots) if existing else {}
        snapshots.update({name: pending.snapshots[name] for name in chosen})
        golden = GoldenFile(pending.test, pending.fingerprint, dict(sorted(snapshots.items())))
        # what is left pending now builds on this file: its bytes are these (serialization is deterministic)
        pending.golden_sha256 = hashlib.sha256(dumps(golden).encode("utf-8")).hexdigest()
        return golden

    edit_golden(pending.golden, merged, locks)
    _drop(pending, chosen)
    return chosen


def reject(pending: PendingFile, names: Iterable[str] | None = None) -> list[str]:
    """Drop the named pending snapshots (all by default) without touching the golden file."""
    chosen = [n for n in (pending.snapshots if names is None else names) if n in pending.snapshots]
    _drop(pending, chosen)
    return chosen


def _drop(pending: PendingFile, names: list[str]) -> None:
    for name in names:
        pending.snapshots.pop(name, None)
        pending.statuses.pop(name, None)
        pending.reports.pop(name, None)
    if pending.snapshots:
        write_pending(pending)
    else:
        pending.path.unlink(missing_ok=True)


def entries(pending: PendingFile) -> Iterator[tuple[str, str, str]]:
    """(name, status, report) of each pending snapshot, in name order."""
    for name in sorted(pending.snapshots):
        yield name, pending.statuses.get(name, CHANGED), pending.reports.get(name, "")
