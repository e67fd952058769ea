"""What CI shows of a run, pytest side. At the end of the run, on the controller only (plugin.py calls `publish`):
one report dict (json_report.build_report) written as the JSON report (--llm-report), the HTML report
(--llm-report-html), the Markdown job summary (--llm-summary-md, else the file GITHUB_STEP_SUMMARY names: appended
to, never truncated, since the job's steps share it), and under GitHub Actions an `::error` annotation per failed
snapshot. During the run: each failed or tolerated snapshot's card as a pytest-html extra, when pytest-html is
active (nothing changes without it). The rendering is in reports/."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pytest_llmdet.golden.ledger import SnapshotRun
from pytest_llmdet.golden.outcome import SnapshotOutcome
from pytest_llmdet.golden.store import replace_atomically
from pytest_llmdet.golden.summary import rerecord_commands, review_command
from pytest_llmdet.hooks import ANNOTATIONS_KEY, DETERMINISM_KEY, SESSION_KEY
from pytest_llmdet.json_report import build_report, snapshot_entry, write_report
from pytest_llmdet.reports.annotations import annotation_lines
from pytest_llmdet.reports.data import FAILED
from pytest_llmdet.reports.html import report_html
from pytest_llmdet.reports.html_tokens import fragment
from pytest_llmdet.reports.markdown import summary_markdown


def _github_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def report_of(config: pytest.Config, snapshots: Any, exit_status: int) -> dict[str, Any]:
    """The run's report: every snapshot outcome and determinism verdict, and the commands the summary prints."""
    run = snapshots.run if snapshots is not None else SnapshotRun()
    settings = config.stash[SESSION_KEY].snapshot_settings
    state = config.stash.get(DETERMINISM_KEY, None)
    failed = run.failed_outcomes()
    return build_report(
        mode=settings.mode, near_tie=settings.near_tie, exit_status=exit_status,
        counts=run.counts(), outcomes=run.outcomes, unused=run.unused, deleted=run.deleted, foreign=run.foreign,
        not_compared=run.not_compared, pending=run.pending,
        verdicts=state.verdicts if state else [], unchecked=state.unchecked if state else 0,
        rerecord_command=rerecord_commands(failed, snapshots.command.paths) if failed else None,
        review_command=review_command(run.pending) if run.pending else None,
    )


def _used(config: pytest.Config, snapshots: Any) -> bool:
    # A run that compared no snapshot and checked no test adds no job summary (the plugin is in every run)
    state = config.stash.get(DETERMINISM_KEY, None)
    run = snapshots.run if snapshots is not None else None
    return bool((state is not None and (state.verdicts or state.unchecked))
                or (run is not None and (run.outcomes or run.unused or run.deleted or run.not_compared
                                         or any(r.declared or r.fixture for r in run.collection.tests.values()))))


def publish(config: pytest.Config, snapshots: Any, exit_status: int) -> list[str]:
    """Write every output asked for; returns the errors (a file that could not be written)."""
    report, errors = report_of(config, snapshots, exit_status), []
    where = config.invocation_params.dir
    html_path = config.getoption("llmdet_report_html")
    outputs = [(config.getoption("llmdet_report"), "JSON report", lambda p: write_report(p, report)),
               (html_path, "HTML report", lambda p: _write(p, report_html(report)))]
    summary = config.getoption("llmdet_summary_md") or (os.environ.get("GITHUB_STEP_SUMMARY")
                                                         if _used(config, snapshots) else None)
    outputs.append((summary, "Markdown summary", lambda p: _append(p, summary_markdown(report, html_path))))
    for path, what, write in outputs:
        if not path:
            continue
        try:
            write(where / path)
        except OSError as error:
            errors.append(f"could not write the {what} {path}: {error.strerror or error}")
    if _github_actions():  # printed with the llm snapshots section (SnapshotPlugin.pytest_terminal_summary)
        config.stash[ANNOTATIONS_KEY] = annotation_lines(report, lambda file: _from_workspace(where / file, where))
    return errors


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, text.encode("utf-8"))


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(text)


def _from_workspace(path: Path, invocation_dir: Path) -> str:
    """A path as an annotation names it: relative to the repository's checkout (GITHUB_WORKSPACE), else to where
    pytest was started (GitHub's steps start in the checkout)."""
    workspace = os.environ.get("GITHUB_WORKSPACE")
    resolved = Path(os.path.abspath(path))
    base = Path(os.path.abspath(workspace or invocation_dir))
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else resolved.as_posix()


def add_html_extras(report: pytest.TestReport, outcomes: list[SnapshotOutcome], near_tie: float) -> None:
    """Each failed or tolerated snapshot's card as a pytest-html extra of the test's report (called only where
    pytest-html writes a report: --html PATH)."""
    shown = [o for o in outcomes if o.status in FAILED or o.tolerated_at is not None]
    if not shown:
        return
    from pytest_html import extras

    report.extras = list(getattr(report, "extras", [])) + [
        extras.html(fragment(snapshot_entry(o), near_tie)) for o in shown]


__all__ = ["add_html_extras", "publish", "report_of"]
