"""The golden-file side of a run, pytest side: `SnapshotPlugin`, registered by plugin.py only with --llm-snapshot,
--llm-snapshot-review or --llm-snapshot-update (as pytest registers its LFPlugin only with --lf), owns the run's
ledger and writer; its hooks record every test collected, what each ran and which snapshots it compared, finish
the run (the deletions, decided once) and write the `llm snapshots` summary. `snapshot_fixture` is the body of
the `llm_snapshot` fixture. A run without golden files never imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from pytest_llmdet.commands import RerecordCommand, rerecord_command
from pytest_llmdet.golden.assertion import LLMSnapshot
from pytest_llmdet.golden.cleanup import finish
from pytest_llmdet.golden.ledger import SnapshotRun
from pytest_llmdet.golden.location import golden_path
from pytest_llmdet.golden.snapshot import ModelAccess, SnapshotContext, TestIdentity, TestSnapshots, end_test
from pytest_llmdet.golden.summary import fragile_lines, summary_lines
from pytest_llmdet.hooks import ANNOTATIONS_KEY, CALL_RAN_KEY, LLM_KEY, PASSIVE_SNAPSHOTS_KEY, SNAPSHOTS_KEY
from pytest_llmdet.hooks.collection import (
    command_id_of,
    golden_test_of,
    record_collection,
    record_deselected,
    remember_before_filtering,
)
from pytest_llmdet.hooks.state import LLMDetSession
from pytest_llmdet.json_report import junit_properties
from pytest_llmdet.markers import compare_plan
from pytest_llmdet.settings import ComparePlan, SnapshotSettings, in_ci
from pytest_llmdet.settings.values import SettingsError
from pytest_llmdet.vocabulary import SnapshotMode


def shown_path(path: Path, invocation_dir: Path) -> str:
    """A path as the user reads it: relative to where pytest was started, when it lies below."""
    try:
        return os.path.relpath(path, invocation_dir) if path.is_relative_to(invocation_dir) else str(path)
    except ValueError:
        return str(path)


def _fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


class SnapshotPlugin:
    """The golden-file state of one pytest process and its hooks."""

    def __init__(self, session: LLMDetSession, settings: SnapshotSettings, command_inputs: tuple[Any, ...]) -> None:
        self.session = session  # the models (for fingerprints and decoding) and how paths are shown
        self.settings = settings
        self.mode = SnapshotMode(settings.mode)
        # what the command line gave (each flag's value, the -o overrides, -c, --rootdir, the environment (None:
        # this process's), the file and folder arguments): re-record commands repeat what shaped the outputs
        self.command_inputs = command_inputs
        self.run = SnapshotRun()

    @cached_property
    def command(self) -> RerecordCommand:
        """What every re-record command of this run gives."""
        return rerecord_command(*self.command_inputs)

    @cached_property
    def context(self) -> SnapshotContext:
        s = self.settings
        return SnapshotContext(self.mode, s.near_tie, self.run.writer, self.run.outcomes.append, _fail,
                               self.command, s.variant, s.review, in_ci(), str(self.session.invocation_dir))

    # -- xdist: the share of the golden files (hooks/workers.py) -----------------------------------------------

    def worker_data(self) -> dict[str, Any]:
        return self.run.to_data()

    def merge_worker(self, data: dict[str, Any]) -> None:
        self.run.merge(data)

    # -- one test ----------------------------------------------------------------------------------------------

    def test_snapshots(self, request: pytest.FixtureRequest, plan: ComparePlan) -> TestSnapshots:
        """The snapshot bookkeeping of the test of `request`: its golden file, its model's fingerprints."""
        node = request.node
        test = golden_test_of(node)
        path = golden_path(Path(str(node.path)), test, self.settings.snapshot_dir)
        source, def_line = Path(str(node.path)), node.location[1]
        identity = TestIdentity(node.nodeid, path, shown_path(path, self.session.invocation_dir), test,
                                command_id_of(node, test), str(source), shown_path(source, self.session.invocation_dir),
                                None if def_line is None else def_line + 1)
        return TestSnapshots(self.context, identity, plan, self._model_access(node, bool(
            request.config.getoption("llmdet_report"))), passive=node.stash.get(PASSIVE_SNAPSHOTS_KEY, False))

    def _model_access(self, node: pytest.Item, full_fingerprints: bool) -> ModelAccess:
        # A check hashes a local model's weights only where the fingerprint is shown or kept: a failure report, a
        # pending file, or (with `full_fingerprints`, for the JSON report) every outcome.
        def decoder():
            handle = node.stash.get(LLM_KEY, None)
            return None if handle is None else (lambda ids: handle.engine.decode(ids, skip_special_tokens=False))

        def fingerprint(weights: bool = True):
            handle = node.stash.get(LLM_KEY, None)
            return None if handle is None else self.session.fingerprint_for(handle, weights)

        return ModelAccess(decoder, fingerprint, None if full_fingerprints else lambda: fingerprint(weights=False))

    # -- hooks -------------------------------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, items: list[pytest.Item]) -> None:
        remember_before_filtering(items)  # before others filter (some drop without deselecting)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        record_deselected(items, self.run, self.settings.snapshot_dir)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        record_collection(session, self.run, self.settings.snapshot_dir)

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.run.start_attempt(nodeid)  # a re-run replaces the earlier attempt's outcomes

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Iterator[None]:
        outcome = yield
        report = outcome.get_result()
        take_report(item, report, self.run)  # every test: getfixturevalue reaches it too
        test_snapshots = item.stash.get(SNAPSHOTS_KEY, None)
        if report.when == "call" and test_snapshots is not None and test_snapshots.outcomes \
                and getattr(item.config.option, "htmlpath", None):  # pytest-html writes a report
            from pytest_llmdet.hooks.ci import add_html_extras

            add_html_extras(report, test_snapshots.outcomes, self.settings.near_tie)  # with pytest-html

    def pytest_assertrepr_compare(self, op: str, left: Any, right: Any) -> list[str] | None:
        if op != "==":
            return None
        return next((side.failure for side in (right, left) if isinstance(side, LLMSnapshot) and side.failure), None)

    @pytest.hookimpl(tryfirst=True)  # before plugin.py's: it sends this worker's shares to the controller
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if session.shouldstop or session.shouldfail or exitstatus == pytest.ExitCode.INTERRUPTED:
            self.run.partial_reasons.add("the run stopped early")
        if getattr(session.config, "workeroutput", None) is None:  # the controller, or a run without xdist
            try:
                finish(self.run, update=self.mode == SnapshotMode.UPDATE, rootdir=self.session.rootdir,
                       display=lambda path: shown_path(path, self.session.invocation_dir))
            except OSError as error:  # the cleanup must not crash the session: report it like any other failure
                self.run.errors.append(f"could not finish the golden-file cleanup: {error}")
            if self.run.unused_fail(update=self.mode == SnapshotMode.UPDATE) \
                    and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        if error is not None:  # its results are lost: what it ran is not known
            self.run.partial_reasons.add("an xdist worker crashed")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        run, s = self.run, self.settings
        if not (any(r.declared or r.fixture for r in run.collection.tests.values()) or run.outcomes or run.unused
                or run.deleted or run.foreign):
            return
        terminalreporter.write_sep("=", "llm snapshots")
        lines = summary_lines(run, self.mode == SnapshotMode.UPDATE, s.details, self.command.paths, s.review)
        for line in lines + fragile_lines(run, s.near_tie):
            terminalreporter.write_line(line)
        for line in terminalreporter.config.stash.get(ANNOTATIONS_KEY, []):  # under GitHub Actions (hooks/ci.py)
            terminalreporter.write_line(line)


def compare_plan_of(request: pytest.FixtureRequest, settings: SnapshotSettings) -> ComparePlan:
    """How this test's snapshots are compared: the run's settings, overridden by its `llm_snapshot` marker."""
    marker = request.node.get_closest_marker("llm_snapshot")
    return compare_plan(settings, marker.args if marker else None, marker.kwargs if marker else None)


def snapshot_fixture(request: pytest.FixtureRequest, plugin: SnapshotPlugin) -> Iterator[LLMSnapshot]:
    """The body of the `llm_snapshot` fixture: compare (or record) during the test, write after it.

    Nothing is written, and no pending file settled, unless the test's call phase ran (`--setup-only` runs the
    fixture without the test). Unused snapshots are never dropped here: that waits for the end of a whole run
    (cleanup.finish). A write that does not complete counts its snapshots as errors (snapshot.end_test)."""
    node = request.node
    try:
        plan = compare_plan_of(request, plugin.settings)
    except SettingsError as error:
        pytest.fail(f"pytest-llmdet: {error}", pytrace=False)
    snapshots = plugin.test_snapshots(request, plan)
    node.stash[SNAPSHOTS_KEY] = snapshots
    yield LLMSnapshot(snapshots)
    if not snapshots.passive:  # a determinism re-run compared nothing: run 1's outcome and names stand
        plugin.run.collection.note_fixture(node.nodeid, snapshots.used)
    if not node.stash.get(CALL_RAN_KEY, False):
        return
    failure, note = end_test(snapshots)
    if snapshots.pending_file is not None:  # the summary names the review command
        plugin.run.pending.append(snapshots.pending_file)
    if note is not None:
        node.add_report_section("teardown", "llm snapshot", note)
    set_junit_properties(node, snapshots.outcomes)  # the statuses as written (JUnit XML reads them at teardown)
    failure = failure or snapshots.review_failure()
    if failure is not None:  # failed outside the except block: one message, not a chain of two
        pytest.fail(failure, pytrace=False)


def set_junit_properties(item: pytest.Item, outcomes: list[Any]) -> list[tuple[str, str]]:
    """Each snapshot's JUnit XML properties on `item`, replacing those of an earlier attempt or phase."""
    properties = junit_properties(outcomes)
    names = {name for name, _ in properties}
    item.user_properties[:] = [p for p in item.user_properties if not (isinstance(p, tuple) and p[0] in names)]
    item.user_properties.extend(properties)
    return properties


def take_report(item: pytest.Item, report: pytest.TestReport, run: SnapshotRun) -> None:
    """Record each phase of every test (what ran decides deletions); attach a snapshot test's full comparison
    report and JUnit properties."""
    run.collection.note_phase(item.nodeid, report.when, report.outcome)
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


__all__ = ["SnapshotPlugin", "compare_plan_of", "snapshot_fixture"]
