"""The pytest plugin entry: options, markers, fixtures and hooks. Each hook is thin; the logic lives in
the modules it calls.

pytest imports this module in every run of every project where the plugin is installed, so it imports only
the settings: torch, transformers and filelock, and the model, golden-file and report code too, are imported
inside the fixtures and hooks that need them (benchmarks/bench_import.py measures what is left)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmdet.engines.seeding import prepare_cuda_environment
from pytest_llmdet.hooks.keys import DETERMINISM_KEY, LLM_KEY, SESSION_KEY
from pytest_llmdet.hooks.state import LLMDetSession
from pytest_llmdet.settings import (
    NEAR_TIE_DEFAULT,
    OPTIONS,
    SNAPSHOT_DIR_DEFAULT,
    TOP_K_DEFAULT,
    SettingsError,
    in_ci,
    resolve_settings,
    resolve_snapshot_settings,
)

if TYPE_CHECKING:
    from pytest_llmdet.engines.llm import LLM
    from pytest_llmdet.golden.snapshot import LLMSnapshot

pytest_plugins = ["pytest_llmdet.hooks.determinism"]

WORKER_OUTPUT = "llmdet"
WEIGHTS_CACHE = "llmdet/weights-sha256"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmdet", "language-model regression testing (pytest-llmdet)")
    for option in OPTIONS:
        group.addoption(option.flag, dest=f"llmdet_{option.name}", default=None, metavar="VALUE",
                        help=f"{option.help}; ini: {option.ini}")
        parser.addini(option.ini, option.help, default="")
    group.addoption("--llm-snapshot", action="store_true", default=False,
                    help="compare outputs with the golden files (the CI gate)")
    group.addoption("--llm-snapshot-update", action="store_true", default=False,
                    help="record missing and changed golden snapshots, delete unused ones (implies --llm-snapshot)")
    group.addoption("--llm-snapshot-details", action="store_true", default=False,
                    help="list every snapshot and its outcome in the summary")
    group.addoption("--llm-snapshot-variant", action="store_true", default=False,
                    help="with --llm-snapshot-update: record changed outputs as a variant for this environment "
                         "(device type, dtype, GPU compute capability) instead of overwriting the default")
    group.addoption("--llm-compare", dest="llmdet_compare", default=None, metavar="MODE",
                    help="how snapshots are compared: exact (default) or tolerant (each side's token among the "
                         "other's top-k at the first divergence); ini: llm_compare")
    group.addoption("--llm-top-k", dest="llmdet_top_k", default=None, metavar="K",
                    help=f"candidates per step for --llm-compare tolerant (default {TOP_K_DEFAULT}); ini: llm_top_k")
    group.addoption("--llm-report", dest="llmdet_report", default=None, metavar="PATH",
                    help="write every snapshot and determinism result as JSON to PATH "
                         "(schema: docs/llm-report.schema.json)")
    parser.addini("llm_snapshot_dir", f"folder beside each test module for golden files "
                  f"(default {SNAPSHOT_DIR_DEFAULT})", default="")
    parser.addini("llm_compare", "how snapshots are compared: exact (default) or tolerant", default="")
    parser.addini("llm_top_k", f"candidates per step for tolerant comparison (default {TOP_K_DEFAULT})", default="")
    parser.addini("llm_near_tie", f"a golden margin below this labels a flip near-tie, not regression "
                  f"(default {NEAR_TIE_DEFAULT})", default="")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "llm_model(name, dtype=None, device=None, trust_remote_code=None): the `llm` fixture of this test uses "
        "another model (a hub id or a local directory); each distinct model loads once per session",
    )
    config.addinivalue_line(
        "markers",
        'llm_snapshot(compare="exact" or "tolerant", top_k=N): how this test\'s golden snapshots are compared',
    )
    prepare_cuda_environment()
    try:
        settings = resolve_settings(
            {o.name: config.getoption(f"llmdet_{o.name}") for o in OPTIONS},
            {o.name: str(config.getini(o.ini)) for o in OPTIONS},
            config.inipath,
            config.invocation_params.dir,
        )
        snapshot_settings = resolve_snapshot_settings(
            config.getoption("llm_snapshot"), config.getoption("llm_snapshot_update"),
            config.getoption("llm_snapshot_details"),
            {name: str(config.getini(f"llm_{name}")) for name in ("snapshot_dir", "near_tie", "compare", "top_k")},
            {"compare": config.getoption("llmdet_compare"), "top_k": config.getoption("llmdet_top_k"),
             "variant": config.getoption("llm_snapshot_variant")},
        )
    except SettingsError as error:
        raise pytest.UsageError(str(error)) from None
    session = LLMDetSession(settings, config.rootpath, config.invocation_params.dir, snapshot_settings)
    config.stash[SESSION_KEY] = session


def pytest_report_header(config: pytest.Config) -> list[str]:
    from pytest_llmdet.engines.models import ModelLoadError
    from pytest_llmdet.header import header_lines, snapshot_header_line

    session = config.stash[SESSION_KEY]
    try:
        source = session.default_spec().source
    except ModelLoadError:
        source = None
    s = session.snapshot_settings
    return header_lines(session.settings, source) + [
        snapshot_header_line(s.mode, s.snapshot_dir, s.near_tie, s.compare, s.top_k)]


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if getattr(config, "cache", None) is not None:  # not yet set during our (tryfirst) pytest_configure
        config.stash[SESSION_KEY].weights_cache.update(config.cache.get(WEIGHTS_CACHE, {}))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if config.getoption("llm_snapshot_update") and in_ci() and reporter is not None:
        reporter.write_line(f"llmdet: WARNING: --llm-snapshot-update in CI (CI={os.environ['CI']}): golden files "
                            "will be rewritten here; CI normally checks them with --llm-snapshot",
                            yellow=True, bold=True)


@pytest.fixture
def llm(request: pytest.FixtureRequest) -> LLM:
    """The model under test with forced greedy decoding and fixed seeds; loaded once per session."""
    from pytest_llmdet.engines.models import ModelLoadError

    session = request.config.stash[SESSION_KEY]
    marker = request.node.get_closest_marker("llm_model")
    try:
        if marker is None:
            spec = session.default_spec()
        else:
            spec = session.spec_from_marker(marker.args, marker.kwargs, Path(str(request.node.path)).parent)
        handle = session.llm_for(spec)
        if "llm_snapshot" in request.fixturenames and session.snapshots_on:
            from pytest_llmdet.hooks.snapshots import compare_plan_of

            handle.capture_top_k = compare_plan_of(request).capture_top_k  # top-k costs only when compared
    except (ModelLoadError, SettingsError) as error:
        pytest.fail(f"pytest-llmdet: {error}", pytrace=False)
    request.node.stash[LLM_KEY] = handle
    return handle


@pytest.fixture
def llm_snapshot(request: pytest.FixtureRequest) -> Iterator[LLMSnapshot]:
    """This test's golden snapshot: `assert llm.generate(...) == llm_snapshot`; needs --llm-snapshot."""
    llmdet = request.config.stash[SESSION_KEY]
    if not llmdet.snapshots_on:
        pytest.skip("needs --llm-snapshot")
    from pytest_llmdet.hooks.snapshots import snapshot_fixture

    yield from snapshot_fixture(request, llmdet)


def pytest_assertrepr_compare(config: pytest.Config, op: str, left: Any, right: Any) -> list[str] | None:
    snapshot = sys.modules.get("pytest_llmdet.golden.snapshot")  # not imported yet: no LLMSnapshot exists
    if op != "==" or snapshot is None:
        return None
    for side in (right, left):
        if isinstance(side, snapshot.LLMSnapshot) and side.failure:
            return side.failure
    return None


def pytest_collection_finish(session: pytest.Session) -> None:
    llmdet = session.config.stash[SESSION_KEY]
    if llmdet.snapshots_on:  # otherwise golden files are neither compared nor recorded
        from pytest_llmdet.hooks.snapshots import register_collection

        register_collection(session, llmdet)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    llmdet = config.stash[SESSION_KEY]
    if llmdet.snapshots_on:  # before other plugins and conftests filter (some drop items without deselecting)
        from pytest_llmdet.hooks.snapshots import register_before_filtering

        register_before_filtering(items, llmdet)


def pytest_deselected(items: list[pytest.Item]) -> None:
    llmdet = items[0].config.stash[SESSION_KEY] if items else None
    if llmdet is not None and llmdet.snapshots_on:
        from pytest_llmdet.hooks.snapshots import register_deselected

        register_deselected(items, llmdet)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    llmdet = item.config.stash[SESSION_KEY]
    if llmdet.snapshots_on:  # every test: a test may reach llm_snapshot through request.getfixturevalue
        from pytest_llmdet.hooks.snapshots import take_report

        take_report(item, outcome.get_result(), llmdet)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    llmdet = config.stash[SESSION_KEY]
    if getattr(config, "cache", None) is not None and llmdet.weights_cache:
        config.cache.set(WEIGHTS_CACHE, llmdet.weights_cache)
    stopped = session.shouldstop or session.shouldfail or exitstatus == pytest.ExitCode.INTERRUPTED
    if stopped and llmdet.snapshots_on:
        llmdet.snapshots.partial_reasons.add("the run stopped early")
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller decides and reports
        workeroutput[WORKER_OUTPUT] = llmdet.worker_data()
        return
    if llmdet.snapshots_on:
        from pytest_llmdet.hooks.snapshots import finish_snapshots

        finish_snapshots(llmdet, list(getattr(config, "_llmdet_workers", {}).values()))
    report_path = config.getoption("llmdet_report")
    if report_path:
        _write_json_report(config, llmdet, Path(report_path), session.exitstatus)
    if llmdet.snapshot_errors:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        for line in llmdet.snapshot_errors:
            if reporter is not None:
                reporter.write_line(f"llmdet: ERROR: {line}", red=True, bold=True)
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _write_json_report(config: pytest.Config, llmdet: LLMDetSession, path: Path, exit_status: int) -> None:
    from pytest_llmdet.json_report import build_report, write_report

    run, state = llmdet.snapshots, config.stash.get(DETERMINISM_KEY, None)
    report = build_report(
        mode=llmdet.snapshot_settings.mode, near_tie=llmdet.snapshot_settings.near_tie, exit_status=exit_status,
        counts=run.counts(), outcomes=run.outcomes, unused=run.unused, deleted=run.deleted, foreign=run.foreign,
        verdicts=state.verdicts if state else [], unchecked=state.unchecked if state else 0,
    )
    try:
        write_report(config.invocation_params.dir / path, report)
    except OSError as error:
        run.errors.append(f"could not write the JSON report {path}: {error.strerror or error}")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    config = node.config
    llmdet = config.stash[SESSION_KEY]
    if error is not None and llmdet.snapshots_on:  # its results are lost: what it ran is not known
        llmdet.snapshots.partial_reasons.add("an xdist worker crashed")
    data = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
    if data is not None:
        # keyed by worker: xdist can report a node down twice (a KeyboardInterrupt), which must not count twice
        workers = config.__dict__.setdefault("_llmdet_workers", {})
        workers[getattr(getattr(node, "gateway", None), "id", id(node))] = data


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    llmdet = config.stash[SESSION_KEY]
    data = llmdet.worker_data()
    for worker in list(getattr(config, "_llmdet_workers", {}).values()):
        data["loads"] += worker["loads"]
        data["generations"] = [a + b for a, b in zip(data["generations"], worker["generations"], strict=True)]
    if llmdet.snapshots_on:
        from pytest_llmdet.hooks.snapshots import write_summary

        write_summary(terminalreporter, llmdet)
    if not data["loads"] and not data["generations"][0]:
        return
    from pytest_llmdet.header import summary_lines

    lines = summary_lines(data["loads"], data["generations"])
    if lines:
        terminalreporter.write_sep("=", "llm")
        for line in lines:
            terminalreporter.write_line(line)
