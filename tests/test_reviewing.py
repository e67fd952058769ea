"""Reviewing changes: check and review runs leave pending files, the review CLI (`python -m pytest_llmdet
review|accept|reject|pending`) accepts or rejects them, refuses what changed since, and keeps its JSON pure."""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sessions import (
    DEPENDENT,
    ONE_TEST,
    SEVERAL,
    SNAPSHOTS,
    SUITE,
    THREE,
    THREE_GOLDEN,
    cwd,
    golden_files,
    pending_files,
    recorded,
    retokened,
    run,
)

from pytest_llmdet import review
from pytest_llmdet.golden.format import GoldenEntry, GoldenFile
from pytest_llmdet.golden.pending import PendingConflict, PendingFile, accept, read_pending, write_pending
from pytest_llmdet.golden.store import read_golden, write_golden
from pytest_llmdet.review import main

pytestmark = pytest.mark.usefixtures("only_this_plugin")


REVIEW_SUITE = """
def test_story(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=12) == llm_snapshot

def test_two(llm_snapshot):
    first = "first" == llm_snapshot(name="a")
    second = "second" == llm_snapshot(name="b")
    assert first and second
"""


NEW_TEST = """
def test_new(llm_snapshot):
    assert "new" == llm_snapshot
"""


def review_cli(*args: str, answers: str = "") -> str:
    import io

    from pytest_llmdet.review import main

    out = io.StringIO()
    assert main(list(args), stdin=io.StringIO(answers), stdout=out) == 0, out.getvalue()
    return out.getvalue()


def test_check_runs_leave_pending_files_that_review_accepts_or_rejects_one_by_one(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_review=REVIEW_SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    recorded = golden_files(pytester.path)
    story = pytester.path / "__llm_snapshots__/test_review/test_story.json"
    data = json.loads(story.read_text())
    data["snapshots"]["0"]["token_ids"][4] += 1
    story.write_text(json.dumps(data))
    pytester.makepyfile(test_review=REVIEW_SUITE.replace('"first"', '"first!"').replace('"second"', '"second!"')
                        + NEW_TEST)
    before = golden_files(pytester.path)

    run(pytester, "--llm-snapshot").assert_outcomes(failed=3)
    assert golden_files(pytester.path) == before  # goldens untouched
    folder = "__llm_snapshots__/test_review/"
    assert pending_files(pytester.path) == [folder + f"test_{n}.json.llmdet-pending" for n in ("new", "story", "two")]
    listed = json.loads(review_cli("pending", "--json"))
    assert [(item["test"], [(s["name"], s["status"]) for s in item["snapshots"]]) for item in listed] == [
        ("test_review.py::test_new", [("0", "new")]),
        ("test_review.py::test_story", [("0", "changed")]),
        ("test_review.py::test_two", [("a", "changed"), ("b", "changed")]),
    ]
    assert listed[1]["golden_file"] == folder + "test_story.json"

    # reject the new one, accept the story, accept a, skip b
    output = review_cli("review", answers="r\na\na\ns\n")
    assert "[2/4] test_review.py::test_story [0] (changed)" in output
    assert "first divergence at token 4 of 12" in output  # the same report as the failure
    assert output.rstrip().endswith("2 accepted, 1 rejected, 1 skipped")
    after = golden_files(pytester.path)
    assert folder + "test_new.json" not in after
    assert after[folder + "test_story.json"] == recorded[folder + "test_story.json"]  # as the update wrote it
    two = json.loads(after[folder + "test_two.json"])["snapshots"]
    assert (two["a"]["text_lines"], two["b"]["text_lines"]) == (["first!"], ["second"])
    assert pending_files(pytester.path) == [folder + "test_two.json.llmdet-pending"]  # b was skipped

    assert review_cli("reject").strip() == "1 pending snapshot(s) rejected"
    assert pending_files(pytester.path) == [] and golden_files(pytester.path) == after
    run(pytester, "--llm-snapshot").assert_outcomes(passed=1, failed=2)  # b and the new test, again pending
    assert review_cli("accept").strip() == "2 pending snapshot(s) accepted"
    run(pytester, "--llm-snapshot").assert_outcomes(passed=3)
    assert pending_files(pytester.path) == []

    # in CI a check run writes nothing
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_review=REVIEW_SUITE + NEW_TEST.replace('"new"', '"newer"'))
    run(pytester, "--llm-snapshot").assert_outcomes(passed=1, failed=2)
    assert pending_files(pytester.path) == []


def test_pending_json_from_the_command_line(pytester, monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_review=REVIEW_SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    pytester.makepyfile(test_review=REVIEW_SUITE.replace('"first"', '"first!"'))
    run(pytester, "--llm-snapshot").assert_outcomes(passed=1, failed=1)
    result = subprocess.run([sys.executable, "-m", "pytest_llmdet", "pending", "--json"], cwd=pytester.path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (item,) = json.loads(result.stdout)
    assert item["test"] == "test_review.py::test_two"
    assert [(s["name"], s["status"]) for s in item["snapshots"]] == [("a", "changed")]
    assert "output differs from snapshot 'a'" in item["snapshots"][0]["report"]
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)  # an update supersedes the pending file
    assert pending_files(pytester.path) == []


def test_a_check_run_that_left_pending_files_names_the_review_command(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_three=THREE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    pytester.makepyfile(test_three=THREE.replace('"first"', '"first!"'))
    review_line = ("1 pending file(s) keep the new outputs beside their golden files (which are unchanged); accept "
                   "or reject them one by one with: python -m pytest_llmdet review")

    result = run(pytester, "--llm-snapshot", "--llm-report=report.json")
    result.stdout.fnmatch_lines(["1 test(s) with changed or missing snapshots. If the change is intended, re-record "
                                 'with: pytest --llm-snapshot-update "test_three.py::test_three"', review_line],
                                consecutive=True)
    assert json.loads((pytester.path / "report.json").read_text())["pending"] == [THREE_GOLDEN + ".llmdet-pending"]
    assert pending_files(pytester.path) == [THREE_GOLDEN + ".llmdet-pending"]

    # the pending file lies outside the folder pytest was started in: the command names its folder
    elsewhere = pytester.mkdir("elsewhere")
    monkeypatch.chdir(elsewhere)
    result = run(pytester, str(pytester.path / "test_three.py"), "--rootdir", str(pytester.path), "--llm-snapshot")
    folder = pytester.path / "__llm_snapshots__" / "test_three"
    result.stdout.fnmatch_lines([f'{review_line} "{folder}"'])
    monkeypatch.chdir(pytester.path)
    assert review_cli("accept").strip() == "1 pending snapshot(s) accepted"
    result = run(pytester, "--llm-snapshot")
    result.stdout.fnmatch_lines(["4 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert "pending file(s)" not in result.stdout.str()

    monkeypatch.setenv("CI", "true")  # in CI a check run writes no pending file, and names no review
    pytester.makepyfile(test_three=THREE.replace('"first!"', '"first?"'))
    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(passed=1, failed=1)
    assert "pending file(s)" not in result.stdout.str() and pending_files(pytester.path) == []


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


def _pending_for(tmp_path: Path) -> tuple[Path, PendingFile]:
    golden = tmp_path / SNAPSHOTS / "test_mod" / "test_b.json"
    write_golden(golden, GoldenFile("test_mod.py::test_b", {}, {"0": GoldenEntry("old")}))
    digest = hashlib.sha256(golden.read_bytes()).hexdigest()
    pending = PendingFile(golden.with_name(golden.name + ".llmdet-pending"), "test_mod.py::test_b", {},
                          {"0": GoldenEntry("new")}, {"0": "changed"}, {"0": "report"}, golden_sha256=digest)
    write_pending(pending)
    return golden, read_pending(pending.path)


def test_accept_refuses_a_golden_file_that_changed_since_the_check(tmp_path):
    golden, pending = _pending_for(tmp_path)
    write_golden(golden, GoldenFile("test_mod.py::test_b", {}, {"0": GoldenEntry("pulled")}))  # a git pull
    before = golden.read_bytes()
    with pytest.raises(PendingConflict) as refused:
        accept(pending)
    assert str(refused.value) == (  # a pending file that does not name its check: the rootdir-relative id, quoted
        "not accepted: the golden file changed since the check that made the pending file (a pull, an update?); "
        f"accepting {pending.path} would overwrite {golden} without a look at what is in it now. Run the check "
        "again to refresh it, pytest --llm-snapshot test_mod.py::test_b (from the rootdir, with the flags of that "
        f"check); or reject it: python -m pytest_llmdet reject {pending.path}")
    assert golden.read_bytes() == before and pending.path.exists()


def test_accept_goes_on_past_a_refused_file_and_reports_it(tmp_path):
    changed, refused = _pending_for(tmp_path / "one")
    write_golden(changed, GoldenFile("test_mod.py::test_b", {}, {"0": GoldenEntry("pulled")}))
    fine, _ = _pending_for(tmp_path / "two")
    out, err = io.StringIO(), io.StringIO()
    assert review.main(["accept", str(tmp_path)], stdout=out, stderr=err) == 1
    assert out.getvalue() == "1 pending snapshot(s) accepted\n"
    assert err.getvalue().startswith("error: not accepted: the golden file changed since the check")
    assert read_golden(fine).snapshots["0"].text == "new"
    assert read_golden(changed).snapshots["0"].text == "pulled"


def test_a_pending_file_without_the_golden_digest_is_not_accepted(tmp_path):
    golden, pending = _pending_for(tmp_path)
    data = json.loads(pending.path.read_text(encoding="utf-8"))
    del data["pending"]["golden_sha256"]  # as pytest-llmdet 0.1 wrote them
    pending.path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PendingConflict, match="made by an older pytest-llmdet"):
        accept(read_pending(pending.path))


def test_a_check_run_records_the_golden_file_it_compared_with_in_the_pending_file(pytester):
    recorded(pytester)
    pytester.makepyfile(test_mod=SUITE.replace('"b" == llm_snapshot', '"b changed" == llm_snapshot'))
    run(pytester, "--llm-snapshot").assert_outcomes(passed=1, failed=1)
    golden = pytester.path / SNAPSHOTS / "test_mod" / "test_b.json"
    pending = read_pending(golden.with_name("test_b.json.llmdet-pending"))
    assert pending.golden_sha256 == hashlib.sha256(golden.read_bytes()).hexdigest()
    assert accept(pending) == ["0"] and read_golden(golden).snapshots["0"].text == "b changed"


def test_pending_json_stays_json_with_a_lone_surrogate_in_a_report(tmp_path):
    golden, pending = _pending_for(tmp_path)
    data = json.loads(pending.path.read_text(encoding="utf-8"))
    data["pending"]["reports"]["0"] = "bad \ud800 text"
    pending.path.write_text(json.dumps(data), encoding="utf-8")  # json.dumps escapes it: a valid file
    out, err = io.StringIO(), io.StringIO()
    assert review.main(["pending", "--json", str(tmp_path)], stdout=out, stderr=err) == 0
    assert json.loads(out.getvalue())[0]["snapshots"][0]["report"] == "bad \ud800 text"
    out = io.StringIO()
    assert review.main(["review", str(tmp_path)], stdin=io.StringIO("s\n"), stdout=out, stderr=err) == 0
    assert "bad \\ud800 text" in out.getvalue()


def test_a_review_run_compares_every_snapshot_and_after_accept_the_gate_passes(pytester, monkeypatch):
    from pytest_llmdet.review import main

    pytester.makepyfile(test_several=SEVERAL)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = pytester.path / SNAPSHOTS / "test_several" / "test_several.json"
    retokened(golden, ["fox", "time"])
    monkeypatch.setenv("CI", "true")  # asked for explicitly, a review run keeps pending files in CI too
    before = golden_files(pytester.path)

    result = run(pytester, "--llm-snapshot-review")
    result.assert_outcomes(passed=1, errors=1)  # every comparison passed; the test fails at its end
    result.stdout.fnmatch_lines([
        "*2 snapshot(s) of test_several.py::test_several changed or missing (a review run compared each one and "
        "went on):",
        "*[[]fox] first divergence at token 1 (regression)*",
        "*[[]time] first divergence at token 1 (*",
        "*kept as pending in __llm_snapshots__/test_several/test_several.json.llmdet-pending; accept or reject "
        "them with: python -m pytest_llmdet review",
        "1 passed, 2 failed, 0 written, 0 updated, 0 deleted, 0 unused",
    ])
    assert golden_files(pytester.path) == before
    pending = json.loads(golden.with_name(golden.name + ".llmdet-pending").read_text())
    assert sorted(pending["snapshots"]) == ["fox", "time"]
    with cwd(pytester.path):
        assert main(["accept"]) == 0
    run(pytester, "--llm-snapshot").assert_outcomes(passed=1)


def test_a_plain_check_stops_at_the_first_change_and_says_how_to_see_them_all(pytester):
    pytester.makepyfile(test_several=SEVERAL)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    retokened(pytester.path / SNAPSHOTS / "test_several" / "test_several.json", ["fox", "time"])
    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["2 snapshot(s) not compared: their test failed before comparing them; "
                                 "pytest --llm-snapshot-review compares them all (and keeps each change pending):"])


def test_a_refused_accept_names_the_check_that_refreshes_its_pending_file_and_that_check_keeps_it(pytester):
    from pytest_llmdet.review import main

    pytester.makeconftest(DEPENDENT)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_story.py").write_text(ONE_TEST, encoding="utf-8")
    pytester.makeini("[pytest]\n")
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = pytester.path / "tests" / SNAPSHOTS / "test_story" / "test_story.json"
    with cwd(pytester.path / "tests"):
        run(pytester, "--llm-snapshot", "--llm-dtype", "bfloat16", "test_story.py").assert_outcomes(failed=1)
    pending = golden.with_name(golden.name + ".llmdet-pending")
    assert pending.exists()
    retokened(golden, ["0"])  # a pull changed the golden file since
    err = io.StringIO()
    with cwd(pytester.path):
        assert main(["accept"], stdout=io.StringIO(), stderr=err) == 1
    message = err.getvalue()
    command = message.split(": pytest ", 1)[1].split("; or reject it", 1)[0]
    assert f"from {shlex.quote(str(pytester.path / 'tests'))}: pytest --llm-snapshot --llm-dtype bfloat16 " in message
    assert command == '--llm-snapshot --llm-dtype bfloat16 "test_story.py::test_story"', message
    with cwd(pytester.path / "tests"):  # run as printed, from where it says: the pending file is refreshed
        run(pytester, *shlex.split(command)).assert_outcomes(failed=1)
    assert pending.exists()
    with cwd(pytester.path):
        assert main(["accept"], stdout=io.StringIO(), stderr=io.StringIO()) == 0
    with cwd(pytester.path / "tests"):
        run(pytester, "--llm-snapshot", "--llm-dtype", "bfloat16", "test_story.py").assert_outcomes(passed=1)


def test_a_review_run_stopped_early_says_that_later_tests_were_not_reviewed(pytester, monkeypatch):
    pytester.makepyfile(test_two="""
        import os

        def test_a(llm_snapshot):
            assert os.environ.get("STORY", "one") + "a" == llm_snapshot

        def test_b(llm_snapshot):
            assert os.environ.get("STORY", "one") + "b" == llm_snapshot
        """)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    monkeypatch.setenv("STORY", "two")
    result = run(pytester, "--llm-snapshot-review", "-x")
    result.stdout.fnmatch_lines(["the review run stopped early (-x, --maxfail, --stepwise, Ctrl-C): the tests after "
                                 "that were not reviewed*"])


TEXT_TEST = """
def test_text(llm_snapshot):
    assert {text!r} == llm_snapshot
"""


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
