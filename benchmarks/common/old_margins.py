"""The old margin path: per-token figures computed afterwards over the scores `generate(output_scores=True)`
kept, as the runner did before engines/step_stats.py recorded them step by step. What bench_margins.py and
bench_memory.py time and measure the shipped path against, and tests/test_step_stats.py's reference.
"""

from __future__ import annotations

from typing import Any


def token_statistics(scores: tuple[Any, ...], new_ids: Any, top_k: int, row: int = 0
                     ) -> tuple[list[float], list[float], list[list[int]] | None, list[list[float]] | None]:
    """The old path's figures of one row of a batch, over the scores `generate(output_scores=True)` kept
    (LLM.generate no longer asks for them: engines/step_stats.py records the same figures step by step): the
    margin (top-1 minus top-2 log-probability of the processed scores) and the chosen token's log-prob per
    step and, with `top_k` > 0, the top-k candidate IDs and log-probs from the same topk call. What the
    benchmarks time the old path by, and tests/test_step_stats.py's reference. Imports torch."""
    import torch

    if not scores:
        return [], [], ([] if top_k else None), ([] if top_k else None)
    logprobs = torch.log_softmax(torch.stack(scores)[:, row, :].float(), dim=-1)
    top = torch.topk(logprobs, k=min(max(2, top_k), logprobs.shape[-1]), dim=-1)
    best = top.values
    margins = (best[:, 0] - best[:, 1]) if best.shape[-1] >= 2 else torch.full_like(best[:, 0], float("inf"))
    chosen = logprobs.gather(1, new_ids[: logprobs.shape[0]].unsqueeze(1)).squeeze(1)
    if not top_k:
        return margins.tolist(), chosen.tolist(), None, None
    return margins.tolist(), chosen.tolist(), top.indices[:, :top_k].tolist(), best[:, :top_k].tolist()
