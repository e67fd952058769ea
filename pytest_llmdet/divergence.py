"""The first divergence of two token sequences, and how a margin is shown: shared by the golden-file
comparison and the re-run comparison, which must agree on both."""

from __future__ import annotations

from collections.abc import Sequence
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


def format_margin(value: float | None) -> str:
    """A margin as reports show it: 4 decimals, or n/a when there is none (a single candidate)."""
    return "n/a" if value is None else f"{value:.4f}"
