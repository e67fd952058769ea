"""The golden-file side of a run, pytest side: `SnapshotPlugin` (registered by plugin.py only with
--llm-snapshot or --llm-snapshot-update) records every test that was collected, what each one ran and which
snapshots it compared, finishes the run (the deletions, decided once) and writes the `llm snapshots` summary;
`snapshot_fixture` is the body of the `llm_snapshot` fixture. A run without golden files never imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmdet.golden.format import GoldenFileError
from pytest_llmdet.golden.snapshot import LLMSnapshot
from pytest_llmdet.golden.summary import fragile_lines, summary_lines
from pytest_llmdet.hooks.keys import (
    BEFORE_FILTERING_KEY,
    CALL_RAN_KEY,
    LLM_KEY,
    PASSIVE_SNAPSHOTS_KEY,
    SESSION_KEY,
    SNAPSHOTS_KEY,
)
from pytest_llmdet.hooks.state import LLMDetSession, workers_data
from pytest_llmdet.json_report import junit_properties
from pytest_llmdet.markers import compare_plan
from pytest_llmdet.settings import ComparePlan, SettingsError, in_ci


def compare_plan_of(request: pytest.FixtureRequest) -> ComparePlan:
    """How this test's snapshots are compared: the run's settings, overridden by its `llm_snapshot` marker."""
    marker = request.node.get_closest_marker("llm_snapshot")
    return compare_plan(request.config.stash[SESSION_KEY].snapshot_settings, marker.args if marker else None,
                        marker.kwargs if marker else None)


def register_collection(session: pytest.Session, llmdet: LLMDetSession) -> None:
    """Record every collected test and the module folders collected, and why the run is partial (a partial
    update deletes no unused snapshot)."""
    kept = set()
    for item in session.items:
        path = getattr(item, "path", None)
        if path is not None and path.suffix == ".py":
            llmdet.register_collected(item.nodeid, path, "llm_snapshot" in getattr(item, "fixturenames", ()))
            kept.add(item.nodeid)
    config = session.config
    option = config.option
    reasons = llmdet.snapshots.partial_reasons
    filtered = [(nodeid, path) for nodeid, path in session.stash.get(BEFORE_FILTERING_KEY, [])
                if nodeid not in kept and nodeid not in llmdet.snapshots.deselected]
    if filtered:  # dropped by a plugin or a conftest without pytest_deselected: they still own their files
        reasons.add("tests filtered out during collection")
        for nodeid, path in filtered:
            llmdet.register_deselected(nodeid, path)
    for flag, reason in (("keyword", "-k"), ("markexpr", "-m"), ("lf", "--lf/--ff"), ("failedfirst", "--lf/--ff"),
                         ("stepwise", "--stepwise"), ("setuponly", "--setup-only"), ("setupplan", "--setup-plan"),
                         ("collectonly", "--collect-only")):
        if getattr(option, flag, None):
            reasons.add(reason)
    if (getattr(option, "count", None) or 1) > 1:  # pytest-repeat: every id gets a [i-n] suffix
        reasons.add("--count (pytest-repeat)")
    for arg in config.args:
        if "::" in arg:
            reasons.add("node ids on the command line")
            llmdet.register_partly_collected(config.invocation_params.dir / arg.split("::", 1)[0])
    if session.testsfailed:  # at this point only collection errors count here
        reasons.add("collection errors")




def register_before_filtering(items: list[pytest.Item], llmdet: LLMDetSession) -> None:
    """Remember every collected test before plugins and conftests filter the list: a test dropped without
    pytest_deselected (a "fast mode" conftest, --lf) must keep its golden file."""
    if items:
        items[0].session.stash[BEFORE_FILTERING_KEY] = [
            (item.nodeid, item.path) for item in items
            if getattr(item, "path", None) is not None and item.path.suffix == ".py"]


def register_deselected(items: list[pytest.Item], llmdet: LLMDetSession) -> None:
    """Deselected tests keep their golden files, and make the run partial."""
    llmdet.snapshots.partial_reasons.add("deselected tests")
    for item in items:
        path = getattr(item, "path", None)
        if path is not None and path.suffix == ".py":
            llmdet.register_deselected(item.nodeid, path)


def snapshot_fixture(request: pytest.FixtureRequest, llmdet: LLMDetSession) -> Iterator[LLMSnapshot]:
    """The body of the `llm_snapshot` fixture: compare (or record) during the test, write after it.

    Nothing is written, and no pending file settled, unless the test's call phase ran (`--setup-only` runs
    the fixture without the test). Unused snapshots are never dropped here: that waits for the end of a
    whole run (`SnapshotRun.finish`)."""
    node = request.node
    try:
        plan = compare_plan_of(request)
    except SettingsError as error:
        pytest.fail(f"pytest-llmdet: {error}", pytrace=False)
    snapshots = llmdet.test_snapshots(
        node.nodeid, Path(str(node.path)), lambda: node.stash.get(LLM_KEY, None),
        passive=node.stash.get(PASSIVE_SNAPSHOTS_KEY, False), compare=plan,
        full_fingerprints=bool(request.config.getoption("llmdet_report")),
    )
    node.stash[SNAPSHOTS_KEY] = snapshots
    yield LLMSnapshot(snapshots)
    if not snapshots.passive:  # a determinism re-run compared nothing: run 1's outcome and names stand
        llmdet.snapshots.note_fixture(node.nodeid, snapshots.used)
    if not node.stash.get(CALL_RAN_KEY, False):
        return
    failure = None
    try:
        snapshots.write()
    except (OSError, GoldenFileError) as error:
        failure = snapshots.write_error(error)
        snapshots.mark_unwritten(failure)
    note = snapshots.settle_pending(ci=in_ci())
    if snapshots.pending_file is not None:  # the summary names the review command
        llmdet.snapshots.pending.append(snapshots.pending_file)
    if note is not None:
        node.add_report_section("teardown", "llm snapshot", note)
    if failure is not None:  # failed outside the except block: one message, not a chain of two
        pytest.fail(failure, pytrace=False)


def take_report(item: pytest.Item, report: pytest.TestReport, llmdet: LLMDetSession) -> None:
    """Record each phase of every test (what ran decides deletions); attach a snapshot test's full comparison
    report and JUnit properties."""
    llmdet.snapshots.note_phase(item.nodeid, report.when, report.outcome)
    if report.when != "call":
        return
    item.stash[CALL_RAN_KEY] = True
    test_snapshots = item.stash.get(SNAPSHOTS_KEY, None)
    if test_snapshots is None:
        return
    if test_snapshots.reports:
        report.sections.append(("llm snapshot", "\n\n".join(test_snapshots.reports)))
    if test_snapshots.outcomes:
        properties = junit_properties(test_snapshots.outcomes)
        names = {name for name, _ in properties}  # a re-run replaces its earlier attempt's properties
        item.user_properties[:] = [p for p in item.user_properties if not (isinstance(p, tuple) and p[0] in names)]
        item.user_properties.extend(properties)  # JUnit XML reads them from the teardown report, made later
        report.user_properties.extend(properties)


def finish_snapshots(llmdet: LLMDetSession, workers: list[dict[str, Any]]) -> None:
    """On the controller (or a run without xdist): merge the workers' results, then report unused snapshots
    (and delete them on a full update run)."""
    for data in workers:
        if data["snapshots"] is not None:
            llmdet.snapshots.merge(data["snapshots"])
    try:
        llmdet.finish_snapshots()
    except OSError as error:  # the cleanup must not crash the session: report it like any other failure
        llmdet.snapshots.errors.append(f"could not finish the golden-file cleanup: {error}")


def write_summary(terminalreporter: Any, llmdet: LLMDetSession) -> None:
    """The `llm snapshots` section of the terminal summary, when any snapshot or golden file was seen."""
    s, run = llmdet.snapshot_settings, llmdet.snapshots
    uses = any(r.declared or r.fixture for r in run.tests.values())
    if not (uses or run.outcomes or run.unused or run.deleted or run.foreign):
        return
    terminalreporter.write_sep("=", "llm snapshots")
    for line in summary_lines(run, s.mode == "update", s.details) + fragile_lines(run, s.near_tie):
        terminalreporter.write_line(line)


class SnapshotPlugin:
    """The golden-file hooks, registered by plugin.py only when --llm-snapshot or --llm-snapshot-update is on
    (as pytest registers its LFPlugin only with --lf), so no other run tests a flag or pays for them."""

    def __init__(self, llmdet: LLMDetSession) -> None:
        self.llmdet = llmdet

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, items: list[pytest.Item]) -> None:
        register_before_filtering(items, self.llmdet)  # before others filter (some drop without deselecting)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        register_deselected(items, self.llmdet)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        register_collection(session, self.llmdet)

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.llmdet.snapshots.start_attempt(nodeid)  # a re-run replaces the earlier attempt's outcomes

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Iterator[None]:
        outcome = yield
        take_report(item, outcome.get_result(), self.llmdet)  # every test: getfixturevalue reaches it too

    def pytest_assertrepr_compare(self, op: str, left: Any, right: Any) -> list[str] | None:
        if op != "==":
            return None
        for side in (right, left):
            if isinstance(side, LLMSnapshot) and side.failure:
                return side.failure
        return None

    @pytest.hookimpl(tryfirst=True)  # before plugin.py's: it sends this worker's ledger to the controller
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if session.shouldstop or session.shouldfail or exitstatus == pytest.ExitCode.INTERRUPTED:
            self.llmdet.snapshots.partial_reasons.add("the run stopped early")
        if getattr(session.config, "workeroutput", None) is None:  # the controller, or a run without xdist
            finish_snapshots(self.llmdet, workers_data(session.config))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        if error is not None:  # its results are lost: what it ran is not known
            self.llmdet.snapshots.partial_reasons.add("an xdist worker crashed")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        write_summary(terminalreporter, self.llmdet)
