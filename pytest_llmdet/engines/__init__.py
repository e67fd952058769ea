"""The model under test, without pytest: an engine loads a model and generates with a forced-greedy plan;
`engines.llm.LLM` (the `llm` fixture's object) and the batch probe talk to it only through the verbs below.

    engines/kinds.py         each engine by name: its settings, header line, loading (the one place a name is read)
    engines/transformers.py  the transformers engine (from_pretrained, generate, per-step statistics)
    engines/vllm.py          vLLM's offline LLM;  engines/openai_server.py  an OpenAI-compatible server
    engines/models.py        which model, from where; loading once per session with clear errors
    engines/prompts.py       what a prompt may be: checked, and recorded as plain data
    engines/greedy.py        the forced-greedy plan: kept, dropped and refused generation-config fields
    engines/seeding.py       seeds, deterministic algorithms
    engines/step_stats.py    margins, chosen log-probs and top-k recorded step by step
    engines/fingerprint.py   the environment fingerprint of a golden file
    engines/variation.py     a variation: one change a factor of the determinism check asks an engine for

A new engine is a new module with the same verbs, and its kind in engines/kinds.py. The CUDA environment
every engine needs is set here, at pytest startup (`prepare_cuda_environment`): here, not in seeding.py,
because pytest imports this package on every run anyway.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from pytest_llmdet.engines.greedy import GreedyPlan
    from pytest_llmdet.engines.rows import RowOutput
    from pytest_llmdet.engines.variation import Variation
    from pytest_llmdet.generation import Prompt


CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def prepare_cuda_environment() -> None:
    """Set CUBLAS_WORKSPACE_CONFIG before CUDA initialises; cuBLAS is deterministic only with it.

    Called at pytest startup; leaves a value the user set alone.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)


class Engine(Protocol):
    """What the plugin needs of the model under test."""

    kind: str  # "transformers", ...

    @property
    def name(self) -> str: ...  # the model's name, as golden files and reports show it

    @property
    def device(self) -> str: ...

    @property
    def max_positions(self) -> int | None: ...  # prompt plus new tokens the model supports, if known

    def encode(self, prompt: Prompt) -> list[int]: ...  # always local: the same prompt IDs on every engine

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def plan(self, max_new_tokens: int, overrides: dict[str, Any], inherit_processors: bool) -> GreedyPlan: ...

    def generate_rows(self, rows: list[list[int]], plan: GreedyPlan, top_k: int = 0, pad_id: int | None = None,
                      seed: int = 0) -> list[RowOutput]: ...  # one call alone, or a batch (the batch probe)

    def describe(self) -> dict[str, Any]: ...  # what the environment fingerprint records of it

    # The factors of the determinism check (determinism/factors.py) change how the engine generates:
    def baseline(self) -> Variation: ...  # how it generates now: every field of a Variation set

    def attention_implementations(self) -> tuple[str, ...]: ...  # what an attention variation may switch to

    def cannot_vary(self, variation: Variation) -> str | None: ...  # why it cannot apply one (None: it can)

    def varied(self, variation: Variation) -> AbstractContextManager[None]: ...  # generate under it, inside

    def cannot_cache_prefix(self, prompt_length: int) -> str | None: ...  # why a prompt this long has no prefix
    # its prefix cache serves (None: it has one)
