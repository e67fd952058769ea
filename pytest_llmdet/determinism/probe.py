"""The batch-invariance probe: generate a recorded prompt again, inside a left-padded batch with other
prompts, with the same forced-greedy config as `LLM.generate`, to compare it with what it gave alone.

A serving stack batches requests, so a prompt's neighbours and its padding change from call to call; a model
whose output depends on them (a different kernel for another shape, a padded attention, bf16 rounding) is
not reproducible there. torch and transformers are imported inside the functions.
"""

from __future__ import annotations

from pytest_llmdet.determinism.runs import BatchedOutput
from pytest_llmdet.engines.greedy import GenerationArgumentError, GreedyPlan
from pytest_llmdet.engines.llm import LLM
from pytest_llmdet.generation import Generation
from pytest_llmdet.markers import DEFAULT_BATCH_SIZE

LONGER_BY = 7  # tokens by which the longest companion exceeds the probed prompt, so that the prompt is padded
COMPANION_TEXTS = (
    "The quick brown fox jumps over the lazy dog, and the dog does not even look up.",
    "Hello",
    "Once upon a time there lived a king and a queen who had no children, and they were very sad.",
    "A short one.",
)
# Logits processors that see the left padding: in a batch they act differently for reasons of their own, so
# a difference would not be the model's. (repetition_penalty is safe: the padding repeats a prompt token.)
_SEE_THE_PADDING = {
    "min_length": "counts the padding as part of the sequence",
    "no_repeat_ngram_size": "takes the padding tokens for n-grams of the prompt",
}


class BatchProbeError(RuntimeError):
    """A recorded call cannot be generated inside a batch."""


def companions(target: list[int], encoded_texts: list[list[int]], size: int,
               limit: int | None) -> list[list[int]]:
    """`size - 1` other prompts for the batch: the first is longer than `target` (so that the target gets left
    padding), the rest are the encoded companion texts in turn; none longer than `limit` tokens."""
    texts = [text for text in encoded_texts if text] or [target]
    source = [token for text in texts for token in text]
    longer = len(target) + LONGER_BY if limit is None else min(len(target) + LONGER_BY, limit)
    rows = [(source * (longer // len(source) + 1))[:longer]]
    rows += [texts[index % len(texts)] for index in range(size - 2)]
    return [row if limit is None else row[:limit] for row in rows]


def truncate_at_eos(output: BatchedOutput, eos_ids: set[int]) -> BatchedOutput:
    """Cut a batch row after its first EOS: alone, generation would have stopped there; in a batch, the row
    goes on with padding until every row is done."""
    for index, token in enumerate(output.token_ids):
        if token in eos_ids:
            end = index + 1
            return BatchedOutput(output.token_ids[:end], output.margins[:end], output.logprobs[:end])
    return output


def _plan_for(llm: LLM, generation: Generation) -> GreedyPlan:
    """The call's own generation plan, rebuilt from the settings it recorded; greedy calls only."""
    if generation.settings.get("do_sample"):
        raise BatchProbeError("a sampled call draws other random numbers inside a batch; "
                              "only greedy calls are probed")
    try:
        plan = llm.plan_of(generation)
    except GenerationArgumentError as error:
        raise BatchProbeError(str(error)) from None
    for name, why in _SEE_THE_PADDING.items():
        if plan.config.get(name):
            raise BatchProbeError(f"{name}={plan.config[name]} {why}, so a batch would change the output for "
                                  "that reason alone; only the runs are compared")
    return plan


def generate_in_batch(llm: LLM, generation: Generation,
                      batch_size: int = DEFAULT_BATCH_SIZE) -> BatchedOutput:
    """Generate `generation`'s prompt again as row 0 of a left-padded batch of `batch_size` prompts, with the
    call's own settings; returns row 0's new tokens, margins and chosen-token log-probs."""
    if batch_size < 2:
        raise BatchProbeError(f"a batch holds at least 2 prompts, not {batch_size}")
    plan = _plan_for(llm, generation)
    max_new_tokens = plan.config["max_new_tokens"]
    target = list(generation.prompt_token_ids)
    positions = llm.engine.max_positions
    limit = None if positions is None else positions - max_new_tokens
    rows = [target] + companions(target, [llm.encode(text) for text in COMPANION_TEXTS], batch_size, limit)
    # Pad with a token the prompt already holds: masked positions do not change the attention, and logits
    # processors that look at every input token (repetition_penalty) then see nothing new in row 0.
    row = llm.generate_rows(rows, plan, pad_id=target[0])[0]
    return truncate_at_eos(BatchedOutput(row.token_ids, row.margins, row.logprobs), row.eos_ids)


def batch_problem(llm: LLM, generation: Generation) -> str | None:
    """Why a call cannot be generated inside a batch (None: it can)."""
    try:
        _plan_for(llm, generation)
    except BatchProbeError as error:
        return str(error)
    return None
