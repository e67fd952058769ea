"""The failure report of a snapshot, for a person: built once from the comparison, as lines each marked essential
or not. The assertion message pytest shows keeps the essential ones (it cuts long messages short outside CI);
the test report's section `llm snapshot` and the pending file keep them all. No renderer edits another's text.
"""

from __future__ import annotations

import difflib
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pytest_llmdet.divergence import Divergence, format_margin, token_label
from pytest_llmdet.golden.compare import Comparison
from pytest_llmdet.golden.format import GoldenEntry
from pytest_llmdet.golden.inputs import InputChange
from pytest_llmdet.vocabulary import Label

PREFIX_CHARS = 60
DIFF_LINES = 12
DIFF_WIDTH = 120  # characters of text per diff line: a long output's lines are wrapped before diffing
COMPACT_LINES = 7  # of the assertion message: pytest truncates explanations past 8 lines outside CI
Decoder = Callable[[list[int]], str]


@dataclass
class Report:
    """A report as lines; an essential line goes into the assertion message too."""

    lines: list[tuple[str, bool]] = field(default_factory=list)

    def add(self, text: str, essential: bool = True) -> None:
        self.lines.append((text, essential))

    def extend(self, texts: Iterable[str], essential: bool = True) -> None:
        self.lines.extend((text, essential) for text in texts)

    def join(self, other: Report) -> None:
        self.lines.extend(other.lines)

    def full(self) -> list[str]:
        return [text for text, _ in self.lines]

    def compact(self, limit: int = COMPACT_LINES) -> list[str]:
        """The essential lines, at most `limit` of them: the first ones and the last (the re-record command)."""
        essential = [text for text, keep in self.lines if keep]
        return essential if len(essential) <= limit else essential[: limit - 1] + essential[-1:]


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


def top_k_lines(golden: GoldenEntry, top_k_ids: list[list[int]] | None, top_k_logprobs: list[list[float]] | None,
                index: int, top_k: int, decode: Decoder | None) -> list[str]:
    """The candidates of both sides at the divergence, for the failure report of a tolerant comparison."""
    show = decode or (lambda ids: "")
    lines = []
    for side, ids, logprobs in (("golden ", golden.top_k_ids, golden.top_k_logprobs),
                                ("current", top_k_ids, top_k_logprobs)):
        if ids is None or index >= len(ids):
            continue
        values = (logprobs[index] if logprobs is not None and index < len(logprobs) else [None] * len(ids[index]))
        candidates = ", ".join(f"{t} {show([t])!r} {'n/a' if v is None else f'{v:.3f}'}"
                               for t, v in zip(ids[index][:top_k], values[:top_k], strict=False))
        lines.append(f"    top-{min(top_k, len(ids[index]))} {side}: {candidates}")
    return lines


def input_change_lines(changes: list[InputChange], prompt_sources: str | None) -> list[str]:
    """The report's lines for changed inputs: each change, and for changed prompt tokens what may explain them."""
    lines = ["input changed since the golden was recorded (its outputs are not compared as a regression):"]
    for change in changes:
        explained = f" ({prompt_sources})" if change.field == "prompt tokens" and prompt_sources else ""
        lines.append(f"  {change.line()}{explained}")
    return lines


_WHY = {
    Label.INPUT_CHANGED: "input-changed: the outputs of different inputs, not judged as a near-tie or a regression",
    Label.OUTSIDE_TOP_K: "outside top-k: a token is not among the other side's best candidates",
    Label.EOS: "eos: one output ends (EOS) where the other goes on",
    Label.TOLERATED: "tolerated: each token is among the other side's top-k",
    Label.LENGTH: "length: one output stops where the other goes on",
}


def _why(d: Divergence, golden: GoldenEntry, near_tie: float) -> str:
    if d.label in (Label.NEAR_TIE, Label.REGRESSION):
        margins = f"golden margin {format_margin(d.reference_margin)}, current margin {format_margin(d.other_margin)}"
        if d.label == Label.NEAR_TIE:
            return f"near-tie: {margins}; one below llm_near_tie {near_tie}"
        return f"regression: {margins}; both >= llm_near_tie {near_tie}"
    if d.label == Label.NO_TOP_K:
        if golden.top_k_ids is None:
            return ("cannot be judged tolerantly: the golden snapshot has no top-k candidates, it was recorded "
                    "without --llm-compare tolerant")
        return "cannot be judged tolerantly: the current generation recorded no top-k candidates"
    return _WHY.get(d.label, _WHY[Label.LENGTH])


def _divergence_lines(comparison: Comparison, golden: GoldenEntry, current_ids: list[int], decode: Decoder | None,
                      near_tie: float) -> list[str]:
    d = comparison.divergence
    show = decode or (lambda ids: "")
    total = max(comparison.golden_length, comparison.current_length)
    prefix = show(current_ids[: d.index]) if decode else ""
    shown = prefix if len(prefix) <= PREFIX_CHARS else "…" + prefix[-PREFIX_CHARS:]
    lines = [f"first divergence at token {d.index} of {total} ({_why(d, golden, near_tie)})",
             f"matched prefix: {shown!r}" if decode else f"matched tokens: {d.index}"]
    for side, token, margin in (("golden ", d.reference_token, d.reference_margin),
                                ("current", d.other_token, d.other_margin)):
        margin_text = "" if token is None else f"  margin {format_margin(margin)}"
        lines.append(f"  {side}: {token_label(token, show)}{margin_text}")
    return lines


def _length_line(comparison: Comparison) -> str | None:
    if comparison.golden_length == comparison.current_length and comparison.golden_finish == comparison.current_finish:
        return None
    change = ""
    if comparison.current_length < comparison.golden_length:
        change = ": early EOS" if comparison.current_finish == "eos" else ": shorter"
    elif comparison.current_length > comparison.golden_length:
        change = ": late EOS" if comparison.golden_finish == "eos" else ": longer"
    return (f"length: golden {comparison.golden_length} tokens ({comparison.golden_finish}), current "
            f"{comparison.current_length} tokens ({comparison.current_finish}){change}")


def comparison_report(comparison: Comparison, golden: GoldenEntry, current_text: str, current_ids: list[int],
                      decode: Decoder | None, near_tie: float, prompt_sources: str | None = None,
                      candidates: list[str] | None = None) -> Report:
    """The report of a failed comparison: changed inputs, the divergence (with the `candidates` lines of a
    tolerant comparison after the two sides), the length change, then a bounded text diff (not essential).
    `prompt_sources` says what may explain changed prompt tokens (inputs.prompt_token_sources)."""
    report = Report()
    if comparison.input_changes:
        report.extend(input_change_lines(comparison.input_changes, prompt_sources))
        if comparison.divergence is None and not comparison.text_changed:
            report.add("the output tokens are unchanged; an update would record the new input")
    if comparison.divergence is not None:
        report.extend(_divergence_lines(comparison, golden, current_ids, decode, near_tie))
        report.extend(candidates or (), essential=False)
    if comparison.checked:
        report.add(comparison.checked)
    report.extend(comparison.notes)
    length = _length_line(comparison)
    if length is not None:
        report.add(length)
    if comparison.text_changed:
        report.add("text diff:", essential=False)
        report.extend(("  " + line for line in text_diff(golden.text, current_text)), essential=False)
    return report


def render_comparison(comparison: Comparison, golden: GoldenEntry, current_text: str, current_ids: list[int],
                      decode: Decoder | None, near_tie: float, prompt_sources: str | None = None) -> list[str]:
    """The lines of a failed comparison's report (`comparison_report`, all of them)."""
    return comparison_report(comparison, golden, current_text, current_ids, decode, near_tie, prompt_sources).full()


__all__ = ["Report", "comparison_report", "input_change_lines", "render_comparison", "text_diff", "top_k_lines",
           "wrapped_lines"]
