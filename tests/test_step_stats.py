"""The per-step recorder gives exactly what the old path gave: `generate(output_scores=True)`, then the old
runner's statistics over the kept scores (log_softmax over the vocabulary, then topk: the reference, batched
over rows, in benchmarks/common/old_margins.py, whose benchmarks time that path). The recorder takes the top candidates
from the scores block by block (engines/row_top.py) and the shift to log-probs from one log_softmax maximum:
the same floats, on real steps, with the -inf that processors set, and with the blocks small enough that the
embedded model's 1,400-token vocabulary goes through them too."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GenerationConfig

from pytest_llmdet.determinism import probe as batch
from pytest_llmdet.engines import llm as runner
from pytest_llmdet.engines import row_top
from pytest_llmdet.engines import transformers as hf
from pytest_llmdet.engines.greedy import plan_generation
from pytest_llmdet.engines.loaded import known_generation_fields
from pytest_llmdet.engines.models import ModelPool, ModelSpec
from pytest_llmdet.engines.seeding import seed_everything
from pytest_llmdet.engines.sources import resolve_source
from pytest_llmdet.engines.step_stats import (
    StepRecorder,
    StepRecordError,
    appended_last,
    can_record_steps,
    generate_with_stats,
)
from pytest_llmdet.generation import Generation

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from common.old_margins import token_statistics as reference_statistics  # noqa: E402

PROMPTS = [
    "Once upon a time",
    "The fox said to the crow",
    [{"role": "user", "content": "Tell me a story about a fox."}],
    [{"role": "user", "content": "Who is the Snow Queen?"}],
]
CASES = [  # (overrides, capture_top_k)
    ({}, 0),
    ({}, 5),
    ({"do_sample": True, "seed": 7}, 0),
    ({"do_sample": True, "seed": 123}, 5),
    ({"do_sample": True, "seed": 3}, 30),  # more candidates than the model's top_k=20 keeps: -inf ties
    ({"do_sample": True, "seed": 11, "temperature": 1.3, "top_k": 0, "top_p": 0.95}, 3),
    ({"renormalize_logits": True}, 4),  # LogitNormalization comes after every other processor
    ({"repetition_penalty": 1.5, "min_new_tokens": 6}, 2),
    # -inf from processors: banned tokens, EOS suppressed until token 12, and a penalty; then a single
    # candidate left by top_k=1 (an infinite margin, a log-prob of 0)
    ({"bad_words_ids": [[308], [262], [35]], "min_new_tokens": 12, "repetition_penalty": 1.3}, 3),
    ({"do_sample": True, "seed": 5, "top_k": 1}, 2),
]
MAX_NEW_TOKENS = 20


@pytest.fixture(scope="module")
def loaded():
    return ModelPool().get(ModelSpec(resolve_source(None, [])))


def _llm(loaded, inherit_processors: bool = True) -> runner.LLM:
    return runner.LLM(hf.TransformersEngine(loaded), seed=0, max_new_tokens=MAX_NEW_TOKENS,
                      inherit_processors=inherit_processors)


def old_generate(llm: runner.LLM, prompt: Any, capture: int, **overrides: Any) -> dict[str, Any]:
    """What `LLM.generate` recorded before: the scores of every step kept, then the statistics over them."""
    plan = plan_generation(llm.engine.generation_config, max_new_tokens=llm.max_new_tokens,
                           inherit_processors=llm.inherit_processors, overrides=overrides,
                           known_fields=known_generation_fields())
    prompt_ids = llm.encode(prompt)
    config = GenerationConfig(**plan.config, output_scores=True, return_dict_in_generate=True)
    input_ids = torch.tensor([prompt_ids], dtype=torch.long)
    seed_everything(plan.seed if plan.seed is not None else llm.seed)
    with torch.inference_mode(), hf._only_generation_config(llm.model, config):
        output = llm.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    generation_config=config)
    new_ids = output.sequences[0, len(prompt_ids):]
    margins, logprobs, top_ids, top_logprobs = reference_statistics(output.scores, new_ids, capture, 0)
    return {"token_ids": new_ids.tolist(), "margins": margins, "logprobs": logprobs, "top_k_ids": top_ids,
            "top_k_logprobs": top_logprobs}


def assert_same(new: dict[str, Any], old: dict[str, Any], exact: bool = False) -> None:
    """The same tokens and figures (with `exact`, the same floats); the same candidates, except which of the
    tokens at -inf fill the last places (equally valid: torch.topk picks some, the blocks others)."""
    assert new["token_ids"] == old["token_ids"]
    for name in ("margins", "logprobs"):
        assert len(new[name]) == len(old[name]) == len(old["token_ids"])
        assert new[name] == (old[name] if exact else pytest.approx(old[name], abs=1e-6, rel=0)), name
    assert (new["top_k_ids"] is None) == (old["top_k_ids"] is None)
    if old["top_k_ids"] is not None:
        assert _finite(new) == _finite(old)
        for got, want in zip(new["top_k_logprobs"], old["top_k_logprobs"], strict=True):
            assert got == (want if exact else pytest.approx(want, abs=1e-6, rel=0))


def _finite(fields: dict[str, Any]) -> list[list[int]]:
    return [[token for token, value in zip(ids, values, strict=True) if value != float("-inf")]
            for ids, values in zip(fields["top_k_ids"], fields["top_k_logprobs"], strict=True)]


@pytest.fixture(params=["rows", "blocks"])
def blocks(request, monkeypatch):
    """Top candidates by torch.topk over whole rows (the embedded vocabulary is short), or block by block:
    blocks of 3 tokens, 466 and a tail of 2."""
    if request.param == "blocks":
        monkeypatch.setattr(row_top, "BLOCK", 3)
    return request.param


def _fields(generation: Generation) -> dict[str, Any]:
    return {"token_ids": generation.token_ids, "margins": generation.margins, "logprobs": generation.logprobs,
            "top_k_ids": generation.top_k_ids, "top_k_logprobs": generation.top_k_logprobs}


@pytest.mark.parametrize(("overrides", "capture"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_llm_generate_records_what_the_kept_scores_gave(loaded, overrides, capture, blocks):
    llm = _llm(loaded)
    llm.capture_top_k = capture
    for prompt in PROMPTS:
        old = old_generate(llm, prompt, capture, **overrides)
        new = _fields(llm.generate(prompt, **overrides))
        assert_same(new, old, exact=True)  # the very same floats: log_softmax's own shift, applied alike
        if "bad_words_ids" in overrides:
            assert not {308, 262, 35} & set(new["token_ids"]) and len(new["token_ids"]) >= 12


def test_without_inherited_processors_too(loaded):
    llm = _llm(loaded, inherit_processors=False)
    for prompt in PROMPTS[:2]:
        assert_same(_fields(llm.generate(prompt)), old_generate(llm, prompt, 0))


def test_the_chat_prompts_end_with_eos_and_still_agree(loaded):
    llm = _llm(loaded)
    llm.max_new_tokens = 60
    generation = llm.generate(PROMPTS[2])
    assert generation.finish_reason == "eos" and len(generation.margins) == len(generation.token_ids)
    assert_same(_fields(generation), old_generate(llm, PROMPTS[2], 0))


def test_every_row_of_a_padded_batch_agrees(loaded, blocks):
    llm = _llm(loaded)
    rows = [llm.encode(prompt) for prompt in PROMPTS]
    ids, mask = hf.left_pad(rows, pad_id=0)
    input_ids, attention_mask = torch.tensor(ids), torch.tensor(mask)
    plan = plan_generation(loaded.generation_config, max_new_tokens=40, known_fields=None)
    config = GenerationConfig(**plan.config)
    with torch.inference_mode(), hf._only_generation_config(llm.model, config):
        new_ids, stats = generate_with_stats(llm.model, input_ids, attention_mask, config, top_k=3)
        old = llm.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                 output_scores=True, return_dict_in_generate=True)
    old_ids = old.sequences[:, input_ids.shape[1]:]
    assert torch.equal(new_ids, old_ids)
    assert (old_ids == 0).any()  # some rows ended early and were padded: their figures agree too
    for row, row_stats in enumerate(stats):
        margins, logprobs, top_ids, top_logprobs = reference_statistics(old.scores, old_ids[row], 3, row)
        assert_same({"token_ids": new_ids[row].tolist(), "margins": row_stats.margins,
                     "logprobs": row_stats.logprobs, "top_k_ids": row_stats.top_k_ids,
                     "top_k_logprobs": row_stats.top_k_logprobs},
                    {"token_ids": old_ids[row].tolist(), "margins": margins, "logprobs": logprobs,
                     "top_k_ids": top_ids, "top_k_logprobs": top_logprobs}, exact=True)


def test_the_batch_probe_records_what_it_did_with_the_scores(loaded):
    llm = _llm(loaded)
    generation = llm.generate(PROMPTS[0])
    probed = batch.generate_in_batch(llm, generation)
    assert probed.token_ids == generation.token_ids  # the embedded model is not batch-dependent
    assert probed.margins == pytest.approx(generation.margins, abs=1e-4)


def test_a_mode_the_recorder_cannot_follow_keeps_the_scores_and_agrees(loaded):
    llm = _llm(loaded)
    overrides = {"prompt_lookup_num_tokens": 3}  # assisted generation: several positions per forward
    plan = plan_generation(loaded.generation_config, max_new_tokens=MAX_NEW_TOKENS, overrides=overrides)
    assert not can_record_steps(llm.model, GenerationConfig(**plan.config))
    assert can_record_steps(llm.model, GenerationConfig(**{**plan.config, "prompt_lookup_num_tokens": None}))
    assert_same(_fields(llm.generate(PROMPTS[1], **overrides)), old_generate(llm, PROMPTS[1], 0, **overrides))


def test_a_processor_passed_to_generate_would_see_the_scores_before_the_sampling_warpers(loaded):
    """Why the recorder is appended to transformers' own list rather than passed as `logits_processor=`:
    there it would run before temperature/top-k/top-p and record other figures than output_scores held."""
    from transformers import LogitsProcessorList

    llm = _llm(loaded)
    old = old_generate(llm, PROMPTS[0], 0, do_sample=True, seed=7)
    plan = plan_generation(loaded.generation_config, max_new_tokens=MAX_NEW_TOKENS,
                                  overrides={"do_sample": True, "seed": 7})
    config = GenerationConfig(**plan.config)
    input_ids = torch.tensor([llm.encode(PROMPTS[0])])
    recorder = StepRecorder()
    seed_everything(7)
    with torch.inference_mode(), hf._only_generation_config(llm.model, config):
        sequences = llm.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                       generation_config=config, logits_processor=LogitsProcessorList([recorder]))
    (early,) = recorder.finish(sequences[:, input_ids.shape[1]:])
    assert sequences[0, input_ids.shape[1]:].tolist() == old["token_ids"]
    assert early.logprobs != pytest.approx(old["logprobs"], abs=1e-3)


def test_generate_no_longer_keeps_the_scores(loaded, monkeypatch):
    llm = _llm(loaded)
    seen = []
    original = type(llm.model).generate

    def spy(self, *args, **kwargs):
        seen.append((kwargs["generation_config"].output_scores, kwargs.get("output_scores")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(llm.model), "generate", spy)
    llm.generate("Hi", max_new_tokens=3)
    assert len(seen) == 1 and not any(seen[0])
    assert "_get_logits_processor" not in vars(llm.model)  # the patch is gone after the call


# -- the recorder alone ---------------------------------------------------------------------------------------


def _steps(vocab: int, count: int, rows: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(rows, vocab, generator=generator) for _ in range(count)]


def test_steps_beyond_the_output_are_dropped_and_too_few_are_an_error():
    scores = _steps(50, 4)
    chosen = [int(s.argmax()) for s in scores]
    prompt = torch.tensor([[1, 2]])
    recorder = StepRecorder(top_k=2)
    for step, step_scores in enumerate(scores):  # a deferred stop check ran one step more than it kept
        recorder(torch.cat([prompt, torch.tensor([chosen[:step]])], dim=1), step_scores)
    stats = recorder.finish(torch.tensor([chosen[:3]]))
    (reference,) = [reference_statistics(tuple(scores[:3]), torch.tensor(chosen[:3]), 2, 0)]
    assert (stats[0].margins, stats[0].logprobs, stats[0].top_k_ids, stats[0].top_k_logprobs) == reference

    short = StepRecorder()
    short(prompt, scores[0])
    with pytest.raises(StepRecordError, match="saw 1 steps"):
        short.finish(torch.tensor([chosen[:2]]))


def test_between_steps_the_recorder_holds_only_small_tensors_and_the_scores_it_was_given():
    scores = _steps(8 * 64 * row_top.BLOCK, 3, rows=2)  # the block path
    recorder = StepRecorder(top_k=4)
    for step, step_scores in enumerate(scores):
        recorder(torch.zeros(2, 1 + step, dtype=torch.long), step_scores)
        held = [tensor for name, value in vars(recorder).items() if isinstance(value, list) for tensor in value]
        assert held and all(tensor.shape[-1] <= 4 for tensor in held)  # (rows, k) or (rows, 1) a step
        assert recorder._previous is step_scores  # generate's own tensor, alive anyway until the next step


def test_transformers_reads_the_recorders_signature_without_inspecting_a_bound_method():
    import gc
    import inspect
    import weakref

    recorder = StepRecorder()
    assert list(inspect.signature(recorder.__call__).parameters) == ["input_ids", "scores"]
    scores = torch.zeros(1, 4)
    assert recorder.__call__(torch.zeros(1, 1, dtype=torch.long), scores) is scores and recorder.steps == 1
    gc.disable()  # freed by reference counting alone: no cycle through that attribute
    try:
        alive = weakref.ref(recorder)
        del recorder
        assert alive() is None
    finally:
        gc.enable()


def test_a_chosen_token_that_is_not_in_the_output_is_an_error():
    scores = _steps(10, 2)
    recorder = StepRecorder()
    recorder(torch.tensor([[1]]), scores[0])
    recorder(torch.tensor([[1, 4]]), scores[1])
    with pytest.raises(StepRecordError, match="differ"):
        recorder.finish(torch.tensor([[5, 6]]))


def test_a_vocabulary_of_one_has_an_infinite_margin_and_no_steps_give_empty_lists():
    recorder = StepRecorder(top_k=3)
    recorder(torch.tensor([[0]]), torch.zeros(1, 1))
    (stats,) = recorder.finish(torch.tensor([[0]]))
    assert stats.margins == [float("inf")] and stats.logprobs == [0.0] and stats.top_k_ids == [[0]]
    assert StepRecorder(top_k=2).finish(torch.zeros(2, 0, dtype=torch.long))[1].top_k_ids == []
    assert StepRecorder().finish(torch.zeros(1, 0, dtype=torch.long))[0].top_k_ids is None


def test_appended_last_restores_the_method_and_appends_once():
    class Model:
        def _get_logits_processor(self):
            return ["own"]

    model = Model()
    with appended_last(model, "recorder"):
        assert model._get_logits_processor() == ["own", "recorder"]
        assert model._get_logits_processor() == ["own"]
    assert "_get_logits_processor" not in vars(model) and model._get_logits_processor() == ["own"]
    with pytest.raises(KeyError), appended_last(model, "recorder"):
        raise KeyError
    assert "_get_logits_processor" not in vars(model)
    assert not can_record_steps(object(), GenerationConfig())
