"""The prefix-cache factor's logic, against a stand-in for vllm.LLM with a prefix cache of whole blocks: the call
regenerated with the cache not read, then read; a cached prefix that changes the tokens is found either way;
where it does not apply (too short a prompt, caching off, a vLLM without the field, other engines) the cell is
n/a with the reason; a cache that did not serve the prompt when it should have fails the factor."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest

from pytest_llmdet.determinism.factors import FactorError, check_factors
from pytest_llmdet.engines.llm import LLM
from pytest_llmdet.engines.models import LoadedModel, ModelSpec, ServerOptions, TransformersOptions, VLLMOptions
from pytest_llmdet.engines.sources import ModelSource
from pytest_llmdet.engines.variation import Variation
from pytest_llmdet.vocabulary import FactorName

BLOCK = 4


class SamplingParams:
    __struct_fields__ = ("max_tokens", "skip_reading_prefix_cache")

    def __init__(self, **fields):
        self.skip_reading_prefix_cache = fields.pop("skip_reading_prefix_cache", False)
        self.fields = fields


@dataclass
class Step:
    logprob: float


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[dict[int, Step]]


@dataclass
class RequestOutput:
    outputs: list[Completion]
    num_cached_tokens: int


class CachingLLM:
    """vllm.LLM's generate over a prefix cache of whole blocks (the last prompt token always computed):
    `flips` makes a prompt read from the cache give other tokens; `evicts` forgets every prompt it computed."""

    def __init__(self, flips: bool = False, evicts: bool = False) -> None:
        self.flips, self.evicts = flips, evicts
        self.cached: set[tuple[int, ...]] = set()
        self.skips: list[bool] = []  # skip_reading_prefix_cache of each request, in order

    def generate(self, prompts, params, use_tqdm):
        assert use_tqdm is False
        return [self._one(list(prompt["prompt_token_ids"]), p) for prompt, p in zip(prompts, params, strict=True)]

    def _one(self, ids: list[int], params: SamplingParams) -> RequestOutput:
        self.skips.append(params.skip_reading_prefix_cache)
        blocks = (len(ids) - 1) // BLOCK * BLOCK
        read = 0 if params.skip_reading_prefix_cache or tuple(ids[:blocks]) not in self.cached else blocks
        if not self.evicts:
            self.cached.add(tuple(ids[:blocks]))
        tokens = [7 + (read > 0 and self.flips), 8, 9][:params.fields["max_tokens"]]
        return RequestOutput([Completion(tokens, [{t: Step(-0.1), 99: Step(-3.0)} for t in tokens])], read)


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = SamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    vllm.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    return vllm


class Tokenizer:
    eos_token_id = 2

    def __len__(self) -> int:
        return 100


def _loaded(options, details=None, model=None) -> LoadedModel:
    spec = ModelSpec(ModelSource("local", "/models/q", "models/q"), "float32", options=options)
    return LoadedModel(spec, model=model, tokenizer=Tokenizer(), device="cpu", load_seconds=0.0,
                       generation_config={"eos_token_id": 2}, details=details)


def _llm(model: CachingLLM, block: int | None = BLOCK, skips: bool = True) -> LLM:
    from pytest_llmdet.engines.vllm import VLLMDetails, VLLMEngine

    class Engine(VLLMEngine):  # prompts are their characters' codes: no tokenizer needed
        def encode(self, prompt):
            return [ord(c) % 90 + 3 for c in prompt]

        def decode(self, token_ids, skip_special_tokens=True):
            return " ".join(map(str, token_ids))

    details = VLLMDetails(512, "0.32.0", "float32", 20, 1, block, skips)
    return LLM(Engine(_loaded(VLLMOptions(), details, model)), seed=0, max_new_tokens=3, inherit_processors=True)


LONG = "a prompt of seventeen"  # 21 tokens: 20 of them in whole blocks of 4


def test_a_stable_prefix_is_regenerated_with_the_cache_not_read_then_read(fake_vllm):
    model = CachingLLM()
    llm = _llm(model)
    llm.generate(LONG)
    findings = check_factors(llm, llm.calls, [FactorName.PREFIX_CACHE])
    assert findings.cells[FactorName.PREFIX_CACHE].text() == "=" and findings.differences == []
    assert model.skips == [False, True, False]  # recorded, not read, read (the pass before cached the blocks)


def test_a_cached_prefix_that_changes_the_tokens_is_a_difference_named_by_the_factor(fake_vllm):
    llm = _llm(CachingLLM(flips=True))
    llm.generate(LONG)  # the first: computed afresh, and cached
    findings = check_factors(llm, llm.calls, [FactorName.PREFIX_CACHE])
    (difference,) = findings.differences
    assert findings.cells[FactorName.PREFIX_CACHE].text() == "0"
    assert (difference.factor, difference.vs, difference.changed) == (
        "prefix-cache", "as recorded vs with the prompt's prefix read from vLLM's prefix cache", "cached prefix")
    assert "--llm-vllm-args enable_prefix_caching=false" in difference.advice


def test_a_recorded_call_that_read_the_cache_differs_from_the_prompt_computed_afresh(fake_vllm):
    llm = _llm(CachingLLM(flips=True))
    llm.generate(LONG)
    llm.calls.clear()
    llm.generate(LONG)  # a re-run: its prefix read from the cache
    (difference,) = check_factors(llm, llm.calls, [FactorName.PREFIX_CACHE]).differences
    assert (difference.changed, difference.where) == ("prefix cache not read", "with the prefix cache not read")


def test_a_prompt_too_short_for_a_block_is_not_applicable(fake_vllm):
    llm = _llm(CachingLLM())
    llm.generate("abcd")  # 4 tokens: the last always computed, 3 fill no block of 4
    findings = check_factors(llm, llm.calls, [FactorName.PREFIX_CACHE])
    cell = findings.cells[FactorName.PREFIX_CACHE]
    assert cell.text() == "n/a"
    assert cell.reason == ("the prompt (4 tokens) fills no block of vLLM's prefix cache (4 tokens, and the last "
                           "prompt token is always computed): no part of it is ever read from the cache")
    llm.generate("abcde")
    findings = check_factors(llm, llm.calls, [FactorName.PREFIX_CACHE])
    assert findings.cells[FactorName.PREFIX_CACHE].text() == "="
    assert findings.notes == [f"call 1 not checked under prefix-cache: {cell.reason}"]


@pytest.mark.parametrize(("block", "skips", "reason"), [
    (None, True, "vLLM runs without its prefix cache here (enable_prefix_caching is off): no prompt is read from "
                 "a cache, so there is nothing to compare"),
    (BLOCK, False, "vLLM 0.32.0 cannot be asked not to read its prefix cache (its SamplingParams have no "
                   "skip_reading_prefix_cache): upgrade vLLM, or compare with a run under --llm-vllm-args "
                   "enable_prefix_caching=false"),
])
def test_a_vllm_without_prefix_caching_or_without_the_field_is_not_applicable(fake_vllm, block, skips, reason):
    model = CachingLLM()
    llm = _llm(model, block, skips)
    llm.generate(LONG)
    cell = check_factors(llm, llm.calls, [FactorName.PREFIX_CACHE]).cells[FactorName.PREFIX_CACHE]
    assert (cell.text(), cell.reason) == ("n/a", reason)
    assert model.skips == [False]  # nothing regenerated


def test_a_cache_that_did_not_serve_the_prompt_fails_the_factor_instead_of_passing_it(fake_vllm):
    llm = _llm(CachingLLM(evicts=True))
    llm.generate(LONG)
    with pytest.raises(FactorError, match=r"^the prefix-cache factor could not run: VariationError: vLLM read none "
                                          r"of the prompt's 21 tokens from its prefix cache, though the pass just "
                                          r"before cached them: its KV cache evicted them .*VLLM_CPU_KVCACHE_SPACE"):
        check_factors(llm, llm.calls, [FactorName.PREFIX_CACHE])


def test_the_other_engines_say_why_the_prefix_cache_factor_does_not_apply_to_them():
    from pytest_llmdet.engines.openai_server import ServerEngine
    from pytest_llmdet.engines.transformers import TransformersEngine

    for variation in (Variation(prefix_cache=False), Variation(prefix_cache=True)):
        assert TransformersEngine(_loaded(TransformersOptions())).cannot_vary(variation) == (
            "the transformers engine has no prefix cache (each generate computes its whole prompt): a factor of "
            "the vllm engine")
        assert ServerEngine(_loaded(ServerOptions("http://h:1/v1"))).cannot_vary(variation).startswith(
            "the OpenAI API has no field that asks a server not to read its prefix cache (vLLM's "
            "skip_reading_prefix_cache is one of its offline SamplingParams")
