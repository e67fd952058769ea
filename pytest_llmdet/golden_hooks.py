"""What the plugin's hooks and the `llm_snapshot` fixture do for golden files, when a run compares or records
them (--llm-snapshot, --llm-snapshot-update): register the collected tests, run one test's snapshots, take each
test's outcome, finish the run (unused snapshots, the JSON report) and write the `llm snapshots` summary.

plugin.py holds the hooks themselves and imports this module only when it has golden-file work to do, so a run
without snapshots pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmdet.golden_format import GoldenFileError
from pytest_llmdet.json_report import junit_properties
from pytest_llmdet.plugin import LLM_KEY, PASSIVE_SNAPSHOTS_KEY, SNAPSHOTS_KEY, compare_plan_of, in_ci
from pytest_llmdet.report import fragile_lines, snapshot_summary_lines
from pytest_llmdet.session import LLMDetSession
from pytest_llmdet.settings import SettingsError
from pytest_llmdet.snapshot import LLMSnapshot


def register_collection(session: pytest.Session, llmdet: LLMDetSession) -> None:
    """Record which tests use snapshots and which module folders were collected, and why the run is partial
    (a partial update deletes no unused snapshot)."""
    for item in session.items:
        path = getattr(item, "path", None)
        if path is not None and path.suffix == ".py":
            llmdet.register_collected(item.nodeid, path, "llm_snapshot" in getattr(item, "fixturenames", ()))
    option = session.config.option
    reasons = llmdet.snapshots.partial_reasons
    if getattr(option, "keyword", ""):
        reasons.add("-k")
    if getattr(option, "markexpr", ""):
        reasons.add("-m")
    if getattr(option, "lf", False) or getattr(option, "failedfirst", False):
        reasons.add("--lf/--ff")
    if getattr(option, "stepwise", False):
        reasons.add("--stepwise")
    if any("::" in arg for arg in session.config.args):
        reasons.add("node ids on the command line")
    if session.testsfailed:  # at this point only collection errors count here
        reasons.add("collection errors")


def snapshot_fixture(request: pytest.FixtureRequest, llmdet: LLMDetSession) -> Iterator[LLMSnapshot]:
    """The body of the `llm_snapshot` fixture: compare (or record) during the test, write after it."""
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
        llmdet.snapshots.set_outcome(node.nodeid, "passed", used=snapshots.used)
    failure = None
    try:
        snapshots.write(drop_unused=llmdet.snapshots.prunes_now(node.nodeid))
    except (OSError, GoldenFileError) as error:
        failure = snapshots.write_error(error)
    note = snapshots.settle_pending(ci=in_ci())
    if note is not None:
        node.add_report_section("teardown", "llm snapshot", note)
    if failure is not None:  # failed outside the except block: one message, not a chain of two
        pytest.fail(failure, pytrace=False)


def take_report(item: pytest.Item, report: pytest.TestReport, llmdet: LLMDetSession) -> None:
    """Attach a snapshot test's full comparison report and JUnit properties, and record its outcome."""
    test_snapshots = item.stash.get(SNAPSHOTS_KEY, None)
    if report.when == "call" and test_snapshots is not None and test_snapshots.reports:
        report.sections.append(("llm snapshot", "\n\n".join(test_snapshots.reports)))
    if report.when == "call" and test_snapshots is not None and test_snapshots.outcomes:
        properties = junit_properties(test_snapshots.outcomes)
        item.user_properties.extend(properties)  # JUnit XML reads them from the teardown report, made later
        report.user_properties.extend(properties)
    snapshots = llmdet.snapshots
    if report.skipped:
        snapshots.set_outcome(item.nodeid, "skipped")
        snapshots.partial_reasons.add("skipped tests")
    elif report.failed:
        snapshots.set_outcome(item.nodeid, "failed")


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


def _compared_with(details: dict[str, Any]) -> str:
    return f"  (compared with {details['compared_with']})" if details.get("compared_with") else ""


def write_summary(terminalreporter: Any, llmdet: LLMDetSession) -> None:
    """The `llm snapshots` section of the terminal summary, when any snapshot or golden file was seen."""
    s, run = llmdet.snapshot_settings, llmdet.snapshots
    if not (run.tests or run.outcomes or run.unused or run.deleted):
        return
    details = sorted((o.status, o.nodeid, o.name, o.file + _compared_with(o.details)) for o in run.outcomes) \
        if s.details else None
    terminalreporter.write_sep("=", "llm snapshots")
    for line in snapshot_summary_lines(run.counts(), run.failed_tests(), sorted(run.partial_reasons),
                                       run.unused, run.deleted, s.mode == "update", details):
        terminalreporter.write_line(line)
    fragile = [(o.nodeid, o.name, o.details["fragile"]["position"], o.details["fragile"]["margin"], o.file)
               for o in run.fragile()]
    for line in fragile_lines(fragile, s.near_tie):
        terminalreporter.write_line(line)
