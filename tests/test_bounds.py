"""Bounds: values that used to pass startup (or a generate call) and then fail deep inside numpy or torch,
or silently mean something else, are refused up front with a message that names the value and its range."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmdet import settings
from pytest_llmdet.engines.greedy import GenerationArgumentError, plan_generation
from pytest_llmdet.golden.format import GoldenEntry
from pytest_llmdet.golden.pending import PendingFile, write_pending
from pytest_llmdet.review import main
from pytest_llmdet.settings.values import SEED_MAX, SettingsError, threads_max


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch):
    """In-process runs load only pytest-llmdet (other installed plugins would be re-imported on every run)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def run(pytester, *args: str):
    return pytester.runpytest("-p", "pytest_llmdet.plugin", "-p", "no:cacheprovider", *args)


def resolve(flags=None, ini=None, inipath=None):
    return settings.resolve(flags or {}, ini or {}, inipath, Path("/invocation"))[0]


# -- 1. the seed: 0 ... 2**32 - 1, what numpy takes ------------------------------------------------------------


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


# -- 2. threads: 1 ... 4 x os.cpu_count() ----------------------------------------------------------------------


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


# -- 3. max_new_tokens: None or an int >= 1 --------------------------------------------------------------------


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


# -- 4. the review CLI: problems on stderr, JSON alone on stdout -----------------------------------------------


def _pending_folder(root: Path) -> Path:
    folder = root / "__llm_snapshots__" / "test_story"
    folder.mkdir(parents=True)
    write_pending(PendingFile(folder / "test_good.json.llmdet-pending", "test_story.py::test_good", {},
                              {"0": GoldenEntry(text="hello")}, {"0": "new"}, {"0": "a new snapshot"},
                              golden_sha256=""))  # the check saw no golden file
    (folder / "test_bad.json.llmdet-pending").write_text("{not json", encoding="utf-8")
    return folder


def _cli(*args: str, answers: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(args), stdin=io.StringIO(answers), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_pending_json_stays_json_when_a_pending_file_is_unreadable(tmp_path):
    folder = _pending_folder(tmp_path)
    status, out, err = _cli("pending", "--json", str(tmp_path))
    assert status == 1
    (item,) = json.loads(out)
    assert item["test"] == "test_story.py::test_good"
    assert err.startswith("skipped: ") and str(folder / "test_bad.json.llmdet-pending") in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(("command", "answers", "said"), [
    ("pending", "", "1 pending snapshot(s)"),
    ("review", "s\n", "0 accepted, 0 rejected, 1 skipped"),
    ("accept", "", "1 pending snapshot(s) accepted"),
    ("reject", "", "1 pending snapshot(s) rejected"),
])
def test_every_command_reports_unreadable_pending_files_on_stderr(tmp_path, command, answers, said):
    _pending_folder(tmp_path)
    status, out, err = _cli(command, str(tmp_path), answers=answers)
    assert status == 1
    assert said in out and "skipped:" not in out
    assert "skipped: " in err and "test_bad.json.llmdet-pending" in err


def test_pending_json_from_the_command_line_is_pure_json(tmp_path):
    _pending_folder(tmp_path)
    result = subprocess.run([sys.executable, "-m", "pytest_llmdet", "pending", "--json", "."], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert [item["test"] for item in json.loads(result.stdout)] == ["test_story.py::test_good"]
    assert "skipped: " in result.stderr and "test_bad.json.llmdet-pending" in result.stderr
