"""The re-run check for nondeterminism, pytest side: the hook that runs a checked test N times and reports
once, and the `llm determinism` summary (xdist included). Its marker and options are declared with the others
(markers.py, settings.OPTIONS).

pytest imports this module on every run, so it holds the hooks only: running a checked test N times and judging
it is in hooks/rerun.py, imported when a test is checked; the comparison is in determinism/runs.py, its report in
determinism/report.py, the summary in determinism/summary.py, the batch probe in determinism/probe.py.
Registered through `pytest_plugins` in plugin.py, so `-p no:llmdet` disables it too; plugin.py imports it first
(a plain import, as every module of the package: pytest_llmdet/__init__.py), and PYTEST_DONT_REWRITE tells pytest
not to warn that it was imported before it could rewrite it.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmdet.hooks import DETERMINISM_KEY, FACTORS_KEY, FACTORS_RESULT_KEY, LLM_KEY, MARKER_ERROR_KEY


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    state = item.config.stash.get(DETERMINISM_KEY, None)
    if state is None or not isinstance(item, pytest.Function) or _setup_only(item.config):
        return None
    marker = item.get_closest_marker("llm_determinism")
    if marker is None and not ((state.check_all or state.default_factors) and "llm" in item.fixturenames):
        return None  # not checked: pytest runs it as usual
    from pytest_llmdet.hooks.rerun import run_checked
    from pytest_llmdet.markers import MarkerUsageError, check_plan

    try:
        plan = check_plan(marker.args if marker else None, marker.kwargs if marker else None,
                          state.default_runs, state.check_all, "llm" in item.fixturenames, state.default_factors)
    except MarkerUsageError as error:
        item.stash[MARKER_ERROR_KEY] = str(error)  # reported as this test's setup error
        return None
    if plan is None:
        return None
    run_checked(item, nextitem, state, plan)
    return True


def _setup_only(config: pytest.Config) -> bool:
    return bool(config.getoption("setuponly", False) or config.getoption("setupplan", False))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    error = item.stash.get(MARKER_ERROR_KEY, None)
    if error is not None:
        pytest.fail(f"pytest-llmdet: {error}", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    result = yield  # raises when the test failed: then there is nothing to regenerate
    plan = item.stash.get(FACTORS_KEY, None)
    if plan is not None and plan.factor_names:
        from pytest_llmdet.hooks.rerun import check_factors_of

        # Regenerate while the test's fixtures are still set up: the model is in the state the calls saw.
        item.stash[FACTORS_RESULT_KEY] = check_factors_of(item.stash.get(LLM_KEY, None), plan)
    return result


@pytest.hookimpl(tryfirst=True)  # the sections: llm determinism, llm snapshots, llm (costs)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(DETERMINISM_KEY, None)
    if state is None or not (state.verdicts or state.unchecked):
        return
    from pytest_llmdet.determinism.summary import summary_lines

    terminalreporter.write_sep("=", "llm determinism")
    for line in summary_lines(state.verdicts):
        terminalreporter.write_line(line)
    if state.unchecked:
        terminalreporter.write_line(f"{state.unchecked} not checked: failed or skipped before all runs "
                                    "completed, or the batch probe or a factor could not run")
