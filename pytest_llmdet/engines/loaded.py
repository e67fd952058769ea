"""What every engine does the same way over a LoadedModel: its spec, model, tokenizer and generation config,
the forced-greedy plan built from that config, and prompts encoded and decoded with the local tokenizer (so
that every engine is given the same token IDs). Each engine adds how it generates."""

from __future__ import annotations

import functools
from operator import attrgetter
from typing import Any

from pytest_llmdet.engines.greedy import GreedyPlan, plan_generation
from pytest_llmdet.engines.models import LoadedModel
from pytest_llmdet.engines.prompts import encode_prompt
from pytest_llmdet.generation import Prompt

# Config fields that hold how many positions a model supports, by architecture family.
POSITION_LIMITS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def position_limit(config: Any) -> int | None:
    """How many positions (prompt and new tokens) a model's config says it supports, if it says."""
    return next((value for name in POSITION_LIMITS if isinstance(value := getattr(config, name, None), int)), None)


@functools.cache
def known_generation_fields() -> frozenset[str]:
    """The fields of transformers.GenerationConfig. Built once: constructing and validating a GenerationConfig
    on every generate call is wasted work."""
    from transformers import GenerationConfig

    return frozenset(vars(GenerationConfig()))


class LoadedEngine:
    """The verbs shared by every engine (see engines.Engine), over what was loaded."""

    kind = "loaded"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    # What was loaded: its ModelSpec, the model and tokenizer, the model's name, the device, and the model's own
    # generation_config.json (a dict).
    spec = property(attrgetter("loaded.spec"))
    model = property(attrgetter("loaded.model"))
    tokenizer = property(attrgetter("loaded.tokenizer"))
    name = property(attrgetter("loaded.spec.source.name"))
    device = property(attrgetter("loaded.device"))
    generation_config = property(attrgetter("loaded.generation_config"))

    def plan(self, max_new_tokens: int, overrides: dict[str, Any], inherit_processors: bool) -> GreedyPlan:
        """The forced-greedy plan of one call: the model's generation config, the settings and `overrides`."""
        return plan_generation(self.generation_config, max_new_tokens=max_new_tokens,
                               inherit_processors=inherit_processors, overrides=overrides,
                               known_fields=known_generation_fields())

    def encode(self, prompt: Prompt) -> list[int]:
        """Token IDs of a prompt (engines.prompts.encode_prompt): the same on every engine."""
        return encode_prompt(self.tokenizer, prompt, self.name)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def cannot_cache_prefix(self, prompt_length: int) -> str | None:
        """Why a prompt of `prompt_length` tokens has no prefix this engine's prefix cache serves (None: it has)."""
        return f"the {self.kind} engine has no prefix cache"

    def describe(self) -> dict[str, Any]:
        """What the environment fingerprint records of this engine (engines.fingerprint): the model and where it
        comes from, and what `described` says of how it generates."""
        source = self.spec.source
        return {"model": source.name, "source_kind": source.kind, "location": source.location, "revision": None,
                "compute_capability": None, "device_map": None, **self.described()}

    def described(self) -> dict[str, Any]:
        """This engine's own part of `describe`: its dtype and device, and on an engine other than transformers
        its name, version and how its log-probs are computed."""
        raise NotImplementedError
