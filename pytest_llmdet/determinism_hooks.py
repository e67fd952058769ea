"""The re-run check for nondeterminism, pytest side: the `llm_determinism` marker and its options, the hook
that runs a checked test N times and reports once, and the `llm determinism` summary (xdist included).

The comparison and its report live in nondeterminism.py, the batch probe in batch.py. Loaded through
`pytest_plugins` in plugin.py, so `-p no:llmdet` disables it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_llmdet.generation import Generation
from pytest_llmdet.nondeterminism import (
    BatchDifference,
    Verdict,
    compare_batch,
    compare_runs,
    render_report,
    summary_lines,
    verdict_for,
    verdicts_from_data,
    verdicts_to_data,
)
from pytest_llmdet.plugin import LLM_KEY, PASSIVE_SNAPSHOTS_KEY, SESSION_KEY

RUNS_DEFAULT = 3
WORKER_OUTPUT = "llmdet_determinism"
MARKER_USAGE = ("usage: @pytest.mark.llm_determinism(runs=N, batch=False), with N >= 1; "
                "batch=True or a batch size >= 2")


class MarkerUsageError(ValueError):
    """`@pytest.mark.llm_determinism` was given arguments it does not take."""


@dataclass(frozen=True)
class CheckPlan:
    """How one test is checked: how many runs, and the batch size of the batch probe (0: no probe)."""

    runs: int
    batch_size: int = 0


@dataclass
class DeterminismState:
    """The check's state for one pytest process: its defaults and the verdicts of the tests it checked."""

    default_runs: int
    check_all: bool
    verdicts: list[Verdict] = field(default_factory=list)
    unchecked: int = 0  # failed or skipped before all runs completed, or the batch probe could not run


@dataclass
class ProbeResult:
    """What the batch probe found: the calls that changed in a batch, notes on the calls it skipped, and why
    it could not run at all (or None)."""

    differences: list[BatchDifference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


STATE_KEY = pytest.StashKey[DeterminismState]()
MARKER_ERROR_KEY = pytest.StashKey[str]()
PROBE_KEY = pytest.StashKey[int]()  # the batch size to probe with at the end of this run's call
PROBE_RESULT_KEY = pytest.StashKey[ProbeResult]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmdet")
    group.addoption("--llm-determinism-runs", dest="llm_determinism_runs", type=int, default=RUNS_DEFAULT,
                    metavar="N", help=f"runs of each determinism-checked test (default {RUNS_DEFAULT})")
    group.addoption("--llm-check-determinism", action="store_true", default=False,
                    help="run every test that uses `llm` N times and fail it when the token IDs differ "
                         "(as if marked @pytest.mark.llm_determinism)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "llm_determinism(runs=None, batch=False): run this test `runs` times (default "
        "--llm-determinism-runs) and fail it if any llm.generate call gives other token IDs in another run; "
        "batch=True (or a batch size) also generates each prompt inside a left-padded batch and compares",
    )
    runs = config.getoption("llm_determinism_runs")
    if runs < 1:
        raise pytest.UsageError(f"--llm-determinism-runs must be at least 1, not {runs}")
    config.stash[STATE_KEY] = DeterminismState(runs, config.getoption("llm_check_determinism"))


def check_plan(marker_args: tuple[Any, ...] | None, marker_kwargs: dict[str, Any] | None, default_runs: int,
               check_all: bool, uses_llm: bool) -> CheckPlan | None:
    """The check of one test, from its `llm_determinism` marker (None: unmarked) and the options; None when
    the test is not checked."""
    if marker_kwargs is None:
        return CheckPlan(default_runs) if check_all and uses_llm else None
    from pytest_llmdet.batch import DEFAULT_BATCH_SIZE

    unknown = set(marker_kwargs) - {"runs", "batch"}
    if marker_args or unknown:
        raise MarkerUsageError(MARKER_USAGE + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
    runs = marker_kwargs.get("runs", default_runs)
    if runs is None:
        runs = default_runs
    batch = marker_kwargs.get("batch", False)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise MarkerUsageError(f"{MARKER_USAGE}; got runs={runs!r}")
    if batch is True:
        batch_size = DEFAULT_BATCH_SIZE
    elif batch is False or batch is None:
        batch_size = 0
    elif isinstance(batch, int) and batch >= 2:
        batch_size = batch
    else:
        raise MarkerUsageError(f"{MARKER_USAGE}; got batch={batch!r}")
    return CheckPlan(runs, batch_size)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    state = item.config.stash.get(STATE_KEY, None)
    if state is None or not isinstance(item, pytest.Function) or _setup_only(item.config):
        return None
    marker = item.get_closest_marker("llm_determinism")
    try:
        plan = check_plan(marker.args if marker else None, marker.kwargs if marker else None,
                          state.default_runs, state.check_all, "llm" in item.fixturenames)
    except MarkerUsageError as error:
        item.stash[MARKER_ERROR_KEY] = str(error)  # reported as this test's setup error
        return None
    if plan is None:
        return None
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports, recordings = run_repeatedly(item, nextitem, plan.runs, plan.batch_size)
    probe = item.stash.get(PROBE_RESULT_KEY, None) or ProbeResult()
    if PROBE_RESULT_KEY in item.stash:
        del item.stash[PROBE_RESULT_KEY]
    if recordings is None:
        state.unchecked += 1
    else:
        _judge(item, state, recordings, probe, reports)
    for report in reports:
        ihook.pytest_runtest_logreport(report=report)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _setup_only(config: pytest.Config) -> bool:
    return bool(config.getoption("setuponly", False) or config.getoption("setupplan", False))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    error = item.stash.get(MARKER_ERROR_KEY, None)
    if error is not None:
        pytest.fail(f"pytest-llmdet: {error}", pytrace=False)


def run_repeatedly(item: pytest.Function, nextitem: pytest.Item | None, runs: int, batch_size: int = 0
                   ) -> tuple[list[pytest.TestReport], list[list[Generation]] | None]:
    """Run the test's full protocol `runs` times and return the last run's reports with every run's recorded
    generations; stop at the first run that does not pass and return its reports, and None, instead.

    With a `batch_size`, the last run's call ends with the batch probe (see `pytest_runtest_call`)."""
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    result = yield  # raises when the test failed: then there is nothing to probe
    batch_size = item.stash.get(PROBE_KEY, 0)
    handle = item.stash.get(LLM_KEY, None)
    if batch_size and handle is not None and handle.calls:
        # Probe while the test's fixtures are still set up: the model is in the state the calls saw.
        item.stash[PROBE_RESULT_KEY] = _probe(handle, list(handle.calls), batch_size)
    return result


def _finish_teardown(item: pytest.Item, nextitem: pytest.Item | None,
                     reports: list[pytest.TestReport]) -> list[pytest.TestReport]:
    # The run stopped early, after a teardown that kept the wider-scoped fixtures for a next run: tear down
    # what the next test does not share, as the last run would have. An error there is the teardown report.
    call = pytest.CallInfo.from_call(lambda: item.session._setupstate.teardown_exact(nextitem), "teardown")
    if call.excinfo is None:
        return reports
    teardown = item.ihook.pytest_runtest_makereport(item=item, call=call)
    return [r for r in reports if r.when != "teardown"] + [teardown]


def _judge(item: pytest.Item, state: DeterminismState, recordings: list[list[Generation]], probe: ProbeResult,
           reports: list[pytest.TestReport]) -> None:
    """Compare the runs (and take the batch probe's result), record the verdict, and turn the call report into
    a failure carrying the report when the outputs differ."""
    comparison = compare_runs(recordings)
    handle = item.stash.get(LLM_KEY, None)
    lines = render_report(comparison, probe.differences, _decoder(handle))
    call = next((r for r in reports if r.when == "call"), None)
    if probe.error is None:
        verdict = verdict_for(item.nodeid, comparison, probe.differences)
        state.verdicts.append(verdict)
        verdict_line = verdict.detail or f"deterministic in {verdict.runs} runs"
        for report in reports:  # a JUnit XML property of this test (JUnit XML reads the teardown report's)
            if report.when in ("call", "teardown"):
                report.user_properties.append(("llm_determinism", verdict_line))
    else:
        state.unchecked += 1
        lines.append(probe.error)
    if lines and call is not None:
        call.outcome = "failed"
        call.longrepr = "\n".join(lines + probe.notes)
        if "llm_snapshot" in item.fixturenames:  # its goldens came from a run that the others contradict
            item.config.stash[SESSION_KEY].snapshots.set_outcome(item.nodeid, "failed")


def _decoder(handle: Any) -> Callable[[list[int]], str] | None:
    if handle is None:
        return None
    tokenizer = handle.tokenizer
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)


def _probe(handle: Any, calls: list[Generation], batch_size: int) -> ProbeResult:
    """Generate each recorded call again inside a batch and compare it with its output alone."""
    from pytest_llmdet.batch import probe_calls

    try:
        outputs, notes = probe_calls(handle, calls, batch_size)
    except Exception as error:  # noqa: BLE001 - the probe failing fails the test, with the reason
        return ProbeResult(error=f"pytest-llmdet: the batch probe could not run: {type(error).__name__}: {error}")
    return ProbeResult(compare_batch(calls, outputs, batch_size), notes)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    state = config.stash.get(STATE_KEY, None)
    workeroutput = getattr(config, "workeroutput", None)
    if state is not None and workeroutput is not None:  # an xdist worker: the controller reports
        workeroutput[WORKER_OUTPUT] = {"verdicts": verdicts_to_data(state.verdicts),
                                       "unchecked": state.unchecked}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    data = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
    state = node.config.stash.get(STATE_KEY, None)
    if data is not None and state is not None:
        state.verdicts += verdicts_from_data(data["verdicts"])
        state.unchecked += data["unchecked"]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is None or not (state.verdicts or state.unchecked):
        return
    terminalreporter.write_sep("=", "llm determinism")
    for line in summary_lines(state.verdicts):
        terminalreporter.write_line(line)
    if state.unchecked:
        terminalreporter.write_line(f"{state.unchecked} not checked: failed or skipped before all runs "
                                    "completed, or the batch probe could not run")
