"""The model runner: encode a prompt, generate with the forced-greedy config, record tokens and margins."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pytest_llmdet.engines.greedy import GenerationArgumentError, plan_generation
from pytest_llmdet.engines.models import LoadedModel
from pytest_llmdet.engines.seeding import seed_everything
from pytest_llmdet.generation import Generation, Prompt


@dataclass
class GenerationStats:
    """How many generate calls a session made and how long they took."""

    count: int = 0
    seconds: float = 0.0


# Config fields that hold how many positions a model supports, by architecture family.
_POSITION_LIMITS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class PromptError(ValueError):
    """A prompt is not a string or a list of chat messages, or does not fit the model."""


@contextlib.contextmanager
def _only_generation_config(model: Any, config: Any) -> Iterator[None]:
    # generate() fills every unset field from model.generation_config; while our complete config stands in
    # for it, nothing of the model's own sampling settings can leak in.
    original = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = original


@functools.cache
def _known_generation_fields() -> frozenset[str]:
    # Built once: constructing and validating a GenerationConfig on every generate call is wasted work.
    from transformers import GenerationConfig

    return frozenset(vars(GenerationConfig()))


class LLM:
    """What the `llm` fixture gives a test: the model, its tokenizer, and `generate`."""

    def __init__(self, loaded: LoadedModel, *, seed: int, max_new_tokens: int, inherit_processors: bool,
                 stats: GenerationStats | None = None) -> None:
        self._loaded = loaded
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.inherit_processors = inherit_processors
        self.stats = stats if stats is not None else GenerationStats()
        self.calls: list[Generation] = []  # every generation of the current test, in order
        self.capture_top_k = 0  # candidates per step to record; set for a tolerant snapshot comparison

    @property
    def model(self) -> Any:
        return self._loaded.model

    @property
    def tokenizer(self) -> Any:
        return self._loaded.tokenizer

    @property
    def name(self) -> str:
        return self._loaded.spec.source.name

    def encode(self, prompt: Prompt) -> list[int]:
        """Token IDs of a prompt: a string as the tokenizer encodes it, or chat messages rendered with the
        tokenizer's chat template and the generation prompt."""
        tokenizer = self.tokenizer
        if isinstance(prompt, str):
            return list(tokenizer(prompt)["input_ids"])
        if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt):
            if not prompt:
                raise PromptError("a chat prompt needs at least one message, "
                                  "like [{'role': 'user', 'content': 'Hi'}]")
            if not getattr(tokenizer, "chat_template", None):
                raise PromptError(f"model {self.name!r} has no chat template; pass the prompt as a string")
            encoded = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)
            return list(encoded["input_ids"])
        raise PromptError(
            "a prompt is a string or a list of chat messages like [{'role': 'user', 'content': 'Hi'}], "
            f"not {type(prompt).__name__}"
        )

    def generate(self, prompt: Prompt, max_new_tokens: int | None = None, **overrides: Any) -> Generation:
        """Generate greedily (whatever the model's generation config says) and record the result.

        `max_new_tokens` is an int >= 1, or None for the `llm_max_new_tokens` setting; `overrides` are
        GenerationConfig fields; `temperature=0` means greedy; sampling needs `do_sample=True` together with
        `seed=` (0 to 2**32 - 1).
        """
        import torch
        from transformers import GenerationConfig

        started = time.perf_counter()
        plan = plan_generation(
            self._loaded.generation_config,
            max_new_tokens=self.max_new_tokens if max_new_tokens is None else max_new_tokens,
            inherit_processors=self.inherit_processors,
            overrides=overrides,
            known_fields=_known_generation_fields(),
        )
        prompt_ids = self.encode(prompt)
        self._check_length(prompt_ids, plan.config["max_new_tokens"])
        config = GenerationConfig(**plan.config, output_scores=True, return_dict_in_generate=True)
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self._loaded.device)
        seed_everything(plan.seed if plan.seed is not None else self.seed)
        with torch.inference_mode(), _only_generation_config(self.model, config):
            output = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config
            )
        new_ids = output.sequences[0, len(prompt_ids):]
        margins, logprobs, top_ids, top_logprobs = _token_statistics(output.scores, new_ids, self.capture_top_k)
        token_ids = new_ids.tolist()
        eos = config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        generation = Generation(
            prompt=prompt,
            text=self.tokenizer.decode(token_ids, skip_special_tokens=True),
            token_ids=token_ids,
            prompt_token_ids=prompt_ids,
            finish_reason="eos" if token_ids and token_ids[-1] in eos_ids else "length",
            margins=margins,
            logprobs=logprobs,
            settings=plan.settings,
            model=self.name,
            top_k_ids=top_ids,
            top_k_logprobs=top_logprobs,
        )
        self.calls.append(generation)
        self.stats.count += 1
        self.stats.seconds += time.perf_counter() - started
        return generation

    def _check_length(self, prompt_ids: list[int], max_new_tokens: int) -> None:
        limit = next((value for name in _POSITION_LIMITS
                      if isinstance(value := getattr(self.model.config, name, None), int)), None)
        if limit is not None and len(prompt_ids) + max_new_tokens > limit:
            raise PromptError(
                f"the prompt has {len(prompt_ids)} tokens; with max_new_tokens={max_new_tokens} that exceeds "
                f"the {limit} positions model {self.name!r} supports. Shorten the prompt or lower "
                "max_new_tokens."
            )
        if not prompt_ids:
            raise PromptError(
                f"the prompt encodes to no tokens and model {self.name!r} adds no BOS token; "
                "generation needs at least one prompt token"
            )


def _margins_and_logprobs(scores: tuple[Any, ...], new_ids: Any) -> tuple[list[float], list[float]]:
    """Per step: top-1 minus top-2 log-probability of the processed scores, and the chosen token's
    log-prob."""
    margins, chosen, _, _ = _token_statistics(scores, new_ids, 0)
    return margins, chosen


def _token_statistics(scores: tuple[Any, ...], new_ids: Any, top_k: int
                      ) -> tuple[list[float], list[float], list[list[int]] | None, list[list[float]] | None]:
    """Margins and chosen log-probs as `_margins_and_logprobs`; with `top_k` > 0 also the top-k candidate IDs
    and log-probs per step, taken from the same (single) topk call, so a tolerant comparison costs no more."""
    import torch

    if not scores:
        return [], [], ([] if top_k else None), ([] if top_k else None)
    logprobs = torch.log_softmax(torch.stack(scores)[:, 0, :].float(), dim=-1)
    top = torch.topk(logprobs, k=min(max(2, top_k), logprobs.shape[-1]), dim=-1)
    best = top.values
    margins = (best[:, 0] - best[:, 1]) if best.shape[-1] >= 2 else torch.full_like(best[:, 0], float("inf"))
    chosen = logprobs.gather(1, new_ids[: logprobs.shape[0]].unsqueeze(1)).squeeze(1)
    if not top_k:
        return margins.tolist(), chosen.tolist(), None, None
    return (margins.tolist(), chosen.tolist(), top.indices[:, :top_k].tolist(), best[:, :top_k].tolist())


__all__ = ["LLM", "GenerationArgumentError", "GenerationStats", "PromptError"]
