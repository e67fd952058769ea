"""The `llm` fixture's object: encode a prompt, plan forced-greedy decoding, generate through an engine, and
record each call (tokens, margins, settings) for the golden files and the re-run check."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

from pytest_llmdet.engines import Engine
from pytest_llmdet.engines.greedy import GenerationArgumentError, GreedyPlan
from pytest_llmdet.engines.prompts import PromptError, check_prompt
from pytest_llmdet.engines.rows import RowOutput
from pytest_llmdet.generation import Generation, Prompt

_NOT_OVERRIDES = ("num_beams", "max_new_tokens")  # recorded settings that LLM.plan sets itself


class CallKey(NamedTuple):
    """What makes two generate calls the same call: their prompt token IDs, their recorded settings and the
    top-k candidates recorded per step (--llm-prefetch answers a call by it)."""

    prompt_ids: tuple[int, ...]
    settings: str  # the settings as canonical JSON
    top_k: int


def call_key(prompt_ids: list[int], settings: dict[str, Any], top_k: int) -> CallKey:
    """The key of a call of `prompt_ids` with the recorded `settings` and `top_k` candidates per step."""
    return CallKey(tuple(prompt_ids), json.dumps(settings, sort_keys=True, default=str), top_k)


class Prefetched(Protocol):
    """Results generated ahead of the calls (golden/prefetch.py): `answer` gives the row of a call and how it
    was got, or None when the call was not prefetched; `lone` generates the call alone when needed."""

    def answer(self, key: CallKey, lone: Callable[[], RowOutput]) -> tuple[RowOutput, str] | None: ...


@dataclass
class GenerationStats:
    """How many generate calls a session made and how long they took."""

    count: int = 0
    seconds: float = 0.0


class LLM:
    """What the `llm` fixture gives a test: `generate`, and the model and tokenizer behind it."""

    def __init__(self, engine: Engine, *, seed: int, max_new_tokens: int, inherit_processors: bool,
                 stats: GenerationStats | None = None) -> None:
        self.engine = engine
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.inherit_processors = inherit_processors
        self.stats = stats if stats is not None else GenerationStats()
        self.calls: list[Generation] = []  # every generation of the current test, in order
        self.capture_top_k = 0  # candidates per step to record; set for a tolerant snapshot comparison
        self.prefetch: Prefetched | None = None  # --llm-prefetch's results for this test (None: generate alone)

    # The engine's: the model and tokenizer (transformers: the torch module), the model's name, the device.
    model = property(attrgetter("engine.model"))
    tokenizer = property(attrgetter("engine.tokenizer"))
    name = property(attrgetter("engine.name"))
    device = property(attrgetter("engine.device"))

    def encode(self, prompt: Prompt) -> list[int]:
        """Token IDs of a prompt: a string as the tokenizer encodes it, or chat messages rendered with the
        tokenizer's chat template and the generation prompt."""
        return self.engine.encode(prompt)

    def generate(self, prompt: Prompt, max_new_tokens: int | None = None, **overrides: Any) -> Generation:
        """Generate greedily (whatever the model's generation config says) and record the result.

        `max_new_tokens` is an int >= 1, or None for the `llm_max_new_tokens` setting; `overrides` are
        GenerationConfig fields; `temperature=0` means greedy; sampling needs `do_sample=True` together with
        `seed=` (0 to 2**32 - 1).
        """
        __tracebackhide__ = _is_usage_error  # a bad prompt or setting: the test's own call is the frame to see
        started = time.perf_counter()
        prompt = check_prompt(prompt)  # recorded as checked: plain data, as the golden file will hold it
        plan = self.plan(max_new_tokens=self.max_new_tokens if max_new_tokens is None else max_new_tokens,
                         overrides=overrides)
        prompt_ids = self.encode(prompt)
        self._check_length(prompt_ids, plan.config["max_new_tokens"])
        row, prefetch = self._row(prompt_ids, plan)
        token_ids = row.token_ids
        generation = Generation(
            prompt=prompt,
            text=self.engine.decode(token_ids, skip_special_tokens=True),
            token_ids=token_ids,
            prompt_token_ids=prompt_ids,
            finish_reason="eos" if token_ids and token_ids[-1] in row.eos_ids else "length",
            margins=row.margins,
            logprobs=row.logprobs,
            settings=plan.settings,
            model=self.name,
            top_k_ids=row.top_k_ids,
            top_k_logprobs=row.top_k_logprobs,
            prefetch=prefetch,
        )
        self.calls.append(generation)
        self.stats.count += 1
        self.stats.seconds += time.perf_counter() - started
        return generation

    def _row(self, prompt_ids: list[int], plan: GreedyPlan) -> tuple[RowOutput, str | None]:
        """The call's row: from the prefetch when it holds the call (and how it was got), else generated alone."""
        def lone() -> RowOutput:
            return self.generate_rows([prompt_ids], plan, top_k=self.capture_top_k)[0]

        key = call_key(prompt_ids, plan.settings, self.capture_top_k) if self.prefetch is not None else None
        answered = None if key is None else self.prefetch.answer(key, lone)
        return answered if answered is not None else (lone(), None)

    def plan(self, max_new_tokens: int, overrides: dict[str, Any]) -> GreedyPlan:
        """The forced-greedy plan of one call with this run's settings."""
        return self.engine.plan(max_new_tokens, overrides, self.inherit_processors)

    def plan_of(self, generation: Generation) -> GreedyPlan:
        """The plan a recorded call was generated with, rebuilt from the settings it recorded (its seed
        included); GenerationArgumentError when they cannot be rebuilt exactly."""
        return self.plan_of_settings(generation.settings)

    def plan_of_settings(self, recorded: dict[str, Any]) -> GreedyPlan:
        """The plan of a call that recorded `recorded` (its seed included); GenerationArgumentError when it
        cannot be rebuilt exactly."""
        settings = dict(recorded)
        overrides = {k: v for k, v in settings.items() if k not in _NOT_OVERRIDES}
        plan = self.plan(max_new_tokens=settings["max_new_tokens"], overrides=overrides)
        if plan.settings != settings:
            raise GenerationArgumentError(f"could not rebuild the generation settings of the call: {settings}")
        return plan

    def generate_rows(self, rows: list[list[int]], plan: GreedyPlan, top_k: int = 0,
                      pad_id: int | None = None) -> list[RowOutput]:
        """Every row of prompt token IDs generated in one batch (engines.Engine.generate_rows), seeded."""
        __tracebackhide__ = _is_usage_error
        return self.engine.generate_rows(rows, plan, top_k=top_k, pad_id=pad_id, seed=self.seed)

    def _check_length(self, prompt_ids: list[int], max_new_tokens: int) -> None:
        limit = self.engine.max_positions
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




def _is_usage_error(excinfo: Any) -> bool:
    # pytest calls a callable __tracebackhide__ with the ExceptionInfo: hide the frame for the caller's mistakes only
    return excinfo.errisinstance((PromptError, GenerationArgumentError))


__all__ = ["LLM", "CallKey", "GenerationArgumentError", "GenerationStats", "Prefetched", "PromptError", "call_key"]
