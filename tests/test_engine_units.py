"""The pure logic of the engines beside transformers: the plan as sampling fields, rows from per-step
log-probs, engine arguments, variant keys and fingerprint differences by engine, the served model's choice."""

from __future__ import annotations

import pytest

from pytest_llmdet.engines.fingerprint import environment_fingerprint, fingerprint_changes
from pytest_llmdet.engines.greedy import GenerationArgumentError, plan_generation
from pytest_llmdet.engines.kinds import KINDS, check_settings, engine_kind
from pytest_llmdet.engines.models import LoadedModel, ModelSpec, ServerOptions, TransformersOptions, VLLMOptions
from pytest_llmdet.engines.openai_server import choose_served_model
from pytest_llmdet.engines.remote_sampling import sampling_fields
from pytest_llmdet.engines.rows import row_from_steps
from pytest_llmdet.engines.sources import ModelLoadError, ModelSource
from pytest_llmdet.errors import cause_line, first_line, named_line
from pytest_llmdet.golden.variants import Environment, choose_variant, environment_of, parse_key
from pytest_llmdet.markers import model_choice
from pytest_llmdet.settings import Settings
from pytest_llmdet.settings.values import ENGINES, SettingsError, engine_arguments, parse_engine_args

QWEN = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
        "eos_token_id": [2, 0], "bos_token_id": 0, "pad_token_id": 0}


def test_greedy_plan_becomes_temperature_zero_with_every_field_explicit():
    plan = plan_generation(QWEN, max_new_tokens=16)
    fields = sampling_fields(plan, "vllm", prompt_length=5, logprobs=5)
    assert fields == {"max_tokens": 16, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                      "repetition_penalty": 1.05, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                      "min_tokens": 0, "stop_token_ids": [0, 2], "ignore_eos": True, "logprobs": 5, "seed": None}


def test_seeded_sampling_sends_the_models_sampling_fields_and_the_seed():
    plan = plan_generation(QWEN, max_new_tokens=4, overrides={"do_sample": True, "seed": 7})
    fields = sampling_fields(plan, "openai", prompt_length=3, logprobs=2)
    assert (fields["temperature"], fields["top_p"], fields["top_k"], fields["seed"]) == (0.7, 0.8, 20, 7)


def test_without_inherited_processors_the_penalty_is_neutral():
    plan = plan_generation(QWEN, max_new_tokens=4, inherit_processors=False)
    assert sampling_fields(plan, "vllm", 3, 2)["repetition_penalty"] == 1.0


@pytest.mark.parametrize("field", [{"no_repeat_ngram_size": 2}, {"suppress_tokens": [5]}, {"bad_words_ids": [[5]]},
                                   {"sequence_bias": {(5,): 1.0}}, {"forced_eos_token_id": 2}])
def test_a_processor_the_engine_cannot_apply_is_an_error_naming_it_and_the_engine(field):
    plan = plan_generation(QWEN, max_new_tokens=4, overrides=field)
    name = next(iter(field))
    with pytest.raises(GenerationArgumentError, match=f"{name}=.* cannot be applied by the vllm engine"):
        sampling_fields(plan, "vllm", 3, 2)


def test_neutral_processor_values_and_renormalize_are_accepted():
    plan = plan_generation(QWEN, max_new_tokens=4, overrides={"no_repeat_ngram_size": 0, "renormalize_logits": True})
    assert sampling_fields(plan, "vllm", 3, 2)["max_tokens"] == 4


def test_minimum_length_becomes_min_tokens_counted_from_the_prompt():
    plan = plan_generation(QWEN, max_new_tokens=8, overrides={"min_length": 10})
    assert sampling_fields(plan, "vllm", prompt_length=6, logprobs=2, tokenizer_eos=2)["min_tokens"] == 4
    plan = plan_generation(QWEN, max_new_tokens=8, overrides={"min_new_tokens": 3})
    assert sampling_fields(plan, "vllm", prompt_length=6, logprobs=2, tokenizer_eos=2)["min_tokens"] == 3


def test_a_minimum_length_that_would_also_suppress_another_eos_is_refused():
    plan = plan_generation(QWEN, max_new_tokens=8, overrides={"min_new_tokens": 3})
    with pytest.raises(GenerationArgumentError, match="tokenizer's EOS token 7"):
        sampling_fields(plan, "vllm", prompt_length=6, logprobs=2, tokenizer_eos=7)


def test_a_row_from_steps_has_the_margins_logprobs_and_top_k_of_the_transformers_engine():
    steps = [{5: -0.1, 9: -2.6, 3: -3.0}, {7: -1.0, 8: -1.0}]
    row = row_from_steps([5, 8], steps, top_k=2, eos_ids=[2])
    assert row.token_ids == [5, 8]
    assert row.margins == pytest.approx([2.5, 0.0])
    assert row.logprobs == [-0.1, -1.0]
    assert row.top_k_ids == [[5, 9], [7, 8]]  # a tie in the order of the token ids, whatever the engine's order
    assert row.eos_ids == frozenset({2})
    assert row_from_steps([5], [{5: -0.1}], top_k=0, eos_ids=[]).margins == [float("inf")]
    assert row_from_steps([5], [{5: -0.1, 6: -1}], top_k=0, eos_ids=[]).top_k_ids is None


def test_a_row_needs_the_chosen_token_among_each_steps_candidates():
    with pytest.raises(ValueError, match="chosen token 4"):
        row_from_steps([4], [{5: -0.1}], top_k=0, eos_ids=[])
    with pytest.raises(ValueError, match="2 tokens but log-probs for 1 steps"):
        row_from_steps([4, 5], [{4: -0.1}], top_k=0, eos_ids=[])


def test_engine_arguments_are_typed_sorted_pairs():
    pairs = parse_engine_args('tensor_parallel_size=2 enforce_eager=true max_model_len=2048 '
                              'quantization=none gpu_memory_utilization=0.5 name="a b" hf_overrides=\'{"x":1}\'')
    assert pairs == (
        ("enforce_eager", True), ("gpu_memory_utilization", 0.5), ("hf_overrides", '{"x":1}'),
        ("max_model_len", 2048), ("name", "a b"), ("quantization", None), ("tensor_parallel_size", 2))
    assert engine_arguments(pairs)["hf_overrides"] == {"x": 1}  # what vllm.LLM gets
    assert parse_engine_args("") == ()
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_engine_args("hf_overrides={x}")
    with pytest.raises(ValueError, match="seed is set by pytest-llmdet"):
        parse_engine_args("seed=3")


def test_variant_keys_name_the_engine_unless_it_is_transformers():
    assert Environment("cuda", "bfloat16", engine="vllm").key == "vllm/cuda:bfloat16"
    assert Environment("cpu", "float32").key == "cpu:float32"
    assert parse_key("vllm/cuda:bfloat16:9.0") == Environment("cuda", "bfloat16", "9.0", "vllm")
    assert parse_key("cpu:float32") == Environment("cpu", "float32")
    assert parse_key("/cpu:float32") is None
    vllm_here = Environment("cpu", "float32", engine="vllm")
    default = Environment("cpu", "float32")  # recorded on transformers
    assert choose_variant(["vllm/cpu:float32"], default, vllm_here) == "vllm/cpu:float32"
    assert choose_variant(["vllm/cpu:float32"], default, default) is None  # transformers: the default
    assert choose_variant(["cpu:bfloat16"], default, vllm_here) is None  # another engine's never matches
    assert environment_of({"device_type": "cpu", "dtype": "float32", "engine": "vllm"}) == vllm_here


def _fingerprint(**engine):
    return environment_fingerprint(model="m", source_kind="hub", location="m", revision="r", dtype="float32",
                                   device="cpu", generation={"do_sample": False}, **engine)


def test_a_transformers_fingerprint_is_unchanged_and_a_check_on_vllm_names_the_engine_change():
    recorded = _fingerprint()
    assert "engine" not in recorded
    current = _fingerprint(engine="vllm", engine_version="0.32.0", engine_arguments={"enforce_eager": True},
                           logprobs="processed")
    changes = fingerprint_changes(recorded, current)
    assert "engine: transformers → vllm" in changes
    assert "engine_version: (absent) → 0.32.0" in changes
    assert "engine_arguments.enforce_eager: (absent) → True" in changes


def test_the_served_model_is_the_one_named_like_the_model_or_by_llm_served_model():
    source = ModelSource("local", "/models/tiny-qwen", "models/tiny-qwen")
    spec = ModelSpec(source, options=ServerOptions("http://u:secret@127.0.0.1:8000/v1"))
    assert choose_served_model(["tiny-qwen"], spec) == "tiny-qwen"
    assert choose_served_model(["other", "/srv/tiny-qwen"], spec) == "/srv/tiny-qwen"
    with pytest.raises(ModelLoadError, match=r"serves anything, and none is named like model 'models/tiny-qwen' "
                                             r".*--llm-served-model / llm_served_model"):
        choose_served_model(["anything"], spec)  # the only model, but another one: never taken for this one
    with pytest.raises(ModelLoadError, match=r"serves a, b, and none"):
        choose_served_model(["a", "b"], spec)
    named = ModelSpec(source, options=ServerOptions("http://127.0.0.1:8000/v1", served_model="prod-qwen"))
    assert choose_served_model(["prod-qwen", "other"], named) == "prod-qwen"
    with pytest.raises(ModelLoadError, match="does not serve llm_served_model = 'prod-qwen'; it serves: a"):
        choose_served_model(["a"], named)
    assert "secret" not in repr(spec)


def test_an_engines_reason_is_the_innermost_cause_in_one_line():
    try:
        try:
            raise ValueError("Unsupported CPU attention configuration: head_dim=16\nmore detail")
        except ValueError as inner:
            raise RuntimeError("Engine core initialization failed. See root cause above.") from inner
    except RuntimeError as outer:
        assert cause_line(outer) == "ValueError: Unsupported CPU attention configuration: head_dim=16"
        assert named_line(outer) == "RuntimeError: Engine core initialization failed. See root cause above."
    assert named_line(KeyboardInterrupt()) == "KeyboardInterrupt"  # no text: the type alone
    assert first_line(ValueError("  \n"), "ValueError") == "ValueError"
    assert first_line(OSError(" disk full\n  details"), "OSError") == "disk full"
    assert first_line("  a\nb") == "a"


def test_the_model_marker_selects_an_engine_with_or_without_a_model():
    assert model_choice((), {"engine": "vllm"}, Settings()).engine == "vllm"
    assert model_choice((), {"engine": "vllm"}, Settings()).name is None
    assert model_choice(("m",), {}, Settings(engine="openai")).engine == "openai"
    with pytest.raises(SettingsError, match="allowed values: transformers, vllm, openai"):
        model_choice(("m",), {"engine": "tgi"}, Settings())
    with pytest.raises(SettingsError, match="usage"):
        model_choice((), {}, Settings())


def test_a_url_is_shown_without_its_user_name_and_password():
    from pytest_llmdet.engines.openai_server import shown_url

    assert shown_url("http://user:secret@127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert shown_url("https://token@host/v1/") == "https://host/v1/"
    assert shown_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


def test_a_rerecord_command_names_the_engine_the_check_ran_on_and_its_arguments_read_back():
    import shlex

    from pytest_llmdet.commands import rerecord_command

    command = rerecord_command({"engine": "vllm", "vllm_args": "enforce_eager=true hf_overrides='{\"a\": 1}' "
                                "name='a b'"}, environ={})
    words = shlex.split(command.flags_line())
    assert words[:3] == ["--llm-engine", "vllm", "--llm-vllm-args"]
    assert engine_arguments(parse_engine_args(words[3])) == {"enforce_eager": True, "hf_overrides": {"a": 1},
                                                             "name": "a b"}
    server = rerecord_command({"engine": "openai", "base_url": "http://u:secret@h:1/v1"}, environ={})
    assert server.flags_line() == "--llm-engine openai --llm-base-url http://h:1/v1"  # no password, ever
    assert rerecord_command({}, environ={}).flags_line() == ""


def engine_line(settings: Settings) -> str | None:
    return engine_kind(settings.engine).header_line(settings)


def test_the_header_names_the_engine_and_what_does_not_apply_there():
    assert engine_line(Settings()) is None
    assert engine_line(Settings(engine="vllm", vllm_args=(("enforce_eager", True),))) == (
        "llmdet: engine vllm (vLLM's offline LLM in this process; llm_vllm_args enforce_eager=True; llm_device "
        "does not apply)")
    line = engine_line(Settings(engine="openai", base_url="http://u:secret@h:1/v1", api_key_env="MY_KEY"))
    assert line == ("llmdet: engine openai, the server at http://h:1/v1 (its dtype, device and deterministic "
                    "algorithms are the server's; API key from $MY_KEY)")


def test_the_threads_factor_does_not_apply_where_torchs_thread_count_is_pinned(monkeypatch):
    import torch

    from pytest_llmdet.engines import transformers as engine_module

    monkeypatch.setattr(torch, "set_num_threads", lambda count: None)  # what vLLM's CPU worker does in-process
    assert engine_module._thread_count_settable(torch.get_num_threads() + 1) is False


# -- the engine kinds ------------------------------------------------------------------------------------------

def test_there_is_one_kind_for_each_engine_the_settings_allow():
    assert tuple(KINDS) == ENGINES
    assert all(engine_kind(name).name == name for name in ENGINES)


def test_each_engines_spec_holds_only_the_settings_it_uses():
    settings = Settings(device_map="balanced", vllm_args=(("enforce_eager", True),), base_url="http://h:1/v1",
                        served_model="m", api_key_env="KEY", request_timeout=5.0)
    assert engine_kind("transformers").options(settings) == TransformersOptions("balanced")
    assert engine_kind("vllm").options(settings) == VLLMOptions((("enforce_eager", True),))
    assert engine_kind("vllm").options(Settings(threads=3)) == VLLMOptions((), 3)
    assert engine_kind("openai").options(settings) == ServerOptions("http://h:1/v1", "m", "KEY", 5.0)
    source = ModelSource("embedded", "/m", "m")
    # one model on one engine is one spec, whatever the other engines' settings are
    assert ModelSpec(source, options=engine_kind("vllm").options(settings)) == \
        ModelSpec(source, options=engine_kind("vllm").options(Settings(vllm_args=(("enforce_eager", True),))))
    assert ModelSpec(source, options=VLLMOptions()).engine == "vllm"
    assert ModelSpec(source).engine == "transformers" and ModelSpec(source).device_map is None
    assert ModelSpec(source, options=TransformersOptions("auto")).device_map == "auto"
    assert ModelSpec(source, options=ServerOptions("http://h:1/v1")).device_map is None


def test_the_openai_engine_needs_a_url_at_startup_and_when_a_marker_chooses_it():
    check_settings(Settings())  # transformers needs nothing
    check_settings(Settings(engine="vllm"))
    check_settings(Settings(engine="openai", base_url="http://h:1/v1"))
    with pytest.raises(SettingsError, match=r"^pytest-llmdet: --llm-engine openai needs the server's URL: set "
                                            r"--llm-base-url or llm_base_url, such as http://127.0.0.1:8000/v1$"):
        check_settings(Settings(engine="openai"))
    with pytest.raises(SettingsError, match=r"^the openai engine needs the server's URL: set --llm-base-url or "
                                            r"llm_base_url, such as http://127.0.0.1:8000/v1$"):
        engine_kind("openai").options(Settings())


def test_vllm_on_the_cpu_leaves_one_core_to_the_rest_unless_the_user_chose_a_thread_count():
    from pytest_llmdet.engines.vllm import cpu_threads

    assert cpu_threads(None, {}, 2) == 1  # vLLM's server layout: every core but one for the worker
    assert cpu_threads(None, {}, 16) == 15
    assert cpu_threads(None, {}, 1) == 1  # never none
    assert cpu_threads(None, {"OMP_NUM_THREADS": ""}, 8) == 7  # set but empty: not a choice
    assert cpu_threads(4, {}, 16) is None  # llm_threads: configure_torch has set it already
    assert cpu_threads(None, {"OMP_NUM_THREADS": "2"}, 16) is None  # torch's default follows it


def _loaded(options, details=None, device="cpu"):
    return LoadedModel(ModelSpec(ModelSource("local", "/models/q", "models/q"), "bfloat16", options=options),
                       model=None, tokenizer=None, device=device, load_seconds=0.0, details=details)


def test_each_engine_names_the_models_it_loaded_in_the_summary():
    from pytest_llmdet.engines.openai_server import ServerDetails
    from pytest_llmdet.engines.vllm import VLLMDetails

    def line(loaded):
        return engine_kind(loaded.spec.engine).loaded_line(loaded)

    assert line(_loaded(TransformersOptions())) == "models/q bfloat16 cpu"
    assert line(_loaded(TransformersOptions("balanced"), device="cuda:0")) == \
        "models/q bfloat16 device_map balanced (inputs on cuda:0)"
    assert line(_loaded(VLLMOptions(), VLLMDetails(512, "0.32.0", "bfloat16", 20))) == \
        "models/q bfloat16 on the vllm engine (0.32.0, cpu)"
    assert line(_loaded(VLLMOptions(), VLLMDetails(512, "0.32.0", "bfloat16", 20, 1))) == \
        "models/q bfloat16 on the vllm engine (0.32.0, cpu, 1 thread)"
    assert line(_loaded(VLLMOptions(), VLLMDetails(512, "0.32.0", "bfloat16", 20, 7))).endswith(
        "(0.32.0, cpu, 7 threads)")
    server = ServerDetails(512, "q", "vllm 0.32.0", "0.32.0", "http://h:1/v1")
    assert line(_loaded(ServerOptions("http://u:p@h:1/v1"), server, "server")) == \
        "models/q on the openai engine: q served by vllm 0.32.0 at http://h:1/v1"


def test_the_remote_engines_describe_themselves_for_the_fingerprint():
    from pytest_llmdet.engines.openai_server import ServerDetails, ServerEngine
    from pytest_llmdet.engines.vllm import VLLMDetails, VLLMEngine

    where = {"model": "models/q", "source_kind": "local", "location": "/models/q", "revision": None,
             "compute_capability": None, "device_map": None}
    vllm = VLLMEngine(_loaded(VLLMOptions((("enforce_eager", True),)), VLLMDetails(512, "0.32.0", "float16", 20)))
    assert vllm.describe() == {**where, "dtype": "float16", "device": "cpu", "engine": "vllm",
                               "engine_version": "0.32.0", "engine_arguments": {"enforce_eager": True},
                               "logprobs": "processed"}
    assert vllm.max_positions == 512
    server = ServerEngine(_loaded(ServerOptions("http://h:1/v1"),
                                  ServerDetails(256, "q", "vllm 0.32.0", "0.32.0", "http://h:1/v1", "/srv/q", 256),
                                  "server"))
    assert server.describe() == {**where, "dtype": "unknown", "device": "server", "engine": "openai",
                                 "engine_version": "vllm 0.32.0", "served_model": "q", "served_root": "/srv/q",
                                 "served_max_model_len": 256,
                                 "logprobs": "as the server computes them (vLLM: its --logprobs-mode)"}
    assert server.max_positions == 256 and server.server == "the vllm 0.32.0 server at http://h:1/v1"


def test_what_a_server_lists_of_its_model_is_read_and_anything_else_is_left_out():
    from types import SimpleNamespace

    from pytest_llmdet.engines.openai_server import model_entry

    assert model_entry(SimpleNamespace(owned_by="vllm", root="/models/q", max_model_len=4096)) == \
        ("vllm", "/models/q", 4096)
    assert model_entry(SimpleNamespace(id="q")) == ("", None, None)  # a server that says nothing of them
    assert model_entry(SimpleNamespace(owned_by=None, root="", max_model_len=True)) == ("", None, None)


def test_a_fingerprint_recorded_before_the_server_fields_is_not_shown_as_changed():
    from pytest_llmdet.engines.fingerprint import fingerprint_changes

    old = {"engine": "openai", "served_model": "q"}
    new = {**old, "served_root": "/srv/q", "served_max_model_len": 512}
    assert fingerprint_changes(old, new) == []
    assert fingerprint_changes(new, {**new, "served_root": "/srv/other"}) == ["served_root: /srv/q → /srv/other"]


def test_xdist_workers_split_the_gpu_memory_of_the_vllm_engine_on_cuda_only():
    from pytest_llmdet.engines.vllm import worker_arguments

    assert worker_arguments({}, 2, on_cuda=True) == {"gpu_memory_utilization": 0.45}  # vLLM's 0.9, halved
    assert worker_arguments({"gpu_memory_utilization": 0.8, "enforce_eager": True}, 4, on_cuda=True) == \
        {"gpu_memory_utilization": 0.2, "enforce_eager": True}  # the run's share, split
    assert worker_arguments({"enforce_eager": True}, 3, on_cuda=True)["gpu_memory_utilization"] == 0.3
    assert worker_arguments({}, 1, on_cuda=True) == {}  # no xdist: vLLM's own default
    assert worker_arguments({"gpu_memory_utilization": 0.8}, 2, on_cuda=False) == {"gpu_memory_utilization": 0.8}


def test_the_worker_count_comes_from_xdists_variable(monkeypatch):
    from pytest_llmdet.engines.vllm import xdist_workers

    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert xdist_workers() == 1
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    assert xdist_workers() == 4
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "0")
    assert xdist_workers() == 1


def test_the_vllm_summary_line_says_when_a_worker_took_a_share_of_the_gpu():
    from pytest_llmdet.engines.vllm import VLLMDetails

    details = VLLMDetails(512, "0.32.0", "float16", 20, memory_share=0.45)
    assert engine_kind("vllm").loaded_line(_loaded(VLLMOptions(), details, "cuda")) == \
        "models/q bfloat16 on the vllm engine (0.32.0, cuda, gpu_memory_utilization 0.45 per xdist worker)"


def test_json_engine_arguments_keep_the_settings_and_the_model_spec_hashable():
    # a dict value made the spec unhashable: the model pool's lookup failed with a TypeError
    pairs = parse_engine_args('compilation_config=\'{"level": 0, "cudagraph_sizes": [1, 2]}\' enforce_eager=true')
    settings = Settings(engine="vllm", vllm_args=pairs)
    options = engine_kind("vllm").options(settings)
    assert hash(settings) and hash(options)
    assert options == engine_kind("vllm").options(Settings(engine="vllm", vllm_args=parse_engine_args(
        'enforce_eager=true compilation_config=\'{"cudagraph_sizes":[1,2],"level":0}\'')))  # the same JSON
    assert engine_arguments(pairs) == {"compilation_config": {"cudagraph_sizes": [1, 2], "level": 0},
                                       "enforce_eager": True}
