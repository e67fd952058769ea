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

from pytest_llmdet.golden.snapshot import LLMSnapshot, TestSnapshots
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


REPEAT_PARAMETER = "__pytest_repeat_step_number"  # pytest-repeat's: its steps share their test's golden file


def golden_test_of(item: pytest.Item) -> str:
    """The test whose golden file `item` uses: itself, or for a step of pytest-repeat (`--count`, the `repeat`
    marker) the test it repeats, its step's id (`1-2`) taken out of the node id."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or REPEAT_PARAMETER not in callspec.params:
        return item.nodeid
    ids = list(getattr(callspec, "_idlist", ()))
    step = f"{callspec.params[REPEAT_PARAMETER] + 1}-"
    matches = [i for i, part in enumerate(ids) if part.startswith(step) and part[len(step):].isdigit()]
    suffix = f"[{callspec.id}]"
    if not matches or not item.nodeid.endswith(suffix):
        return item.nodeid
    del ids[matches[-1]]
    return item.nodeid[: -len(suffix)] + (f"[{'-'.join(ids)}]" if ids else "")


def register_collection(session: pytest.Session, llmdet: LLMDetSession) -> None:
    """Record every collected test and the module folders collected, and why the run is partial (a partial
    update deletes no unused snapshot)."""
    kept = set()
    for item in session.items:
        path = getattr(item, "path", None)
        if path is not None and path.suffix == ".py":
            llmdet.register_collected(item.nodeid, path, "llm_snapshot" in getattr(item, "fixturenames", ()),
                                      golden_test_of(item))
            kept.add(item.nodeid)
    config = session.config
    option = config.option
    reasons = llmdet.snapshots.partial_reasons
    filtered = [(nodeid, path, test) for nodeid, path, test in session.stash.get(BEFORE_FILTERING_KEY, [])
                if nodeid not in kept and nodeid not in llmdet.snapshots.deselected]
    if filtered:  # dropped by a plugin or a conftest without pytest_deselected: they still own their files
        reasons.add("tests filtered out during collection")
        for nodeid, path, test in filtered:
            llmdet.register_deselected(nodeid, path, test)
    for flag, reason in (("keyword", "-k"), ("markexpr", "-m"), ("lf", "--lf/--ff"), ("failedfirst", "--lf/--ff"),
                         ("stepwise", "--stepwise"), ("setuponly", "--setup-only"), ("setupplan", "--setup-plan"),
                         ("collectonly", "--collect-only")):
        if getattr(option, flag, None):
            reasons.add(reason)
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
            (item.nodeid, item.path, golden_test_of(item)) for item in items
            if getattr(item, "path", None) is not None and item.path.suffix == ".py"]


def register_deselected(items: list[pytest.Item], llmdet: LLMDetSession) -> None:
    """Deselected tests keep their golden files, and make the run partial."""
    llmdet.snapshots.partial_reasons.add("deselected tests")
    for item in items:
        path = getattr(item, "path", None)
        if path is not None and path.suffix == ".py":
            llmdet.register_deselected(item.nodeid, path, golden_test_of(item))


def snapshot_fixture(request: pytest.FixtureRequest, llmdet: LLMDetSession) -> Iterator[LLMSnapshot]:
    """The body of the `llm_snapshot` fixture: compare (or record) during the test, write after it.

    Nothing is written, and no pending file settled, unless the test's call phase ran (`--setup-only` runs
    the fixture without the test). Unused snapshots are never dropped here: that waits for the end of a
    whole run (`SnapshotRun.finish`). A write that does not complete, for whatever reason (a full disk, a
    lock, pytest-timeout's Timeout, Ctrl-C), leaves its snapshots counted as errors, never as written."""
    node = request.node
    try:
        plan = compare_plan_of(request)
    except SettingsError as error:
        pytest.fail(f"pytest-llmdet: {error}", pytrace=False)
    test = golden_test_of(node)
    snapshots = llmdet.test_snapshots(
        node.nodeid, Path(str(node.path)), lambda: node.stash.get(LLM_KEY, None),
        passive=node.stash.get(PASSIVE_SNAPSHOTS_KEY, False), compare=plan,
        full_fingerprints=bool(request.config.getoption("llmdet_report")),
        test=test, command_id=request.config.cwd_relative_nodeid(test),
    )
    node.stash[SNAPSHOTS_KEY] = snapshots
    yield LLMSnapshot(snapshots)
    if not snapshots.passive:  # a determinism re-run compared nothing: run 1's outcome and names stand
        llmdet.snapshots.note_fixture(node.nodeid, snapshots.used)
    if not node.stash.get(CALL_RAN_KEY, False):
        return
    failure = _write(snapshots)
    note = snapshots.settle_pending(ci=in_ci())
    if snapshots.pending_file is not None:  # the summary names the review command
        llmdet.snapshots.pending.append(snapshots.pending_file)
    if note is not None:
        node.add_report_section("teardown", "llm snapshot", note)
    set_junit_properties(node, snapshots.outcomes)  # the statuses as written (JUnit XML reads them at teardown)
    failure = failure or snapshots.review_failure()
    if failure is not None:  # failed outside the except block: one message, not a chain of two
        pytest.fail(failure, pytrace=False)


def _write(snapshots: TestSnapshots) -> str | None:
    """Write the test's golden file; the failure message when the write did not complete (its snapshots are
    then errors). Ctrl-C goes on stopping the run once they are marked."""
    try:
        snapshots.write()
    except (KeyboardInterrupt, SystemExit) as error:
        snapshots.mark_unwritten(snapshots.write_error(error))
        raise
    except BaseException as error:  # noqa: BLE001 - pytest-timeout's Timeout (a pytest.fail) too
        failure = snapshots.write_error(error)
        snapshots.mark_unwritten(failure)
        return failure
    return None


def set_junit_properties(item: pytest.Item, outcomes: list[Any]) -> list[tuple[str, str]]:
    """Each snapshot's JUnit XML properties on `item`, replacing those of an earlier attempt or phase."""
    properties = junit_properties(outcomes)
    names = {name for name, _ in properties}
    item.user_properties[:] = [p for p in item.user_properties if not (isinstance(p, tuple) and p[0] in names)]
    item.user_properties.extend(properties)
    return properties


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
        # JUnit XML reads them from the teardown report, made later (the fixture sets them again after writing)
        report.user_properties.extend(set_junit_properties(item, test_snapshots.outcomes))


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
