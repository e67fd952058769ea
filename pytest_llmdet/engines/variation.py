"""A variation: one change to how an engine generates, asked for by a factor of the determinism check
(determinism/factors.py). Each field left None is unchanged; an engine says which variations it cannot apply,
and why, before it is asked to apply one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variation:
    """A change under which greedy tokens should not change (dtype: may change, a sensitivity)."""

    use_cache: bool | None = None  # False: no KV cache, the whole sequence recomputed at each step
    cache_implementation: str | None = None  # "static": transformers' static cache
    attn_implementation: str | None = None  # "eager", "sdpa", ...
    threads: int | None = None  # torch's intra-op thread count
    dtype: str | None = None  # the floating-point dtype of the weights, "bfloat16"
    prefix_cache: bool | None = None  # vLLM's prefix cache: False not read (the whole prompt computed), True read


class VariationError(RuntimeError):
    """An engine cannot apply a variation; the message says why."""


__all__ = ["Variation", "VariationError"]
