"""The golden-file ledger of a run: every collected test, what it ran and which snapshots it compared, every
snapshot's outcome, and why the run is partial. Works across pytest-xdist workers: each worker sends
`to_data()`, the controller merges them; what is unused, and deleted, is decided from it once, at the end
(cleanup.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmdet.golden.location import golden_path, module_folder
from pytest_llmdet.golden.outcome import SnapshotOutcome
from pytest_llmdet.golden.writer import SnapshotWriter
from pytest_llmdet.vocabulary import SnapshotStatus

# The counts of the summary line, in its order (a missing snapshot counts as failed), then those shown only when
# there are any: passed snapshots that diverged within top-k (a tolerant pass), and snapshots of a golden file
# that its test did not compare because it failed first (so that the counts add up to the snapshots there are).
STATUSES = ("passed", "failed", "written", "updated", "deleted", "unused", "error")
EXTRA_COUNTS = ("tolerated", "not_compared")
PHASES = ("setup", "call", "teardown")


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


@dataclass
class Collection:
    """Every test the run collected or deselected, and what each ran: which golden files the tests own, and
    whether the run was whole."""

    tests: dict[str, TestRecord] = field(default_factory=dict)
    deselected: dict[str, str] = field(default_factory=dict)  # node id: golden file, of each deselected test
    module_folders: set[str] = field(default_factory=set)  # snapshot folders of the collected modules
    partly_collected: set[str] = field(default_factory=set)  # module folders of node ids named on the command line

    def to_data(self) -> dict[str, Any]:
        return {
            "tests": {k: v.to_data() for k, v in self.tests.items()},
            "deselected": self.deselected,
            "module_folders": sorted(self.module_folders),
            "partly_collected": sorted(self.partly_collected),
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

    def collected(self, nodeid: str, test_path: Path, declared: bool, snapshot_dir: str,
                  test: str | None = None) -> None:
        """A collected test (every one: a test may reach `llm_snapshot` through getfixturevalue); `test` names the
        test whose golden file it uses (default: itself)."""
        self.module_folders.add(str(module_folder(test_path, snapshot_dir)))
        self.tests[nodeid] = TestRecord(str(golden_path(test_path, test or nodeid, snapshot_dir)), declared=declared)

    def deselect(self, nodeid: str, test_path: Path, snapshot_dir: str, test: str | None = None) -> None:
        """A deselected test still owns its golden file: a partial run never calls it unused."""
        self.deselected[nodeid] = str(golden_path(test_path, test or nodeid, snapshot_dir))

    def partly_collect(self, test_path: Path, snapshot_dir: str) -> None:
        """A module named by node ids on the command line: its other tests were not collected, so no golden file
        in its folder can be called unused."""
        self.partly_collected.add(str(module_folder(test_path, snapshot_dir)))

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

    def why_partial(self) -> set[str]:
        """What the tests' records say of a partial run (empty: they all ran, and ran to their end)."""
        reasons = set()
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
        return reasons


@dataclass
class SnapshotRun:
    """Everything the summary and the unused-snapshot cleanup need to know about one run: what was collected
    and ran (`collection`), every snapshot's outcome, what the cleanup did, and why the run is partial."""

    collection: Collection = field(default_factory=Collection)
    outcomes: list[SnapshotOutcome] = field(default_factory=list)
    partial_reasons: set[str] = field(default_factory=set)
    deleted: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # files the cleanup could not change, and why
    pending: list[str] = field(default_factory=list)  # pending files a check run wrote, as the user reads them
    not_compared: list[NotCompared] = field(default_factory=list)  # by finish: what failed tests did not reach
    writer: SnapshotWriter = field(default_factory=SnapshotWriter)  # the run's writer (and its wait for locks)
    started: set[str] = field(default_factory=set)  # tests this process started (a second start is a re-run)

    def to_data(self) -> dict[str, Any]:
        return {
            **self.collection.to_data(),
            "outcomes": [o.to_data() for o in self.outcomes],
            "partial_reasons": sorted(self.partial_reasons),
            "pending": list(self.pending),
        }

    def merge(self, data: dict[str, Any]) -> None:
        """Add what one xdist worker saw."""
        self.collection.merge(data)
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

    def whole_run_reasons(self) -> list[str]:
        """Why this run is partial (empty: it is whole, and a full update may delete)."""
        return sorted(self.partial_reasons | self.collection.why_partial())

    def unused_fail(self, update: bool) -> bool:
        """Whether the unused snapshots fail a check: a whole check run with unused snapshots fails, since an update
        with the same flags would delete them (a green gate means an update would change nothing)."""
        return not update and bool(self.unused) and not self.whole_run_reasons()

    def counts(self) -> dict[str, int]:
        """The summary line's counts (a missing snapshot counts as failed), then EXTRA_COUNTS."""
        counter = Counter(SnapshotStatus.FAILED if o.status == SnapshotStatus.MISSING else o.status
                          for o in self.outcomes)
        counter["deleted"], counter["unused"] = len(self.deleted), len(self.unused)
        counter["tolerated"], counter["not_compared"] = len(self.tolerated()), len(self.not_compared)
        return {status: counter.get(status, 0) for status in STATUSES + EXTRA_COUNTS}

    def tolerated(self) -> list[SnapshotOutcome]:
        """Passed snapshots whose tokens diverged from the golden, within top-k (a tolerant comparison)."""
        return sorted((o for o in self.outcomes if o.tolerated_at is not None), key=lambda o: (o.nodeid, o.name))

    def fragile(self) -> list[SnapshotOutcome]:
        """Snapshots recorded with a margin below llm_near_tie, by test and name."""
        return sorted((o for o in self.outcomes if o.details.fragile is not None), key=lambda o: (o.nodeid, o.name))

    def failed_outcomes(self) -> list[SnapshotOutcome]:
        """Changed or missing snapshots."""
        return [o for o in self.outcomes if o.status in (SnapshotStatus.FAILED, SnapshotStatus.MISSING)]

    def failed_tests(self) -> list[str]:
        return sorted({o.nodeid for o in self.failed_outcomes()})

    def errored_tests(self) -> list[str]:
        """Tests whose golden file could not be written."""
        return sorted({o.nodeid for o in self.outcomes if o.status == SnapshotStatus.ERROR})


__all__ = ["EXTRA_COUNTS", "PHASES", "STATUSES", "Collection", "NotCompared", "SnapshotRun", "TestRecord"]
