"""Printed commands do what they say: the re-record command repeats every flag that shaped the output,
names the tests from where pytest was started, and survives the shell."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest
from conftest import copy_model
from sessions import (
    DEPENDENT,
    ONE_TEST,
    SNAPSHOTS,
    cwd,
    golden_files,
    rerecord_command,
    retokened,
    run,
    run_command,
    run_in_process_of_its_own,
)

pytestmark = pytest.mark.usefixtures("only_this_plugin")


def _option_flags(pytester) -> dict[str, list[str]]:
    import torch

    other = copy_model(pytester.path / "other-model")
    return {
        "dtype": ["--llm-dtype", "bfloat16"],
        "model": ["--llm-model", str(other.relative_to(pytester.path))],
        "max_new_tokens": ["--llm-max-new-tokens", "4"],
        "seed": ["--llm-seed", "7"],
        "threads": ["--llm-threads", str(torch.get_num_threads() + 1)],
        "inherit_processors": ["--llm-inherit-processors", "false"],
        "compare": ["--llm-compare", "tolerant", "--llm-top-k", "3"],
        "ini override": ["-o", "llm_dtype=bfloat16"],
    }


@pytest.mark.parametrize("option", ["dtype", "model", "max_new_tokens", "seed", "threads", "inherit_processors",
                                    "compare", "ini override"])
def test_the_printed_rerecord_command_run_verbatim_makes_the_same_check_pass(pytester, option):
    pytester.makeconftest(DEPENDENT)
    pytester.makepyfile(test_story=ONE_TEST.replace(", max_new_tokens=6", "")
                        if option == "max_new_tokens" else ONE_TEST)
    import torch

    threads = torch.get_num_threads()  # each run starts as a fresh process would (in-process runs share torch)
    flags = _option_flags(pytester)[option]
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)  # recorded with the defaults
    if option == "compare":  # the comparison is no factor of the tokens: a changed golden fails the check
        retokened(pytester.path / SNAPSHOTS / "test_story" / "test_story.json", ["0"])
    check = run(pytester, "--llm-snapshot", *flags)
    check.assert_outcomes(failed=1)
    command = rerecord_command(check.stdout.str())
    for word in flags:
        assert shlex.quote(word) in command.split(), (word, command)
    torch.set_num_threads(threads)
    run_command(pytester, command).assert_outcomes(passed=1)
    torch.set_num_threads(threads)
    run(pytester, "--llm-snapshot", *flags).assert_outcomes(passed=1)


def test_the_rerecord_command_carries_the_cpu_kernels_that_produced_the_output(pytester):
    from pytest_llmdet.engines.fingerprint import cpu_capability

    if cpu_capability() == "default":
        pytest.skip("torch runs its default CPU kernels here already: no other capability to choose")
    pytester.makeconftest(DEPENDENT.replace("{module.dtype}|", "{torch.backends.cpu.get_cpu_capability()}|"))
    pytester.makepyfile(test_story=ONE_TEST)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    check = run_in_process_of_its_own(pytester, {"ATEN_CPU_CAPABILITY": "default"}, "--llm-snapshot")
    check.assert_outcomes(failed=1)
    command = rerecord_command(check.stdout.str())
    assert command.startswith("ATEN_CPU_CAPABILITY=default pytest --llm-snapshot-update "), command
    run_command(pytester, command).assert_outcomes(passed=1)
    run_in_process_of_its_own(pytester, {"ATEN_CPU_CAPABILITY": "default"}, "--llm-snapshot").assert_outcomes(
        passed=1)


def test_a_rerecord_command_names_the_test_from_where_pytest_was_started(pytester):
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_story.py").write_text(ONE_TEST, encoding="utf-8")
    pytester.makeini("[pytest]\n")
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = pytester.path / "tests" / SNAPSHOTS / "test_story" / "test_story.json"
    data = json.loads(golden.read_text())
    data["snapshots"]["0"]["token_ids"][2] += 1
    golden.write_text(json.dumps(data))
    with cwd(pytester.path / "tests"):
        check = run(pytester, "--llm-snapshot", "test_story.py")
        check.assert_outcomes(failed=1)
        command = rerecord_command(check.stdout.str())
        assert command.endswith(' "test_story.py::test_story"'), command  # not tests/test_story.py: run from here
        run_command(pytester, command).assert_outcomes(passed=1)


def test_quoted_ids_reach_pytest_as_they_are():
    from pytest_llmdet.commands import quoted_id

    hostile = 't.py::test_x[$(touch /tmp/x)`id`"q"\\b]'
    shown = subprocess.run(["bash", "-c", f"printf %s {quoted_id(hostile)}"], capture_output=True, text=True)
    assert shown.stdout == hostile


def test_check_and_update_together_is_a_usage_error(pytester):
    pytester.makepyfile(test_story=ONE_TEST)
    for other in ("--llm-snapshot", "--llm-snapshot-review"):
        result = run(pytester, other, "--llm-snapshot-update")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*--llm-snapshot-update and {other} ask for opposite things*"])
    assert golden_files(pytester.path) == {}


ENV_STORY = """
import os

def test_story(llm_snapshot):
    assert os.environ.get("STORY", "one") == llm_snapshot
"""


def test_a_rerecord_command_keeps_an_ini_override_of_the_snapshot_folder(pytester, monkeypatch):
    pytester.makepyfile(test_story=ENV_STORY)
    run(pytester, "--llm-snapshot-update", "-o", "llm_snapshot_dir=golden").assert_outcomes(passed=1)
    monkeypatch.setenv("STORY", "two")
    check = run(pytester, "--llm-snapshot", "-o", "llm_snapshot_dir=golden")
    command = rerecord_command(check.stdout.str())
    assert "-o llm_snapshot_dir=golden" in command, command
    run_command(pytester, command).assert_outcomes(passed=1)
    assert not (pytester.path / SNAPSHOTS).exists()  # no stray golden file in the default folder
    run(pytester, "--llm-snapshot", "-o", "llm_snapshot_dir=golden").assert_outcomes(passed=1)


def test_the_summary_command_for_many_tests_names_their_files_and_runs_as_printed(pytester, monkeypatch):
    pytester.makepyfile(test_ids="""
        import os
        import pytest

        @pytest.mark.parametrize("word", ["a", "b", "c", "d", "e", "f", "g"])
        def test_word(llm_snapshot, word):
            assert os.environ.get("STORY", "one") + word == llm_snapshot
        """)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=7)
    monkeypatch.setenv("STORY", "two")
    check = run(pytester, "--llm-snapshot")
    check.assert_outcomes(failed=7)
    command = rerecord_command(check.stdout.str())
    assert command == 'pytest --llm-snapshot-update "test_ids.py"' and "..." not in command
    run_command(pytester, command).assert_outcomes(passed=7)
    run(pytester, "--llm-snapshot").assert_outcomes(passed=7)


def test_an_id_with_an_exclamation_mark_survives_an_interactive_bash():
    import shutil

    from pytest_llmdet.commands import quoted_id

    if shutil.which("bash") is None:
        pytest.skip("no bash here")
    for test_id in ('t.py::test_word[wow!]', "t.py::test_word[it's]", 't.py::test_word[plain]'):
        shell = subprocess.run(["bash", "-i"], input=f"printf '%s\\n' {quoted_id(test_id)}\n", capture_output=True,
                               text=True, timeout=60)
        assert shell.stdout.splitlines()[-1:] == [test_id], (test_id, shell.stdout, shell.stderr)


def test_a_rerecord_command_names_the_test_file_where_it_is_when_the_ini_file_is_elsewhere(pytester, monkeypatch):
    (pytester.path / "tests").mkdir()
    (pytester.path / "cfg").mkdir()
    (pytester.path / "cfg" / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (pytester.path / "tests" / "test_t.py").write_text(ENV_STORY, encoding="utf-8")
    run(pytester, "-c", "cfg/pytest.ini", "tests", "--llm-snapshot-update").assert_outcomes(passed=1)
    monkeypatch.setenv("STORY", "two")
    check = run(pytester, "-c", "cfg/pytest.ini", "tests", "--llm-snapshot")
    command = rerecord_command(check.stdout.str())
    assert command.endswith('"tests/test_t.py::test_story"'), command
    run_command(pytester, command).assert_outcomes(passed=1)
    run(pytester, "-c", "cfg/pytest.ini", "tests", "--llm-snapshot").assert_outcomes(passed=1)


def test_an_update_typed_on_the_command_line_wins_over_a_check_in_addopts(pytester, monkeypatch):
    pytester.makeini("[pytest]\naddopts = --llm-snapshot\n")
    pytester.makepyfile(test_story=ENV_STORY)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    monkeypatch.setenv("STORY", "two")
    check = run(pytester)  # the gate, from addopts
    check.assert_outcomes(failed=1)
    run_command(pytester, rerecord_command(check.stdout.str())).assert_outcomes(passed=1)
    run(pytester).assert_outcomes(passed=1)
    assert run(pytester, "--llm-snapshot", "--llm-snapshot-update").ret == pytest.ExitCode.USAGE_ERROR
