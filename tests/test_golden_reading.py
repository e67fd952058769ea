"""Reading golden files: a corrupt, hand-edited or hostile file fails its own test alone with one clear
message, and nothing that is not a regular file is ever read."""

from __future__ import annotations

import fnmatch
import io
import json
import os
import pickle
import stat
from pathlib import Path

import pytest
from sessions import READ_ONLY_SUITE, SNAPSHOTS, SUITE, golden_files, recorded, run, section, temporaries

from pytest_llmdet import review
from pytest_llmdet.engines.fingerprint import fingerprint_changes
from pytest_llmdet.golden.compare import compare_tokens
from pytest_llmdet.golden.format import GoldenEntry, GoldenFile, GoldenFileError, dumps, loads
from pytest_llmdet.golden.pending import read_pending
from pytest_llmdet.golden.render import render_comparison
from pytest_llmdet.golden.store import read_golden

pytestmark = pytest.mark.usefixtures("only_this_plugin")


TOKEN_ENTRY = {"text_lines": ["hi"], "token_ids": [1, 2], "margins": [0.5, 0.25], "finish_reason": "length",
               "settings": {}, "prompt": "p", "prompt_sha256": "abc"}


def _edit(raw: bytes, change) -> bytes:
    data = json.loads(raw)
    change(data)
    return json.dumps(data).encode()


# name: (how the file is corrupted, what the message must say)
CORRUPTIONS = {
    "truncated": (lambda raw, _: raw[: len(raw) // 2], "is not valid JSON: * (truncated or edited by hand?)"),
    "empty": (lambda raw, _: b"", "is not valid JSON: Expecting value at line 1 column 1*"),
    "wrong_type": (lambda raw, _: _edit(raw, lambda d: d["snapshots"]["0"].update(text_lines=42)),
                   "snapshot '0': 'text_lines' must be a list of strings"),
    "snapshots_list": (lambda raw, _: _edit(raw, lambda d: d.update(snapshots=[])),
                       "missing or non-object 'snapshots'"),
    "token_strings": (lambda raw, _: _edit(raw, lambda d: d["snapshots"].update(
        {"0": {**TOKEN_ENTRY, "token_ids": ["1", "2"]}})), "'token_ids' must be a list of non-negative *"),
    "huge_token": (lambda raw, _: _edit(raw, lambda d: d["snapshots"].update(
        {"0": {**TOKEN_ENTRY, "token_ids": [1, 2**40]}})), "'token_ids' must be a list of non-negative *"),
    "infinite_margin": (lambda raw, _: _edit(raw, lambda d: d["snapshots"].update(
        {"0": {**TOKEN_ENTRY, "margins": [0.5, 10**400]}})), "'margins' must be a list of numbers*"),
    "missing_field": (lambda raw, _: _edit(raw, lambda d: d["snapshots"].update(
        {"0": {k: v for k, v in TOKEN_ENTRY.items() if k != "finish_reason"}})),
        "'finish_reason' must be 'eos' or 'length'"),
    "no_fingerprint": (lambda raw, _: _edit(raw, lambda d: d.pop("fingerprint")),
                       "missing or non-object 'fingerprint'"),
    "newer_version": (lambda raw, _: _edit(raw, lambda d: d.update(format_version=99)),
                      "format_version 99 was written by a newer pytest-llmdet*upgrade pytest-llmdet"),
    "unknown_version": (lambda raw, _: _edit(raw, lambda d: d.update(format_version=0)),
                        "unknown format_version 0"),
    "invalid_utf8": (lambda raw, _: raw.replace(b"text", b"t\xffxt"), "is not valid UTF-8 (byte *)"),
    "invalid_utf8_after_bom": (lambda raw, _: b"\xef\xbb\xbf" + raw.replace(b"text", b"t\xffxt"),
                               "is not valid UTF-8 (byte *)"),
    "merge_conflict": (lambda raw, _: b"<<<<<<< HEAD\n" + raw + b"=======\n" + raw + b">>>>>>> other\n",
                       "is not valid JSON: * (an unresolved merge conflict?)"),
    "fifty_megabytes": (lambda raw, _: b'{"format_version": 1, "pad": "' + b"x" * (50 * 1024 * 1024) + b'"}',
                        "is 52.4 MB, over the 20 MB limit for a golden file*"),
    "pickle": (lambda raw, marker: pickle.dumps(_MakeMarker(marker)), "is not valid UTF-8 (byte *)"),
    "yaml_tag": (lambda raw, marker: f"!!python/object/apply:os.mkdir [{str(marker)!r}]\n".encode(),
                 "is not valid JSON: *"),
    "directory": (None, "cannot be read: Is a directory"),
}


class _MakeMarker:
    """Unpickling this creates a directory: proof that a golden file was never unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_corrupt_golden_files_fail_only_their_test_with_one_clear_message(pytester):
    names = [*CORRUPTIONS, "intact"]
    pytester.makepyfile(test_corrupt="\n".join(
        f"def test_{name}(llm_snapshot):\n    assert 'text of {name}' == llm_snapshot\n" for name in names))
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=len(names))
    folder = pytester.path / SNAPSHOTS / "test_corrupt"
    recorded = golden_files(pytester.path)
    marker = pytester.path / "unpickled"
    for name, (corrupt, _) in CORRUPTIONS.items():
        path = folder / f"test_{name}.json"
        if corrupt is None:
            path.unlink()
            path.mkdir()
        else:
            path.write_bytes(corrupt(path.read_bytes(), marker))

    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(passed=1, failed=len(CORRUPTIONS))
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # not an internal error: the session went on
    output = result.stdout.str()
    assert "INTERNALERROR" not in output and not marker.exists()
    for name, (_, message) in CORRUPTIONS.items():
        text = section(output, f"test_{name}")
        assert text.lstrip().startswith(f"{SNAPSHOTS}/test_corrupt/test_{name}.json"), (name, text)
        assert fnmatch.fnmatch(text, f"*{message}*"), (name, text)
        assert text.count("Re-record it with:") == 1, (name, text)
        assert f'Re-record it with: pytest --llm-snapshot-update "test_corrupt.py::test_{name}"' in text
        assert "Traceback" not in text and "During handling" not in text, (name, text)
        assert "format.py" not in text and text.count(f"test_{name}.json") == 1, (name, text)

    # Re-recording replaces every unusable file with its original content (a directory is reported, kept).
    result = run(pytester, "--llm-snapshot-update")
    result.assert_outcomes(passed=len(names), errors=1)  # the write at the end of the test fails
    result.stdout.fnmatch_lines(["*could not write golden file __llm_snapshots__/test_corrupt/"
                                 "test_directory.json: Is a directory*"])
    assert golden_files(pytester.path) == {k: v for k, v in recorded.items() if "test_directory" not in k}
    assert not marker.exists() and temporaries(pytester.path) == []


def test_a_golden_file_saved_with_a_byte_order_mark_is_read_and_written_back_without_one(pytester, monkeypatch):
    # Some editors save UTF-8 with a byte-order mark: the file is still the user's golden file.
    pytester.makepyfile(test_bom=READ_ONLY_SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    folder = pytester.path / SNAPSHOTS / "test_bom"
    for path in folder.glob("*.json"):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with_bom = golden_files(pytester.path)
    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    assert golden_files(pytester.path) == with_bom  # an update that changes nothing changes no byte

    monkeypatch.setenv("SUITE_VERSION", "v2")
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines(["1 passed, 0 failed, 0 written, 1 updated, 0 deleted, 0 unused"])
    rewritten = (folder / "test_a.json").read_bytes()
    assert not rewritten.startswith(b"\xef\xbb\xbf") and json.loads(rewritten)["snapshots"]["0"]["text_lines"] == [
        "v2 a"]
    assert (folder / "test_b.json").read_bytes() == with_bom[f"{SNAPSHOTS}/test_bom/test_b.json"]
    run(pytester, "--llm-snapshot").assert_outcomes(passed=2)


def test_a_byte_order_mark_does_not_shift_the_position_of_an_invalid_byte():
    raw = dumps(GoldenFile("t.py::test_x", {}, {"0": GoldenEntry("text")})).encode()
    position = raw.index(b"text")
    with pytest.raises(GoldenFileError, match=rf"^f.json is not valid UTF-8 \(byte {position + 4}\)$"):
        loads(b"\xef\xbb\xbf" + raw.replace(b"text", b"t\xffxt"), "f.json")
    assert loads(b"\xef\xbb\xbf" + raw, "f.json") == loads(raw, "f.json")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_pipe_or_device_in_place_of_a_golden_file_is_refused_without_reading_it(tmp_path):
    os.mkfifo(tmp_path / "test_pipe.json")  # reading it would block forever
    with pytest.raises(GoldenFileError, match="test_pipe.json is not a regular file"):
        read_golden(tmp_path / "test_pipe.json")
    (tmp_path / "test_device.json").symlink_to("/dev/zero")  # reading it would never end
    with pytest.raises(GoldenFileError, match="test_device.json is not a regular file"):
        read_golden(tmp_path / "test_device.json")


# Hostile replacements of a JSON value: wrong types, negative, huge, non-finite (1e400 parses as infinity).
MUTATIONS = [None, True, -1, 2**40, 10**400, 1.5, "1e400", "s", "", [], {}, ["x"], [1.5], [-1], [None],
             [True], {"a": 1}, ["1e400"]]


def _paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _paths(value, prefix + (index,))


def _tokenizer_like_decode(ids: list[int]) -> str:
    if any(i >= 2**32 for i in ids):  # what the Rust tokenizers do
        raise OverflowError("number too large to fit in target type")
    return "".join(f"<{i}>" for i in ids)


def test_every_hand_edit_of_a_golden_file_is_refused_clearly_or_usable():
    entry = GoldenEntry("line 1\nline 2", token_ids=[5, 6, 7], margins=[1.5, 0.001, None], prompt="p",
                        prompt_sha256="abc", finish_reason="eos", settings={"do_sample": False})
    original = json.loads(dumps(GoldenFile("t.py::test", {"dtype": "float32", "generation": {"a": 1}},
                                           {"0": entry, "text": GoldenEntry("plain")})))
    checked = 0
    for path in _paths(original):
        for replacement in MUTATIONS:
            data = json.loads(json.dumps(original))
            if not path:
                data = replacement
            else:
                parent = data
                for key in path[:-1]:
                    parent = parent[key]
                parent[path[-1]] = replacement
            raw = json.dumps(data).replace('"1e400"', "1e400").encode()
            try:
                golden = loads(raw, "the/golden.json")
            except GoldenFileError as error:
                assert str(error).startswith("the/golden.json"), error
                continue
            # Whatever is accepted must be usable: compared, reported, re-serialised.
            for snapshot in golden.snapshots.values():
                if snapshot.token_ids is not None:
                    comparison = compare_tokens(snapshot, [5, 9], [0.1, 0.2], "x", "length", near_tie=0.01)
                    render_comparison(comparison, snapshot, "x", [5, 9], _tokenizer_like_decode, 0.01)
            fingerprint_changes(golden.fingerprint, {"dtype": "float32"})
            loads(dumps(golden).encode(), "again.json")
            checked += 1
    assert checked > 50  # plenty of edits are harmless (a changed prompt, settings, fingerprint)


def test_undecodable_token_ids_in_a_golden_file_do_not_break_the_report(pytester):
    pytester.makepyfile(test_ids="""
        def test_it(llm, llm_snapshot):
            assert llm.generate("Once upon a time", max_new_tokens=4) == llm_snapshot
    """)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    path = pytester.path / SNAPSHOTS / "test_ids" / "test_it.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["snapshots"]["0"]["token_ids"][0] = 2**31 - 1  # a valid integer no tokenizer knows
    path.write_text(json.dumps(data), encoding="utf-8")
    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*first divergence at token 0 of *", f"*golden : {2**31 - 1} *"])


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


def test_a_golden_file_with_a_duplicate_key_is_refused_naming_the_key():
    text = dumps(GoldenFile("t.py::test_x", {}, {"0": GoldenEntry("one")}))
    duplicated = text.replace('"format_version": 1,', '"format_version": 1,\n  "test": "other",', 1)
    with pytest.raises(GoldenFileError) as refused:
        loads(duplicated.encode(), "f.json")
    assert str(refused.value) == ("f.json is not valid JSON: the key 'test' appears twice in one object (a reader "
                                  "sees the first, the parser would take the last); keep one")
