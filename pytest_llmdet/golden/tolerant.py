"""Tolerant comparison: vLLM's `check_logprobs_close` rule, with its known gaps closed.

vLLM accepts two greedy outputs when, at their first divergence, each side's token is among the other side's
top-k candidates, and stops comparing there (after one flip the continuations are unrelated). It compares
only up to the shorter output, so an output that stops early passes. Here lengths count: an output that ends
before the other diverges from it (an early EOS, or another max_new_tokens), or whose divergence is an EOS on
one side only, fails. Each result says in words exactly what was checked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pytest_llmdet.divergence import divergence_of, first_divergence, format_margin, value_at
from pytest_llmdet.golden.compare import Comparison, flip_label
from pytest_llmdet.golden.format import GoldenEntry

RULE = "tolerant comparison (vLLM check_logprobs_close rule, lengths checked)"


def _rank(token: int, candidates: Sequence[int]) -> int | None:
    return candidates.index(token) + 1 if token in candidates else None


def _ends_with_eos(ids: Sequence[int], finish: str | None, index: int) -> bool:
    return finish == "eos" and index == len(ids) - 1


def compare_tolerant(golden: GoldenEntry, token_ids: list[int], margins: list[float], text: str,
                     finish_reason: str | None, top_k_ids: list[list[int]] | None, top_k: int,
                     near_tie: float | None = None) -> Comparison:
    """Compare a generation with a golden entry tolerantly: identical up to the first divergence, where each
    token must be among the other side's `top_k` best; nothing after it is compared. A side without candidates
    there cannot be judged (label no-top-k): the flip is then judged as exact mode would, with `near_tie`."""
    assert golden.token_ids is not None
    g_ids = golden.token_ids
    index = first_divergence(g_ids, token_ids)
    result = Comparison(matched=False, text_changed=text != golden.text, golden_length=len(g_ids),
                        current_length=len(token_ids), golden_finish=golden.finish_reason,
                        current_finish=finish_reason)
    if index is None:
        result.matched = text == golden.text
        result.checked = (f"{RULE}: all {len(g_ids)} tokens identical, lengths equal")
        if result.text_changed:
            result.notes.append("token IDs match but the decoded text differs: the tokenizer's decoding changed")
        return result

    divergence = divergence_of(g_ids, token_ids, golden.margins, margins)
    divergence.label = "length"
    golden_token, current_token = divergence.reference_token, divergence.other_token
    result.divergence = divergence
    # "tokens 0..4 identical; at token 5 ..."; a divergence at token 0 has no identical prefix to name
    prefix = f"{RULE}, top-{top_k}: tokens 0..{index - 1} identical;" if index else f"{RULE}, top-{top_k}:"
    if golden_token is None or current_token is None:
        shorter = "current" if current_token is None else "golden"
        result.checked = (f"{prefix} the {shorter} output ends at token {index} before any divergence "
                          f"(golden {len(g_ids)} tokens, current {len(token_ids)}): a length change is a failure")
        return result
    if _ends_with_eos(g_ids, golden.finish_reason, index) or _ends_with_eos(token_ids, finish_reason, index):
        divergence.label = "eos"
        result.checked = (f"{prefix} at token {index} one output ends with EOS and the other goes on: an EOS "
                          "flip changes the length and is never tolerated")
        return result
    golden_top = value_at(golden.top_k_ids, index)
    current_top = value_at(top_k_ids, index)
    if golden_top is None or current_top is None:
        divergence.label = "no-top-k"
        side = "golden snapshot" if golden_top is None else "current generation"
        result.checked = f"{prefix} at token {index} the {side} has no top-k candidates to compare with"
        golden_margin, current_margin = divergence.reference_margin, divergence.other_margin
        if near_tie is not None and (golden_margin, current_margin) != (None, None):  # what exact mode makes of it
            kind = "a near-tie" if flip_label(golden_margin, current_margin, near_tie) == "near-tie" else \
                "a regression"
            result.checked += (f"; exact mode calls this flip {kind} (golden margin {format_margin(golden_margin)}, "
                               f"current margin {format_margin(current_margin)}, llm_near_tie {near_tie})")
        return result
    golden_top, current_top = list(golden_top[:top_k]), list(current_top[:top_k])
    golden_rank, current_rank = _rank(golden_token, current_top), _rank(current_token, golden_top)

    def where(rank: int | None, side: str, size: int) -> str:
        return f"rank {rank} of the {side} top-{size}" if rank else f"NOT in the {side} top-{size}"

    result.checked = (f"{prefix} at token {index} golden {golden_token} is "
                      f"{where(golden_rank, 'current', len(current_top))} and current {current_token} is "
                      f"{where(current_rank, 'golden', len(golden_top))}; tokens after {index} not compared")
    if golden_rank and current_rank:
        divergence.label = "tolerated"
        result.matched = True
    else:
        divergence.label = "outside-top-k"
    return result


def top_k_lines(golden: GoldenEntry, top_k_ids: list[list[int]] | None, top_k_logprobs: list[list[float]] | None,
                index: int, top_k: int, decode: Callable[[list[int]], str] | None) -> list[str]:
    """The candidates of both sides at the divergence, for the failure report."""
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
