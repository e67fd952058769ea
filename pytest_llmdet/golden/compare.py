"""Comparing a generation with its golden snapshot, and the report of how they differ.

Token IDs are the truth; the text is checked too. The report names the first diverging token, both
candidates and their margins, and labels the flip a near-tie (the golden margin was tiny: it may flip on
other hardware) or a regression.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_llmdet.divergence import Divergence, divergence_of, first_divergence, format_margin, token_label
from pytest_llmdet.golden.format import GoldenEntry

PREFIX_CHARS = 60
DIFF_LINES = 12


@dataclass
class Comparison:
    """The outcome of one snapshot comparison."""

    matched: bool
    divergence: Divergence | None = None
    text_changed: bool = False
    golden_length: int = 0
    current_length: int = 0
    golden_finish: str | None = None
    current_finish: str | None = None
    notes: list[str] = field(default_factory=list)
    checked: str | None = None  # a tolerant comparison: what exactly it checked, in words


def compare_tokens(golden: GoldenEntry, token_ids: list[int], margins: list[float], text: str,
                   finish_reason: str | None, near_tie: float) -> Comparison:
    """Compare a generation with a golden entry that has token IDs."""
    assert golden.token_ids is not None
    index = first_divergence(golden.token_ids, token_ids)
    result = Comparison(matched=index is None and text == golden.text, text_changed=text != golden.text,
                        golden_length=len(golden.token_ids), current_length=len(token_ids),
                        golden_finish=golden.finish_reason, current_finish=finish_reason)
    d = divergence_of(golden.token_ids, token_ids, golden.margins, margins)
    if d is not None:
        if d.reference_token is None or d.other_token is None:
            d.label = "length"
        elif d.reference_margin is not None and d.reference_margin < near_tie:
            d.label = "near-tie"
        else:
            d.label = "regression"
        result.divergence = d
    elif result.text_changed:
        result.notes.append("token IDs match but the decoded text differs: the tokenizer's decoding changed")
    return result


def smallest_margin(margins: list[float | None] | None) -> tuple[int, float] | None:
    """The position and value of the smallest finite margin (the step most likely to flip), or None."""
    finite = [(m, i) for i, m in enumerate(margins or []) if m is not None and math.isfinite(m)]
    if not finite:
        return None
    margin, index = min(finite)
    return index, margin


def divergence_summary(comparison: Comparison) -> dict[str, Any]:
    """The comparison as plain data (for the JSON report and JUnit properties)."""
    d = comparison.divergence
    return {
        "matched": comparison.matched,
        "first_divergence": None if d is None else {
            "index": d.index, "golden_token": d.reference_token, "current_token": d.other_token,
            "golden_margin": _finite(d.reference_margin), "current_margin": _finite(d.other_margin),
            "label": d.label,
        },
        "golden_length": comparison.golden_length, "current_length": comparison.current_length,
        "golden_finish": comparison.golden_finish, "current_finish": comparison.current_finish,
        "text_changed": comparison.text_changed,
        "notes": list(comparison.notes),
        "checked": comparison.checked,
    }


def summary_line(summary: dict[str, Any]) -> str:
    """One line for a divergence summary: where, which tokens, which label."""
    d = summary["first_divergence"]
    if d is None:
        if summary["golden_length"] != summary["current_length"]:
            return f"length: golden {summary['golden_length']} tokens, current {summary['current_length']}"
        return "text differs" if summary["text_changed"] else "identical"
    return (f"first divergence at token {d['index']} ({d['label']}): golden {d['golden_token']}, "
            f"current {d['current_token']}; lengths {summary['golden_length']}/{summary['current_length']}")


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 4)


def compare_text(golden: GoldenEntry, text: str) -> Comparison:
    """Compare text only (a plain string snapshot)."""
    return Comparison(matched=golden.text == text, text_changed=golden.text != text)


def _shorten_left(text: str, limit: int = PREFIX_CHARS) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]


def text_diff(golden: str, current: str, limit: int = DIFF_LINES) -> list[str]:
    """A bounded unified diff of the two texts, line by line."""
    lines = list(difflib.unified_diff(golden.splitlines(), current.splitlines(), "golden", "current",
                                      lineterm="", n=1))
    if len(lines) > limit:
        lines = lines[:limit] + [f"… ({len(lines) - limit} more diff lines)"]
    return lines


def render_comparison(comparison: Comparison, golden: GoldenEntry, current_text: str, current_ids: list[int],
                      decode: Callable[[list[int]], str] | None, near_tie: float) -> list[str]:
    """The lines of a failure report: the divergence, then the length change, then a bounded text diff."""
    lines: list[str] = []
    d = comparison.divergence
    show = decode or (lambda ids: "")
    if d is not None:
        total = max(comparison.golden_length, comparison.current_length)
        if d.label == "near-tie":
            why = f"near-tie: golden margin {format_margin(d.reference_margin)} < llm_near_tie {near_tie}"
        elif d.label == "regression":
            why = f"regression: golden margin {format_margin(d.reference_margin)} >= llm_near_tie {near_tie}"
        elif d.label == "outside-top-k":
            why = "outside top-k: a token is not among the other side's best candidates"
        elif d.label == "no-top-k" and golden.top_k_ids is None:
            why = ("cannot be judged tolerantly: the golden snapshot has no top-k candidates, it was recorded "
                   "without --llm-compare tolerant")
        elif d.label == "no-top-k":
            why = "cannot be judged tolerantly: the current generation recorded no top-k candidates"
        elif d.label == "eos":
            why = "eos: one output ends (EOS) where the other goes on"
        elif d.label == "tolerated":
            why = "tolerated: each token is among the other side's top-k"
        else:
            why = "length: one output stops where the other goes on"
        lines.append(f"first divergence at token {d.index} of {total} ({why})")
        prefix = show(current_ids[: d.index]) if decode else ""
        lines.append(f"matched prefix: {_shorten_left(prefix)!r}" if decode else f"matched tokens: {d.index}")
        for side, token, margin in (("golden ", d.reference_token, d.reference_margin),
                                    ("current", d.other_token, d.other_margin)):
            margin_text = "" if token is None else f"  margin {format_margin(margin)}"
            lines.append(f"  {side}: {token_label(token, show)}{margin_text}")
    if comparison.checked:
        lines.append(comparison.checked)
    for note in comparison.notes:
        lines.append(note)
    if comparison.golden_length != comparison.current_length or comparison.golden_finish != comparison.current_finish:
        change = ""
        if comparison.current_length < comparison.golden_length:
            change = ": early EOS" if comparison.current_finish == "eos" else ": shorter"
        elif comparison.current_length > comparison.golden_length:
            change = ": late EOS" if comparison.golden_finish == "eos" else ": longer"
        lines.append(f"length: golden {comparison.golden_length} tokens ({comparison.golden_finish}), "
                     f"current {comparison.current_length} tokens ({comparison.current_finish}){change}")
    if comparison.text_changed:
        lines.append("text diff:")
        lines.extend("  " + line for line in text_diff(golden.text, current_text))
    return lines
