"""Settings: ini options and flags, the flag winning, bad values refused at startup."""

from pathlib import Path

import pytest

from pytest_llmdet.settings import OPTIONS, Settings
from pytest_llmdet.settings import resolve as resolve_all
from pytest_llmdet.settings.values import SettingsError


def resolve(flags=None, ini=None, inipath=None):
    return resolve_all(flags or {}, ini or {}, inipath, Path("/invocation"))[0]


def test_defaults_match_the_documented_ones():
    settings = resolve()
    assert settings == Settings(model_base_dir=Path("/invocation"))
    assert (settings.dtype, settings.device, settings.seed, settings.max_new_tokens) == ("float32", "cpu", 0, 32)
    assert settings.trust_remote_code is False and settings.threads is None
    assert settings.inherit_processors is True and settings.deterministic_algorithms == "warn"


def test_flag_wins_over_ini():
    settings = resolve(flags={"dtype": "bfloat16"}, ini={"dtype": "float16", "seed": "7"})
    assert settings.dtype == "bfloat16"
    assert settings.seed == 7


def test_factors_come_from_the_flag_or_the_ini_file_in_the_matrix_order():
    assert resolve().factors == ()
    assert resolve(ini={"factors": "dtype, cache"}).factors == ("cache", "dtype")
    assert resolve(flags={"factors": "all"}, ini={"factors": "cache"}).factors == (
        "batch", "cache", "static-cache", "attention", "threads", "dtype")


def test_ini_model_path_is_relative_to_the_ini_file():
    settings = resolve(ini={"model": "models/tiny"}, inipath=Path("/project/pytest.ini"))
    assert settings.model == "models/tiny"
    assert settings.model_base_dir == Path("/project")


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("dtype", "fp33", "float32, bfloat16, float16, auto"),
        ("device", "gpu", "cpu, auto, cuda, cuda:N, mps"),
        ("device_map", "everywhere", "auto, balanced, balanced_low_0, sequential"),
        ("seed", "-1", "an integer >= 0"),
        ("max_new_tokens", "0", "an integer >= 1"),
        ("trust_remote_code", "maybe", "true, false"),
        ("threads", "two", "an integer >= 1"),
        ("inherit_processors", "perhaps", "true, false"),
        ("deterministic_algorithms", "always", "warn, strict, off"),
        ("engine", "tgi", "transformers, vllm, openai"),
        ("base_url", "localhost:8000", "the http:// or https:// URL"),
        ("api_key_env", "sk-123 abc", "the name of an environment variable"),
        ("request_timeout", "0", "a number of seconds > 0"),
        ("vllm_args", "tensor_parallel_size", "is not key=value"),
        ("vllm_args", "dtype=half", "dtype is set by --llm-dtype / llm_dtype"),
        ("vllm_args", "a=1 a=2", "a is given twice"),
    ],
)
def test_a_bad_value_names_the_option_and_the_allowed_values(name, value, allowed):
    with pytest.raises(SettingsError) as flag_error:
        resolve(flags={name: value})
    assert f"--llm-{name.replace('_', '-')}" in str(flag_error.value)
    assert allowed in str(flag_error.value)
    with pytest.raises(SettingsError) as ini_error:
        resolve(ini={name: value}, inipath=Path("/project/pytest.ini"))
    assert f"llm_{name} in /project/pytest.ini" in str(ini_error.value)


def test_every_option_comes_from_one_table_with_names_that_match():
    both = {o.ini for o in OPTIONS if o.has_flag and o.has_ini}
    assert both == {
        "llm_model", "llm_dtype", "llm_device", "llm_device_map", "llm_seed", "llm_max_new_tokens",
        "llm_trust_remote_code",
        "llm_threads", "llm_inherit_processors", "llm_deterministic_algorithms", "llm_compare", "llm_top_k",
        "llm_determinism_runs", "llm_factors", "llm_engine", "llm_base_url", "llm_served_model", "llm_api_key_env",
        "llm_request_timeout", "llm_vllm_args",
    }
    assert {o.ini for o in OPTIONS if o.has_ini and not o.has_flag} == {"llm_snapshot_dir", "llm_near_tie"}
    assert {o.flag for o in OPTIONS if o.has_flag and not o.has_ini} == {
        "--llm-snapshot", "--llm-snapshot-update", "--llm-snapshot-details", "--llm-snapshot-variant",
        "--llm-snapshot-review",
        "--llm-report", "--llm-check-determinism",
    }
    assert all(o.flag == "--" + o.ini.replace("_", "-") for o in OPTIONS)


def test_the_determinism_runs_come_from_the_ini_file_too(pytester):
    pytester.makeini("[pytest]\nllm_determinism_runs = 2\n")
    pytester.makepyfile("""
        import pytest

        RUNS = []

        @pytest.mark.llm_determinism
        def test_counted():
            RUNS.append(1)

        def test_after():
            assert len(RUNS) == 2
    """)
    pytester.runpytest().assert_outcomes(passed=2)


def test_bad_flag_is_a_usage_error_at_startup(pytester):
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--llm-dtype", "fp33")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad value 'fp33' for --llm-dtype; allowed values: float32, bfloat16*"])


def test_bad_ini_value_is_a_usage_error_naming_the_file(pytester):
    pytester.makeini("[pytest]\nllm_device = gpu\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad value 'gpu' for llm_device in *tox.ini*allowed values: cpu, auto*"])
