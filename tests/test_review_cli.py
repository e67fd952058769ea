"""The review CLI (`python -m pytest_llmdet review|accept|reject|pending`): what it finds, what it refuses to
write, and what it says when a PATH matches nothing."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

TEXT_TEST = """
def test_text(llm_snapshot):
    assert {text!r} == llm_snapshot
"""


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch):
    """In-process runs load only pytest-llmdet; a check run outside CI leaves pending files."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("CI", raising=False)


def run(pytester, *args: str):
    return pytester.runpytest("-p", "pytest_llmdet.plugin", "-p", "no:cacheprovider", *args)


def cli(*args: str) -> tuple[int, list[str], list[str]]:
    """Run the review CLI in-process: (exit status, stdout lines, stderr lines)."""
    from pytest_llmdet.review import main

    out, err = io.StringIO(), io.StringIO()
    status = main(list(args), stdin=io.StringIO(""), stdout=out, stderr=err)
    return status, out.getvalue().splitlines(), err.getvalue().splitlines()


def leave_pending(pytester, folder: str = "__llm_snapshots__") -> Path:
    """Record a text snapshot, change it, check: the pending file the check leaves."""
    pytester.makepyfile(test_text=TEXT_TEST.format(text="old"))
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    pytester.makepyfile(test_text=TEXT_TEST.format(text="new"))
    run(pytester, "--llm-snapshot").assert_outcomes(failed=1)
    pending = pytester.path / folder / "test_text/test_text.json.llmdet-pending"
    assert pending.is_file()
    return pending


def test_a_hidden_snapshot_folder_is_searched_and_the_folders_of_tools_are_not(pytester):
    pytester.makeini("[pytest]\nllm_snapshot_dir = .llm_snapshots\n")
    pending = leave_pending(pytester, ".llm_snapshots")
    for tool_folder in (".git/x", ".venv/lib", ".tox/py311", "env/lib", "node_modules/x"):  # env/: a virtualenv
        (pytester.path / tool_folder).mkdir(parents=True)
        shutil.copy(pending, pytester.path / tool_folder / "copy.json.llmdet-pending")
    (pytester.path / "env/pyvenv.cfg").write_text("home = /usr/bin\n")
    assert cli("pending") == (0, [" changed  test_text.py::test_text [0]  .llm_snapshots/test_text/test_text.json",
                                  "1 pending snapshot(s)"], [])
    assert cli("accept") == (0, ["1 pending snapshot(s) accepted"], [])
    assert '"new"' in (pytester.path / ".llm_snapshots/test_text/test_text.json").read_text()
    run(pytester, "--llm-snapshot").assert_outcomes(passed=1)


def test_a_pending_file_that_would_write_anything_but_its_tests_golden_file_is_refused(pytester):
    pending = leave_pending(pytester)
    (pytester.path / "conftest.py").write_text("# the user's conftest\n")
    shutil.copy(pending, pytester.path / "conftest.py.llmdet-pending")
    shutil.copy(pending, pending.with_name("other.json.llmdet-pending"))
    pending.unlink()
    status, out, err = cli("accept")
    assert (status, out) == (1, ["0 pending snapshot(s) accepted"])
    assert err == [
        "skipped: __llm_snapshots__/test_text/other.json.llmdet-pending names test 'test_text.py::test_text', whose "
        "golden file is <snapshot folder>/test_text/test_text.json, not test_text/other.json: accepting it would "
        "write a file that is not that test's. Left as it is",
        "skipped: conftest.py.llmdet-pending is not a pending file of pytest-llmdet (those are named <golden "
        "file>.json.llmdet-pending); accepting it would write conftest.py, which is no golden file. Left as it is",
    ]
    assert (pytester.path / "conftest.py").read_text() == "# the user's conftest\n"
    assert not (pytester.path / "__llm_snapshots__/test_text/other.json").exists()
    assert (pytester.path / "conftest.py.llmdet-pending").is_file()  # left as it is, for the user to look at


def test_a_path_that_matches_nothing_says_so_and_fails(pytester):
    pending = leave_pending(pytester)
    assert cli("reject", "no/such/path") == (
        1, ["0 pending snapshot(s) rejected"], ["error: nothing matched no/such/path: there is no such file or folder"])
    assert cli("review", "test_text.py") == (
        1, ["", "0 accepted, 0 rejected, 0 skipped"],
        ["error: nothing matched test_text.py: it is neither a folder to search nor a pending file (<golden "
         "file>.json.llmdet-pending)"])
    status, out, err = cli("pending", "--json", "nope")
    assert (status, json.loads("\n".join(out)), err) == (
        1, [], ["error: nothing matched nope: there is no such file or folder"])
    assert pending.is_file()
    assert cli("reject", "nope", ".") == (  # the others are still settled, and the status still says it
        1, ["1 pending snapshot(s) rejected"], ["error: nothing matched nope: there is no such file or folder"])
    assert not pending.exists()
    assert cli("reject", "__llm_snapshots__") == (0, ["0 pending snapshot(s) rejected"], [])  # a folder: searched
