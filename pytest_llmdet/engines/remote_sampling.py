"""The forced-greedy plan (engines/greedy.py) as the sampling fields of an engine that is not transformers:
vLLM's SamplingParams and the request of an OpenAI-compatible server take the same names. Every field that
can change the tokens is sent explicitly (the engine's own defaults, or the model's generation config that a
server applies, cannot leak in); a field such an engine cannot apply is an error that names it and the engine,
never dropped."""

from __future__ import annotations

from typing import Any

from pytest_llmdet.engines.greedy import PROCESSOR_FIELDS, TOKEN_FIELDS, GenerationArgumentError, GreedyPlan

# What vLLM and its server apply exactly as transformers does (the repetition penalty over prompt and output
# tokens, a minimum length that suppresses the end-of-sequence tokens), and the sampling fields they take.
APPLIED = ("repetition_penalty", "min_new_tokens", "min_length")
SAMPLING = ("temperature", "top_k", "top_p", "min_p")
# Fields that change no token: renormalize_logits only renormalizes the log-probs, which these engines return
# normalized anyway.
NO_EFFECT = ("renormalize_logits",)
_PLAN_FIELDS = ("do_sample", "num_beams", "max_new_tokens")


def sampling_fields(plan: GreedyPlan, engine: str, prompt_length: int, logprobs: int,
                    tokenizer_eos: int | None = None) -> dict[str, Any]:
    """The sampling fields of one call on `engine` ("vllm" or "openai", for the messages): greedy as
    temperature 0, or seeded sampling with the plan's fields; the plan's end-of-sequence tokens as the only
    stop tokens (the engine's own EOS is ignored: transformers stops at the generation config's); `logprobs`
    candidates per step. `tokenizer_eos` is the tokenizer's EOS token, which vLLM also suppresses while a
    minimum length holds."""
    __tracebackhide__ = True  # its errors are the caller's settings: the test's own call is the frame to see
    config = plan.config
    refuse_unapplied(config, engine)
    sampling = bool(config.get("do_sample"))
    eos_ids = sorted(eos_ids_of(plan))
    min_tokens = minimum_new_tokens(config, prompt_length, eos_ids, engine, tokenizer_eos)
    fields: dict[str, Any] = {
        "max_tokens": config["max_new_tokens"],
        "temperature": float(config.get("temperature") or 1.0) if sampling else 0.0,
        "top_p": float(config.get("top_p") or 1.0) if sampling else 1.0,
        "top_k": int(config.get("top_k") or 0) if sampling else 0,
        "min_p": float(config.get("min_p") or 0.0) if sampling else 0.0,
        "repetition_penalty": float(config.get("repetition_penalty") or 1.0),
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "min_tokens": min_tokens,
        "stop_token_ids": eos_ids,
        "ignore_eos": True,  # stop at the plan's EOS tokens (stop_token_ids) alone, as transformers does
        "logprobs": logprobs,
        "seed": plan.seed if sampling else None,
    }
    return fields


def refuse_unapplied(config: dict[str, Any], engine: str) -> None:
    """Refuse a field of the plan that `engine` cannot apply (a processor other than those it applies as
    transformers does, at a value that is not its neutral one): never dropped silently."""
    __tracebackhide__ = True
    for name, value in config.items():
        if name in _PLAN_FIELDS or name in TOKEN_FIELDS or name in APPLIED or name in SAMPLING \
                or name in NO_EFFECT or value is None:
            continue
        if name in PROCESSOR_FIELDS and value == PROCESSOR_FIELDS[name]:
            continue  # its neutral value
        raise GenerationArgumentError(
            f"{name}={value!r} cannot be applied by the {engine} engine, and pytest-llmdet does not drop a "
            f"setting silently: leave it out (a processor from the model's generation config: set "
            f"llm_inherit_processors = false), or run this test on the transformers engine "
            f"(@pytest.mark.llm_model(..., engine=\"transformers\"))")


def minimum_new_tokens(config: dict[str, Any], prompt_length: int, eos_ids: list[int], engine: str,
                       tokenizer_eos: int | None) -> int:
    """The plan's minimum length as new tokens (min_new_tokens, or min_length less the prompt); refused where
    the engine would also suppress the tokenizer's EOS token, which transformers does not."""
    __tracebackhide__ = True
    min_tokens = max(config.get("min_new_tokens") or 0, (config.get("min_length") or 0) - prompt_length, 0)
    if min_tokens and tokenizer_eos is not None and tokenizer_eos not in eos_ids:
        raise GenerationArgumentError(
            f"a minimum length (min_new_tokens / min_length) cannot be applied by the {engine} engine as "
            f"transformers applies it: it would also suppress the tokenizer's EOS token {tokenizer_eos}, which "
            f"is not among the generation config's eos_token_id {eos_ids}; leave it out, or run this test on "
            "the transformers engine")
    return min_tokens


def eos_ids_of(plan: GreedyPlan) -> frozenset[int]:
    """The tokens that end a generation under `plan`."""
    eos = plan.config.get("eos_token_id")
    return frozenset(eos if isinstance(eos, list) else [] if eos is None else [eos])
