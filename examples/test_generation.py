"""Examples: the `llm` fixture gives the same tokens on every run, whatever the model's sampling config says.

Run with `pytest examples/`. The default model is the tiny one embedded in pytest-llmdet; point
`--llm-model` (or `llm_model` in your ini file) at your own model directory or hub id.
"""

import pytest


def test_same_prompt_same_tokens(llm):
    first = llm.generate("Once upon a time")
    second = llm.generate("Once upon a time")
    assert first.token_ids == second.token_ids
    assert first.finish_reason in ("eos", "length")


def test_greedy_is_forced_and_recorded(llm):
    generation = llm.generate("The fox and the crow", max_new_tokens=8)
    assert generation.settings["do_sample"] is False
    assert "temperature" not in generation.settings  # the model's sampling settings are not inherited
    assert len(generation.token_ids) == len(generation.margins) == 8


def test_chat_messages(llm):
    generation = llm.generate([{"role": "user", "content": "Tell me a story about a fox."}])
    assert generation.text.strip()


def test_temperature_zero_means_greedy(llm):
    assert llm.generate("A king", temperature=0).token_ids == llm.generate("A king").token_ids


def test_sampling_is_reproducible_with_a_seed(llm):
    a = llm.generate("A king", do_sample=True, seed=1234)
    b = llm.generate("A king", do_sample=True, seed=1234)
    assert a.token_ids == b.token_ids


@pytest.mark.parametrize("max_new_tokens", [1, 4, 16])
def test_length_is_respected(llm, max_new_tokens):
    assert len(llm.generate("Hello", max_new_tokens=max_new_tokens).token_ids) <= max_new_tokens
