"""The golden-file lifecycle under hostile use: nothing deleted that is not ours, nothing deleted before the run
is whole, ownership from what ran, pending files that follow their golden file, reads and writes that cannot
hang, and counts that say what happened. Each test reproduces a way 0.1 lost or misreported golden files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from conftest import golden_for

from pytest_llmdet import review
from pytest_llmdet.golden.format import GoldenEntry, GoldenFile, GoldenFileError, dumps, loads
from pytest_llmdet.golden.pending import PendingConflict, PendingFile, accept, read_pending, write_pending
from pytest_llmdet.golden.store import delete_golden, read_golden, write_golden

SNAPSHOTS = "__llm_snapshots__"

# Plain-string snapshots: no model, so each run takes a fraction of a second.
SUITE = """
def test_a(llm_snapshot):
    assert "a one" == llm_snapshot(name="one")
    assert "a two" == llm_snapshot(name="two")

def test_b(llm_snapshot):
    assert "b" == llm_snapshot
"""


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("CI", raising=False)


def run(pytester, *args: str):
    return pytester.runpytest("-p", "pytest_llmdet.plugin", "-p", "no:cacheprovider", *args)


def goldens(root: Path) -> dict[str, bytes]:
    """Every file below the snapshot folders (golden or not), by path relative to `root`."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and SNAPSHOTS in p.parts}


def recorded(pytester, suite: str = SUITE) -> dict[str, bytes]:
    pytester.makepyfile(test_mod=suite)
    result = run(pytester, "--llm-snapshot-update")
    assert result.ret == 0, result.stdout.str()
    return goldens(pytester.path)


def drop_two(suite: str = SUITE) -> str:
    """The suite with test_a no longer comparing snapshot 'two' (which a whole update would then delete)."""
    return suite.replace('    assert "a two" == llm_snapshot(name="two")\n', "")


# -- 1. runs that do not run the tests delete nothing --------------------------------------------------------


@pytest.mark.parametrize("args", [["--setup-only"], ["--setup-plan"], ["--collect-only"],
                                  ["--setup-only", "-p", "xdist", "-n", "2"]])
def test_setup_only_setup_plan_and_collect_only_leave_every_golden_file_as_it_was(pytester, args):
    if "xdist" in args:
        pytest.importorskip("xdist")
    before = recorded(pytester)
    pytester.makepyfile(test_mod=drop_two())
    result = run(pytester, "--llm-snapshot-update", *args)
    assert result.ret == 0, result.stdout.str()
    assert goldens(pytester.path) == before
    assert "deleted" not in result.stdout.str().split("llm snapshots")[-1].replace("0 deleted", "")


# -- 2. only our files are ever deleted -----------------------------------------------------------------------


def test_a_snapshot_folder_that_holds_other_files_keeps_them_and_lists_them_as_foreign(pytester):
    # llm_snapshot_dir = data: the folder also holds the tests' own inputs (0.1 deleted prompts.json).
    pytester.makeini("[pytest]\nllm_snapshot_dir = data\n")
    recorded(pytester)
    b_golden = (pytester.path / "data" / "test_mod" / "test_b.json").read_bytes()
    inputs = pytester.path / "data" / "inputs"
    inputs.mkdir()
    (inputs / "prompts.json").write_text('{"prompts": ["Once upon a time"]}\n', encoding="utf-8")
    (pytester.path / "data" / "test_mod" / "notes.txt").write_text("mine\n", encoding="utf-8")
    (pytester.path / "data" / "test_mod" / "schema.json").write_text("{}\n", encoding="utf-8")
    # a golden file of ours, for a test that no longer exists: the only file a full update deletes
    gone = pytester.path / "data" / "test_mod" / "test_gone.json"
    gone.write_bytes(golden_for(b_golden, "test_mod.py::test_gone"))
    # a golden file copied under another name: it names test_b, so it is not where our naming puts it
    copied = pytester.path / "data" / "test_mod" / "test_copy.json"
    copied.write_bytes(b_golden)

    result = run(pytester, "--llm-snapshot-update")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([
        "3 passed, 0 failed, 0 written, 0 updated, 1 deleted, 0 unused",
        "deleted 1 unused golden file(s) or snapshot(s) (committed ones come back with: git checkout -- "
        "<file>):",
        f"  {gone.relative_to(pytester.path)}",  # relative to where pytest was started, like every path shown
        "4 file(s) in snapshot folders that are not golden files of this suite (never deleted):",
        f"  {(inputs / 'prompts.json').relative_to(pytester.path)}",
    ])
    assert not gone.exists()
    for kept in (inputs / "prompts.json", copied, copied.with_name("notes.txt"), copied.with_name("schema.json")):
        assert kept.exists(), kept


def test_a_snapshot_folder_that_is_a_link_out_of_the_project_is_never_deleted_through(pytester, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    before = recorded(pytester)
    # the whole snapshot folder moves out of the project, and a link takes its place
    for name, content in before.items():
        target = outside / Path(name).relative_to(SNAPSHOTS)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    for path in sorted((pytester.path / SNAPSHOTS).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (pytester.path / SNAPSHOTS).rmdir()
    (pytester.path / SNAPSHOTS).symlink_to(outside)
    victim = outside / "test_gone" / "test_x.json"  # looks like the golden file of a removed module
    victim.parent.mkdir()
    victim.write_bytes(golden_for(before[f"{SNAPSHOTS}/test_mod/test_b.json"], "test_gone.py::test_x"))
    pytester.makepyfile(test_mod=drop_two())

    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines([
        f"llmdet: ERROR: not deleted: {pytester.path / SNAPSHOTS / 'test_gone' / 'test_x.json'} resolves to "
        f"{victim}, outside the rootdir {pytester.path} (a symbolic link?); delete it by hand if it is unused",
    ])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert victim.exists()
    assert set(loads((outside / "test_mod" / "test_a.json").read_bytes(), "a").snapshots) == {"one", "two"}


# -- 3. ownership comes from what ran ------------------------------------------------------------------------


def test_a_snapshot_reached_through_getfixturevalue_is_owned_by_its_test(pytester):
    suite = """
        import pytest

        @pytest.fixture
        def snap(request):
            return request.getfixturevalue("llm_snapshot")

        def test_dynamic(request):
            assert "dynamic" == request.getfixturevalue("llm_snapshot")

        def test_through_a_fixture(snap):
            assert "indirect" == snap
    """
    pytester.makepyfile(test_mod=suite)
    run(pytester, "--llm-snapshot-update").stdout.fnmatch_lines(["0 passed, 0 failed, 2 written, 0 updated, "
                                                                 "0 deleted, 0 unused"])
    before = goldens(pytester.path)
    assert len(before) == 2
    result = run(pytester, "--llm-snapshot-update")  # a second full update: 0.1 deleted both files here
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert goldens(pytester.path) == before
    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])


def test_a_test_that_stopped_using_snapshots_loses_its_golden_file_on_a_whole_update(pytester):
    before = recorded(pytester)
    pytester.makepyfile(test_mod=SUITE.replace('def test_b(llm_snapshot):\n    assert "b" == llm_snapshot',
                                               "def test_b():\n    pass"))
    result = run(pytester, "--llm-snapshot")
    result.stdout.fnmatch_lines(["*1 unused golden file(s) or snapshot(s) no test asked for:",
                                 f"  {SNAPSHOTS}/test_mod/test_b.json"])
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines(["*1 deleted, 0 unused"])
    assert set(goldens(pytester.path)) == set(before) - {f"{SNAPSHOTS}/test_mod/test_b.json"}


# -- 4. deletion waits for a whole run ------------------------------------------------------------------------

LATER = {
    "a later failure with -x": ("def test_z():\n    assert False\n", ["-x"], "the run stopped early"),
    "a later failure with --maxfail": ("def test_z():\n    assert False\n", ["--maxfail=1"],
                                       "the run stopped early"),
    "Ctrl-C": ("def test_z():\n    raise KeyboardInterrupt\n", [], "the run stopped early"),
    "a later skip of a snapshot test": ("import pytest\n\ndef test_z(llm_snapshot):\n    pytest.skip('later')\n",
                                        [], "skipped tests"),
    "a teardown error in a user fixture": (
        "import pytest\n\n@pytest.fixture\ndef broken():\n    yield\n    raise RuntimeError('teardown')\n\n"
        "def test_z(broken):\n    pass\n", [], "setup or teardown errors"),
    "a setup error in a user fixture": (
        "import pytest\n\n@pytest.fixture\ndef broken():\n    raise RuntimeError('setup')\n\n"
        "def test_z(broken):\n    pass\n", [], "setup or teardown errors"),
}


@pytest.mark.parametrize("case", list(LATER))
def test_a_run_that_turns_partial_after_a_test_ended_has_deleted_nothing(pytester, case):
    later, args, reason = LATER[case]
    before = recorded(pytester)
    pytester.makepyfile(test_mod=drop_two(), test_zlater=later)  # test_zlater runs after test_mod
    if case == "Ctrl-C":  # in-process, the interrupt would stop this suite too
        result = pytester.runpytest_subprocess("-p", "pytest_llmdet.plugin", "-p", "no:cacheprovider",
                                               "--llm-snapshot-update", timeout=120)
        assert result.ret == pytest.ExitCode.INTERRUPTED
    else:
        result = run(pytester, "--llm-snapshot-update", *args)
    assert (result.ret == 0) == ("skip" in case)  # a skip is no failure, but it makes the run partial
    result.stdout.fnmatch_lines(["*0 deleted, 1 unused*", f"not deleted: this run is partial (*{reason}*)"])
    assert goldens(pytester.path) == before  # test_a ended before the run turned partial: "two" is still there


def test_a_whole_update_deletes_the_unused_snapshot_once_at_the_end(pytester):
    recorded(pytester)
    pytester.makepyfile(test_mod=drop_two())
    result = run(pytester, "--llm-snapshot-update", "-p", "xdist", "-n", "2") if _has_xdist() else \
        run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 0 written, 0 updated, 1 deleted, 0 unused",
                                 "deleted 1 unused golden file(s) or snapshot(s) (committed ones come back with: "
                                 "git checkout -- <file>):", "  *test_a.json [[]two]"])
    golden = read_golden(pytester.path / SNAPSHOTS / "test_mod" / "test_a.json")
    assert set(golden.snapshots) == {"one"}


def _has_xdist() -> bool:
    try:
        import xdist  # noqa: F401
    except ImportError:
        return False
    return True


# -- 5. pending files follow their golden file ---------------------------------------------------------------


def test_deleting_a_golden_file_deletes_its_pending_file(pytester):
    recorded(pytester)
    pytester.makepyfile(test_mod=SUITE.replace('"b" == llm_snapshot', '"b changed" == llm_snapshot'))
    run(pytester, "--llm-snapshot").assert_outcomes(passed=1, failed=1)
    pending = pytester.path / SNAPSHOTS / "test_mod" / "test_b.json.llmdet-pending"
    assert pending.exists()
    pytester.makepyfile(test_mod=SUITE.split("def test_b")[0])  # test_b is removed
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines(["*1 deleted, 0 unused"])
    assert not pending.exists() and not pending.with_name("test_b.json").exists()
    # nothing is left for accept to bring back
    out, err = io.StringIO(), io.StringIO()
    assert review.main(["accept", str(pytester.path)], stdout=out, stderr=err) == 0
    assert out.getvalue() == "0 pending snapshot(s) accepted\n"
    assert not pending.with_name("test_b.json").exists()


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


# -- 6. no read or write can hang or fill memory --------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_an_update_refuses_a_pipe_or_device_where_a_golden_file_should_be_without_reading_it(pytester):
    recorded(pytester)
    folder = pytester.path / SNAPSHOTS / "test_mod"
    (folder / "test_a.json").unlink()
    os.mkfifo(folder / "test_a.json")  # 0.1 waited forever for a writer
    (folder / "test_b.json").unlink()
    (folder / "test_b.json").symlink_to("/dev/zero")  # 0.1 read until MemoryError
    pytester.makepyfile(test_mod=SUITE.replace('"b" ==', '"b2" ==').replace('"a one" ==', '"a1" =='))
    result = pytester.runpytest_subprocess("-p", "pytest_llmdet.plugin", "-p", "no:cacheprovider",
                                           "--llm-snapshot-update", timeout=120)
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines([
        "*could not write golden file __llm_snapshots__/test_mod/test_a.json: not a regular file (a pipe is in "
        "its place); remove it",
        "*could not write golden file __llm_snapshots__/test_mod/test_b.json: not a regular file (a device is in "
        "its place); remove it",
    ])
    assert stat.S_ISFIFO((folder / "test_a.json").lstat().st_mode) and (folder / "test_b.json").is_symlink()
    check = pytester.runpytest_subprocess("-p", "pytest_llmdet.plugin", "-p", "no:cacheprovider",
                                          "--llm-snapshot", timeout=120)
    check.assert_outcomes(failed=2)
    check.stdout.fnmatch_lines(["*test_a.json is not a regular file (a pipe is in its place); remove it and re-run"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_delete_and_pending_reads_refuse_a_pipe(tmp_path):
    pipe = tmp_path / "test_x.json.llmdet-pending"
    os.mkfifo(pipe)
    with pytest.raises(GoldenFileError, match="is not a regular file"):
        read_pending(pipe)
    out, err = io.StringIO(), io.StringIO()
    assert review.main(["pending", "--json", str(tmp_path)], stdout=out, stderr=err) == 1
    assert json.loads(out.getvalue()) == [] and "is not a regular file" in err.getvalue()


def test_a_golden_file_nested_1500_deep_is_refused_clearly_in_every_place(pytester):
    deep = ('{"format_version": 1, "test": "test_mod.py::test_b", "fingerprint": {}, "snapshots": {"0": '
            '{"text_lines": ["b"], "deep": ' + "[" * 1500 + "]" * 1500 + "}}}\n")
    recorded(pytester)
    folder = pytester.path / SNAPSHOTS / "test_mod"
    (folder / "test_b.json").write_text(deep, encoding="utf-8")
    (folder / "test_gone.json").write_text(deep.replace("test_b", "test_gone"), encoding="utf-8")  # owned by none
    (folder / "test_zz.json.llmdet-pending").write_text(deep, encoding="utf-8")  # no test owns it
    message = "is nested too deeply (over 64 levels): it is not one pytest-llmdet wrote"

    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*__llm_snapshots__/test_mod/test_b.json {message}",
                                 "2 passed, 1 failed, 0 written, 0 updated, 0 deleted, 0 unused",
                                 '1 test(s) with changed or missing snapshots. If the change is intended, re-record '
                                 'with: pytest --llm-snapshot-update "test_mod.py::test_b"',
                                 "1 file(s) in snapshot folders that are not golden files of this suite*",
                                 f"  {(folder / 'test_gone.json').relative_to(pytester.path)}"])
    assert "RecursionError" not in result.stdout.str() and "INTERNALERROR" not in result.stdout.str()
    result = run(pytester, "--llm-snapshot-update")  # replaces the unusable file; leaves the foreign one
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 1 written, 0 updated, 0 deleted, 0 unused"])
    assert read_golden(folder / "test_b.json").snapshots["0"].text == "b"
    assert (folder / "test_gone.json").read_text(encoding="utf-8") == deep.replace("test_b", "test_gone")
    out, err = io.StringIO(), io.StringIO()
    assert review.main(["pending", str(pytester.path)], stdout=out, stderr=err) == 1
    assert message in err.getvalue() and out.getvalue() == "0 pending snapshot(s)\n"


# -- 7. counts say what happened -------------------------------------------------------------------------------


def test_a_write_that_failed_is_an_error_in_the_counts_and_the_report(pytester):
    recorded(pytester)
    folder = pytester.path / SNAPSHOTS / "test_mod"
    (folder / "test_b.json").unlink()
    (folder / "test_b.json").mkdir()  # a directory in place of the file
    pytester.makepyfile(test_mod=SUITE.replace('"b" ==', '"b2" =='))
    result = run(pytester, "--llm-snapshot-update", "--llm-report=report.json")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused, 1 error",
                                 '1 test(s) whose golden file could not be written (see their errors): '
                                 '"test_mod.py::test_b"'])
    report = json.loads((pytester.path / "report.json").read_text(encoding="utf-8"))
    assert report["summary"]["error"] == 1 and report["summary"]["written"] == 0
    (entry,) = [e for e in report["snapshots"] if e["test"] == "test_mod.py::test_b"]
    assert entry["status"] == "error" and "Is a directory" in entry["error"]


def test_a_corrupt_golden_file_in_check_mode_is_counted_failed_and_listed_to_re_record(pytester):
    recorded(pytester)
    (pytester.path / SNAPSHOTS / "test_mod" / "test_b.json").write_text("{not json", encoding="utf-8")
    result = run(pytester, "--llm-snapshot", "--llm-report=report.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["2 passed, 1 failed, 0 written, 0 updated, 0 deleted, 0 unused",
                                 '1 test(s) with changed or missing snapshots. If the change is intended, re-record '
                                 'with: pytest --llm-snapshot-update "test_mod.py::test_b"'])
    report = json.loads((pytester.path / "report.json").read_text(encoding="utf-8"))
    (entry,) = [e for e in report["snapshots"] if e["test"] == "test_mod.py::test_b"]
    assert entry["status"] == "failed" and "is not valid JSON" in entry["error"]


# -- 9. a partial check lists only what it can know is unused ----------------------------------------------------


@pytest.mark.parametrize("args", [["test_mod.py::test_b"], ["-k", "test_b"], ["--deselect", "test_mod.py::test_a"]])
def test_a_partial_check_does_not_call_the_goldens_of_tests_it_did_not_run_unused(pytester, args):
    recorded(pytester)
    result = run(pytester, "--llm-snapshot", *args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["1 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert "unused golden file" not in result.stdout.str()


def test_a_partial_check_still_lists_the_unused_snapshots_of_the_tests_it_ran(pytester):
    recorded(pytester)
    pytester.makepyfile(test_mod=drop_two())
    result = run(pytester, "--llm-snapshot", "test_mod.py::test_a")
    result.stdout.fnmatch_lines(["1 passed, 0 failed, 0 written, 0 updated, 0 deleted, 1 unused",
                                 "  *test_a.json [[]two]", "a full run with --llm-snapshot-update deletes them (no "
                                 "failure here: this run is partial (node ids on the command line))"])
    assert result.ret == 0  # a partial update would delete nothing either


# -- 10. file modes and duplicate keys ------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_golden_files_get_the_mode_the_umask_gives_and_keep_an_existing_mode(tmp_path):
    old_umask = os.umask(0o022)
    try:
        from pytest_llmdet.golden import store

        store._new_file_mode.cache_clear()
        path = tmp_path / "test_x.json"
        write_golden(path, GoldenFile("t.py::test_x", {}, {"0": GoldenEntry("one")}))
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o664)
        write_golden(path, GoldenFile("t.py::test_x", {}, {"0": GoldenEntry("two")}))
        assert stat.S_IMODE(path.stat().st_mode) == 0o664 and read_golden(path).snapshots["0"].text == "two"
    finally:
        os.umask(old_umask)
        store._new_file_mode.cache_clear()


def test_a_golden_file_with_a_duplicate_key_is_refused_naming_the_key():
    text = dumps(GoldenFile("t.py::test_x", {}, {"0": GoldenEntry("one")}))
    duplicated = text.replace('"format_version": 1,', '"format_version": 1,\n  "test": "other",', 1)
    with pytest.raises(GoldenFileError) as refused:
        loads(duplicated.encode(), "f.json")
    assert str(refused.value) == ("f.json is not valid JSON: the key 'test' appears twice in one object (a reader "
                                  "sees the first, the parser would take the last); keep one")


def test_delete_golden_removes_only_the_golden_file_and_its_pending_file(tmp_path):
    path = tmp_path / "m" / "test_x.json"
    write_golden(path, GoldenFile("m.py::test_x", {}, {"0": GoldenEntry("one")}))
    path.with_name("test_x.json.llmdet-pending").write_text("{}", encoding="utf-8")
    path.with_name("test_y.json.llmdet-pending").write_text("{}", encoding="utf-8")
    assert delete_golden(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["test_y.json.llmdet-pending"]


# -- found by attacking the lifecycle --------------------------------------------------------------------------


def test_tests_a_conftest_filters_out_without_deselecting_keep_their_golden_files(pytester):
    before = recorded(pytester)
    pytester.makeconftest("""
        def pytest_collection_modifyitems(config, items):
            items[:] = [item for item in items if "test_b" not in item.nodeid]  # a "fast mode"
    """)
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert goldens(pytester.path) == before
    pytester.makepyfile(test_mod=drop_two())
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines(["not deleted: this run is partial (tests filtered out during collection)"])
    assert goldens(pytester.path) == before


def test_a_repeated_run_shares_its_tests_goldens_and_deletes_only_what_they_stopped_using(pytester):
    before = recorded(pytester)
    # pytest-repeat's --count renames every test (test_a[1-2]); each step compares with its test's own golden
    result = run(pytester, "-p", "pytest_repeat", "--llm-snapshot-update", "--count", "2")
    result.stdout.fnmatch_lines(["6 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert goldens(pytester.path) == before  # no golden file per step
    pytester.makepyfile(test_mod=drop_two())
    result = run(pytester, "-p", "pytest_repeat", "--llm-snapshot-update", "--count", "2")
    result.stdout.fnmatch_lines(["*0 written, 0 updated, 1 deleted, 0 unused",
                                 f"  {SNAPSHOTS}/test_mod/test_a.json [[]two]"])
    assert set(goldens(pytester.path)) == set(before)


def test_two_test_folders_sharing_one_snapshot_folder_through_a_link_delete_nothing_they_own(pytester):
    pytester.makeini("[pytest]\naddopts = --import-mode=importlib\n")
    for folder, name in (("unit", "test_u"), ("integ", "test_i")):
        (pytester.path / folder).mkdir()
        (pytester.path / folder / "test_x.py").write_text(f"def {name}(llm_snapshot):\n    assert '{name}' == "
                                                           "llm_snapshot\n", encoding="utf-8")
    (pytester.path / "integ" / SNAPSHOTS).mkdir()
    (pytester.path / "unit" / SNAPSHOTS).symlink_to(Path("..") / "integ" / SNAPSHOTS)
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines(["0 passed, 0 failed, 2 written, 0 updated, 0 deleted, 0 unused"])
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    run(pytester, "--llm-snapshot").assert_outcomes(passed=2)


def test_pytest_exit_in_a_session_fixture_teardown_makes_the_run_partial(pytester):
    before = recorded(pytester)
    pytester.makeconftest("""
        import pytest

        @pytest.fixture(scope="session", autouse=True)
        def stopper():
            yield
            pytest.exit("bail", returncode=0)
    """)
    pytester.makepyfile(test_mod=drop_two())
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines(["*not deleted: this run is partial (the run stopped early)"])
    assert goldens(pytester.path) == before


def test_the_pending_file_of_a_removed_test_goes_on_a_whole_update_and_accept_brings_nothing_back(pytester):
    recorded(pytester)
    pytester.makepyfile(test_mod=SUITE + '\ndef test_new(llm_snapshot):\n    assert "new" == llm_snapshot\n')
    run(pytester, "--llm-snapshot").assert_outcomes(passed=2, failed=1)
    pending = pytester.path / SNAPSHOTS / "test_mod" / "test_new.json.llmdet-pending"
    assert pending.exists()
    pytester.makepyfile(test_mod=SUITE)  # test_new is removed again, never recorded
    shown = pending.relative_to(pytester.path)
    run(pytester, "--llm-snapshot").stdout.fnmatch_lines(["*1 unused*", f"  {shown}"])
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines(["*1 deleted, 0 unused", f"  {shown}"])
    assert not pending.exists()
    out, err = io.StringIO(), io.StringIO()
    assert review.main(["accept", str(pytester.path)], stdout=out, stderr=err) == 0
    assert not pending.with_name("test_new.json").exists()


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
