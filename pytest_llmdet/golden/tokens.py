"""Both sides of a diverged snapshot near its first divergence, token by token, as plain data: each token's ID,
its text, its margin and, where recorded, its top-k candidates. What the HTML report, the pytest-html extra and
the JSON report show of a failed or tolerated snapshot; bounded, so that a run of many failures stays small."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from pytest_llmdet.divergence import value_at
from pytest_llmdet.generation import Generation
from pytest_llmdet.golden.format import GoldenEntry

BEFORE = 8  # tokens shown before the first divergence
WINDOW = 64  # tokens shown per side in all
TEXT_CHARS = 40  # of one token's text (a longer one is cut, with …)
PREFIX_CHARS = 200  # of the text before the window
Decoder = Callable[[list[int]], str]


def _margin(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 4)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Side:
    """One side's token IDs, margins and candidates, decoded on demand."""

    def __init__(self, ids: Sequence[int], margins: Sequence[float | None] | None,
                 top_ids: Sequence[Sequence[int]] | None, top_logprobs: Sequence[Sequence[float | None]] | None,
                 decode: Decoder | None) -> None:
        self.ids, self.margins, self.top_ids, self.top_logprobs, self.decode = \
            ids, margins, top_ids, top_logprobs, decode

    def text(self, ids: list[int], limit: int = TEXT_CHARS) -> str | None:
        return None if self.decode is None else _cut(self.decode(ids), limit)

    def candidates(self, index: int) -> list[list[Any]] | None:
        ids = value_at(self.top_ids, index)
        if ids is None:
            return None
        logprobs = value_at(self.top_logprobs, index) or [None] * len(ids)
        return [[int(t), self.text([int(t)]), _margin(v)]
                for t, v in zip(ids, list(logprobs) + [None] * (len(ids) - len(logprobs)), strict=False)]

    def tokens(self, start: int, stop: int) -> list[dict[str, Any]]:
        return [{"id": int(self.ids[i]), "text": self.text([int(self.ids[i])]),
                 "margin": _margin(value_at(self.margins, i)), "top_k": self.candidates(i)}
                for i in range(start, min(stop, len(self.ids)))]


def _window(golden: _Side, current: _Side, index: int) -> dict[str, Any]:
    """Both sides from BEFORE tokens before `index` (the first divergence), WINDOW tokens each at most:
    `start` (the first token shown), `index`, `golden` and `current` (lists of {"id", "text", "margin",
    "top_k": [[id, text, logprob], ...] or None}), `golden_more` / `current_more` (tokens left out after the
    window), `prefix` (the text before the window, its end; None without a decoder)."""
    start = max(0, index - BEFORE)
    stop = start + WINDOW
    prefix = current.text(list(current.ids[:start]), 10**9) if start else ""
    return {
        "start": start, "index": index,
        "golden": golden.tokens(start, stop), "current": current.tokens(start, stop),
        "golden_more": max(0, len(golden.ids) - stop), "current_more": max(0, len(current.ids) - stop),
        "prefix": None if prefix is None else ("…" + prefix[-PREFIX_CHARS:] if len(prefix) > PREFIX_CHARS else prefix),
    }


def view_of(golden: GoldenEntry, generation: Generation, index: int, decode: Decoder | None) -> dict[str, Any]:
    """The view of a golden entry and a generation that first differ at `index` (see `_window`)."""
    return _window(_Side(golden.token_ids, golden.margins, golden.top_k_ids, golden.top_k_logprobs, decode),
                      _Side(generation.token_ids, generation.margins, generation.top_k_ids,
                            generation.top_k_logprobs, decode), index)


__all__ = ["BEFORE", "WINDOW", "view_of"]
