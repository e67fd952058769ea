"""The plain data that one `llm.generate` call produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Prompt = str | list[dict[str, str]]


@dataclass
class Generation:
    """One greedy (or explicitly seeded) generation: the new tokens and how confidently each was chosen.

    `margins[i]` is the top-1 minus top-2 log-probability of the scores that chose `token_ids[i]`;
    a margin near zero is a near-tie that may flip on other hardware. `logprobs[i]` is the
    log-probability of the chosen token. `top_k_ids[i]` and `top_k_logprobs[i]` are the best candidates of
    step i, best first; recorded only for a tolerant comparison (None otherwise). `prefetch` says whether the
    result came from --llm-prefetch's batch.
    """

    prompt: Prompt
    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    finish_reason: str
    margins: list[float]
    logprobs: list[float]
    settings: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    top_k_ids: list[list[int]] | None = None
    top_k_logprobs: list[list[float]] | None = None
    # --llm-prefetch: None when generated alone; "batched" when taken from the prefetch (it equals a recorded
    # golden), "confirmed" or "disagreed" when the batch's result differed from the golden and a lone request
    # gave the same tokens or other ones (this is then the lone result)
    prefetch: str | None = None

    def __repr__(self) -> str:
        return (f"Generation(text={self.text[:40] + ('…' if len(self.text) > 40 else '')!r}, "
                f"{len(self.token_ids)} tokens, finish_reason={self.finish_reason!r})")

    def __str__(self) -> str:
        return self.text
