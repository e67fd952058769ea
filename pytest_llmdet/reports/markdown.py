"""The GitHub Actions job summary (GITHUB_STEP_SUMMARY, or --llm-summary-md PATH) as Markdown: the counts line,
a table of failed snapshots, the tolerated and not-compared ones, unused and pending files, the factor matrix,
and the commands to run. Every table and list is bounded: past ROW_LIMIT rows, a count and a pointer to the
HTML report. Every value is escaped (a token is any string a model wrote)."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

from pytest_llmdet.golden.summary import count_line
from pytest_llmdet.reports import data

ROW_LIMIT = 50
_SPECIAL = re.compile(r"([\\`*_\[\]|~#])")
Entry = dict[str, Any]


def cell(value: Any) -> str:
    """Any value as Markdown text that renders as itself: HTML and Markdown syntax escaped, one line."""
    text = html.escape(str(value), quote=False)
    return _SPECIAL.sub(r"\\\1", text).replace("\r", " ").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], more: str) -> list[str]:
    """A GitHub table of at most ROW_LIMIT rows, then `more` with the count left out."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows[:ROW_LIMIT]]
    if len(rows) > ROW_LIMIT:
        lines += ["", f"… and {len(rows) - ROW_LIMIT} more: {more}"]
    return lines + [""]


def listing(paths: Sequence[str], more: str) -> list[str]:
    lines = [f"- {cell(path)}" for path in paths[:ROW_LIMIT]]
    if len(paths) > ROW_LIMIT:
        lines.append(f"- … and {len(paths) - ROW_LIMIT} more: {more}")
    return lines + [""]


def _fence(command: str) -> list[str]:
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", command)), default=0) + 1)
    return [f"{fence}shell", command, fence, ""]


def _snapshot_sections(report: Entry, more: str) -> list[str]:
    lines = []
    failed = data.failed(report)
    if failed:
        lines += [f"### Failed snapshots ({len(failed)})", ""]
        lines += table(("test", "snapshot", "first divergence", "golden → current", "margins golden / current",
                        "label", "variant"),
                       [(e["test"], e["name"], "" if data.first_divergence(e) is None else
                         data.first_divergence(e)["index"], data.flip(e), data.margins(e), data.label(e),
                         data.variant(e)) for e in failed], more)
    tolerated = data.tolerated(report)
    if tolerated:
        lines += [f"### Tolerated snapshots ({len(tolerated)})", "",
                  "Passed: the tokens diverged, each side's token among the other side's top-k.", ""]
        lines += table(("test", "snapshot", "first divergence", "golden → current", "margins golden / current"),
                       [(e["test"], e["name"], data.first_divergence(e)["index"], data.flip(e), data.margins(e))
                        for e in tolerated], more)
    if report.get("not_compared"):
        lines += [f"### Not compared ({len(report['not_compared'])})", "",
                  "Snapshots of a golden file that its test failed before comparing.", ""]
        lines += table(("test", "snapshot", "golden file"),
                       [(n["test"], n["name"], n["file"]) for n in report["not_compared"]], more)
    errors = data.errors(report)
    if errors:
        lines += [f"### Not written ({len(errors)})", ""]
        lines += table(("test", "snapshot", "error"),
                       [(e["test"], e["name"], (e.get("error") or "").splitlines()[0]) for e in errors], more)
    return lines


_FILES = (("pending", "Pending files", "the new outputs kept for review"),
          ("unused", "Unused golden files or snapshots", "no test asked for them"),
          ("deleted", "Deleted", "unused snapshots this update deleted"),
          ("foreign", "Other files in snapshot folders", "not golden files of this suite, never deleted"))


def _file_sections(report: Entry, more: str) -> list[str]:
    lines = []
    for key, title, what in _FILES:
        paths = report.get(key) or []
        if paths:
            lines += [f"### {title} ({len(paths)})", "", f"{what[0].upper()}{what[1:]}.", ""]
            lines += listing(paths, more)
    return lines


def _determinism_sections(report: Entry, more: str) -> list[str]:
    verdicts = report["determinism"]
    if not verdicts and not report.get("determinism_unchecked"):
        return []
    bad = [v for v in verdicts if v["status"] != "deterministic"]
    lines = ["### Determinism", "", cell(data.determinism_line(report)), ""]
    if bad:
        lines += table(("test", "status", "what changed", "first diverging token", "detail"),
                       [(v["test"], v["status"], v["kind"] or "", "" if v["position"] is None else v["position"],
                         v["detail"] or "") for v in bad], more)
    columns = data.factor_columns(report)
    if columns:
        lines += ["#### Factor matrix", "",
                  "`=`: same tokens, N: the first diverging token, n/a: not applicable, -: not asked for.", ""]
        lines += table(("test", *columns), [(v["test"], *(v["factors"][c]["cell"] if c in v["factors"] else "-"
                                                        for c in columns)) for v in data.factor_rows(report)], more)
    return lines


def summary_markdown(report: Entry, html_report: str | None = None) -> str:
    """The job summary of a run's report; `html_report`: the HTML report's path, which the bounded tables point
    to. Ends with a blank line, so that what another step appends starts a block of its own."""
    more = f"see the HTML report {cell(html_report)}" if html_report else \
        "every row is in the HTML report (--llm-report-html PATH)"
    lines = ["## pytest-llmdet", ""]
    if report["snapshot_mode"] != "off":
        lines += [f"**llm snapshots** ({cell(report['snapshot_mode'])}): {cell(count_line(report['summary']))}", ""]
    lines += _snapshot_sections(report, more)
    lines += _file_sections(report, more)
    lines += _determinism_sections(report, more)
    if report.get("rerecord_command"):
        lines += ["If the change is intended, re-record with:", ""] + _fence(report["rerecord_command"])
    if report.get("review_command"):
        lines += ["Accept or reject the pending files one by one with:", ""] + _fence(report["review_command"])
    if html_report:
        lines += [f"The token-level report: {cell(html_report)}.", ""]
    return "\n".join(lines) + "\n"


__all__ = ["ROW_LIMIT", "cell", "summary_markdown"]
