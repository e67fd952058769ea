"""Golden files: the --llm-snapshot gate, local updates, the divergence report, unused snapshots."""

import json
from pathlib import Path

import pytest
from conftest import golden_for

SUITE = """
def test_story(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=12) == llm_snapshot

def test_named(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=8) == llm_snapshot(name="fox")
    assert llm.generate([{"role": "user", "content": "Hi"}], max_new_tokens=8) == llm_snapshot(name="chat")

def test_text_only(llm_snapshot):
    assert "plain text\\nsecond line" == llm_snapshot
"""


def golden_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("__llm_snapshots__/**/*.json"))}


def test_without_flags_snapshot_tests_are_skipped(pytester):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["*needs --llm-snapshot*"])
    assert golden_files(pytester.path) == {}


def test_without_flags_snapshot_tests_are_skipped_before_any_fixture_whatever_the_argument_order(pytester):
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def witness():
            print("witness set up")
        """
    )
    pytester.makepyfile(test_order="""
        import pytest

        @pytest.mark.parametrize("n", range(3))
        def test_llm_first(llm, llm_snapshot, witness, n):
            assert llm.generate("The fox") == llm_snapshot

        @pytest.mark.parametrize("n", range(3))
        def test_snapshot_first(llm_snapshot, witness, llm, n):
            assert llm.generate("The fox") == llm_snapshot
        """)
    result = pytester.runpytest("-rs", "-s")
    result.assert_outcomes(skipped=6)
    result.stdout.fnmatch_lines(["SKIPPED [3] test_order.py:3: needs --llm-snapshot",
                                 "SKIPPED [3] test_order.py:7: needs --llm-snapshot"])
    output = result.stdout.str()
    assert "model loads" not in output and "witness set up" not in output


def test_record_then_check_passes(pytester):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("--llm-snapshot-update")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*= llm snapshots =*",
                                 "0 passed, 0 failed, 4 written, 0 updated, 0 deleted, 0 unused"])
    files = golden_files(pytester.path)
    assert sorted(files) == [
        "__llm_snapshots__/test_suite/test_named.json",
        "__llm_snapshots__/test_suite/test_story.json",
        "__llm_snapshots__/test_suite/test_text_only.json",
    ]
    story = json.loads(files["__llm_snapshots__/test_suite/test_story.json"])
    assert story["format_version"] == 1 and story["test"] == "test_suite.py::test_story"
    assert set(story["fingerprint"]) >= {"model", "weights_sha256", "dtype", "device_type", "torch",
                                         "transformers", "generation"}
    assert story["fingerprint"]["generation"]["repetition_penalty"] == 1.05
    entry = story["snapshots"]["0"]
    assert len(entry["token_ids"]) == len(entry["margins"]) == 12
    assert entry["prompt"] == "The fox" and entry["finish_reason"] == "length"
    assert set(json.loads(files["__llm_snapshots__/test_suite/test_named.json"])["snapshots"]) == {"fox", "chat"}

    result = pytester.runpytest("--llm-snapshot")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["4 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert golden_files(pytester.path) == files


def _tamper(path: Path, index: int, margin: float | None = None) -> int:
    data = json.loads(path.read_text())
    entry = data["snapshots"]["0"]
    original = entry["token_ids"][index]
    entry["token_ids"][index] = original + 1
    entry["text_lines"][0] = "(edited) " + entry["text_lines"][0]
    if margin is not None:
        entry["margins"][index] = margin
    path.write_text(json.dumps(data))
    return original


def test_one_changed_token_fails_with_the_divergence_report(pytester):
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest("--llm-snapshot-update").assert_outcomes(passed=3)
    golden = pytester.path / "__llm_snapshots__/test_suite/test_story.json"
    original = _tamper(golden, 4)
    before = golden.read_bytes()
    result = pytester.runpytest("--llm-snapshot")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*assert output differs from snapshot '0' in __llm_snapshots__/test_suite/test_story.json",
        "*first divergence at token 4 of 12 (regression: golden margin * >= llm_near_tie 0.01)",
        "*matched prefix: *",
        f"*  golden : {original + 1} * margin *",
        f"*  current: {original} * margin *",
        "*text diff:*",
        '*re-record with: pytest --llm-snapshot-update "test_suite.py::test_story"',
        "*= llm snapshots =*",
        "3 passed, 1 failed, 0 written, 0 updated, 0 deleted, 0 unused",
    ])
    assert result.ret == 1
    assert golden.read_bytes() == before  # a check never writes


def test_near_tie_label_and_fingerprint_difference(pytester):
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest("--llm-snapshot-update").assert_outcomes(passed=3)
    golden = pytester.path / "__llm_snapshots__/test_suite/test_story.json"
    _tamper(golden, 2, margin=0.003)
    data = json.loads(golden.read_text())
    data["fingerprint"]["dtype"] = "bfloat16"
    golden.write_text(json.dumps(data))
    result = pytester.runpytest("--llm-snapshot")
    result.stdout.fnmatch_lines([
        "*first divergence at token 2 of 12 (near-tie: golden margin 0.0030, current margin *; one below "
        "llm_near_tie 0.01)",
        "*the environment differs from the one recorded*",
        "*dtype: bfloat16 → float32",
    ])


def test_missing_snapshot_fails_in_check_mode_and_writes_nothing(pytester):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("--llm-snapshot")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([
        "*snapshot '0' of test_suite.py::test_story is missing from __llm_snapshots__/test_suite/test_story.json",
        '*record it with: pytest --llm-snapshot-update "test_suite.py::test_story"',
    ])
    assert golden_files(pytester.path) == {}
    assert not (pytester.path / "__llm_snapshots__").exists()


def test_update_changes_only_what_changed(pytester):
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest("--llm-snapshot-update").assert_outcomes(passed=3)
    golden = pytester.path / "__llm_snapshots__/test_suite/test_story.json"
    _tamper(golden, 1)
    before = golden_files(pytester.path)
    result = pytester.runpytest("--llm-snapshot-update")
    result.stdout.fnmatch_lines(["3 passed, 0 failed, 0 written, 1 updated, 0 deleted, 0 unused"])
    after = golden_files(pytester.path)
    changed = sorted(k for k in after if after[k] != before[k])
    assert changed == ["__llm_snapshots__/test_suite/test_story.json"]
    result = pytester.runpytest("--llm-snapshot-update")  # nothing to change: every byte stays
    result.stdout.fnmatch_lines(["4 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert golden_files(pytester.path) == after


def test_full_update_deletes_unused_and_partial_update_deletes_nothing(pytester):
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest("--llm-snapshot-update").assert_outcomes(passed=3)
    folder = pytester.path / "__llm_snapshots__/test_suite"
    story = (folder / "test_story.json").read_bytes()
    (folder / "test_removed.json").write_bytes(golden_for(story, "test_suite.py::test_removed"))
    orphan = pytester.path / "__llm_snapshots__/test_gone_module"
    orphan.mkdir()
    (orphan / "test_x.json").write_bytes(golden_for(story, "test_gone_module.py::test_x"))
    chat_line = ('    assert llm.generate([{"role": "user", "content": "Hi"}], max_new_tokens=8)'
                 ' == llm_snapshot(name="chat")\n')
    assert chat_line in SUITE
    pytester.makepyfile(test_suite=SUITE.replace(chat_line, ""))
    # check mode and partial updates only report them
    result = pytester.runpytest("--llm-snapshot")  # a whole check fails: an update would delete them
    result.stdout.fnmatch_lines([
        "*3 unused golden file(s) or snapshot(s) no test asked for:*",
        "the gate fails on them: a full run with --llm-snapshot-update would delete them*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    for args in (["-k", "story"], ["test_suite.py::test_named"], ["--deselect", "test_suite.py::test_story"]):
        result = pytester.runpytest("--llm-snapshot-update", *args)
        result.stdout.fnmatch_lines(["*not deleted: this run is partial*"])
        assert (folder / "test_removed.json").exists() and (orphan / "test_x.json").exists()
    assert "chat" in json.loads((folder / "test_named.json").read_text())["snapshots"]
    result = pytester.runpytest("--llm-snapshot-update")
    result.stdout.fnmatch_lines(["*3 deleted*", "deleted 3 unused golden file(s) or snapshot(s) (committed ones come "
                                 "back with: git checkout -- <file>):"])
    assert not (folder / "test_removed.json").exists() and not orphan.exists()
    assert set(json.loads((folder / "test_named.json").read_text())["snapshots"]) == {"fox"}


def test_skipped_or_failed_tests_keep_their_snapshots(pytester):
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest("--llm-snapshot-update").assert_outcomes(passed=3)
    before = golden_files(pytester.path)
    pytester.makepyfile(test_suite=SUITE.replace("def test_named(llm, llm_snapshot):",
                                                 "def test_named(llm, llm_snapshot):\n    assert 0"))
    result = pytester.runpytest("--llm-snapshot-update")
    result.assert_outcomes(passed=2, failed=1)
    assert golden_files(pytester.path) == before


def test_ci_update_prints_a_warning_but_is_honoured(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("--llm-snapshot-update")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["llmdet: WARNING: --llm-snapshot-update in CI (CI=true)*"])
    assert len(golden_files(pytester.path)) == 3


def test_details_list_each_snapshot(pytester):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("--llm-snapshot-update", "--llm-snapshot-details")
    result.stdout.fnmatch_lines(
        ["*written  test_suite.py::test_named ?chat?  __llm_snapshots__/test_suite/test_named.json"])


def test_comparing_something_else_is_a_clear_error(pytester):
    pytester.makepyfile("def test_it(llm_snapshot):\n    assert 42 == llm_snapshot\n")
    result = pytester.runpytest("--llm-snapshot")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*llm_snapshot compares a Generation (from llm.generate) or a str, not int*"])


def test_a_name_that_an_unnamed_comparison_also_gets_is_refused_either_way_round(pytester):
    pytester.makepyfile(
        """
        def test_named_first(llm_snapshot):
            assert "a" == llm_snapshot(name="0")
            assert "b" == llm_snapshot

        def test_unnamed_first(llm_snapshot):
            assert "a" == llm_snapshot
            assert "b" == llm_snapshot(name="0")

        def test_digits_alone_are_fine(llm_snapshot):
            assert "a" == llm_snapshot(name="0")
            assert "b" == llm_snapshot(name="1")
        """
    )
    result = pytester.runpytest("--llm-snapshot-update")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines([
        "*SnapshotUsageError: snapshot name '0' is used twice in test_a_name_that*.py::test_named_first: by "
        "llm_snapshot(name='0') and by an unnamed comparison*",
        "*SnapshotUsageError: snapshot name '0' is used twice in test_a_name_that*.py::test_unnamed_first:*",
    ])
    texts = {p.stem: {name: entry["text_lines"] for name, entry in json.loads(p.read_text())["snapshots"].items()}
             for p in pytester.path.rglob("*.json")}
    # the refused comparison overwrote nothing: each refused test's file holds its first comparison only
    assert texts == {"test_digits_alone_are_fine": {"0": ["a"], "1": ["b"]},
                     "test_named_first": {"0": ["a"]}, "test_unnamed_first": {"0": ["a"]}}


def test_one_name_compared_with_two_outputs_is_the_same_usage_error_in_update_and_check_mode(pytester):
    pytester.makepyfile(test_same="""
        def test_twice(llm_snapshot):
            assert "first" == llm_snapshot(name="x")
            assert "first" == llm_snapshot(name="x")  # the same output again is fine
            assert "second" == llm_snapshot(name="x")
    """)
    usage_error = ("E   *SnapshotUsageError: snapshot 'x' was compared twice in test_same.py::test_twice with "
                   "different outputs; give each comparison its own name: llm_snapshot(name=...)")
    golden = pytester.path / "__llm_snapshots__/test_same/test_twice.json"
    for mode, counts in (("--llm-snapshot-update", "0 passed, 0 failed, 1 written"),
                         ("--llm-snapshot", "1 passed, 0 failed, 0 written"),
                         ("--llm-snapshot-update", "1 passed, 0 failed, 0 written, 0 updated")):
        result = pytester.runpytest(mode)
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines([usage_error, f"{counts}, *"])  # one outcome for snapshot 'x', not two
        assert "output differs" not in result.stdout.str() and "regression" not in result.stdout.str()
        # the first comparison was recorded (by the first update) and is never replaced by the second
        assert json.loads(golden.read_text())["snapshots"]["x"]["text_lines"] == ["first"]


def test_corrupt_golden_file_fails_that_test_only(pytester):
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest("--llm-snapshot-update").assert_outcomes(passed=3)
    golden = pytester.path / "__llm_snapshots__/test_suite/test_story.json"
    golden.write_text(golden.read_text()[:40])
    result = pytester.runpytest("--llm-snapshot")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*__llm_snapshots__/test_suite/test_story.json is not valid JSON: * (truncated or edited by hand?)",
        '*Re-record it with: pytest --llm-snapshot-update "test_suite.py::test_story"',
    ])


HOSTILE_IDS = ["a/b", "a\\\\b", "..", "../../escape", ".hidden", "x" * 300, "CON", "🙂", "ליל", "a_b", "a b", "A_B"]


def test_unsafe_and_colliding_ids_stay_inside_the_folder_and_distinct(pytester):
    pytester.makepyfile(test_ids=f"""
        import pytest

        @pytest.mark.parametrize("name", {HOSTILE_IDS!r})
        def test_id(name, llm_snapshot):
            assert "text for " + name == llm_snapshot
    """)
    pytester.runpytest("--llm-snapshot-update").assert_outcomes(passed=len(HOSTILE_IDS))
    folder = pytester.path / "__llm_snapshots__" / "test_ids"
    files = sorted(folder.iterdir())
    assert len(files) == len(HOSTILE_IDS)
    assert [p for p in pytester.path.rglob("*.json") if folder not in p.parents] == []
    assert len({p.name.lower() for p in files}) == len(files)
    pytester.runpytest("--llm-snapshot").assert_outcomes(passed=len(HOSTILE_IDS))


def test_chinese_and_emoji_round_trip(pytester):
    pytester.makepyfile("""
        def test_unicode(llm, llm_snapshot):
            g = llm.generate("从前有一只狐狸 🦊 and a crow", max_new_tokens=16)
            assert g == llm_snapshot
            assert "你好，世界 🙂👍🏽 e\\u0301" == llm_snapshot(name="text")
    """)
    pytester.runpytest("--llm-snapshot-update").assert_outcomes(passed=1)
    raw = next((pytester.path / "__llm_snapshots__").rglob("*.json")).read_text(encoding="utf-8")
    assert "从前有一只狐狸 🦊" in raw and "你好，世界 🙂👍🏽" in raw
    pytester.runpytest("--llm-snapshot").assert_outcomes(passed=1)


def test_xdist_update_then_check_gives_the_same_files_as_serial(pytester):
    pytest.importorskip("xdist")
    for index in range(4):
        pytester.makepyfile(**{f"test_m{index}": SUITE})
    pytester.runpytest_subprocess("--llm-snapshot-update").assert_outcomes(passed=12)
    serial = golden_files(pytester.path)
    for path in (pytester.path / "__llm_snapshots__").rglob("*.json"):
        path.unlink()
    result = pytester.runpytest_subprocess("--llm-snapshot-update", "-n", "2")
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(["0 passed, 0 failed, 16 written, 0 updated, 0 deleted, 0 unused"])
    assert golden_files(pytester.path) == serial
    extra = pytester.path / "__llm_snapshots__/test_m0/test_extra.json"
    extra.write_bytes(golden_for(serial["__llm_snapshots__/test_m0/test_story.json"], "test_m0.py::test_extra"))
    (extra.parent / "notes.json").write_bytes(b"{}")  # not a golden file: never deleted
    result = pytester.runpytest_subprocess("--llm-snapshot", "-n", "2")
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(["16 passed, 0 failed, 0 written, 0 updated, 0 deleted, 1 unused"])
    pytester.runpytest_subprocess("--llm-snapshot-update", "-n", "2").stdout.fnmatch_lines(["*1 deleted*"])
    assert golden_files(pytester.path) == {**serial, "__llm_snapshots__/test_m0/notes.json": b"{}"}


def test_collection_errors_make_an_update_partial(pytester):
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest("--llm-snapshot-update").assert_outcomes(passed=3)
    unused = pytester.path / "__llm_snapshots__/test_suite/test_removed.json"
    unused.write_bytes(golden_for((pytester.path / "__llm_snapshots__/test_suite/test_story.json").read_bytes(),
                                  "test_suite.py::test_removed"))
    pytester.makepyfile(test_broken="import no_such_module_here\n")
    result = pytester.runpytest("--llm-snapshot-update", "--continue-on-collection-errors")
    result.stdout.fnmatch_lines(["*not deleted: this run is partial (collection errors)*"])
    assert unused.exists()


@pytest.fixture
def hashed(monkeypatch, pytester):
    """The names of the weight files hashed so far, in order; and a one-snapshot test to run."""
    from pytest_llmdet.engines import fingerprint

    names = []
    hash_file = fingerprint._hash_file
    monkeypatch.setattr(fingerprint, "_hash_file", lambda path: names.append(path.name) or hash_file(path))
    pytester.makepyfile("def test_story(llm, llm_snapshot):\n"
                        "    assert llm.generate('Once upon a time', max_new_tokens=4) == llm_snapshot\n")
    return names


def test_weights_hash_comes_from_pytest_cache_on_the_next_run(pytester, model_copy, hashed):
    # A large local model must not be read and hashed on every run: the hash is cached in pytest's cache by
    # path, size and modification time.
    pytester.runpytest("--llm-model", str(model_copy), "--llm-snapshot-update").assert_outcomes(passed=1)
    assert hashed == ["model.safetensors"]
    (pytester.path / "__llm_snapshots__/test_weights_hash_comes_from_pytest_cache_on_the_next_run/"
     "test_story.json").unlink()  # recording it again needs the fingerprint again
    pytester.runpytest("--llm-model", str(model_copy), "--llm-snapshot-update").assert_outcomes(passed=1)
    assert hashed == ["model.safetensors"]


def test_a_passing_check_reads_no_weights_and_a_failing_one_or_a_report_does(pytester, model_copy, hashed,
                                                                             monkeypatch):
    # CI checks on a fresh clone, with no pytest cache: hashing a large local model there would cost seconds on
    # every run, for a fingerprint that only a failure report, a pending file or the JSON report shows.
    model = ("--llm-model", str(model_copy), "-p", "no:cacheprovider")
    pytester.runpytest(*model, "--llm-snapshot-update").assert_outcomes(passed=1)
    assert hashed == ["model.safetensors"]  # recording writes the hash into the golden file
    pytester.runpytest(*model, "--llm-snapshot").assert_outcomes(passed=1)
    assert hashed == ["model.safetensors"]

    pytester.runpytest(*model, "--llm-snapshot", "--llm-report=report.json").assert_outcomes(passed=1)
    assert hashed == ["model.safetensors"] * 2
    report = json.loads((pytester.path / "report.json").read_text())
    assert "weights_sha256" in report["snapshots"][0]["fingerprint"]

    golden = next(pytester.path.rglob("test_story.json"))
    data = json.loads(golden.read_text())
    data["snapshots"]["0"]["token_ids"][-1] += 1
    golden.write_text(json.dumps(data))
    monkeypatch.delenv("CI", raising=False)  # a check leaves a pending file outside CI only
    result = pytester.runpytest(*model, "--llm-snapshot")
    result.assert_outcomes(failed=1)
    assert hashed == ["model.safetensors"] * 3  # the failure report compares the whole fingerprint
    assert "weights_sha256" in json.loads(next(pytester.path.rglob("*.llmdet-pending")).read_text())["fingerprint"]
