"""Pure logic of golden files: safe names, the file format, and the token comparison."""

from pathlib import Path

import pytest

from pytest_llmdet.divergence import first_divergence
from pytest_llmdet.engines.fingerprint import fingerprint_changes, hash_weights
from pytest_llmdet.golden.compare import compare_tokens
from pytest_llmdet.golden.format import GoldenEntry, GoldenFile, GoldenFileError, dumps, loads
from pytest_llmdet.golden.location import golden_path, is_inside, safe_file_stem
from pytest_llmdet.golden.render import render_comparison

HOSTILE = ["a/b", "a\\b", "..", "../../etc/passwd", ".hidden", "x" * 300, "CON", "nul", "con.txt", "🙂", "ליל",
           "a b", "a_b", "a?b", "a:b", "", "test[1/2]", "test[1_2]", "Test", "test"]


def test_safe_names_stay_inside_the_folder_and_distinct():
    folder = Path("/project/tests/__llm_snapshots__/test_mod")
    stems = [safe_file_stem(name) for name in HOSTILE]
    assert len({s.lower() for s in stems}) == len(HOSTILE)  # distinct even on case-insensitive file systems
    for stem in stems:
        assert is_inside(folder / (stem + ".json"), folder)
        assert "/" not in stem and "\\" not in stem and not stem.startswith(".")
        assert len(stem) <= 100
        assert stem.split(".")[0].upper() not in {"CON", "NUL", "PRN", "AUX"}


def test_plain_names_stay_readable():
    assert safe_file_stem("test_greeting") == "test_greeting"
    assert safe_file_stem("test_greeting[chat-1]") == "test_greeting[chat-1]"


def test_golden_path_per_module_and_test():
    path = golden_path(Path("/p/tests/test_mod.py"), "tests/test_mod.py::TestA::test_b[x]", "__llm_snapshots__")
    assert path.parent == Path("/p/tests/__llm_snapshots__/test_mod")
    assert path.name.startswith("TestA.test_b[x]-") and path.suffix == ".json"


ENTRY = GoldenEntry(text="第一行\nline 🙂\n", token_ids=[5, 6, 7], margins=[1.234567, 0.00001, float("inf")],
                    prompt=[{"role": "user", "content": "你好"}], prompt_sha256="abc", finish_reason="eos",
                    settings={"do_sample": False})


def test_format_is_deterministic_readable_and_round_trips():
    golden = GoldenFile("t.py::test", {"model": "m", "dtype": "float32"}, {"b": ENTRY, "a": GoldenEntry("hi")})
    text = dumps(golden)
    assert text == dumps(golden) and text.endswith("}\n")
    assert '"第一行\\n"' in text and "🙂" in text  # UTF-8, not ASCII-escaped
    assert '"token_ids": [5, 6, 7]' in text and '"margins": [1.2346, 0.0, null]' in text
    assert text.index('"a"') < text.index('"b"')  # sorted keys
    assert '"format_version": 1' in text
    back = loads(text.encode(), "f.json")
    assert back.snapshots["b"].text == ENTRY.text and back.snapshots["b"].token_ids == [5, 6, 7]
    assert back.snapshots["a"].token_ids is None and back.snapshots["a"].text == "hi"
    assert dumps(back) == text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"format_version": 1, "test"', "not valid JSON: .* line 1"),
        (b"[]", "top level must be a JSON object"),
        (b'{"format_version": 99, "test": "t", "fingerprint": {}, "snapshots": {}}', "newer pytest-llmdet"),
        (b'{"test": "t"}', "missing format_version"),
        (b'{"format_version": 1, "test": "t", "fingerprint": {}, "snapshots": {"a": {"text_lines": "x"}}}',
         "snapshot 'a': 'text_lines' must be a list of strings"),
        (b'{"format_version": 1, "test": "t", "fingerprint": {}, "snapshots": {"a": {"text_lines": [], '
         b'"token_ids": [1, "2"]}}}', "'token_ids' must be a list of non-negative integers"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b'{"format_version": 1, "x": NaN}', "NaN is not allowed"),
    ],
)
def test_bad_files_are_refused_with_the_file_named(raw, message):
    with pytest.raises(GoldenFileError, match=message) as error:
        loads(raw, "tests/__llm_snapshots__/m/t.json")
    assert "tests/__llm_snapshots__/m/t.json" in str(error.value)


def test_huge_file_is_refused_before_parsing():
    with pytest.raises(GoldenFileError, match="over the 20 MB limit"):
        loads(b" " * (21 * 1024 * 1024), "big.json")


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 9, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    assert first_divergence([], [4]) == 0


def test_near_tie_and_regression_labels():
    golden = GoldenEntry("abc", token_ids=[1, 2, 3], margins=[2.0, 0.004, 1.0], finish_reason="length")
    tie = compare_tokens(golden, [1, 9, 3], [2.0, 0.01, 1.0], "aXc", "length", near_tie=0.01)
    assert tie.divergence.label == "near-tie" and tie.divergence.index == 1
    real = compare_tokens(golden, [7, 2, 3], [0.5, 1, 1], "Xbc", "length", near_tie=0.01)
    assert real.divergence.label == "regression"
    lines = render_comparison(real, golden, "Xbc", [7, 2, 3], lambda ids: "".join(f"<{i}>" for i in ids), 0.01)
    assert lines[0] == ("first divergence at token 0 of 3 (regression: golden margin 2.0000, current margin 0.5000; "
                        "both >= llm_near_tie 0.01)")
    assert "  golden : 1 '<1>'  margin 2.0000" in lines and "  current: 7 '<7>'  margin 0.5000" in lines


def test_early_eos_is_reported():
    golden = GoldenEntry("abc", token_ids=[1, 2, 3], margins=[1, 1, 1], finish_reason="length")
    result = compare_tokens(golden, [1, 2], [1, 1], "ab", "eos", near_tie=0.01)
    assert result.divergence.label == "length" and result.divergence.other_token is None
    lines = render_comparison(result, golden, "ab", [1, 2], None, 0.01)
    assert "length: golden 3 tokens (length), current 2 tokens (eos): early EOS" in lines


def test_fingerprint_changes_and_cached_weight_hash(tmp_path):
    assert fingerprint_changes({"dtype": "float32", "generation": {"a": 1}}, {"dtype": "bfloat16",
                                                                             "generation": {"a": 1}}) == [
        "dtype: float32 → bfloat16"]
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    cache = {}
    first = hash_weights(tmp_path, cache)
    assert len(cache) == 1
    cache[next(iter(cache))] = "pretend"  # a cached entry is trusted while path, size and mtime match
    assert hash_weights(tmp_path, cache) != first


def test_a_tolerant_comparison_is_re_recorded_with_the_flags_that_store_its_candidates():
    from pytest_llmdet.settings import ComparePlan

    assert ComparePlan().update_flags == ""
    assert ComparePlan("tolerant").update_flags == "--llm-compare tolerant"
    assert ComparePlan("tolerant", 3).update_flags == "--llm-compare tolerant --llm-top-k 3"
    assert ComparePlan("exact", 3).update_flags == ""


def test_the_re_record_command_groups_the_failed_tests_by_the_flags_their_comparison_needs():
    from pytest_llmdet.golden.ledger import SnapshotRun
    from pytest_llmdet.golden.snapshot import OutcomeDetails, SnapshotOutcome
    from pytest_llmdet.golden.summary import summary_lines

    run = SnapshotRun(outcomes=[
        SnapshotOutcome("t.py::test_a", "0", "failed", "a.json", OutcomeDetails()),
        SnapshotOutcome("t.py::test_b", "0", "failed", "b.json",
                        OutcomeDetails(compare="tolerant", update_flags="--llm-compare tolerant")),
        SnapshotOutcome("t.py::test_b", "1", "missing", "b.json",
                        OutcomeDetails(compare="tolerant", update_flags="--llm-compare tolerant")),
    ])
    assert summary_lines(run, update=False, details=False)[1] == (
        '2 test(s) with changed or missing snapshots. If the change is intended, re-record with: pytest '
        '--llm-snapshot-update "t.py::test_a"; pytest --llm-snapshot-update --llm-compare tolerant "t.py::test_b"')

def test_the_count_line_is_unchanged_unless_snapshots_were_tolerated_or_not_compared():
    from pytest_llmdet.golden.summary import count_line

    counts = {"passed": 2, "failed": 4, "written": 0, "updated": 0, "deleted": 0, "unused": 0, "error": 0,
              "tolerated": 0, "not_compared": 0}
    assert count_line(counts) == "2 passed, 4 failed, 0 written, 0 updated, 0 deleted, 0 unused"
    counts.update(tolerated=1, not_compared=2, error=1)
    assert count_line(counts) == ("2 passed (1 tolerated), 4 failed, 0 written, 0 updated, 0 deleted, 0 unused, "
                                  "1 error, 2 not compared")

