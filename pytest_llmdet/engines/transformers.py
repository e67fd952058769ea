"""The transformers engine: a model and tokenizer loaded through `from_pretrained`, generating with the
forced-greedy plan and recording per-step statistics. The `llm` fixture's `LLM` talks to it only through the
verbs of `engines.Engine`; a vLLM or server engine is another module with the same verbs."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pytest_llmdet.engines.greedy import GreedyPlan, plan_generation
from pytest_llmdet.engines.models import LoadedModel, ModelSpec
from pytest_llmdet.engines.seeding import seed_everything
from pytest_llmdet.engines.step_stats import generate_with_stats
from pytest_llmdet.generation import Prompt

# Config fields that hold how many positions a model supports, by architecture family.
_POSITION_LIMITS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


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


class TransformersEngine:
    """A transformers model and tokenizer (see engines.Engine for the verbs)."""

    kind = "transformers"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    @property
    def spec(self) -> ModelSpec:
        return self.loaded.spec

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def name(self) -> str:
        return self.loaded.spec.source.name

    @property
    def device(self) -> str:
        return self.loaded.device

    @property
    def generation_config(self) -> dict[str, Any]:
        """The model's own generation_config.json, as loaded."""
        return self.loaded.generation_config

    @property
    def max_positions(self) -> int | None:
        """How many positions (prompt and new tokens) the model supports, when its config says."""
        return next((value for name in _POSITION_LIMITS
                     if isinstance(value := getattr(self.model.config, name, None), int)), None)

    def plan(self, max_new_tokens: int, overrides: dict[str, Any], inherit_processors: bool) -> GreedyPlan:
        """The forced-greedy plan of one call: the model's generation config, the settings and `overrides`."""
        return plan_generation(self.generation_config, max_new_tokens=max_new_tokens,
                               inherit_processors=inherit_processors, overrides=overrides,
                               known_fields=_known_generation_fields())

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

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def generate_rows(self, rows: list[list[int]], plan: GreedyPlan, top_k: int = 0,
                      pad_id: int | None = None, seed: int = 0) -> list[RowOutput]:
        """Generate every row of prompt token IDs in one `generate` call with `plan` (left-padded with `pad_id`
        when the rows differ in length, the padding masked; a sampled plan seeds with its own seed, a
        greedy one with `seed`) and return each row's new tokens, margins,
        chosen-token log-probs and, with `top_k`, its top-k candidates. The one place that calls generate:
        a single call and the batch probe share it."""
        import torch
        from transformers import GenerationConfig

        ids, mask = left_pad(rows, rows[0][0] if pad_id is None else pad_id)
        config = GenerationConfig(**plan.config)  # no output_scores: the statistics are recorded per step
        eos_ids = _eos_ids(config.eos_token_id)
        if config.pad_token_id is None and len(rows) > 1:
            eos = config.eos_token_id
            config.pad_token_id = eos[0] if isinstance(eos, list) else eos
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        attention_mask = torch.tensor(mask, dtype=torch.long, device=self.device)
        seed_everything(plan.seed if plan.seed is not None else seed)
        with torch.inference_mode(), _only_generation_config(self.model, config):
            new_ids, stats = generate_with_stats(self.model, input_ids, attention_mask, config, top_k)
        outputs = []
        for row_ids, row in zip(new_ids.tolist(), stats, strict=True):
            outputs.append(RowOutput(row_ids, row.margins, row.logprobs, row.top_k_ids, row.top_k_logprobs, eos_ids))
        return outputs

    def describe(self) -> dict[str, Any]:
        """What the environment fingerprint records of this engine (engines.fingerprint)."""
        source = self.spec.source
        return {"model": source.name, "source_kind": source.kind, "location": source.location,
                "revision": getattr(self.model.config, "_commit_hash", None),
                "dtype": str(self.model.dtype).removeprefix("torch."), "device": self.device,
                "compute_capability": _compute_capability(self.device), "device_map": self.spec.device_map}


def _compute_capability(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Pad token-ID rows on the left to the longest one: (input_ids, attention_mask)."""
    width = max(len(row) for row in rows)
    ids = [[pad_id] * (width - len(row)) + list(row) for row in rows]
    mask = [[0] * (width - len(row)) + [1] * len(row) for row in rows]
    return ids, mask


def _eos_ids(eos: int | list[int] | None) -> frozenset[int]:
    return frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def _token_statistics(scores: tuple[Any, ...], new_ids: Any, top_k: int
                      ) -> tuple[list[float], list[float], list[list[int]] | None, list[list[float]] | None]:
    """Over scores kept by `generate(output_scores=True)`, which LLM.generate no longer asks for (step_stats.py
    records the same figures step by step): the reference of tests/test_step_stats.py and the benchmarks.

    Per step: top-1 minus top-2 log-probability of the processed scores, and the chosen token's log-prob;
    with `top_k` > 0 also the top-k candidate IDs
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


