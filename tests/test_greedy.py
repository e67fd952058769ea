"""The forced-greedy plan: which fields of a model's generation config are kept, dropped or refused."""

import pytest

from pytest_llmdet.engines.greedy import GenerationArgumentError, model_config_use, plan_generation

QWEN_CHAT = {
    "do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
    "eos_token_id": [2, 0], "pad_token_id": 0, "bos_token_id": None,
}


def test_sampling_fields_are_not_inherited_and_processors_are():
    plan = plan_generation(QWEN_CHAT, max_new_tokens=32)
    assert plan.config == {
        "do_sample": False, "num_beams": 1, "max_new_tokens": 32, "repetition_penalty": 1.05,
        "eos_token_id": [2, 0], "pad_token_id": 0,
    }
    assert plan.inherited == {"repetition_penalty": 1.05}
    assert plan.ignored == {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8}
    assert plan.settings == {"do_sample": False, "max_new_tokens": 32, "num_beams": 1, "repetition_penalty": 1.05}


def test_inherit_processors_false_drops_them():
    plan = plan_generation(QWEN_CHAT, max_new_tokens=8, inherit_processors=False)
    assert "repetition_penalty" not in plan.config
    assert plan.inherited == {}
    assert plan.ignored["repetition_penalty"] == 1.05


def test_neutral_processor_values_are_not_reported_as_inherited():
    plan = plan_generation({"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}, max_new_tokens=8)
    assert plan.inherited == {}


def test_temperature_zero_means_greedy():
    plan = plan_generation(QWEN_CHAT, max_new_tokens=8, overrides={"temperature": 0})
    assert plan.config["do_sample"] is False
    assert "temperature" not in plan.config


def test_sampling_is_an_explicit_opt_in_with_a_seed_and_is_recorded():
    plan = plan_generation(QWEN_CHAT, max_new_tokens=8, overrides={"do_sample": True, "seed": 5, "top_p": 0.5})
    assert plan.config["do_sample"] is True
    assert plan.config["top_p"] == 0.5 and plan.config["temperature"] == 0.7
    assert plan.settings["seed"] == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"do_sample": True}, "needs an explicit seed"),
        ({"top_p": 0.9}, "only used when sampling"),
        ({"seed": 3}, "only applies together with do_sample=True"),
        ({"do_sample": True, "seed": 1, "temperature": 0}, "contradicts do_sample=True"),
        ({"num_beams": 4}, "change the search itself"),
        ({"output_scores": False}, "set by pytest-llmdet"),
        ({"seed": "x", "do_sample": True}, "seed must be an integer"),
        ({"no_such_field": 1}, "unknown generation setting 'no_such_field'"),
    ],
)
def test_contradictory_or_unknown_overrides_are_refused(overrides, message):
    with pytest.raises(GenerationArgumentError, match=message):
        plan_generation(QWEN_CHAT, max_new_tokens=8, overrides=overrides,
                        known_fields=frozenset({"do_sample", "top_p", "temperature", "num_beams", "max_new_tokens"}))


def test_caller_overrides_win_over_inherited_processors():
    plan = plan_generation(QWEN_CHAT, max_new_tokens=8, overrides={"repetition_penalty": 1.3, "max_new_tokens": 4})
    assert plan.config["repetition_penalty"] == 1.3
    assert plan.config["max_new_tokens"] == 4


GEMMA_2 = {  # google/gemma-2-2b-it's generation_config.json
    "_from_model_config": True, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
    "pad_token_id": 0, "transformers_version": "4.42.0.dev0",
}


def test_every_field_of_a_model_config_is_overridden_inherited_or_dropped_with_a_reason():
    use = model_config_use({**GEMMA_2, "max_length": 8192, "use_cache": True, "repetition_penalty": 1.0,
                            "stop_strings": ["</s>"], "my_own_field": 3, "suppress_tokens": None})
    assert use.overridden == {}
    assert use.inherited == {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
    assert use.dropped == {
        "cache_implementation": ("hybrid", "generate's default cache is used"),
        "max_length": (8192, "llm_max_new_tokens sets the length"),
        "my_own_field": (3, "not a setting pytest-llmdet applies"),
        "repetition_penalty": (1.0, "its neutral value: no effect"),
        "stop_strings": (["</s>"], "not supported: generation stops at EOS or after max_new_tokens"),
        "use_cache": (True, "generate's default cache is used"),
    }


def test_the_config_use_agrees_with_the_plan():
    for inherit in (True, False):
        use = model_config_use(QWEN_CHAT, inherit_processors=inherit)
        plan = plan_generation(QWEN_CHAT, max_new_tokens=8, inherit_processors=inherit)
        assert {k: plan.config[k] for k in use.inherited} == use.inherited
        assert not set(use.dropped) & set(plan.config)
        assert set(use.overridden) | set(use.dropped) == set(plan.ignored)
