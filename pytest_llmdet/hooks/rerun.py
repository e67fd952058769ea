"""Running one determinism-checked test: its plan from the `llm_determinism` marker, the N runs of its full
protocol (function fixtures torn down between runs), the batch probe, and the verdict that fails the test when
the runs disagree.

The hooks that call this live in hooks/determinism.py, which pytest imports on every run; this module is
imported only when a test is checked. The comparison and its report are in determinism/runs.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from pytest_llmdet.determinism.runs import (
    BatchDifference,
    compare_batch,
    compare_runs,
    render_report,
    verdict_for,
)
from pytest_llmdet.hooks.keys import LLM_KEY, PASSIVE_SNAPSHOTS_KEY, PROBE_KEY, PROBE_RESULT_KEY, SESSION_KEY
from pytest_llmdet.markers import CheckPlan

if TYPE_CHECKING:
    from pytest_llmdet.generation import Generation
    from pytest_llmdet.hooks.state import DeterminismState

class LLMDetWarning(UserWarning):
    """Something pytest-llmdet could not check, though the test passed (a call the batch probe skipped)."""


class ProbeResult(NamedTuple):
    """What the batch probe found: the calls that changed in a batch, notes on the calls it skipped, and why
    it could not run at all (or None)."""

    differences: tuple[BatchDifference, ...] = ()
    notes: tuple[str, ...] = ()
    error: str | None = None


def run_checked(item: pytest.Function, nextitem: pytest.Item | None, state: DeterminismState, plan: CheckPlan
                ) -> None:
    """The whole protocol of a checked test: run it `plan.runs` times, judge the runs, report once."""
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports, recordings = run_repeatedly(item, nextitem, plan.runs, plan.batch_size)
    probed = item.stash.get(PROBE_RESULT_KEY, None) or ProbeResult()
    if PROBE_RESULT_KEY in item.stash:
        del item.stash[PROBE_RESULT_KEY]
    if recordings is None:
        state.unchecked += 1
    else:
        _judge(item, state, recordings, probed, reports)
    for report in reports:
        ihook.pytest_runtest_logreport(report=report)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def run_repeatedly(item: pytest.Function, nextitem: pytest.Item | None, runs: int, batch_size: int = 0
                   ) -> tuple[list[pytest.TestReport], list[list[Generation]] | None]:
    """Run the test's full protocol `runs` times and return the last run's reports with every run's recorded
    generations; stop at the first run that does not pass and return its reports, and None, instead.

    With a `batch_size`, the last run's call ends with the batch probe (see `pytest_runtest_call` in
    hooks/determinism.py)."""
    from _pytest.runner import runtestprotocol

    recordings: list[list[Generation]] = []
    reports: list[pytest.TestReport] = []
    try:
        for run in range(runs):
            last = run == runs - 1
            item.stash[PASSIVE_SNAPSHOTS_KEY] = run > 0  # the golden comparison happens on run 1 only
            if last and batch_size:
                item.stash[PROBE_KEY] = batch_size
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
        for key in (PASSIVE_SNAPSHOTS_KEY, PROBE_KEY):
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


def _judge(item: pytest.Item, state: DeterminismState, recordings: list[list[Generation]], probed: ProbeResult,
           reports: list[pytest.TestReport]) -> None:
    """Compare the runs (and take the batch probe's result), record the verdict, and turn the call report into
    a failure carrying the report when the outputs differ."""
    comparison = compare_runs(recordings)
    handle = item.stash.get(LLM_KEY, None)
    lines = render_report(comparison, probed.differences, _decoder(handle))
    call = next((r for r in reports if r.when == "call"), None)
    if probed.error is None:
        verdict = verdict_for(item.nodeid, comparison, probed.differences)
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
        session = item.config.stash[SESSION_KEY]
        if session.snapshots_on:  # its goldens came from a run that the other runs contradict: keep them all
            session.snapshots.set_failed(item.nodeid)


def _decoder(handle: Any) -> Callable[[list[int]], str] | None:
    if handle is None:
        return None
    engine = handle.engine
    return lambda ids: engine.decode(ids, skip_special_tokens=False)


def probe_in_batch(handle: Any, calls: list[Generation], batch_size: int) -> ProbeResult:
    """Generate each recorded call again inside a batch and compare it with its output alone."""
    from pytest_llmdet.determinism.probe import probe_calls  # imports the model code: only when a probe runs

    try:
        outputs, notes = probe_calls(handle, calls, batch_size)
    except Exception as error:  # noqa: BLE001 - the probe failing fails the test, with the reason
        return ProbeResult(error=f"pytest-llmdet: the batch probe could not run: {type(error).__name__}: {error}")
    return ProbeResult(tuple(compare_batch(calls, outputs, batch_size)), tuple(notes))

