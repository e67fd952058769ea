"""Settings: ini options and flags, the flag winning, bad values refused at startup; every numeric setting's
bounds (seeds in numpy's range, threads up to four per CPU, max_new_tokens >= 1), a value out of range a usage
error naming the option (and the ini file)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sessions import run

from pytest_llmdet.engines.greedy import GenerationArgumentError, plan_generation
from pytest_llmdet.settings import OPTIONS, Settings, SnapshotSettings
from pytest_llmdet.settings import resolve as resolve_all
from pytest_llmdet.settings.values import SEED_MAX, SettingsError, threads_max

pytestmark = pytest.mark.usefixtures("only_this_plugin")


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
        "batch", "cache", "static-cache", "prefix-cache", "attention", "threads", "dtype")


def test_prefetch_is_a_switch_that_the_ini_file_can_turn_on():
    assert resolve().prefetch is False and resolve().concurrency == 32
    assert resolve(flags={"prefetch": True}).prefetch is True
    assert resolve(ini={"prefetch": "true", "concurrency": "4"}) == resolve(flags={"prefetch": True,
                                                                                "concurrency": "4"})
    assert resolve(flags={"prefetch": False}, ini={"prefetch": "false"}).prefetch is False
    with pytest.raises(SettingsError, match="bad value 'often' for llm_prefetch in /p/pytest.ini; allowed values: "
                       "true, false"):
        resolve(ini={"prefetch": "often"}, inipath=Path("/p/pytest.ini"))


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
        ("concurrency", "0", "an integer >= 1"),
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
        "llm_request_timeout", "llm_vllm_args", "llm_prefetch", "llm_concurrency",
    }
    assert {o.ini for o in OPTIONS if o.has_ini and not o.has_flag} == {"llm_snapshot_dir", "llm_near_tie"}
    assert {o.flag for o in OPTIONS if o.has_flag and not o.has_ini} == {
        "--llm-snapshot", "--llm-snapshot-update", "--llm-snapshot-details", "--llm-snapshot-variant",
        "--llm-snapshot-review",
        "--llm-report", "--llm-report-html", "--llm-summary-md", "--llm-check-determinism",
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
    run(pytester, ).assert_outcomes(passed=2)


def test_bad_flag_is_a_usage_error_at_startup(pytester):
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester, "--llm-dtype", "fp33")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad value 'fp33' for --llm-dtype; allowed values: float32, bfloat16*"])


def test_bad_ini_value_is_a_usage_error_naming_the_file(pytester):
    pytester.makeini("[pytest]\nllm_device = gpu\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester, )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad value 'gpu' for llm_device in *tox.ini*allowed values: cpu, auto*"])



def test_seed_accepts_the_whole_numpy_range():
    assert SEED_MAX == 2**32 - 1
    assert resolve(flags={"seed": "0"}).seed == 0
    assert resolve(flags={"seed": str(2**32 - 1)}).seed == 2**32 - 1
    assert resolve(ini={"seed": str(2**32 - 1)}).seed == 2**32 - 1


@pytest.mark.parametrize("value", [str(2**32), str(2**64), "-1"])
def test_a_seed_outside_numpys_range_names_the_option_and_the_range(value):
    with pytest.raises(SettingsError) as flag_error:
        resolve(flags={"seed": value})
    assert str(flag_error.value) == (
        f"pytest-llmdet: bad value {value!r} for --llm-seed; allowed values: an integer >= 0 and <= 4294967295 "
        "(2**32 - 1, numpy's largest seed)"
    )
    with pytest.raises(SettingsError, match=r"for llm_seed in /project/pytest\.ini; .*<= 4294967295"):
        resolve(ini={"seed": value}, inipath=Path("/project/pytest.ini"))


def test_a_seed_of_2_to_the_32_is_a_usage_error_at_startup(pytester):
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester, "--llm-seed", str(2**32))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad value '4294967296' for --llm-seed; allowed values: an integer >= 0 "
                                 "and <= 4294967295*"])


def test_a_seed_too_large_in_the_ini_file_is_a_usage_error_naming_the_file(pytester):
    pytester.makeini(f"[pytest]\nllm_seed = {2**32}\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad value '4294967296' for llm_seed in *tox.ini; allowed values: *"])


def test_the_largest_seed_runs(pytester):
    pytester.makepyfile("""
        import numpy, random

        def test_seeded(llm):
            assert llm.seed == 2**32 - 1
            assert random.random() == random.Random(2**32 - 1).random()
            llm.generate("Hi", max_new_tokens=1)
    """)
    run(pytester, "--llm-seed", str(2**32 - 1)).assert_outcomes(passed=1)


@pytest.mark.parametrize("seed", [2**32, -1, True, 1.0])
def test_a_sampling_seed_outside_numpys_range_is_refused(seed):
    with pytest.raises(GenerationArgumentError) as error:
        plan_generation({}, max_new_tokens=4, overrides={"do_sample": True, "seed": seed})
    assert str(error.value) == f"seed must be an integer from 0 to 2**32 - 1 (4294967295), not {seed!r}"


def test_the_largest_sampling_seed_is_accepted():
    plan = plan_generation({}, max_new_tokens=4, overrides={"do_sample": True, "seed": 2**32 - 1})
    assert plan.seed == 2**32 - 1


def test_threads_allow_four_per_cpu(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert threads_max() == 8
    assert resolve(flags={"threads": "1"}).threads == 1
    assert resolve(flags={"threads": "8"}).threads == 8
    with pytest.raises(SettingsError) as error:
        resolve(flags={"threads": "9"})
    assert str(error.value) == ("pytest-llmdet: bad value '9' for --llm-threads; allowed values: an integer >= 1 "
                                "and <= 8 (4 x the 2 CPUs of this machine)")
    with pytest.raises(SettingsError, match=r"'0' for llm_threads in /project/pytest\.ini; .*>= 1 and <= 8"):
        resolve(ini={"threads": "0"}, inipath=Path("/project/pytest.ini"))


def test_threads_fall_back_to_a_fixed_maximum_when_the_cpu_count_is_unknown(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert threads_max() == 256
    assert resolve(flags={"threads": "256"}).threads == 256
    with pytest.raises(SettingsError, match=r"<= 256 \(the CPU count of this machine is unknown\)"):
        resolve(flags={"threads": "257"})


def test_a_huge_thread_count_is_a_usage_error_at_startup(pytester):
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester, "--llm-threads=100000")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*bad value '100000' for --llm-threads; allowed values: an integer >= 1 and "
                                 f"<= {threads_max()} (4 x the *CPUs of this machine)*"])


def test_settings_stays_cheap_to_import():
    probe = ("import sys, pytest_llmdet.settings; "
             "print([m for m in ('torch', 'numpy', 'transformers', 'multiprocessing') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("value", [0, -3, 1.5, True, False, "4", 4.0])
def test_max_new_tokens_must_be_a_positive_int(value):
    expected = f"max_new_tokens must be an integer >= 1 (or None for the llm_max_new_tokens setting), not {value!r}"
    with pytest.raises(GenerationArgumentError) as direct:
        plan_generation({}, max_new_tokens=value)
    assert str(direct.value) == expected
    with pytest.raises(GenerationArgumentError) as override:  # the same bound through **overrides
        plan_generation({}, max_new_tokens=8, overrides={"max_new_tokens": value})
    assert str(override.value) == expected


def test_max_new_tokens_of_one_and_a_none_override_are_accepted():
    assert plan_generation({}, max_new_tokens=1).config["max_new_tokens"] == 1
    assert plan_generation({}, max_new_tokens=8, overrides={"max_new_tokens": 1}).config["max_new_tokens"] == 1
    assert plan_generation({}, max_new_tokens=8, overrides={"max_new_tokens": None}).config["max_new_tokens"] == 8


def test_generate_refuses_a_bad_max_new_tokens_and_none_means_the_setting(pytester):
    pytester.makepyfile("""
        import pytest
        from pytest_llmdet.engines.greedy import GenerationArgumentError

        @pytest.mark.parametrize("value", [0, 1.5, True])
        def test_refused(llm, value):
            with pytest.raises(GenerationArgumentError, match="max_new_tokens must be an integer >= 1"):
                llm.generate("The fox", max_new_tokens=value)
            assert llm.calls == []

        def test_zero_fails_with_the_value(llm):
            llm.generate("The fox", max_new_tokens=0)

        def test_one_and_none(llm):
            assert len(llm.generate("The fox", max_new_tokens=1, min_new_tokens=1).token_ids) == 1
            assert llm.generate("The fox", max_new_tokens=None).settings["max_new_tokens"] == 5
    """)
    result = run(pytester, "--llm-max-new-tokens", "5")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*GenerationArgumentError: max_new_tokens must be an integer >= 1 (or None for "
                                 "the llm_max_new_tokens setting), not 0"])


# -- Record, the base of the startup's value types (settings/values.py) ----------------------------------------


def test_a_record_behaves_as_the_named_tuple_it_replaces():
    import copy
    import pickle

    from pytest_llmdet.settings.values import Record

    class Pair(Record):
        """Two fields, the second with a default."""

        first: int
        second: str = "b"

        @property
        def both(self) -> str:
            return f"{self.first}{self.second}"

    pair = Pair(1)
    assert (pair.first, pair.second, pair.both) == (1, "b", "1b")
    assert pair == (1, "b") and hash(pair) == hash((1, "b")) and isinstance(pair, tuple)
    assert Pair(first=2, second="c") == Pair(2, "c") != pair
    first, second = pair
    assert (first, second) == (1, "b")
    assert pair._replace(second="z") == Pair(1, "z") and pair == Pair(1)  # _replace makes a new one
    assert pair._asdict() == {"first": 1, "second": "b"}
    assert (Pair._fields, Pair._field_defaults, Pair.__doc__) == (("first", "second"), {"second": "b"},
                                                                   "Two fields, the second with a default.")
    assert repr(pair) == "Pair(first=1, second='b')"
    assert type(copy.deepcopy(pair)) is Pair and copy.deepcopy(pair) == pair
    snapshots = SnapshotSettings(mode="check", top_k=7)  # a module-level Record pickles (a local class cannot)
    assert pickle.loads(pickle.dumps(snapshots)) == snapshots and snapshots.top_k == 7
    with pytest.raises(AttributeError):
        pair.first = 3  # frozen
    with pytest.raises(AttributeError):
        pair.third = 3  # no instance dict: a misspelt field is an error, not a new attribute


@pytest.mark.parametrize(("arguments", "message"), [
    (((), {}), "missing required argument: 'first'"),
    (((1, "b", 3), {}), "takes 2 arguments but 3 were given"),
    (((1,), {"first": 2}), "unexpected or repeated argument(s): first"),
    (((1,), {"third": 3}), "unexpected or repeated argument(s): third"),
])
def test_a_record_refuses_the_arguments_a_named_tuple_refuses(arguments, message):
    from pytest_llmdet.settings.values import Record

    class Pair(Record):
        first: int
        second: str = "b"

    args, kwargs = arguments
    with pytest.raises(TypeError, match=re.escape(message)):
        Pair(*args, **kwargs)
    with pytest.raises(TypeError, match="third"):
        Pair(1)._replace(third=3)


def test_a_record_field_without_a_default_may_not_follow_one_with_a_default():
    from pytest_llmdet.settings.values import Record

    with pytest.raises(TypeError, match="Bad: a field without a default follows one with a default"):
        class Bad(Record):
            first: int = 0
            second: str


def test_the_startup_value_types_are_records():
    # typing.NamedTuple costs several times more to define, in every pytest run (benchmarks/bench_import.py)
    from pytest_llmdet.markers import CheckPlan, ModelChoice
    from pytest_llmdet.settings import ComparePlan
    from pytest_llmdet.settings.options import Option
    from pytest_llmdet.settings.values import Record

    for kind in (Settings, SnapshotSettings, ComparePlan, Option, ModelChoice, CheckPlan):
        assert issubclass(kind, Record), kind
    assert Settings._fields[:3] == ("model", "engine", "base_url") and len(Settings._fields) == 22


def test_the_startup_factor_words_are_the_factor_enums_values():
    # the settings hold the factor names as plain strings (no enum defined at startup); parse_factors gives members
    from pytest_llmdet.settings.values import FACTOR_WORDS, parse_factors
    from pytest_llmdet.vocabulary import FACTOR_NAMES, FactorName

    assert FACTOR_WORDS == tuple(name.value for name in FactorName) == FACTOR_NAMES
    parsed = parse_factors("dtype, batch")
    assert parsed == (FactorName.BATCH, FactorName.DTYPE) and all(type(name) is FactorName for name in parsed)
    assert parse_factors("all") == FACTOR_NAMES and all(type(name) is FactorName for name in parse_factors("all"))
