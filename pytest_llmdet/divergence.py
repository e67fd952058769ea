"""The first divergence of two token sequences, and how a margin is shown: shared by the golden-file
comparison and the re-run comparison, which must agree on both."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def first_divergence(golden: Sequence[int], current: Sequence[int]) -> int | None:
    """The first index where the sequences differ (or where the shorter one ends); None when equal."""
    for index, (a, b) in enumerate(zip(golden, current, strict=False)):
        if a != b:
            return index
    return None if len(golden) == len(current) else min(len(golden), len(current))


def value_at(values: Sequence[Any] | None, index: int) -> Any:
    """`values[index]`, or None when there are no values or the index is past their end."""
    return values[index] if values is not None and index < len(values) else None


def token_label(token: int | None, decode: Callable[[list[int]], str] | None) -> str:
    """A token as both reports show it: its ID and, with a decoder, its text; or (end of output)."""
    if token is None:
        return "(end of output)"
    return f"{token} {decode([token])!r}" if decode is not None else str(token)


def format_margin(value: float | None) -> str:
    """A margin as reports show it: 4 decimals, or n/a when there is none (a single candidate)."""
    return "n/a" if value is None else f"{value:.4f}"


@dataclass
class Divergence:
    """Where two outputs of one prompt first differ: the reference (the golden snapshot, run 1, the prompt
    alone) and the other output (the current one, another run, the prompt in a batch), with each side's token
    there (None: that output ended) and its margin."""

    index: int
    reference_token: int | None
    other_token: int | None
    reference_margin: float | None
    other_margin: float | None
    label: str = ""  # golden: near-tie, regression or length; tolerant: tolerated, outside-top-k, no-top-k or eos
    max_logprob_delta: float | None = None  # re-runs: largest |Δ| of the chosen token's log-prob before `index`


def divergence_of(reference_ids: Sequence[int], other_ids: Sequence[int],
                  reference_margins: Sequence[float | None] | None,
                  other_margins: Sequence[float | None] | None) -> Divergence | None:
    """The first divergence of two token sequences with the margins at it; None when they are equal."""
    index = first_divergence(reference_ids, other_ids)
    if index is None:
        return None
    return Divergence(index, value_at(reference_ids, index), value_at(other_ids, index),
                      value_at(reference_margins, index), value_at(other_margins, index))
