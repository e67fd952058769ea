"""Comparing a generation with its golden snapshot, and the report of how they differ.

Token IDs are the truth; the text is checked too, and so is what the golden records of the input (the prompt,
its tokens, the settings): a changed input fails with its own label. The report names the first diverging
token, both candidates and their margins, and labels the flip a near-tie (either side's margin was tiny: it
may flip on other hardware) or a regression, or input-changed (the outputs came from different inputs).
"""

from __future__ import annotations

import difflib
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_llmdet.divergence import Divergence, divergence_of, first_divergence, format_margin, token_label
from pytest_llmdet.golden.format import GoldenEntry
from pytest_llmdet.golden.inputs import InputChange

PREFIX_CHARS = 60
DIFF_LINES = 12
DIFF_WIDTH = 120  # characters of text per diff line: a long output's lines are wrapped before diffing
INPUT_CHANGED = "input-changed"


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
    input_changes: list[InputChange] = field(default_factory=list)  # recorded inputs the current call differs in

    def with_input_changes(self, changes: list[InputChange]) -> Comparison:
        """This comparison when the inputs differ in `changes`: failed, and a divergence labelled input-changed
        (outputs of different inputs are neither a near-tie nor a regression)."""
        if changes:
            self.input_changes = list(changes)
            self.matched = False
            if self.divergence is not None:
                self.divergence.label = INPUT_CHANGED
        return self


def flip_label(golden_margin: float | None, current_margin: float | None, near_tie: float) -> str:
    """near-tie when either side's margin at the flip is below `near_tie` (that side may flip on other hardware,
    kernels or dtypes), else regression."""
    below = [m for m in (golden_margin, current_margin) if m is not None and m < near_tie]
    return "near-tie" if below else "regression"


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
        else:
            d.label = flip_label(d.reference_margin, d.other_margin, near_tie)
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
        "input_changes": [change.to_data() for change in comparison.input_changes],
    }


def summary_line(summary: dict[str, Any]) -> str:
    """One line for a divergence summary: where, which tokens, which label."""
    d = summary["first_divergence"]
    changes = summary.get("input_changes") or []
    if changes:
        first = InputChange(**changes[0]).line()
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        where = f"; first divergence at token {d['index']}" if d is not None else "; the output tokens are unchanged"
        return f"input changed: {first}{more}{where}"
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


def wrapped_lines(text: str, width: int = DIFF_WIDTH) -> list[str]:
    """The text's lines, each one longer than `width` wrapped at spaces (a word longer than that is cut), so
    that a diff of a long output shows the part that changed, not a line of thousands of characters."""
    lines = []
    for line in text.splitlines():
        lines += textwrap.wrap(line, width, expand_tabs=False, replace_whitespace=False, drop_whitespace=False,
                               break_on_hyphens=False) or [line]
    return lines


def text_diff(golden: str, current: str, limit: int = DIFF_LINES) -> list[str]:
    """A bounded unified diff of the two texts, line by line (long lines wrapped: `wrapped_lines`)."""
    lines = list(difflib.unified_diff(wrapped_lines(golden), wrapped_lines(current), "golden", "current",
                                      lineterm="", n=1))
    if len(lines) > limit:
        lines = lines[:limit] + [f"… ({len(lines) - limit} more diff lines)"]
    return lines


def render_input_changes(changes: list[InputChange], prompt_sources: str | None) -> list[str]:
    """The report's lines for changed inputs: each change, and for changed prompt tokens what may explain them."""
    lines = ["input changed since the golden was recorded (its outputs are not compared as a regression):"]
    for change in changes:
        explained = f" ({prompt_sources})" if change.field == "prompt tokens" and prompt_sources else ""
        lines.append(f"  {change.line()}{explained}")
    return lines


def _flip_reason(d: Divergence, near_tie: float) -> str:
    margins = f"golden margin {format_margin(d.reference_margin)}, current margin {format_margin(d.other_margin)}"
    if d.label == "near-tie":
        return f"near-tie: {margins}; one below llm_near_tie {near_tie}"
    return f"regression: {margins}; both >= llm_near_tie {near_tie}"


def render_comparison(comparison: Comparison, golden: GoldenEntry, current_text: str, current_ids: list[int],
                      decode: Callable[[list[int]], str] | None, near_tie: float,
                      prompt_sources: str | None = None) -> list[str]:
    """The lines of a failure report: changed inputs, the divergence, then the length change, then a bounded
    text diff. `prompt_sources` says what may explain changed prompt tokens (inputs.prompt_token_sources)."""
    lines: list[str] = []
    if comparison.input_changes:
        lines += render_input_changes(comparison.input_changes, prompt_sources)
        if comparison.divergence is None and not comparison.text_changed:
            lines.append("the output tokens are unchanged; an update would record the new input")
    d = comparison.divergence
    show = decode or (lambda ids: "")
    if d is not None:
        total = max(comparison.golden_length, comparison.current_length)
        if d.label in ("near-tie", "regression"):
            why = _flip_reason(d, near_tie)
        elif d.label == INPUT_CHANGED:
            why = "input-changed: the outputs of different inputs, not judged as a near-tie or a regression"
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
