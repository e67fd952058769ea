"""What every renderer reads from the report dict (json_report.build_report) the same way: which snapshots
failed or were tolerated, the tokens at a divergence, the one-line reason of a failure, the factor matrix's
columns. So the job summary, the annotations and the HTML report agree with each other and with the JSON."""

from __future__ import annotations

from typing import Any

from pytest_llmdet.divergence import format_margin
from pytest_llmdet.golden.outcome import DivergenceSummary
from pytest_llmdet.vocabulary import FACTOR_NAMES

FAILED = ("failed", "missing")
Entry = dict[str, Any]


def failed(report: Entry) -> list[Entry]:
    """The changed or missing snapshots, by test and name."""
    return [e for e in report["snapshots"] if e["status"] in FAILED]


def first_divergence(entry: Entry) -> Entry | None:
    divergence = entry.get("divergence")
    return None if divergence is None else divergence.get("first_divergence")


def tolerated(report: Entry) -> list[Entry]:
    """The passed snapshots whose tokens diverged within top-k."""
    return [e for e in report["snapshots"]
            if e["status"] == "passed" and (first_divergence(e) or {}).get("label") == "tolerated"]


def errors(report: Entry) -> list[Entry]:
    """The snapshots whose golden file could not be written."""
    return [e for e in report["snapshots"] if e["status"] == "error"]


def token_at(entry: Entry, side: str) -> Entry | None:
    """The token of `side` (golden or current) at the first divergence, from the entry's token view: {"id",
    "text", "margin", "top_k"} (None: that side ended there, or no view was kept)."""
    view, first = entry.get("tokens"), first_divergence(entry)
    if view is None or first is None:
        return None
    tokens, at = view[side], first["index"] - view["start"]
    return tokens[at] if 0 <= at < len(tokens) else None


def token_text(token_id: int | None, token: Entry | None) -> str:
    """A token as the reports show it: `281 ' a'` (its ID and text), `(end of output)`, or the ID alone."""
    if token_id is None:
        return "(end of output)"
    if token is None or token.get("text") is None:
        return str(token_id)
    return f"{token_id} {token['text']!r}"


def flip(entry: Entry) -> str:
    """`golden → current` at the first divergence, e.g. `270 ' the' → 281 ' a'` (empty: no divergence)."""
    first = first_divergence(entry)
    if first is None:
        return ""
    return (f"{token_text(first['golden_token'], token_at(entry, 'golden'))} → "
            f"{token_text(first['current_token'], token_at(entry, 'current'))}")


def margins(entry: Entry) -> str:
    """`0.0157 / 0.1190`: the golden and current margins at the first divergence (empty: no divergence)."""
    first = first_divergence(entry)
    if first is None:
        return ""
    return f"{format_margin(first['golden_margin'])} / {format_margin(first['current_margin'])}"


def label(entry: Entry) -> str:
    """What the failure is: the divergence's label, or missing, text changed, input changed, an error."""
    first = first_divergence(entry)
    if entry["status"] == "missing":
        return "missing"
    if first is not None:
        return first["label"]
    divergence = entry.get("divergence")
    if divergence and divergence.get("input_changes"):
        return "input-changed"
    if entry.get("error"):
        return "unreadable golden file" if entry["status"] == "failed" else "not written"
    return "text changed"


def reason(entry: Entry) -> str:
    """The one-line reason of a failed snapshot, as an annotation gives it."""
    name, file = entry["name"], entry["file"]
    if entry["status"] == "missing":
        return f"snapshot {name!r} is missing from {file}"
    if entry.get("error") and entry.get("divergence") is None:
        return entry["error"].splitlines()[0]
    divergence = entry.get("divergence")
    line = DivergenceSummary.from_data(divergence).line() if divergence else "text differs"
    text = flip(entry)
    if text:
        line += f"; {text}, margins {margins(entry)}"
    return f"output differs from snapshot {name!r} in {file}: {line}"


def variant(entry: Entry) -> str:
    return entry.get("variant") or "default"


def determinism_line(report: Entry) -> str:
    """`3 checked, 2 deterministic, 1 nondeterministic` (and the dtype-sensitive and not-checked counts, when
    any), as the `llm determinism` section counts."""
    verdicts = report["determinism"]
    statuses = [v["status"] for v in verdicts]
    line = (f"{len(verdicts)} checked, {statuses.count('deterministic')} deterministic, "
            f"{statuses.count('nondeterministic')} nondeterministic")
    if statuses.count("sensitive"):
        line += f", {statuses.count('sensitive')} dtype-sensitive"
    if report.get("determinism_unchecked"):
        line += f"; {report['determinism_unchecked']} not checked"
    return line


def factor_columns(report: Entry) -> list[str]:
    """The factors of the matrix, in its order (empty: no test was checked under a factor)."""
    asked = {name for verdict in report["determinism"] for name in verdict.get("factors") or {}}
    return [name.value for name in FACTOR_NAMES if name.value in asked]


def factor_rows(report: Entry) -> list[Entry]:
    """The verdicts with factors: those with a diverged cell first, then by test."""
    rows = [v for v in report["determinism"] if v.get("factors")]
    return sorted(rows, key=lambda v: (not any(c["status"] == "diverged" for c in v["factors"].values()), v["test"]))


__all__ = ["FAILED", "determinism_line", "errors", "factor_columns", "factor_rows", "failed", "first_divergence",
           "flip", "label", "margins", "reason", "token_at", "token_text", "tolerated", "variant"]
