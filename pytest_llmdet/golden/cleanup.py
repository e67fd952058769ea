"""The end of a run: which golden files and snapshots are unused, which files in snapshot folders are not ours,
which snapshots a failed test never compared; and, on a whole `--llm-snapshot-update` run, deleting the unused
ones. Decided once, from the run's ledger (what ran, never what was collected):

- a test owns the golden file our naming gives it unless it passed without setting up `llm_snapshot`
  (however the fixture was requested); a deselected test owns its file too;
- a snapshot inside a file is unused only when the tests that own the file passed every phase with the
  fixture set up and did not compare it;
- a file is only ever deleted when it parses as a golden file and sits where our naming puts the test it
  names; anything else in a snapshot folder is listed as foreign and never touched;
- nothing is deleted unless the run is whole: every collected test ran its call phase, none was skipped
  while using snapshots, no setup or teardown failed, no test was deselected, and the run was not stopped;
  and nothing is deleted through a folder that resolves outside the rootdir.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pytest_llmdet.golden.format import GoldenFile, GoldenFileError
from pytest_llmdet.golden.ledger import Collection, NotCompared, SnapshotRun
from pytest_llmdet.golden.location import PENDING_SUFFIX, SUFFIX, is_inside, placed_as_named, safe_file_stem
from pytest_llmdet.golden.locks import LockBudget
from pytest_llmdet.golden.pending import read_pending
from pytest_llmdet.golden.store import REMOVE, TMP_SUFFIX, clean_temporaries, delete_golden, edit_golden, read_golden
from pytest_llmdet.vocabulary import SnapshotStatus

NOT_WRITTEN = ("not written: the test stopped before its end (interrupted, or a fixture of it failed), so its "
               "golden file keeps its previous content; re-record it")


@dataclass
class CleanupPlan:
    """What the end of the run found: unused golden files and snapshots, and files that are not ours."""

    files: list[Path] = field(default_factory=list)
    names: dict[Path, list[str]] = field(default_factory=dict)
    foreign: list[Path] = field(default_factory=list)


def finish(run: SnapshotRun, update: bool, rootdir: Path, display: Callable[[Path], str] = str) -> None:
    """Report unused golden files and snapshots and foreign files into `run`; on a whole update run, delete the
    unused ones (inside the rootdir only). `display` turns a path into what the user reads.

    In either mode, leftover temporary files of a killed update are removed from the collected modules' folders
    (never a golden file: a check run changes no golden file). A file that cannot be deleted or rewritten is
    listed in `run.errors` and the rest goes on. A queued snapshot whose write never came (the test was
    interrupted before its end) counts as an error: counts say what reached the disk."""
    for outcome in run.outcomes:
        if outcome.status == SnapshotStatus.UNWRITTEN:
            outcome.status = SnapshotStatus.ERROR
            outcome.details.error = outcome.details.error or NOT_WRITTEN
    for folder in map(Path, sorted(run.collection.module_folders)):
        clean_temporaries(folder)
    run.not_compared = not_compared(run)
    try:
        plan = plan_cleanup(run)
    except OSError as error:
        run.errors.append(f"could not look for unused golden files: {error}")
        return
    run.foreign += [display(p) for p in plan.foreign]
    delete = update and not run.whole_run_reasons()
    locks = run.writer.locks
    for path in plan.files:
        if delete and _deletable(run, path, rootdir):
            _delete_file(run, path, locks, display)
        else:
            run.unused.append(display(path))
    for path, extra in plan.names.items():
        if delete and _deletable(run, path, rootdir):
            _delete_snapshots(run, path, extra, locks, display)
        else:
            run.unused += [f"{display(path)} [{name}]" for name in extra]


def plan_cleanup(run: SnapshotRun) -> CleanupPlan:
    """Unused golden files and snapshots, and foreign files, of the folders this run looked at. Paths are compared
    resolved: two test folders may share one snapshot folder through a link."""
    owned = {_resolved(r.golden) for r in run.collection.tests.values() if not (r.passed and not r.fixture)}
    owned |= {_resolved(g) for g in run.collection.deselected.values()}
    plan = CleanupPlan()
    seen: set[Path] = set()
    for folder in _folders(run.collection):
        for path in _files(folder):
            resolved = _resolved(path)
            if resolved in owned or resolved in seen or path.name.endswith(TMP_SUFFIX):
                continue
            seen.add(resolved)
            if path.name.endswith(PENDING_SUFFIX):
                if _orphan_pending(path, owned):
                    plan.files.append(path)  # the pending file of a golden file that is gone with its test
            elif path.name.endswith(SUFFIX) and _is_golden(path):
                plan.files.append(path)
            else:
                plan.foreign.append(path)
    plan.names = _unused_names(run.collection)
    return plan


def not_compared(run: SnapshotRun) -> list[NotCompared]:
    """The snapshots of each golden file whose test ran but did not pass, that it did not compare: a test stops at
    its first failed comparison, so the snapshots after it were never checked. The golden file, read again (its
    test read it before), knows their names; an unreadable one names none."""
    found = []
    files = {o.nodeid: o.file for o in run.outcomes}
    for nodeid, record in sorted(run.collection.tests.items()):
        if not record.phases or record.passed or record.skipped:
            continue
        try:
            golden = read_golden(Path(record.golden))
        except (GoldenFileError, OSError):
            continue
        if golden is not None:
            file = files.get(nodeid, record.golden)
            found += [NotCompared(nodeid, name, file) for name in sorted(set(golden.snapshots) - set(record.used))]
    return found


def _folders(collection: Collection) -> list[Path]:
    # The collected modules' snapshot folders (not those of modules named by node ids only), and the folders of
    # modules that no longer exist.
    folders = [Path(f) for f in sorted(collection.module_folders) if f not in collection.partly_collected]
    for snapshot_dir in sorted({Path(f).parent for f in collection.module_folders}):
        folders += sorted(p for p in _subfolders(snapshot_dir)
                          if str(p) not in collection.module_folders and not _module_exists(snapshot_dir, p.name))
    return folders


def _unused_names(collection: Collection) -> dict[Path, list[str]]:
    # By golden file: the snapshots its tests did not compare (several tests share one under pytest-repeat; one
    # that did not pass keeps every snapshot of the file).
    used: dict[str, set[str]] = {}
    for record in collection.tests.values():
        if record.passed and record.fixture:
            used.setdefault(record.golden, set()).update(record.used)
    kept = {r.golden for r in collection.tests.values() if not (r.passed and r.fixture)}
    names = {}
    for golden_path in sorted(set(used) - kept):
        try:
            golden = read_golden(Path(golden_path))
        except GoldenFileError:
            continue
        extra = sorted(set(golden.snapshots) - used[golden_path]) if golden is not None else []
        if extra:
            names[Path(golden_path)] = extra
    return names


def _delete_file(run: SnapshotRun, path: Path, locks: LockBudget, display: Callable[[Path], str]) -> None:
    try:
        if path.name.endswith(PENDING_SUFFIX):
            path.unlink()
            run.deleted.append(display(path))
        elif delete_golden(path, locks):
            run.deleted.append(display(path))
    except OSError as error:
        run.errors.append(f"could not delete unused golden file {path}: {error.strerror or error}")


def _delete_snapshots(run: SnapshotRun, path: Path, names: list[str], locks: LockBudget,
                      display: Callable[[Path], str]) -> None:
    # Rewrites the file without `names`, read under its lock (the test wrote it at its end, another process may
    # have since); deletes it when no snapshot is left.
    def without(golden: GoldenFile | None) -> GoldenFile | str | None:
        if golden is None:
            return None
        kept = {k: v for k, v in golden.snapshots.items() if k not in names}
        return GoldenFile(golden.test, golden.fingerprint, kept) if kept else REMOVE

    try:
        edit_golden(path, without, locks)
    except (OSError, GoldenFileError) as error:
        run.errors.append(f"could not remove unused snapshots {', '.join(map(repr, names))} from {path}: "
                          f"{getattr(error, 'strerror', None) or error}")
        return
    run.deleted += [f"{display(path)} [{name}]" for name in names]


def _deletable(run: SnapshotRun, path: Path, rootdir: Path) -> bool:
    if is_inside(path, rootdir):
        return True
    run.errors.append(f"not deleted: {path} resolves to {path.resolve()}, outside the rootdir {rootdir} "
                      "(a symbolic link?); delete it by hand if it is unused")
    return False


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []


def _files(folder: Path) -> list[Path]:
    # every entry but folders and hidden files: a pipe or a device named like a golden file is listed as foreign
    try:
        return sorted(p for p in folder.iterdir() if not p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _resolved(path: str | Path) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a link loop: compared as written
        return Path(path)


def _orphan_pending(path: Path, owned: set[Path]) -> bool:
    """A pending file whose golden file does not exist and whose test no test of this run owns: accepting it
    would bring back the golden file of a test that is gone."""
    golden = path.with_name(path.name.removesuffix(PENDING_SUFFIX))
    if _resolved(golden) in owned or golden.exists() or golden.is_symlink():
        return False
    try:
        pending = read_pending(path)
    except GoldenFileError:
        return False
    return placed_as_named(golden, pending.test)


def _is_golden(path: Path) -> bool:
    """Whether `path` holds a golden file of ours: it parses as one and sits where our naming puts the test it
    names. A file that cannot be read or parsed is not ours to delete."""
    try:
        golden = read_golden(path)
    except GoldenFileError:
        return False
    return golden is not None and placed_as_named(path, golden.test)


def _module_exists(snapshot_dir: Path, folder_name: str) -> bool:
    """Whether a test module whose golden-file folder is named `folder_name` still exists.

    Module folders are named by `safe_file_stem`, which may add a hash (`test_API` becomes `test_API-<hash>`),
    so module names are mapped, not compared. The test folder is the nearest ancestor of `snapshot_dir`
    holding such a module (the snapshot folder may be nested, like `golden/llm`); when in doubt the folder
    counts as used: a golden file is never deleted because its module could not be found.
    """
    for folder in snapshot_dir.parents:
        try:
            if any(safe_file_stem(module.stem) == folder_name for module in folder.glob("*.py")):
                return True
        except OSError:
            return True
    return False


__all__ = ["NOT_WRITTEN", "CleanupPlan", "finish", "not_compared", "plan_cleanup"]
