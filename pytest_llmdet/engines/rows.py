"""What one row of a generate call gave, on every engine: its new tokens and the per-step figures. An engine
that reports per-step top log-probs (vLLM, an OpenAI-compatible server) turns them into a row here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from pytest_llmdet.engines.greedy import GreedyPlan


@dataclass
class RowOutput:
    """What one row of a `generate` call gave: its new tokens and, per step, the margin, the chosen token's
    log-prob and (with top-k) the candidates; `eos_ids` are the tokens that end a generation."""

    token_ids: list[int]
    margins: list[float]
    logprobs: list[float]
    top_k_ids: list[list[int]] | None
    top_k_logprobs: list[list[float]] | None
    eos_ids: frozenset[int]


class RowRequest(NamedTuple):
    """One call of a batch whose calls differ (the prefetch): its prompt token IDs, plan and top-k candidates."""

    prompt_ids: list[int]
    plan: GreedyPlan
    top_k: int = 0


def row_from_steps(token_ids: list[int], steps: Iterable[Mapping[int, float]], top_k: int,
                   eos_ids: Iterable[int]) -> RowOutput:
    """A row from each step's log-probs of the top candidates (the chosen token among them): the margin is
    top-1 minus top-2 (infinite with one candidate), as the transformers engine computes it; with `top_k`,
    the k best candidates, best first (ties by token id, so the order does not depend on the engine's)."""
    margins: list[float] = []
    chosen: list[float] = []
    top_ids: list[list[int]] = []
    top_logprobs: list[list[float]] = []
    steps = list(steps)
    if len(steps) != len(token_ids):
        raise ValueError(f"{len(token_ids)} tokens but log-probs for {len(steps)} steps")
    for token, step in zip(token_ids, steps, strict=True):
        if token not in step:
            raise ValueError(f"the log-probs of a step do not include its chosen token {token}")
        ranked = sorted(step.items(), key=lambda item: (-item[1], item[0]))
        margins.append(ranked[0][1] - ranked[1][1] if len(ranked) > 1 else float("inf"))
        chosen.append(float(step[token]))
        top_ids.append([int(candidate) for candidate, _ in ranked[:top_k]])
        top_logprobs.append([float(value) for _, value in ranked[:top_k]])
    return RowOutput(list(token_ids), margins, chosen, top_ids if top_k else None,
                     top_logprobs if top_k else None, frozenset(eos_ids))


__all__ = ["RowOutput", "RowRequest", "row_from_steps"]
