"""The golden-file ledger of a run: what every test did with its snapshots, and (once, at the end of a whole
`--llm-snapshot-update` run) which golden files and snapshots are deleted. Works across pytest-xdist workers:
each worker sends `to_data()`, the controller merges them and decides.

Deleting is decided in one place, `SnapshotRun.finish`, from what ran, never from what was collected:

- a test owns the golden file our naming gives it unless it passed without setting up `llm_snapshot`
  (however the fixture was requested); a deselected test owns its file too;
- a snapshot inside a file is unused only when the test that owns the file passed every phase with the
  fixture set up and did not compare it;
- a file is only ever deleted when it parses as a golden file and sits where our naming puts the test it
  names; anything else in a snapshot folder is listed as foreign and never touched;
- nothing is deleted unless the run is whole: every collected test ran its call phase, none was skipped
  while using snapshots, no setup or teardown failed, no test was deselected, and the run was not stopped;
  and nothing is deleted through a folder that resolves outside the rootdir.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmdet.golden.format import GoldenFile, GoldenFileError
from pytest_llmdet.golden.location import PENDING_SUFFIX, SUFFIX, is_inside, placed_as_named, safe_file_stem
from pytest_llmdet.golden.pending import read_pending
from pytest_llmdet.golden.snapshot import UNWRITTEN, SnapshotOutcome
from pytest_llmdet.golden.store import (
    REMOVE,
    TMP_SUFFIX,
    LockBudget,
    clean_temporaries,
    delete_golden,
    edit_golden,
    read_golden,
)

STATUSES = ("passed", "failed", "written", "updated", "deleted", "unused", "error")
# Counted besides: passed snapshots that diverged within top-k (a tolerant pass), and snapshots of a golden file
# that its test did not compare because it failed first (so that the counts add up to the snapshots there are).
EXTRA_COUNTS = ("tolerated", "not_compared")
PHASES = ("setup", "call", "teardown")
NOT_WRITTEN = ("not written: the test stopped before its end (interrupted, or a fixture of it failed), so its "
               "golden file keeps its previous content; re-record it")


@dataclass
class TestRecord:
    """One collected test: its golden file and what happened when it ran."""

    golden: str  # the golden file our naming gives it
    declared: bool = False  # `llm_snapshot` among its fixtures at collection
    fixture: bool = False  # `llm_snapshot` was set up when it ran (however it was requested)
    phases: dict[str, str] = field(default_factory=dict)  # setup/call/teardown: passed, failed or skipped
    used: list[str] = field(default_factory=list)  # the snapshot names it compared
    failed: bool = False  # judged failed after its reports (the determinism check): keeps all its snapshots

    @property
    def ran(self) -> bool:
        return "call" in self.phases

    @property
    def passed(self) -> bool:
        """Every phase ran and passed: only then are the snapshots it did not compare unused."""
        return not self.failed and all(self.phases.get(phase) == "passed" for phase in PHASES)

    @property
    def skipped(self) -> bool:
        return "skipped" in self.phases.values()

    def to_data(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> TestRecord:
        return cls(**data)

    def merge(self, other: TestRecord) -> None:
        """Add what another worker saw of the same test (every worker collects every test, one runs it)."""
        self.declared |= other.declared
        if other.fixture or other.phases:
            self.fixture |= other.fixture
            self.used = other.used or self.used
            for phase, outcome in other.phases.items():
                self.note(phase, outcome)
        self.failed |= other.failed

    def note(self, phase: str, outcome: str) -> None:
        """Record a phase's outcome; a failure or skip stays (a re-run that passes later does not hide it)."""
        if self.phases.get(phase, "passed") == "passed":
            self.phases[phase] = outcome


@dataclass
class NotCompared:
    """A snapshot of a golden file that its test, which failed, never compared."""

    nodeid: str
    name: str
    file: str


def tolerated_at(outcome: SnapshotOutcome) -> int | None:
    """Where a snapshot that passed tolerantly diverged from its golden (None: it did not)."""
    first = (outcome.details.divergence or {}).get("first_divergence") or {}
    return first.get("index") if first.get("label") == "tolerated" else None


@dataclass
class CleanupPlan:
    """What the end of the run found: unused golden files and snapshots, and files that are not ours."""

    files: list[Path] = field(default_factory=list)
    names: dict[Path, list[str]] = field(default_factory=dict)
    foreign: list[Path] = field(default_factory=list)


@dataclass
class SnapshotRun:
    """Everything the summary and the unused-snapshot cleanup need to know about one run."""

    tests: dict[str, TestRecord] = field(default_factory=dict)
    deselected: dict[str, str] = field(default_factory=dict)  # node id: golden file, of each deselected test
    module_folders: set[str] = field(default_factory=set)  # snapshot folders of the collected modules
    partly_collected: set[str] = field(default_factory=set)  # module folders of node ids named on the command line
    outcomes: list[SnapshotOutcome] = field(default_factory=list)
    partial_reasons: set[str] = field(default_factory=set)
    deleted: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # files the cleanup could not change, and why
    pending: list[str] = field(default_factory=list)  # pending files a check run wrote, as the user reads them
    not_compared: list[NotCompared] = field(default_factory=list)  # by finish: what failed tests did not reach
    locks: LockBudget = field(default_factory=LockBudget)  # this process's wait for golden-file locks, in all
    started: set[str] = field(default_factory=set)  # tests this process started (a second start is a re-run)

    def to_data(self) -> dict[str, Any]:
        return {
            "tests": {k: v.to_data() for k, v in self.tests.items()},
            "deselected": self.deselected,
            "module_folders": sorted(self.module_folders),
            "partly_collected": sorted(self.partly_collected),
            "outcomes": [o.to_data() for o in self.outcomes],
            "partial_reasons": sorted(self.partial_reasons),
            "pending": list(self.pending),
        }

    def merge(self, data: dict[str, Any]) -> None:
        """Add what one xdist worker saw."""
        for nodeid, row in data["tests"].items():
            record = TestRecord.from_data(row)
            if nodeid in self.tests:
                self.tests[nodeid].merge(record)
            else:
                self.tests[nodeid] = record
        self.deselected.update(data["deselected"])
        self.module_folders.update(data["module_folders"])
        self.partly_collected.update(data["partly_collected"])
        self.outcomes += [SnapshotOutcome.from_data(row) for row in data["outcomes"]]
        self.partial_reasons.update(data["partial_reasons"])
        self.pending += data.get("pending", [])

    def start_attempt(self, nodeid: str) -> None:
        """A test starts. When it starts again (re-run by pytest-rerunfailures), the outcomes of its earlier
        attempt are dropped: each snapshot counts once, with the last attempt's outcome. Its failure still
        counts for deletions (TestRecord.note)."""
        if nodeid not in self.started:
            self.started.add(nodeid)
            return
        self.outcomes[:] = [o for o in self.outcomes if o.nodeid != nodeid]  # in place: tests append to it

    def note_phase(self, nodeid: str, phase: str, outcome: str) -> None:
        record = self.tests.get(nodeid)
        if record is not None and phase in PHASES:
            record.note(phase, outcome)

    def note_fixture(self, nodeid: str, used: list[str]) -> None:
        """The test's `llm_snapshot` fixture ended: it owns its file, and compared `used`."""
        record = self.tests.get(nodeid)
        if record is not None:
            record.fixture, record.used = True, list(used)

    def set_failed(self, nodeid: str) -> None:
        record = self.tests.get(nodeid)
        if record is not None:
            record.failed = True

    def whole_run_reasons(self) -> list[str]:
        """Why this run is partial (empty: it is whole, and a full update may delete)."""
        reasons = set(self.partial_reasons)
        records = self.tests.values()
        not_run = sum(1 for r in records if not r.ran and not r.skipped and r.phases.get("setup") != "failed")
        if not_run:
            reasons.add(f"{not_run} test(s) did not run")
        if any(r.skipped and (r.declared or r.fixture) for r in records):
            reasons.add("skipped tests")
        if any(r.phases.get(p) == "failed" for r in records for p in ("setup", "teardown")):
            reasons.add("setup or teardown errors")
        if any(r.ran and "teardown" not in r.phases for r in records):  # pytest.exit() in a fixture's teardown
            reasons.add("the run stopped early")
        return sorted(reasons)

    def plan(self) -> CleanupPlan:
        """Unused golden files and snapshots, and foreign files, of the folders this run looked at. Paths are
        compared resolved: two test folders may share one snapshot folder through a link."""
        owned = {_resolved(r.golden) for r in self.tests.values() if not (r.passed and not r.fixture)}
        owned |= {_resolved(g) for g in self.deselected.values()}
        plan = CleanupPlan()
        folders = [Path(f) for f in sorted(self.module_folders) if f not in self.partly_collected]
        for snapshot_dir in sorted({Path(f).parent for f in self.module_folders}):
            folders += sorted(p for p in _subfolders(snapshot_dir)
                              if str(p) not in self.module_folders and not _module_exists(snapshot_dir, p.name))
        seen: set[Path] = set()
        for folder in folders:
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
        # by golden file: the names its tests compared (several tests share one under pytest-repeat; one that did
        # not pass keeps every snapshot of the file)
        used: dict[str, set[str]] = {}
        for record in self.tests.values():
            if record.passed and record.fixture:
                used.setdefault(record.golden, set()).update(record.used)
        kept = {r.golden for r in self.tests.values() if not (r.passed and r.fixture)}
        for golden_path in sorted(set(used) - kept):
            path = Path(golden_path)
            try:
                golden = read_golden(path)
            except GoldenFileError:
                continue
            if golden is not None:
                extra = sorted(set(golden.snapshots) - used[golden_path])
                if extra:
                    plan.names[path] = extra
        return plan

    def finish(self, update: bool, rootdir: Path, display: Callable[[Path], str] = str) -> None:
        """Report unused golden files and snapshots and foreign files; on a whole update run, delete the
        unused ones (inside the rootdir only). `display` turns a path into what the user reads.

        In either mode, leftover temporary files of a killed update are removed from the collected modules'
        folders (never a golden file: a check run changes no golden file). A file that cannot be deleted or
        rewritten is listed in `errors` and the rest goes on. A queued snapshot whose write never came (the
        test was interrupted before its end) counts as an error: counts say what reached the disk.
        """
        for outcome in self.outcomes:
            if outcome.status == UNWRITTEN:
                outcome.status = "error"
                outcome.details.error = outcome.details.error or NOT_WRITTEN
        for folder in map(Path, sorted(self.module_folders)):
            clean_temporaries(folder)
        self.not_compared = self._not_compared()
        try:
            plan = self.plan()
        except OSError as error:
            self.errors.append(f"could not look for unused golden files: {error}")
            return
        self.foreign += [display(p) for p in plan.foreign]
        delete = update and not self.whole_run_reasons()
        for path in plan.files:
            if not delete or not self._deletable(path, rootdir):
                self.unused.append(display(path))
                continue
            try:
                if path.name.endswith(PENDING_SUFFIX):
                    path.unlink()
                    self.deleted.append(display(path))
                elif delete_golden(path, self.locks):
                    self.deleted.append(display(path))
            except OSError as error:
                self.errors.append(f"could not delete unused golden file {path}: {error.strerror or error}")
        for path, extra in plan.names.items():
            if not delete or not self._deletable(path, rootdir):
                self.unused += [f"{display(path)} [{name}]" for name in extra]
                continue
            try:
                _drop_snapshots(path, extra, self.locks)
            except (OSError, GoldenFileError) as error:
                self.errors.append(f"could not remove unused snapshots {', '.join(map(repr, extra))} from "
                                   f"{path}: {getattr(error, 'strerror', None) or error}")
                continue
            self.deleted += [f"{display(path)} [{name}]" for name in extra]

    def _deletable(self, path: Path, rootdir: Path) -> bool:
        if is_inside(path, rootdir):
            return True
        self.errors.append(f"not deleted: {path} resolves to {path.resolve()}, outside the rootdir {rootdir} "
                           "(a symbolic link?); delete it by hand if it is unused")
        return False

    def _not_compared(self) -> list[NotCompared]:
        """The snapshots of each golden file whose test ran but did not pass, that it did not compare: a test
        stops at its first failed comparison, so the snapshots after it were never checked. The golden file,
        read again (its test read it before), knows their names; an unreadable one names none."""
        found = []
        files = {o.nodeid: o.file for o in self.outcomes}
        for nodeid, record in sorted(self.tests.items()):
            if not record.phases or record.passed or record.skipped:
                continue
            try:
                golden = read_golden(Path(record.golden))
            except (GoldenFileError, OSError):
                continue
            if golden is None:
                continue
            file = files.get(nodeid, record.golden)
            found += [NotCompared(nodeid, name, file) for name in sorted(set(golden.snapshots) - set(record.used))]
        return found

    def counts(self) -> dict[str, int]:
        """The summary line's counts (a missing snapshot counts as failed), then EXTRA_COUNTS."""
        counter = Counter("failed" if o.status == "missing" else o.status for o in self.outcomes)
        counter["deleted"], counter["unused"] = len(self.deleted), len(self.unused)
        counter["tolerated"], counter["not_compared"] = len(self.tolerated()), len(self.not_compared)
        return {status: counter.get(status, 0) for status in STATUSES + EXTRA_COUNTS}

    def tolerated(self) -> list[SnapshotOutcome]:
        """Passed snapshots whose tokens diverged from the golden, within top-k (a tolerant comparison)."""
        return sorted((o for o in self.outcomes if o.status == "passed" and tolerated_at(o) is not None),
                      key=lambda o: (o.nodeid, o.name))

    def fragile(self) -> list[SnapshotOutcome]:
        """Snapshots recorded with a margin below llm_near_tie, by test and name."""
        return sorted((o for o in self.outcomes if o.details.fragile is not None), key=lambda o: (o.nodeid, o.name))

    def failed_tests(self) -> list[str]:
        return sorted({o.nodeid for o in self.outcomes if o.status in ("failed", "missing")})

    def errored_tests(self) -> list[str]:
        """Tests whose golden file could not be written."""
        return sorted({o.nodeid for o in self.outcomes if o.status == "error"})


def _drop_snapshots(path: Path, names: list[str], locks: LockBudget) -> None:
    # Rewrites the file without `names`, read under its lock (the test wrote it at its end, another process may
    # have since); deletes it when no snapshot is left.
    def without(golden: GoldenFile | None) -> GoldenFile | str | None:
        if golden is None:
            return None
        kept = {k: v for k, v in golden.snapshots.items() if k not in names}
        return GoldenFile(golden.test, golden.fingerprint, kept) if kept else REMOVE

    edit_golden(path, without, locks)


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
