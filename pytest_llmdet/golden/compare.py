"""Comparing a generation with its golden snapshot: a pure function of the two that returns a `Comparison`.

Token IDs are the truth; the text and the finish reason are checked too, and so is what the golden records of
the input (the prompt, its tokens, the settings): a changed input fails with its own label. A flip is labelled
a near-tie (either side's margin was tiny: it may flip on other hardware) or a regression. Rendering the
comparison for a person is render.py's job; tolerant.py compares by vLLM's top-k rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pytest_llmdet.divergence import Divergence, divergence_of, first_divergence
from pytest_llmdet.golden.format import GoldenEntry
from pytest_llmdet.golden.inputs import InputChange
from pytest_llmdet.golden.outcome import DivergenceSummary, FirstDivergence
from pytest_llmdet.vocabulary import Label


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
                self.divergence.label = Label.INPUT_CHANGED
        return self

    def summary(self) -> DivergenceSummary:
        """The comparison as the outcome keeps it (the JSON report, the JUnit properties, the summary)."""
        d = self.divergence
        first = None if d is None else FirstDivergence(d.index, d.reference_token, d.other_token,
                                                       d.reference_margin, d.other_margin, Label(d.label))
        return DivergenceSummary(self.matched, first, self.golden_length, self.current_length, self.golden_finish,
                                 self.current_finish, self.text_changed, tuple(self.notes), self.checked,
                                 tuple(self.input_changes))


def flip_label(golden_margin: float | None, current_margin: float | None, near_tie: float) -> Label:
    """near-tie when either side's margin at the flip is below `near_tie` (that side may flip on other hardware,
    kernels or dtypes), else regression."""
    below = [m for m in (golden_margin, current_margin) if m is not None and m < near_tie]
    return Label.NEAR_TIE if below else Label.REGRESSION


def compare_tokens(golden: GoldenEntry, token_ids: list[int], margins: list[float], text: str,
                   finish_reason: str | None, near_tie: float) -> Comparison:
    """Compare a generation with a golden entry that has token IDs."""
    assert golden.token_ids is not None
    index = first_divergence(golden.token_ids, token_ids)
    same = index is None and text == golden.text and finish_reason == golden.finish_reason
    result = Comparison(matched=same, text_changed=text != golden.text, golden_length=len(golden.token_ids),
                        current_length=len(token_ids), golden_finish=golden.finish_reason,
                        current_finish=finish_reason)
    d = divergence_of(golden.token_ids, token_ids, golden.margins, margins)
    if d is not None:
        if d.reference_token is None or d.other_token is None:
            d.label = Label.LENGTH
        else:
            d.label = flip_label(d.reference_margin, d.other_margin, near_tie)
        result.divergence = d
    elif result.text_changed:
        result.notes.append("token IDs match but the decoded text differs: the tokenizer's decoding changed")
    return result


def compare_text(golden: GoldenEntry, text: str) -> Comparison:
    """Compare text only (a plain string snapshot)."""
    return Comparison(matched=golden.text == text, text_changed=golden.text != text)


def smallest_margin(margins: list[float | None] | None) -> tuple[int, float] | None:
    """The position and value of the smallest finite margin (the step most likely to flip), or None."""
    finite = [(m, i) for i, m in enumerate(margins or []) if m is not None and math.isfinite(m)]
    if not finite:
        return None
    margin, index = min(finite)
    return index, margin


__all__ = ["Comparison", "compare_text", "compare_tokens", "flip_label", "smallest_margin"]
