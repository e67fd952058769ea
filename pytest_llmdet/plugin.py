"""The pytest plugin entry: options, markers, fixtures and hooks. Each hook is thin; the logic lives in
the modules it calls.

pytest imports this module in every run of every project where the plugin is installed, so it imports only
the settings: torch, transformers and filelock, and the model, golden-file and report code too, are imported
inside the fixtures and hooks that need them (benchmarks/bench_import.py measures what is left).

It is the `pytest11` entry point. Like every module of the package it is a plain import, past pytest's
assertion-rewriting hook (pytest_llmdet/__init__.py says why); PYTEST_DONT_REWRITE tells pytest not to warn that
it was imported before pytest could rewrite it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmdet.engines import prepare_cuda_environment
from pytest_llmdet.engines.kinds import check_settings
from pytest_llmdet.hooks import (
    DETERMINISM_KEY,
    LLM_KEY,
    PREFETCH_KEY,
    SESSION_KEY,
    SHARES_KEY,
    SNAPSHOT_PLUGIN_KEY,
)
from pytest_llmdet.hooks import determinism as _determinism  # noqa: F401  (registered by pytest_plugins)
from pytest_llmdet.hooks.state import DeterminismState, LLMDetSession
from pytest_llmdet.markers import MARKERS
from pytest_llmdet.settings import OPTIONS, in_ci, resolve
from pytest_llmdet.settings.values import SettingsError

if TYPE_CHECKING:
    from pytest_llmdet.engines.llm import LLM
    from pytest_llmdet.golden.assertion import LLMSnapshot

pytest_plugins = ["pytest_llmdet.hooks.determinism"]

WEIGHTS_CACHE = "llmdet/weights-sha256"
SKIP_WITHOUT_SNAPSHOTS = "needs --llm-snapshot"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmdet", "language-model regression testing (pytest-llmdet)")
    for option in OPTIONS:  # the one table of every flag and ini option (settings.py)
        where = f"; ini: {option.ini}" if option.has_ini else ""
        if option.has_flag and option.switch:
            group.addoption(option.flag, dest=option.dest, action="store_true", default=False,
                            help=option.help + where)
        elif option.has_flag:
            group.addoption(option.flag, dest=option.dest, default=None, metavar=option.metavar,
                            help=option.help + where)
        if option.has_ini:
            parser.addini(option.ini, option.help, default="")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    prepare_cuda_environment()
    flags = {o.name: config.getoption(o.dest) for o in OPTIONS if o.has_flag}
    typed = config.invocation_params.args  # what was typed; addopts and PYTEST_ADDOPTS come before it
    if flags["snapshot_update"] and "--llm-snapshot-update" in typed:
        # an update typed on the command line wins over a check from addopts (a project's `addopts =
        # --llm-snapshot`), so that the re-record commands the gate prints work; both typed is a usage error
        for mode in ("snapshot", "snapshot_review"):
            flags[mode] = flags[mode] and "--" + "llm-" + mode.replace("_", "-") in typed
    try:
        settings, snapshot_settings = resolve(
            flags, {o.name: str(config.getini(o.ini)) for o in OPTIONS if o.has_ini},
            config.inipath, config.invocation_params.dir, check_settings,
        )
    except SettingsError as error:
        raise pytest.UsageError(str(error)) from None
    session = config.stash[SESSION_KEY] = LLMDetSession(settings, config.rootpath, config.invocation_params.dir,
                                                        snapshot_settings, worker=_worker_id(config))
    determinism = config.stash[DETERMINISM_KEY] = DeterminismState(settings.determinism_runs,
                                                                     settings.check_determinism, settings.factors)
    shares = config.stash[SHARES_KEY] = {"session": session, "determinism": determinism}  # sent by xdist workers
    if snapshot_settings.mode != "off":  # the golden-file hooks exist only in a run that uses golden files
        from pytest_llmdet.hooks.snapshots import SnapshotPlugin

        option = config.option  # what re-record commands repeat: -o overrides, -c and --rootdir as given
        given_paths = [str(arg) for arg in config.args] if config.args_source == pytest.Config.ArgsSource.ARGS else []
        command_inputs = (flags, list(getattr(option, "override_ini", None) or ()),
                          getattr(option, "inifilename", None), getattr(option, "rootdir", None), None, given_paths)
        plugin = config.stash[SNAPSHOT_PLUGIN_KEY] = SnapshotPlugin(session, snapshot_settings, command_inputs)
        config.pluginmanager.register(plugin, "llmdet-snapshots")
        shares["snapshots"] = plugin
    if snapshot_settings.mode == "check" and settings.prefetch:  # an update records from lone calls only
        from pytest_llmdet.hooks.prefetch import PrefetchPlugin

        prefetcher = config.stash[PREFETCH_KEY] = PrefetchPlugin(session, snapshot_settings)
        config.pluginmanager.register(prefetcher, "llmdet-prefetch")
        shares["prefetch"] = prefetcher


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Without --llm-snapshot a test that asks for llm_snapshot is skipped before any of its fixtures is set
    # up: `def test(llm, llm_snapshot)` would otherwise load the model only to skip (a skip mark is evaluated
    # before fixtures, whatever the argument order; the fixture still skips one reached by getfixturevalue).
    if config.stash[SESSION_KEY].snapshots_on:
        return
    skip = None
    for item in items:
        if "llm_snapshot" in getattr(item, "fixturenames", ()):
            skip = skip or pytest.mark.skip(reason=SKIP_WITHOUT_SNAPSHOTS)
            item.add_marker(skip)


def _worker_id(config: pytest.Config) -> str | None:
    return getattr(config, "workerinput", {}).get("workerid")  # set by pytest-xdist in its workers


def pytest_report_header(config: pytest.Config) -> list[str]:
    from pytest_llmdet.engines.sources import ModelLoadError
    from pytest_llmdet.header import header_lines, prefetch_header_line, reruns_header_line, snapshot_header_line

    session = config.stash[SESSION_KEY]
    try:
        source = session.run_model()
    except ModelLoadError:
        source = None
    s = session.snapshot_settings
    reruns = getattr(config.option, "force_reruns", None) or getattr(config.option, "reruns", None)  # rerunfailures
    workers = config.getoption("numprocesses", None)  # pytest-xdist's -n, a number by now (-n auto too)
    workers = workers if isinstance(workers, int) and session.worker is None else None  # the controller's
    return header_lines(session.settings, source, workers) + [
        snapshot_header_line(s.mode, s.snapshot_dir, s.near_tie, s.compare, s.top_k)] + reruns_header_line(reruns) \
        + prefetch_header_line(session.settings, s.mode)


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if getattr(config, "cache", None) is not None:  # not yet set during our (tryfirst) pytest_configure
        config.stash[SESSION_KEY].weights_cache.update(config.cache.get(WEIGHTS_CACHE, {}))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if config.stash[SESSION_KEY].snapshot_settings.mode == "update" and in_ci() and reporter is not None:
        reporter.write_line(f"llmdet: WARNING: --llm-snapshot-update in CI (CI={os.environ['CI']}): golden files "
                            "will be rewritten here; CI normally checks them with --llm-snapshot",
                            yellow=True, bold=True)


@pytest.fixture
def llm(request: pytest.FixtureRequest) -> LLM:
    """The model under test with forced greedy decoding and fixed seeds; loaded once per session."""
    from pytest_llmdet.engines.sources import ModelLoadError

    session = request.config.stash[SESSION_KEY]
    marker = request.node.get_closest_marker("llm_model")
    failure = None
    try:
        if marker is None:
            spec = session.default_spec()
        else:
            spec = session.spec_from_marker(marker.args, marker.kwargs, Path(str(request.node.path)).parent)
        handle = session.llm_for(spec)
        if "llm_snapshot" in request.fixturenames and session.snapshots_on:
            from pytest_llmdet.hooks.snapshots import compare_plan_of

            plan = compare_plan_of(request, session.snapshot_settings)
            handle.capture_top_k = plan.capture_top_k  # top-k costs only when compared
            prefetcher = request.config.stash.get(PREFETCH_KEY, None)
            if prefetcher is not None:
                prefetcher.attach(request.node, handle, spec)
    except (ModelLoadError, SettingsError) as error:
        failure = f"pytest-llmdet: {error}"
    if failure is not None:  # outside the except block: one message, not a chain of the causes
        pytest.fail(failure, pytrace=False)
    request.node.stash[LLM_KEY] = handle
    return handle


@pytest.fixture
def llm_snapshot(request: pytest.FixtureRequest) -> Iterator[LLMSnapshot]:
    """This test's golden snapshot: `assert llm.generate(...) == llm_snapshot`; needs --llm-snapshot."""
    plugin = request.config.stash.get(SNAPSHOT_PLUGIN_KEY, None)
    if plugin is None:
        pytest.skip(SKIP_WITHOUT_SNAPSHOTS)
    from pytest_llmdet.hooks.snapshots import snapshot_fixture

    yield from snapshot_fixture(request, plugin)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    llmdet = config.stash[SESSION_KEY]
    if getattr(config, "cache", None) is not None and llmdet.weights_cache:
        config.cache.set(WEIGHTS_CACHE, llmdet.weights_cache)
    if getattr(config, "workeroutput", None) is not None:  # an xdist worker: the controller decides and reports
        from pytest_llmdet.hooks.workers import send_to_controller

        send_to_controller(config)
        return
    snapshots = config.stash.get(SNAPSHOT_PLUGIN_KEY, None)
    errors = snapshots.run.errors if snapshots is not None else []
    if _publishing(config, snapshots is not None):
        from pytest_llmdet.hooks.ci import publish

        errors += publish(config, snapshots, session.exitstatus)
    if errors:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        for line in errors:
            if reporter is not None:
                reporter.write_line(f"llmdet: ERROR: {line}", red=True, bold=True)
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _publishing(config: pytest.Config, snapshots: bool) -> bool:
    """Whether the run writes a report (--llm-report, --llm-report-html, --llm-summary-md), or used golden files
    or the determinism check under GitHub Actions (its job summary and annotations: hooks/ci.py)."""
    if any(config.getoption(f"llmdet_{name}") for name in ("report", "report_html", "summary_md")):
        return True
    state = config.stash.get(DETERMINISM_KEY, None)
    used = snapshots or (state is not None and bool(state.verdicts or state.unchecked))
    return used and bool(os.environ.get("GITHUB_STEP_SUMMARY") or os.environ.get("GITHUB_ACTIONS") == "true")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    from pytest_llmdet.hooks.workers import receive_from_worker

    receive_from_worker(node.config, node)  # every share: the session's, the golden files', the verdicts


@pytest.hookimpl(trylast=True)  # after llm determinism and llm snapshots
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    loads, generations = config.stash[SESSION_KEY].cost()
    if not loads and not generations["count"]:
        return
    from pytest_llmdet.header import summary_lines

    lines = summary_lines(loads, generations)
    if lines:
        terminalreporter.write_sep("=", "llm")
        for line in lines:
            terminalreporter.write_line(line)
