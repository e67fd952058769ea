"""Running one determinism-checked test: its plan from the `llm_determinism` marker, the N runs of its full
protocol (function fixtures torn down between runs), the factors (the batch probe among them), and the verdict
that fails the test when the runs or a factor disagree.

The hooks that call this live in hooks/determinism.py, which pytest imports on every run; this module is
imported only when a test is checked. The comparison is in determinism/runs.py, its report in
determinism/report.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from pytest_llmdet.determinism.report import render_report
from pytest_llmdet.determinism.runs import CellStatus, FactorCell, FactorDifference, compare_runs, verdict_for
from pytest_llmdet.hooks import (
    FACTORS_KEY,
    FACTORS_RESULT_KEY,
    LLM_KEY,
    PASSIVE_SNAPSHOTS_KEY,
    SNAPSHOT_PLUGIN_KEY,
)
from pytest_llmdet.markers import DEFAULT_BATCH_SIZE, CheckPlan
from pytest_llmdet.vocabulary import FactorName

if TYPE_CHECKING:
    from pytest_llmdet.generation import Generation
    from pytest_llmdet.hooks.state import DeterminismState

class LLMDetWarning(UserWarning):
    """Something pytest-llmdet could not check, though the test passed (a call a factor skipped)."""


class FactorResult(NamedTuple):
    """What the factors found: the calls that changed under one, the test's row of the factor matrix, notes on
    the calls a factor skipped, and why a factor could not run at all (or None)."""

    differences: tuple[FactorDifference, ...] = ()
    cells: dict[FactorName, FactorCell] = {}
    notes: tuple[str, ...] = ()
    error: str | None = None


def run_checked(item: pytest.Function, nextitem: pytest.Item | None, state: DeterminismState, plan: CheckPlan
                ) -> None:
    """The whole protocol of a checked test: run it `plan.runs` times, judge the runs, report once."""
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports, recordings = run_repeatedly(item, nextitem, plan.runs, plan)
    probed = item.stash.get(FACTORS_RESULT_KEY, None) or FactorResult()
    if FACTORS_RESULT_KEY in item.stash:
        del item.stash[FACTORS_RESULT_KEY]
    if recordings is None:
        state.unchecked += 1
    else:
        _judge(item, state, recordings, probed, reports)
    for report in reports:
        ihook.pytest_runtest_logreport(report=report)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def run_repeatedly(item: pytest.Function, nextitem: pytest.Item | None, runs: int, plan: CheckPlan | None = None
                   ) -> tuple[list[pytest.TestReport], list[list[Generation]] | None]:
    """Run the test's full protocol `runs` times and return the last run's reports with every run's recorded
    generations; stop at the first run that does not pass and return its reports, and None, instead.

    With factors in `plan`, the last run's call ends with the factor check (see `pytest_runtest_call` in
    hooks/determinism.py)."""
    from _pytest.runner import runtestprotocol

    recordings: list[list[Generation]] = []
    reports: list[pytest.TestReport] = []
    try:
        for run in range(runs):
            last = run == runs - 1
            item.stash[PASSIVE_SNAPSHOTS_KEY] = run > 0  # the golden comparison happens on run 1 only
            if last and plan is not None and plan.factor_names:
                item.stash[FACTORS_KEY] = plan
            if LLM_KEY in item.stash:
                del item.stash[LLM_KEY]
            # Between runs, tear down what is not shared with the test's parent (its function-scoped fixtures)
            # and keep the wider ones; pytest only calls `.listchain()` on nextitem. After the last run, tear
            # down as usual.
            between: Any = item.parent
            reports = runtestprotocol(item, nextitem=nextitem if last else between, log=False)
            if not all(report.passed for report in reports):
                if not last:
                    reports = _finish_teardown(item, nextitem, reports)
                return reports, None
            handle = item.stash.get(LLM_KEY, None)
            recordings.append(list(handle.calls) if handle is not None else [])
    finally:
        for key in (PASSIVE_SNAPSHOTS_KEY, FACTORS_KEY):
            if key in item.stash:
                del item.stash[key]
    return reports, recordings


def _finish_teardown(item: pytest.Item, nextitem: pytest.Item | None,
                     reports: list[pytest.TestReport]) -> list[pytest.TestReport]:
    # The run stopped early, after a teardown that kept the wider-scoped fixtures for a next run: tear down
    # what the next test does not share, as the last run would have. An error there is the teardown report.
    call = pytest.CallInfo.from_call(lambda: item.session._setupstate.teardown_exact(nextitem), "teardown")
    if call.excinfo is None:
        return reports
    teardown = item.ihook.pytest_runtest_makereport(item=item, call=call)
    return [r for r in reports if r.when != "teardown"] + [teardown]


def _judge(item: pytest.Item, state: DeterminismState, recordings: list[list[Generation]], probed: FactorResult,
           reports: list[pytest.TestReport]) -> None:
    """Compare the runs (and take the factors' result), record the verdict, and turn the call report into a
    failure carrying the report when the outputs differ."""
    comparison = compare_runs(recordings)
    handle = item.stash.get(LLM_KEY, None)
    lines = render_report(comparison, probed.differences, _decoder(handle))
    call = next((r for r in reports if r.when == "call"), None)
    if probed.error is None:
        verdict = verdict_for(item.nodeid, comparison, probed.differences, probed.cells)
        state.verdicts.append(verdict)
        verdict_line = verdict.detail or f"deterministic in {verdict.runs} runs"
        for report in reports:  # a JUnit XML property of this test (JUnit XML reads the teardown report's)
            if report.when in ("call", "teardown"):
                report.user_properties.append(("llm_determinism", verdict_line))
    else:
        state.unchecked += 1
        lines.append(probed.error)
    if probed.notes and not lines:  # passed, but not every call was probed: say so where pytest says such things
        warnings.warn(LLMDetWarning(f"{item.nodeid}: " + "; ".join(probed.notes)), stacklevel=1)
    if lines and call is not None:
        call.outcome = "failed"
        call.longrepr = "\n".join([*lines, *probed.notes])
        snapshots = item.config.stash.get(SNAPSHOT_PLUGIN_KEY, None)
        if snapshots is not None:  # its goldens came from a run that the other runs contradict: keep them all
            snapshots.run.collection.set_failed(item.nodeid)


def _decoder(handle: Any) -> Callable[[list[int]], str] | None:
    if handle is None:
        return None
    engine = handle.engine
    return lambda ids: engine.decode(ids, skip_special_tokens=False)


def check_factors_of(handle: Any, plan: CheckPlan) -> FactorResult:
    """Generate each recorded call of the test again under each factor of `plan` and compare it with what the
    call gave; with no `llm` handle every factor is n/a."""
    from pytest_llmdet.determinism.factors import FactorError, check_factors  # imports the model code

    if handle is None:
        cell = FactorCell(CellStatus.NOT_APPLICABLE, reason="the test does not use the llm fixture")
        return FactorResult(cells={name: cell for name in plan.factor_names})
    try:
        findings = check_factors(handle, list(handle.calls), plan.factor_names, plan.batch_size or DEFAULT_BATCH_SIZE)
    except FactorError as error:
        return FactorResult(error=f"pytest-llmdet: {error}")
    return FactorResult(tuple(findings.differences), findings.cells, tuple(findings.notes))
