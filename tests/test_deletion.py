"""Which golden files are deleted: only the plugin's own, only by an update that ran the whole suite, only
what the tests that ran stopped using, once at the end; runs that run no test delete nothing."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from conftest import golden_for
from sessions import SNAPSHOTS, SUITE, goldens, recorded, run

from pytest_llmdet import review
from pytest_llmdet.golden.format import GoldenEntry, GoldenFile, loads
from pytest_llmdet.golden.store import delete_golden, read_golden, write_golden

pytestmark = pytest.mark.usefixtures("only_this_plugin")


def test_unused_snapshots_are_dropped_only_at_the_end_of_a_whole_update(pytester, monkeypatch):
    # A test that changes one snapshot and stops comparing another: its end writes the change and keeps the
    # other; the end of the whole run drops it. A run that stops before the end has deleted nothing.
    pytester.makepyfile(test_once="""
        import os

        VERSION = os.environ["SUITE_VERSION"]

        def test_x(llm_snapshot):
            assert VERSION + " a" == llm_snapshot(name="a")
            if VERSION == "v1":
                assert "b" == llm_snapshot(name="b")

        def test_later():
            assert os.environ.get("STOP") is None
    """)
    monkeypatch.setenv("SUITE_VERSION", "v1")
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    path = pytester.path / SNAPSHOTS / "test_once" / "test_x.json"
    monkeypatch.setenv("SUITE_VERSION", "v2")
    monkeypatch.setenv("STOP", "1")
    result = run(pytester, "--llm-snapshot-update", "-x")  # stops at test_later: the run is not whole
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["0 passed, 0 failed, 0 written, 1 updated, 0 deleted, 1 unused",
                                 "not deleted: this run is partial (the run stopped early)"])
    assert {name: e.text for name, e in read_golden(path).snapshots.items()} == {"a": "v2 a", "b": "b"}
    monkeypatch.delenv("STOP")
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append(Path(dst)), real_replace(src, dst)))
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines(["1 passed, 0 failed, 0 written, 0 updated, 1 deleted, 0 unused",
                                 "deleted 1 unused golden file(s) or snapshot(s) (committed ones come back with: "
                                 "git checkout -- <file>):", f"  {path.relative_to(pytester.path)} [b]"])
    assert replaced == [path]  # the test's own write changed nothing: only the end of the run rewrote it
    assert {name: e.text for name, e in read_golden(path).snapshots.items()} == {"a": "v2 a"}


def test_a_run_of_some_modules_never_deletes_the_golden_files_of_the_others(pytester):
    # Module folder names are sanitised (test_API -> test_API-<hash>), and the snapshot folder may be nested:
    # neither may make an existing module look deleted.
    pytester.makeini("[pytest]\nllm_snapshot_dir = golden/llm\n")
    suite = "def test_it(llm_snapshot):\n    assert 'text' == llm_snapshot\n"
    pytester.makepyfile(test_API=suite, test_other=suite, test_gone=suite)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=3)
    folders = sorted(p.name for p in (pytester.path / "golden" / "llm").iterdir())
    assert len(folders) == 3 and any(f.startswith("test_API-") for f in folders)
    result = run(pytester, "--llm-snapshot-update", "test_other.py")
    result.stdout.fnmatch_lines(["1 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert sorted(p.name for p in (pytester.path / "golden" / "llm").iterdir()) == folders
    (pytester.path / "test_gone.py").unlink()  # a module that is really gone: its golden files are unused
    result = run(pytester, "--llm-snapshot-update", "test_other.py")
    result.stdout.fnmatch_lines(["*1 deleted*"])
    assert sorted(p.name for p in (pytester.path / "golden" / "llm").iterdir()) == \
        [f for f in folders if f != "test_gone"]


def drop_two(suite: str = SUITE) -> str:
    """The suite with test_a no longer comparing snapshot 'two' (which a whole update would then delete)."""
    return suite.replace('    assert "a two" == llm_snapshot(name="two")\n', "")


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


def test_delete_golden_removes_only_the_golden_file_and_its_pending_file(tmp_path):
    path = tmp_path / "m" / "test_x.json"
    write_golden(path, GoldenFile("m.py::test_x", {}, {"0": GoldenEntry("one")}))
    path.with_name("test_x.json.llmdet-pending").write_text("{}", encoding="utf-8")
    path.with_name("test_y.json.llmdet-pending").write_text("{}", encoding="utf-8")
    assert delete_golden(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["test_y.json.llmdet-pending"]


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


def test_a_machine_dependent_parameter_list_loses_its_golden_but_a_skipped_param_keeps_it(pytester):
    pytester.makepyfile(test_devices="""
        import pytest

        HAS_GPU = True
        DEVICES = ["cpu"] + (["cuda"] if HAS_GPU else [])

        @pytest.mark.parametrize("device", DEVICES)
        def test_story(llm_snapshot, device):
            assert f"story on {device}" == llm_snapshot
        """)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    cuda = pytester.path / SNAPSHOTS / "test_devices" / "test_story[cuda].json"
    assert cuda.exists()
    # the documented pattern: the parameter is always collected, and skipped where it cannot run
    pytester.makepyfile(test_devices="""
        import pytest

        HAS_GPU = False
        DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_GPU, reason="no GPU here"))]

        @pytest.mark.parametrize("device", DEVICES)
        def test_story(llm_snapshot, device):
            assert f"story on {device}" == llm_snapshot
        """)
    result = run(pytester, "--llm-snapshot-update")
    result.assert_outcomes(passed=1, skipped=1)
    assert cuda.exists()
    # the pattern to avoid: the parameter disappears on this machine, and a full update deletes its golden
    pytester.makepyfile(test_devices="""
        import pytest

        HAS_GPU = False
        DEVICES = ["cpu"] + (["cuda"] if HAS_GPU else [])

        @pytest.mark.parametrize("device", DEVICES)
        def test_story(llm_snapshot, device):
            assert f"story on {device}" == llm_snapshot
        """)
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines(["deleted 1 unused golden file(s) or snapshot(s) (committed ones come back with: "
                                 "git checkout -- <file>):",
                                 f"  {SNAPSHOTS}/test_devices/test_story[[]cuda].json"])
    assert not cuda.exists()


TWO_NAMED = """
def test_several(llm_snapshot):
    assert "a fox" == llm_snapshot(name="fox")
    assert "a lion" == llm_snapshot(name="lion")
"""


def test_a_whole_check_with_unused_snapshots_fails_since_an_update_would_delete_them(pytester):
    pytester.makepyfile(test_two=TWO_NAMED)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    pytester.makepyfile(test_two=TWO_NAMED.replace('    assert "a lion" == llm_snapshot(name="lion")\n', ""))
    check = run(pytester, "--llm-snapshot")
    check.assert_outcomes(passed=1)  # the test itself passed: the gate fails at the end of the run
    assert check.ret == pytest.ExitCode.TESTS_FAILED
    check.stdout.fnmatch_lines(["1 unused golden file(s) or snapshot(s) no test asked for:",
                                "  __llm_snapshots__/test_two/test_several.json [[]lion]",
                                "the gate fails on them: a full run with --llm-snapshot-update would delete them*"])
    assert run(pytester, "--llm-snapshot", "-k", "several").ret == 0  # a partial check: nothing would be deleted
    run(pytester, "--llm-snapshot-update").stdout.fnmatch_lines(["*1 deleted, 0 unused"])
    assert run(pytester, "--llm-snapshot").ret == 0
