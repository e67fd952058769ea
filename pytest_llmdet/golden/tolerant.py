"""Tolerant comparison: vLLM's `check_logprobs_close` rule, with its known gaps closed.

vLLM accepts two greedy outputs when, at their first divergence, each side's token is among the other side's
top-k candidates, and stops comparing there (after one flip the continuations are unrelated). It compares
only up to the shorter output, so an output that stops early passes. Here lengths count: an output that ends
before the other diverges from it (an early EOS, or another max_new_tokens), or whose divergence is an EOS on
one side only, fails. Each result says in words exactly what was checked.
"""

from __future__ import annotations

from collections.abc import Sequence

from pytest_llmdet.divergence import Divergence, divergence_of, first_divergence, format_margin, value_at
from pytest_llmdet.golden.compare import Comparison, flip_label
from pytest_llmdet.golden.format import GoldenEntry
from pytest_llmdet.vocabulary import Label

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
        result.matched = text == golden.text and finish_reason == golden.finish_reason
        result.checked = f"{RULE}: all {len(g_ids)} tokens identical, lengths equal"
        if result.text_changed:
            result.notes.append("token IDs match but the decoded text differs: the tokenizer's decoding changed")
        return result
    result.divergence = divergence_of(g_ids, token_ids, golden.margins, margins)
    # "tokens 0..4 identical; at token 5 ..."; a divergence at token 0 has no identical prefix to name
    prefix = f"{RULE}, top-{top_k}: tokens 0..{index - 1} identical;" if index else f"{RULE}, top-{top_k}:"
    label, checked = _judge(golden, token_ids, finish_reason, top_k_ids, top_k, near_tie, result.divergence)
    result.divergence.label, result.checked, result.matched = label, f"{prefix} {checked}", label == Label.TOLERATED
    return result


def _judge(golden: GoldenEntry, token_ids: list[int], finish_reason: str | None,
           top_k_ids: list[list[int]] | None, top_k: int, near_tie: float | None, d: Divergence) -> tuple[Label, str]:
    """The label of the first divergence `d`, and what was checked there, in words."""
    g_ids, index = golden.token_ids, d.index
    if d.reference_token is None or d.other_token is None:
        shorter = "current" if d.other_token is None else "golden"
        return Label.LENGTH, (f"the {shorter} output ends at token {index} before any divergence (golden "
                              f"{len(g_ids)} tokens, current {len(token_ids)}): a length change is a failure")
    if _ends_with_eos(g_ids, golden.finish_reason, index) or _ends_with_eos(token_ids, finish_reason, index):
        return Label.EOS, (f"at token {index} one output ends with EOS and the other goes on: an EOS flip changes "
                           "the length and is never tolerated")
    golden_top, current_top = value_at(golden.top_k_ids, index), value_at(top_k_ids, index)
    if golden_top is None or current_top is None:
        side = "golden snapshot" if golden_top is None else "current generation"
        return Label.NO_TOP_K, (f"at token {index} the {side} has no top-k candidates to compare with"
                                + _as_exact_mode(d, near_tie))
    golden_top, current_top = list(golden_top[:top_k]), list(current_top[:top_k])
    golden_rank, current_rank = _rank(d.reference_token, current_top), _rank(d.other_token, golden_top)

    def where(rank: int | None, side: str, size: int) -> str:
        return f"rank {rank} of the {side} top-{size}" if rank else f"NOT in the {side} top-{size}"

    checked = (f"at token {index} golden {d.reference_token} is {where(golden_rank, 'current', len(current_top))} "
               f"and current {d.other_token} is {where(current_rank, 'golden', len(golden_top))}; tokens after "
               f"{index} not compared")
    return (Label.TOLERATED if golden_rank and current_rank else Label.OUTSIDE_TOP_K), checked


def _as_exact_mode(d: Divergence, near_tie: float | None) -> str:
    # What exact mode makes of a flip that cannot be judged tolerantly: as much as can be said.
    if near_tie is None or (d.reference_margin, d.other_margin) == (None, None):
        return ""
    kind = "a near-tie" if flip_label(d.reference_margin, d.other_margin, near_tie) == Label.NEAR_TIE else \
        "a regression"
    return (f"; exact mode calls this flip {kind} (golden margin {format_margin(d.reference_margin)}, current "
            f"margin {format_margin(d.other_margin)}, llm_near_tie {near_tie})")
