"""Where a snapshot lives: hostile test ids and snapshot names stay inside the snapshot folder and distinct,
and the repetitions of a test (pytest-repeat) share its golden file."""

from __future__ import annotations

from pathlib import Path

import pytest
from sessions import SNAPSHOTS, cwd, golden_files, retokened, run

from pytest_llmdet.golden.format import loads
from pytest_llmdet.golden.location import golden_path, is_inside, safe_file_stem

pytestmark = pytest.mark.usefixtures("only_this_plugin")


HOSTILE_IDS = ["a/b", "a\\b", "..", "../../escape", ".hidden", "...", "x" * 300, "x" * 299 + "y", "CON",
               "nul", "con.txt", "\U0001f642", "\u05dc\u05d9\u05dc", "\u202eevil", "a_b", "a b", "A_B",
               "a::b", "a.b", "a:b", " ", "-"]


def test_hostile_test_ids_stay_inside_the_snapshot_folder_and_distinct(pytester):
    pytester.makepyfile(test_ids=f"""
        import pytest

        @pytest.mark.parametrize("name", {HOSTILE_IDS!r})
        def test_id(name, llm_snapshot):
            assert "text for " + name == llm_snapshot
    """)
    before = {p for p in pytester.path.rglob("*")}
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=len(HOSTILE_IDS))
    folder = pytester.path / SNAPSHOTS / "test_ids"
    created = sorted(p for p in pytester.path.rglob("*") if p not in before and p.is_file()
                     and "__pycache__" not in p.parts)
    assert all(p.parent == folder for p in created), created
    assert len(created) == len(HOSTILE_IDS)
    assert len({p.name.lower() for p in created}) == len(created)  # distinct on case-insensitive systems too
    assert all(len(p.name) < 255 and not p.name.startswith(".") for p in created)
    texts = {loads(p.read_bytes(), p.name).snapshots["0"].text for p in created}
    assert texts == {"text for " + name for name in HOSTILE_IDS}  # each id its own file, none overwritten
    run(pytester, "--llm-snapshot").assert_outcomes(passed=len(HOSTILE_IDS))


def test_hostile_snapshot_names_are_keys_in_one_file(pytester):
    names = [n for n in HOSTILE_IDS if n.strip()] + ["\n", "0", "variants_"]
    pytester.makepyfile(test_names=f"""
        import pytest

        NAMES = {names!r}

        def test_names(llm_snapshot):
            for name in NAMES:
                assert "text for " + repr(name) == llm_snapshot(name=name)

        def test_empty_name(llm_snapshot):
            assert "x" == llm_snapshot(name="")
    """)
    result = run(pytester, "--llm-snapshot-update")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*SnapshotUsageError: a snapshot name is a non-empty string, not ''"])
    files = list(pytester.path.rglob("*.json"))
    assert [p.relative_to(pytester.path) for p in files] == [Path(SNAPSHOTS, "test_names", "test_names.json")]
    assert set(loads(files[0].read_bytes(), "f").snapshots) == set(names)
    run(pytester, "--llm-snapshot", "-k", "not empty").assert_outcomes(passed=1)


def test_sanitised_names_never_collide_with_a_name_that_looks_sanitised():
    for name in HOSTILE_IDS + ["Test", "test", "test_x[1/2]", "test_x[1_2]"]:
        stem = safe_file_stem(name)
        assert safe_file_stem(stem) != stem or stem == name, name
        assert is_inside(Path("/p/__llm_snapshots__/m") / (stem + ".json"), Path("/p/__llm_snapshots__/m"))
    a = golden_path(Path("/p/test_m.py"), "test_m.py::test_x[a::b]", SNAPSHOTS)
    b = golden_path(Path("/p/test_m.py"), "test_m.py::test_x[a.b]", SNAPSHOTS)
    c = golden_path(Path("/p/test_m.py"), "test_m.py::TestA::test_x[a.b]", SNAPSHOTS)
    assert len({a, b, c}) == 3 and c.name.startswith("TestA.test_x[a.b]")


def test_repetitions_compare_with_and_record_into_their_tests_own_golden(pytester):
    pytest.importorskip("pytest_repeat")
    pytester.makepyfile(test_story="""
        import pytest

        @pytest.mark.parametrize("prompt", ["The fox", "The lion"])
        def test_story(llm, llm_snapshot, prompt):
            assert llm.generate(prompt, max_new_tokens=4) == llm_snapshot

        def test_plain(llm, llm_snapshot):
            assert llm.generate("Once", max_new_tokens=4) == llm_snapshot
        """)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=3)
    recorded = golden_files(pytester.path)
    result = run(pytester, "-p", "pytest_repeat", "--llm-snapshot", "--count", "2")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["6 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    run(pytester, "-p", "pytest_repeat", "--llm-snapshot-update", "--count", "2").assert_outcomes(passed=6)
    assert golden_files(pytester.path) == recorded  # no golden file per repetition
    (fox,) = (pytester.path / SNAPSHOTS / "test_story").glob("test_story*The_fox*.json")
    retokened(fox, ["0"])
    result = run(pytester, "-p", "pytest_repeat", "--llm-snapshot", "--count", "2")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(['*re-record with: pytest --llm-snapshot-update '
                                 '"test_story.py::test_story[[]The fox]"'])
    pending = sorted(p.name for p in pytester.path.rglob("*.llmdet-pending"))
    assert pending == [fox.name + ".llmdet-pending"]  # one per test, not per repetition
    from pytest_llmdet.review import main

    with cwd(pytester.path):
        assert main(["accept"]) == 0
    assert sorted(golden_files(pytester.path)) == sorted(recorded)
    run(pytester, "-p", "pytest_repeat", "--llm-snapshot", "--count", "2").assert_outcomes(passed=6)
