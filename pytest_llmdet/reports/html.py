"""`--llm-report-html PATH`: one self-contained HTML page of a run (inline style and script, a content security
policy that forbids any network access): the counts, a card per failed or tolerated snapshot (html_tokens.py),
the determinism verdicts and the factor matrix, pending, unused, deleted and foreign files, the commands to run,
and every snapshot in a collapsed table. Bounded for large suites: past DETAIL_LIMIT cards the failures are
table rows, and every table stops at TABLE_LIMIT rows with a count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytest_llmdet.golden.summary import count_line
from pytest_llmdet.reports import data
from pytest_llmdet.reports.html_assets import CSS, JS
from pytest_llmdet.reports.html_tokens import card, esc

DETAIL_LIMIT = 100  # snapshot cards with their tokens; the failures after them are table rows
OPEN_LIMIT = 20  # cards open when the page loads
TABLE_LIMIT = 2000  # rows of any table or list
Entry = dict[str, Any]
_POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], limit: int = TABLE_LIMIT) -> str:
    """A table of escaped cells, at most `limit` rows, then a count of those left out."""
    head = "".join(f"<th scope=\"col\">{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows[:limit])
    more = f'<p class="muted">… and {len(rows) - limit} more</p>' if len(rows) > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def listing(paths: Sequence[str], limit: int = TABLE_LIMIT) -> str:
    items = "".join(f"<li><code>{esc(p)}</code></li>" for p in paths[:limit])
    more = f"<li>… and {len(paths) - limit} more</li>" if len(paths) > limit else ""
    return f"<ul>{items}{more}</ul>"


def _legend(near_tie: float) -> str:
    samples = ((f"fragile: margin < {near_tie}", "same m0"), ("< 0.1", "same m1"), ("< 0.5", "same m2"),
               ("< 2", "same m3"), ("≥ 2", "same m4"), ("no margin", "same mn"), ("diverges", "div m4"),
               ("after it", "after m4"))
    chips = "".join(f'<span class="tok {classes}">{esc(text)}</span>' for text, classes in samples)
    return (f'<details class="legend"><summary>How to read the tokens</summary><div class="toks">{chips}</div>'
            "<p>Each token is shaded by its margin (top-1 minus top-2 log-probability): the smaller, the darker. "
            f"A margin below llm_near_tie {esc(near_tie)} is fragile (marked !, dotted underline): it may flip on "
            "other hardware. The first diverging token is outlined, bold, wavy-underlined and marked ▶; tokens "
            "after it have dashed borders. Hover over or click a token for its ID, margin and top-k candidates "
            "(recorded by a tolerant comparison only).</p></details>")


def _cards(title: str, entries: list[Entry], near_tie: float) -> str:
    if not entries:
        return ""
    shown = entries[:DETAIL_LIMIT]
    parts = [f"<h2>{esc(title)} ({len(entries)})</h2>"]
    parts += [card(e, near_tie, open_=i < OPEN_LIMIT) for i, e in enumerate(shown)]
    rest = entries[DETAIL_LIMIT:]
    if rest:
        parts.append(f"<h3>{len(rest)} more, without their tokens</h3>")
        parts.append(table(("test", "snapshot", "label", "first divergence", "golden → current"),
                           [(e["test"], e["name"], data.label(e), "" if data.first_divergence(e) is None
                             else data.first_divergence(e)["index"], data.flip(e)) for e in rest]))
    return "".join(parts)


def _determinism(report: Entry) -> str:
    verdicts = report["determinism"]
    if not verdicts and not report.get("determinism_unchecked"):
        return ""
    rows = [(v["test"], v["status"], v["runs"], v["kind"] or "", "" if v["position"] is None else v["position"],
             v["detail"] or "") for v in verdicts]
    parts = ["<h2>Determinism</h2>", f"<p>{esc(data.determinism_line(report))}</p>",
             table(("test", "status", "runs", "what changed", "first diverging token", "detail"), rows)]
    columns = data.factor_columns(report)
    if columns:
        parts.append("<h3>Factor matrix</h3><p class=\"muted\">=: same tokens, N: the first diverging token, "
                     "n/a: not applicable, -: not asked for; hover over a cell for its margins or reason.</p>")
        parts.append(_matrix(data.factor_rows(report), columns))
    return "".join(parts)


def _matrix(rows: list[Entry], columns: list[str]) -> str:
    head = "".join(f'<th scope="col">{esc(c)}</th>' for c in ["test", *columns])
    body = []
    for verdict in rows[:TABLE_LIMIT]:
        cells = []
        for column in columns:
            cell = verdict["factors"].get(column)
            if cell is None:
                cells.append("<td>-</td>")
                continue
            hint = cell["reason"] or (f"{cell['reference'] or ''} → {cell['changed'] or ''}; margins "
                                      f"{cell['reference_margin']} / {cell['changed_margin']}"
                                      if cell["status"] == "diverged" else "same tokens")
            mark = "<strong>{}</strong> ✗" if cell["status"] == "diverged" else "{}"
            cells.append(f'<td title="{esc(hint)}">{mark.format(esc(cell["cell"]))}</td>')
        body.append(f"<tr><th scope=\"row\">{esc(verdict['test'])}</th>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_FILES = (("pending", "Pending files"), ("unused", "Unused golden files or snapshots"), ("deleted", "Deleted"),
          ("foreign", "Other files in snapshot folders (never deleted)"))


def _files(report: Entry) -> str:
    return "".join(f"<h2>{esc(title)} ({len(report[key])})</h2>{listing(report[key])}"
                   for key, title in _FILES if report.get(key))


def _commands(report: Entry) -> str:
    parts = []
    if report.get("rerecord_command"):
        parts.append(f"<p>If the change is intended, re-record with:</p><pre>{esc(report['rerecord_command'])}</pre>")
    if report.get("review_command"):
        parts.append(f"<p>Accept or reject the pending files one by one with:</p>"
                     f"<pre>{esc(report['review_command'])}</pre>")
    return "<h2>Commands</h2>" + "".join(parts) if parts else ""


def _snapshots(report: Entry) -> str:
    rows = [(e["test"], e["name"], e["status"], data.label(e) if e["status"] != "passed" else "", e["file"])
            for e in report["snapshots"]]
    others = [(n["test"], n["name"], "not compared", "", n["file"]) for n in report.get("not_compared") or []]
    if not rows and not others:
        return ""
    return (f"<details><summary><h2 style=\"display:inline\">Every snapshot ({len(rows) + len(others)})</h2>"
            f"</summary>{table(('test', 'snapshot', 'status', 'label', 'golden file'), rows + others)}</details>")


def report_html(report: Entry) -> str:
    """The whole page of a run's report."""
    near_tie = report["near_tie"]
    heading = (f'<p class="muted">pytest-llmdet {esc(report["pytest_llmdet"])} · snapshot mode '
               f'{esc(report["snapshot_mode"])} · exit status {esc(report["exit_status"])} · llm_near_tie '
               f"{esc(near_tie)}</p>")
    counts = f"<p><strong>llm snapshots:</strong> {esc(count_line(report['summary']))}</p>" \
        if report["snapshot_mode"] != "off" else ""
    controls = ('<p class="controls"><button type="button" id="llmdet-expand">expand all</button>'
                '<button type="button" id="llmdet-collapse">collapse all</button></p>')
    body = "".join([
        "<h1>pytest-llmdet report</h1>", heading, counts, _legend(near_tie), controls,
        _cards("Failed snapshots", data.failed(report), near_tie),
        _cards("Tolerated snapshots", data.tolerated(report), near_tie),
        _other_tables(report), _determinism(report), _files(report), _commands(report), _snapshots(report),
    ])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>pytest-llmdet report</title><style>{CSS}</style></head>"
            f'<body><main class="llmdet">{body}</main><script>{JS}</script></body></html>\n')


def _other_tables(report: Entry) -> str:
    parts = []
    errors = data.errors(report)
    if errors:
        parts.append(f"<h2>Not written ({len(errors)})</h2>" + table(
            ("test", "snapshot", "error"), [(e["test"], e["name"], e.get("error") or "") for e in errors]))
    not_compared = report.get("not_compared") or []
    if not_compared:
        parts.append(f"<h2>Not compared ({len(not_compared)})</h2><p>Snapshots of a golden file that its test "
                     "failed before comparing.</p>" + table(("test", "snapshot", "golden file"),
                                                           [(n["test"], n["name"], n["file"]) for n in not_compared]))
    return "".join(parts)


__all__ = ["DETAIL_LIMIT", "OPEN_LIMIT", "TABLE_LIMIT", "report_html"]
