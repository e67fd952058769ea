"""What the engines that are not transformers share (vLLM, an OpenAI-compatible server): the model's tokenizer,
generation config and length are read locally with transformers, so prompts are tokenized (chat template
included) and plans are built exactly as on the transformers engine; the determinism factors that change
transformers' own machinery (cache, attention, threads, dtype) are refused with the reason, and so is the
prefix-cache factor, which only the vllm engine applies (engines/vllm.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pytest_llmdet.engines.greedy import GenerationArgumentError
from pytest_llmdet.engines.loaded import LoadedEngine, position_limit
from pytest_llmdet.engines.models import ModelSpec
from pytest_llmdet.engines.sources import ModelLoadError
from pytest_llmdet.engines.variation import Variation, VariationError
from pytest_llmdet.errors import first_line


def load_local_side(spec: ModelSpec) -> tuple[Any, dict[str, Any], int | None]:
    """The model's tokenizer, generation config (as a dict) and position limit, read with transformers from
    the model's folder (or the hub cache); ModelLoadError names the folder and the error."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    source = spec.source
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, trust_remote_code=spec.trust_remote_code)
        config = AutoConfig.from_pretrained(source.location, trust_remote_code=spec.trust_remote_code)
        try:
            generation = GenerationConfig.from_pretrained(source.location).to_diff_dict()
        except OSError:  # no generation_config.json: the model's config provides the token ids
            generation = GenerationConfig.from_model_config(config).to_diff_dict()
    except Exception as error:  # noqa: BLE001 - any failure here becomes one clear message
        first = first_line(error, type(error).__name__)
        raise ModelLoadError(
            f"could not read the tokenizer and config of model {source.name!r} from {source.location} (the "
            f"{spec.engine} engine tokenizes prompts locally): {type(error).__name__}: {first}") from error
    finally:
        hf_logging.set_verbosity(verbosity)
    for name in ("transformers_version", "_from_model_config"):
        generation.pop(name, None)
    limit = position_limit(config)
    return tokenizer, generation, limit


@dataclass(frozen=True)
class RemoteDetails:
    """What a remote engine learned of its model as it loaded (each engine adds its own)."""

    max_positions: int | None  # prompt plus new tokens: the least of the model's config and the engine's limit


class RemoteEngine(LoadedEngine):
    """The verbs that do not generate, over a LoadedModel whose tokenizer and generation config were read
    locally and whose details are RemoteDetails."""

    kind = "remote"

    @property
    def max_positions(self) -> int | None:
        return self.loaded.details.max_positions

    @property
    def vocabulary_size(self) -> int:
        return len(self.tokenizer)

    @property
    def tokenizer_eos(self) -> int | None:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return eos if isinstance(eos, int) else None

    # -- variations: the factors that change transformers' machinery do not apply -------------------------

    def baseline(self) -> Variation:
        return Variation()

    def attention_implementations(self) -> tuple[str, ...]:
        return ()

    def cannot_vary(self, variation: Variation) -> str | None:
        if variation.prefix_cache is not None:
            return ("the OpenAI API has no field that asks a server not to read its prefix cache (vLLM's "
                    "skip_reading_prefix_cache is one of its offline SamplingParams, which its server's requests "
                    "do not take): run the test on the vllm engine, or compare against a server started with "
                    "--no-enable-prefix-caching")
        return (f"a factor of the transformers engine; this test runs on the {self.kind} engine (the batch factor "
                "applies there)")

    @contextlib.contextmanager
    def varied(self, variation: Variation) -> Iterator[None]:
        raise VariationError(self.cannot_vary(variation) or "")
        yield  # pragma: no cover - a generator, for contextmanager


def is_usage_error(excinfo: Any) -> bool:
    """For `__tracebackhide__`: hide an engine's frame when the error is the caller's settings."""
    return excinfo.errisinstance(GenerationArgumentError)
