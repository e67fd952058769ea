"""Faults and bad input: golden files are never lost, torn, or written outside their folder.

Each section attacks one guarantee listed in docs/guarantees.md: a killed update, concurrent writers,
corrupt or hand-edited golden files, hostile names, hostile text, security, and filesystem trouble.
"""

from __future__ import annotations

import ast
import errno
import fnmatch
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import copy_model, golden_for
from filelock import FileLock
from transformers import AutoTokenizer

import pytest_llmdet
from pytest_llmdet.engines.fingerprint import fingerprint_changes
from pytest_llmdet.engines.models import EMBEDDED_MODEL_DIR
from pytest_llmdet.golden import locks, store
from pytest_llmdet.golden.compare import compare_tokens
from pytest_llmdet.golden.format import MAX_FILE_BYTES, GoldenEntry, GoldenFile, GoldenFileError, dumps, loads
from pytest_llmdet.golden.location import golden_path, is_inside, safe_file_stem
from pytest_llmdet.golden.render import render_comparison
from pytest_llmdet.golden.store import TMP_SUFFIX, clean_temporaries, read_golden, temporary_target, write_golden
from pytest_llmdet.settings.values import SettingsError, parse_snapshot_dir

SNAPSHOTS = "__llm_snapshots__"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# -- helpers -------------------------------------------------------------------------------------------------


def golden_files(root: Path) -> dict[str, bytes]:
    """Every golden file below `root`, by path relative to it."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob(f"{SNAPSHOTS}/**/*.json"))
            if p.is_file()}


def temporaries(root: Path) -> list[Path]:
    return sorted(root.rglob(f"*{TMP_SUFFIX}"))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a pytest subprocess: no settings of the outer run, only the plugins named."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LLMDET_", "SUITE_"))}
    env.update(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def pytest_command(*args: str, xdist: bool = False) -> list[str]:
    plugins = ["-p", "pytest_llmdet.plugin"] + (["-p", "xdist.plugin"] if xdist else [])
    return [sys.executable, "-m", "pytest", *plugins, "-p", "no:cacheprovider", "-q", *args]


def run_subprocess(cwd: Path, *args: str, xdist: bool = False, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(pytest_command(*args, xdist=xdist), cwd=cwd, env=clean_env(**env),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch):
    """In-process runs load only pytest-llmdet: third-party plugins installed beside it would be imported
    again on every in-process run (pytester drops the modules a run imports), which is slow."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def run(pytester, *args: str):
    """Run pytest in-process on the pytester folder with pytest-llmdet."""
    return pytester.runpytest("-p", "pytest_llmdet.plugin", "-p", "no:cacheprovider", *args)


def section(output: str, test_name: str) -> str:
    """The failure section of one test in pytest's output."""
    header = rf"_{{3,}} {re.escape(test_name)} _{{3,}}\n"
    match = re.search(header + r"(.*?)(?=\n_{3,} |\n={3,} )", output, re.S)
    assert match, f"no failure section for {test_name}"
    return match.group(1)


# -- 1. killed mid-update ------------------------------------------------------------------------------------

# Makes a pytest subprocess kill itself with SIGKILL at the Nth filesystem event on a golden file (an
# fsync, a rename or a deletion), before or after it: a deterministic "random moment". Before an fsync of a
# temporary file it first cuts the file in half, as a writer killed in the middle of its write() would.
KILL_CONFTEST = '''
import os
import signal

_PLAN = os.environ.get("LLMDET_KILL_AT", "")
_LOG = os.environ.get("LLMDET_EVENT_LOG", "")

if _PLAN or _LOG:
    _number, _, _when = _PLAN.partition(":")
    _target = int(_number or 0)
    _seen = [0]
    _real_replace, _real_unlink, _real_fsync = os.replace, os.unlink, os.fsync

    def _fd_path(fd):
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return ""

    def _event(kind, path, call, fd=None):
        path = os.fspath(path)
        if "__llm_snapshots__" not in path:
            return call()
        _seen[0] += 1
        if _LOG:
            with open(_LOG, "a", encoding="utf-8") as log:
                log.write(f"{kind} {path}\\n")
        hit = _seen[0] == _target
        if hit and _when == "before":
            if fd is not None and os.path.isfile(path):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        result = call()
        if hit and _when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    def _replace(src, dst, **kwargs):
        return _event("replace", dst, lambda: _real_replace(src, dst, **kwargs))

    def _unlink(path, **kwargs):
        return _event("unlink", path, lambda: _real_unlink(path, **kwargs))

    def _fsync(fd):
        return _event("fsync", _fd_path(fd), lambda: _real_fsync(fd), fd)

    os.replace, os.unlink, os.fsync = _replace, _unlink, _fsync
'''

# Plain-string snapshots (no model: fast). The new version changes half the outputs, drops two tests (their
# files are deleted), adds two (new files) and drops a snapshot from every third test (rewritten at the end).
KILL_SUITE = '''
import os

import pytest

VERSION = os.environ.get("SUITE_VERSION", "old")
CASES = range(0, 12) if VERSION == "old" else range(2, 14)


@pytest.mark.parametrize("case", CASES)
def test_case(case, llm_snapshot):
    label = VERSION if case % 2 else "same"
    assert f"{label} answer {case}\\n" * (30 + case) == llm_snapshot(name="long")
    if VERSION == "old" or case % 3:
        assert f"short {case}" == llm_snapshot(name="short")
'''

KILL_TRIALS = 20
KILL_SEED = 20240611


def _record(pytester, monkeypatch, version: str, *args: str) -> dict[str, bytes]:
    monkeypatch.setenv("SUITE_VERSION", version)
    result = run(pytester, "--llm-snapshot-update", *args)
    assert result.ret == 0, result.stdout.str()
    return golden_files(pytester.path)


def _restore(root: Path, files: dict[str, bytes]) -> None:
    shutil.rmtree(root / SNAPSHOTS, ignore_errors=True)
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir() or not hasattr(signal, "SIGKILL"),
                    reason="the kill points need /proc/self/fd and SIGKILL (Linux)")
def test_kill_9_during_update_leaves_every_golden_file_old_or_new(pytester, monkeypatch):
    pytester.makeconftest(KILL_CONFTEST)
    pytester.makepyfile(**{f"test_m{i}": KILL_SUITE for i in range(3)})
    old = _record(pytester, monkeypatch, "old")
    new = _record(pytester, monkeypatch, "new")
    assert len(old) == len(new) == 36 and old != new and set(old) != set(new)
    # Between the tests' writes and the deletions at the end, a file holds its new snapshots and the unused
    # old ones (what a partial update leaves): nothing is deleted before the run is whole.
    _restore(pytester.path, old)
    mid = _record(pytester, monkeypatch, "new", "-m", "not no_such_marker")
    assert mid != new and mid != old

    # The filesystem events of one uninterrupted update (the same every time: tests run in a fixed order).
    _restore(pytester.path, old)
    log = pytester.path / "events.log"
    counted = run_subprocess(pytester.path, "--llm-snapshot-update", SUITE_VERSION="new",
                             LLMDET_EVENT_LOG=str(log))
    assert counted.returncode == 0, counted.stdout
    events = log.read_text(encoding="utf-8").splitlines()
    assert {line.split()[0] for line in events} == {"fsync", "replace", "unlink"}
    assert golden_files(pytester.path) == new

    rng = random.Random(KILL_SEED)
    points = sorted(rng.sample(range(1, len(events) + 1), KILL_TRIALS))
    leftovers_seen = 0
    for trial, point in enumerate(points):
        when = rng.choice(["before", "after"])
        _restore(pytester.path, old)
        killed = subprocess.run(pytest_command("--llm-snapshot-update"), cwd=pytester.path,
                                env=clean_env(SUITE_VERSION="new", LLMDET_KILL_AT=f"{point}:{when}"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        where = f"trial {trial}: killed {when} event {point} ({events[point - 1]})"
        assert killed.returncode == -signal.SIGKILL, where

        after_kill = golden_files(pytester.path)
        assert set(after_kill) <= set(old) | set(new), where
        for name in set(old) | set(new):
            assert after_kill.get(name) in (old.get(name), new.get(name), mid.get(name)), f"{where}: {name} is torn"
        for name, content in after_kill.items():
            loads(content, name)  # every golden file parses
        leftovers = temporaries(pytester.path)
        assert all(not p.name.endswith(".json") for p in leftovers), where
        leftovers_seen += len(leftovers)

        if trial % 2 == 0:  # a check right after the kill: not broken by leftovers, changes no golden file
            monkeypatch.setenv("SUITE_VERSION", "new")
            check = run(pytester, "--llm-snapshot")
            outcomes = check.parseoutcomes()
            assert check.ret in (0, 1) and outcomes.get("errors", 0) == 0, where
            assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 36, where
            assert "not valid JSON" not in check.stdout.str(), where
            assert golden_files(pytester.path) == after_kill, where
            assert temporaries(pytester.path) == [], where

        assert _record(pytester, monkeypatch, "new") == new, where  # the next update completes the job
        assert temporaries(pytester.path) == [], where
    assert leftovers_seen > 0  # some kills did leave temporaries behind, and they were cleaned


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


def test_leftover_temporaries_are_ignored_by_name_and_never_taken_for_golden_files(tmp_path, monkeypatch):
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace",
                        lambda src, dst: (renamed.append(Path(src).name), real_replace(src, dst)))
    write_golden(tmp_path / "test_x[a].json", GoldenFile("t.py::test_x[a]", {}, {"0": GoldenEntry("hi")}))
    (temporary,) = renamed
    assert temporary.startswith("test_x[a].json.") and temporary.endswith(TMP_SUFFIX)
    gitignore = (Path(__file__).parents[1] / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert f"*{TMP_SUFFIX}" in gitignore and fnmatch.fnmatch(temporary, f"*{TMP_SUFFIX}")
    assert not fnmatch.fnmatch(temporary, "*.json")  # never globbed, read or deleted as a golden file
    assert temporary_target(tmp_path / temporary) == tmp_path / "test_x[a].json"


def test_check_run_removes_only_leftover_temporaries(pytester):
    pytester.makepyfile(test_mod="""
        import pytest

        @pytest.mark.parametrize("p", ["a", "b"])
        def test_x(p, llm_snapshot):
            assert "text " + p == llm_snapshot
    """)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    folder = pytester.path / SNAPSHOTS / "test_mod"
    before = golden_files(pytester.path)
    planted = [folder / "test_x[a].json.k2j4x9q1.llmdet-tmp", folder / "test_x[b].json.zz_9.llmdet-tmp"]
    planted[0].write_bytes(b'{"format_version": 1, "te')  # a killed writer's half file
    planted[1].write_bytes(before[f"{SNAPSHOTS}/test_mod/test_x[b].json"])
    foreign = [folder / "notes.txt", folder / "notes.llmdet-tmp"]  # not ours: no golden file named in them
    for path in foreign:
        path.write_text("keep me")
    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert golden_files(pytester.path) == before
    assert not any(p.exists() for p in planted) and all(p.exists() for p in foreign)


def test_stale_temporaries_are_matched_by_name_not_by_glob(tmp_path, monkeypatch):
    # `[` and `]` in golden names are glob character classes: a glob for test_x[a]'s temporaries would match
    # test_xa's, and miss its own.
    own = tmp_path / "test_x[a].json.abc123.llmdet-tmp"
    other = tmp_path / "test_xa.json.def456.llmdet-tmp"
    own.write_text("half")
    other.write_text("in flight")
    write_golden(tmp_path / "test_x[a].json", GoldenFile("t", {}, {"0": GoldenEntry("x")}))
    assert not own.exists() and other.exists()

    # A test id containing ".json." must still lock its own golden file: a writer that holds the lock
    # keeps its temporary file.
    target = tmp_path / "test_a.json.b.json"
    in_flight = tmp_path / "test_a.json.b.json.qrs789.llmdet-tmp"
    in_flight.write_text("being written")
    monkeypatch.setattr(locks, "LOCK_TIMEOUT_SECONDS", 0.05)
    with FileLock(str(locks.lock_path(target))):
        assert clean_temporaries(tmp_path) == 1  # `other` is removed: nobody holds test_xa.json's lock
    assert in_flight.exists() and not other.exists()
    assert clean_temporaries(tmp_path) == 1 and not in_flight.exists()


# -- 2. concurrency ------------------------------------------------------------------------------------------

PARALLEL_SUITE = '''
import os

import pytest

VERSION = os.environ.get("SUITE_VERSION", "v1")
IDS = ["plain", "a/b", "a\\\\b", "..", ".hidden", "CON", "\\U0001f642", "\\u05dc\\u05d9\\u05dc", "x" * 300,
       "A_B", "a_b", "a::b", "a.b"]


@pytest.mark.parametrize("case", range(12))
def test_case(case, llm_snapshot):
    assert f"{VERSION} \\u4f60\\u597d e\\u0301 {case}\\n" * (case + 1) == llm_snapshot
    assert f"{VERSION} second {case}" == llm_snapshot(name="second")


@pytest.mark.parametrize("name", IDS)
def test_hostile(name, llm_snapshot):
    assert f"{VERSION} text for {name}" == llm_snapshot(name=name)
'''
PARALLEL_MODULES = 4
PARALLEL_TESTS = PARALLEL_MODULES * 25


@pytest.fixture
def parallel_suite(pytester, monkeypatch) -> dict[str, bytes]:
    """The parallel suite recorded by a serial run; returns its golden files."""
    pytester.makepyfile(**{f"test_p{i}": PARALLEL_SUITE for i in range(PARALLEL_MODULES)})
    monkeypatch.setenv("SUITE_VERSION", "v1")
    result = run(pytester, "--llm-snapshot-update")
    result.assert_outcomes(passed=PARALLEL_TESTS)
    files = golden_files(pytester.path)
    assert len(files) == PARALLEL_TESTS
    return files


@pytest.mark.parametrize("workers", ["2", "4"])
def test_xdist_update_and_check_give_the_same_files_as_a_serial_run(pytester, parallel_suite, workers):
    pytest.importorskip("xdist")
    shutil.rmtree(pytester.path / SNAPSHOTS)
    update = run_subprocess(pytester.path, "--llm-snapshot-update", "-n", workers, xdist=True,
                            SUITE_VERSION="v1")
    assert update.returncode == 0, update.stdout
    assert f"0 passed, 0 failed, {PARALLEL_MODULES * (12 * 2 + 13)} written" in update.stdout
    assert golden_files(pytester.path) == parallel_suite
    check = run_subprocess(pytester.path, "--llm-snapshot", "-n", workers, xdist=True, SUITE_VERSION="v1")
    assert check.returncode == 0, check.stdout
    assert golden_files(pytester.path) == parallel_suite and temporaries(pytester.path) == []


def _start(cwd: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(pytest_command(*args), cwd=cwd, env=clean_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def test_two_processes_updating_the_same_folder_at_once_corrupt_nothing(pytester, parallel_suite):
    # The same content from an empty folder: both succeed, and the files are those of a serial run.
    shutil.rmtree(pytester.path / SNAPSHOTS)
    runs = [_start(pytester.path, "--llm-snapshot-update", SUITE_VERSION="v1") for _ in range(2)]
    for code, output in map(_finish, runs):
        assert code == 0, output
    assert golden_files(pytester.path) == parallel_suite and temporaries(pytester.path) == []

    # Different content at once: each file is wholly one run's (the last writer's), never a mixture.
    runs = [_start(pytester.path, "--llm-snapshot-update", SUITE_VERSION=v) for v in ("v2", "v3")]
    for code, output in map(_finish, runs):
        assert code == 0, output
    for name, content in golden_files(pytester.path).items():
        texts = [entry.text for entry in loads(content, name).snapshots.values()]
        assert {text[:3] for text in texts} in ({"v2 "}, {"v3 "}), name
    assert temporaries(pytester.path) == []

    # A check while an update rewrites every file: it reads old or new files, never a torn one.
    runs = [_start(pytester.path, "--llm-snapshot", SUITE_VERSION="v4"),
            _start(pytester.path, "--llm-snapshot-update", SUITE_VERSION="v4")]
    (check_code, check_output), (update_code, update_output) = map(_finish, runs)
    assert update_code == 0, update_output
    assert check_code in (0, 1), check_output
    assert "not valid JSON" not in check_output and "INTERNALERROR" not in check_output
    assert temporaries(pytester.path) == []


# -- 3. corrupt or hand-edited golden files ------------------------------------------------------------------

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


# -- 4. hostile names ----------------------------------------------------------------------------------------

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


# -- 5. hostile text -----------------------------------------------------------------------------------------


def test_prompts_that_cannot_be_generated_from_fail_with_a_clear_error(pytester):
    pytester.makepyfile(test_prompts="""
        def test_empty(llm):
            llm.generate("")

        def test_too_long(llm):
            llm.generate("word " * 2000)

        def test_empty_chat(llm):
            llm.generate([])
    """)
    result = run(pytester)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([
        "*PromptError: the prompt encodes to no tokens and model * adds no BOS token*",
        "*PromptError: the prompt has * tokens; with max_new_tokens=32 that exceeds the * positions model *",
        "*PromptError: a chat prompt needs at least one message*",
    ])
    output = result.stdout.str()
    assert "site-packages/torch" not in output and "IndexError" not in output


def test_unicode_and_partial_utf8_tokens_are_stored_as_decoded_and_compared_by_token_ids(pytester):
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR)
    lead, trail = tokenizer("ä")["input_ids"]  # byte-level BPE: one token per UTF-8 byte of ä
    other_lead = tokenizer("你")["input_ids"][0]  # the lead byte of another character
    assert tokenizer.decode([lead]) == tokenizer.decode([other_lead]) == "\ufffd"
    pytester.makepyfile(test_text=f"""
        def test_partial(llm, llm_snapshot):
            # a bias makes greedy decoding pick the lead byte, the trailing byte, then the lead byte again
            bias = [[[{lead}], 50.0], [[{lead}, {trail}], 100.0]]
            g = llm.generate("Hello", max_new_tokens=3, sequence_bias=bias)
            assert g.token_ids == [{lead}, {trail}, {lead}]
            assert g.text == "ä\\ufffd" == llm.tokenizer.decode(g.token_ids)
            assert g == llm_snapshot

        def test_unicode(llm, llm_snapshot):
            assert llm.generate("从前 🦊 e\\u0301 שלום", max_new_tokens=8) == llm_snapshot
            text = "你好 🙂👍🏽 e\\u0301 \\u202eRTL\\u202c ﷽\\r\\nline\\u2028sep\\x00"
            assert text == llm_snapshot(name="text")

        def test_lone_surrogate(llm_snapshot):
            assert "a\\ud800b" == llm_snapshot
    """)
    result = run(pytester, "--llm-snapshot-update")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*SnapshotUsageError: the text has a lone surrogate '\\ud800' at index 1*"])
    folder = pytester.path / SNAPSHOTS / "test_text"
    raw = (folder / "test_unicode.json").read_text(encoding="utf-8")
    assert "从前 🦊 e\u0301 שלום" in raw and "你好 🙂👍🏽" in raw  # stored as UTF-8 text, not escaped
    unicode = read_golden(folder / "test_unicode.json")
    assert unicode.snapshots["text"].text == "你好 🙂👍🏽 e\u0301 \u202eRTL\u202c ﷽\r\nline\u2028sep\x00"
    partial = read_golden(folder / "test_partial.json").snapshots["0"]
    assert partial.token_ids == [lead, trail, lead] and partial.text == "ä\ufffd"
    run(pytester, "--llm-snapshot", "-k", "not surrogate").assert_outcomes(passed=2)

    # The same text from different tokens is a different output: token IDs are the truth.
    data = json.loads((folder / "test_partial.json").read_text(encoding="utf-8"))
    data["snapshots"]["0"]["token_ids"][2] = other_lead
    assert tokenizer.decode(data["snapshots"]["0"]["token_ids"]) == "ä\ufffd"
    (folder / "test_partial.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    result = run(pytester, "--llm-snapshot", "-k", "partial")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*first divergence at token 2 of 3 *", f"*golden : {other_lead} *"])


# -- 6. security ---------------------------------------------------------------------------------------------

SPY_CONFTEST = """
import json
import os

import pytest
import transformers


@pytest.fixture(autouse=True)
def spy_on_from_pretrained(monkeypatch):
    log = os.environ["LLMDET_SPY_LOG"]
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):
            with open(log, "a", encoding="utf-8") as stream:
                stream.write(json.dumps([_name, kwargs.get("trust_remote_code", "absent")]) + "\\n")
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
"""


def _plant_remote_code(model: Path, marker: Path) -> None:
    """Give a model directory custom code that would create `marker` if transformers ever ran it."""
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    (model / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import Qwen2Config as EvilConfig, Qwen2ForCausalLM as EvilModel\n"
        "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n", encoding="utf-8")


def test_trust_remote_code_is_off_unless_configured(pytester, monkeypatch, tmp_path):
    model = copy_model(tmp_path / "model-with-code")
    marker = tmp_path / "remote-code-ran"
    _plant_remote_code(model, marker)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("LLMDET_SPY_LOG", str(log))
    pytester.makeconftest(SPY_CONFTEST)
    pytester.makepyfile(test_models=f"""
        import pytest

        def test_default(llm):
            llm.generate("Hi", max_new_tokens=2)

        @pytest.mark.llm_model({str(model)!r})
        def test_model_with_code(llm):
            llm.generate("Hi", max_new_tokens=2)
    """)
    run(pytester).assert_outcomes(passed=2)
    calls = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert len(calls) == 4 and all(trust is False for _, trust in calls), calls
    assert not marker.exists()  # the model's own code never ran

    log.unlink()
    run(pytester, "--llm-trust-remote-code", "true", "-k", "default").assert_outcomes(passed=1)
    assert [trust for _, trust in map(json.loads, log.read_text().splitlines())] == [True, True]


def test_golden_files_are_parsed_as_data_only():
    forbidden_modules = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "yaml", "dill", "joblib",
                         "torch"}
    forbidden_builtins = {"eval", "exec", "compile", "__import__"}
    package = Path(pytest_llmdet.__file__).parent
    for source in sorted((package / "golden").glob("*.py")):  # every golden-file module
        module = source.stem
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & forbidden_modules, module
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in forbidden_modules, module
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in forbidden_builtins, (module, node.func.id)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = getattr(node.func.value, "id", None)
                assert owner not in forbidden_modules, (module, owner, node.func.attr)
    # Text that looks like code is stored and read back as text.
    code = "__import__('os').system('touch pwned') {{7*7}} !!python/object/apply:os.system"
    golden = GoldenFile("t", {}, {code: GoldenEntry(code)})
    assert loads(dumps(golden).encode(), "f").snapshots[code].text == code


@pytest.mark.parametrize("folder", ["../outside", "a/../../outside", "/tmp/golden", "~/golden", "..\\outside",
                                    "C:\\golden", "\\\\server\\share\\golden", ".", "./"])
def test_a_snapshot_folder_outside_the_project_is_refused(pytester, folder):
    pytester.makeini(f"[pytest]\nllm_snapshot_dir = {folder}\n")
    pytester.makepyfile("def test_it(llm_snapshot):\n    assert 'x' == llm_snapshot\n")
    before = sorted(pytester.path.rglob("*"))
    result = run(pytester, "--llm-snapshot-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*llm_snapshot_dir = {folder!r} *"])
    errors = result.stderr.str()
    assert "outside the project root" in errors or "the test folder itself" in errors
    assert sorted(pytester.path.rglob("*")) == before  # nothing ran, nothing was written
    assert not (pytester.path.parent / "outside").exists()


def test_nested_relative_snapshot_folders_are_accepted():
    assert parse_snapshot_dir("golden/llm") == "golden/llm"
    with pytest.raises(SettingsError, match="outside the project root"):
        parse_snapshot_dir("golden/../../x")


# -- 7. filesystem trouble -----------------------------------------------------------------------------------

def _has_dac_override() -> bool:
    """Whether this process may write where permissions say it may not (CAP_DAC_OVERRIDE, Linux)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return IS_ROOT
    effective = int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(effective & (1 << 1))  # CAP_DAC_OVERRIDE is capability 1


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _refuses_new_files(folder: Path) -> bool:
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except PermissionError:
        return True
    os.unlink(folder / "probe")
    return False


@pytest.fixture
def make_read_only(monkeypatch):
    """Make a folder read-only with chmod. Where that does not stop writes (root, as in CI), the kernel's
    answer is simulated instead: every call that would create, rename or delete an entry in the folder
    fails with EACCES. Either way, the folder is checked to really refuse a new file."""
    changed: list[Path] = []

    def make(folder: Path) -> str:
        folder.chmod(0o555)
        changed.append(folder)
        if _refuses_new_files(folder):
            return "chmod"
        inside = os.path.realpath(folder) + os.sep

        def denied(path) -> bool:
            return isinstance(path, (str, bytes, os.PathLike)) and \
                os.path.realpath(os.fsdecode(path)).startswith(inside)

        def refuse(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

        names = ("open", "replace", "rename", "unlink", "rmdir", "mkdir")
        real = {name: getattr(os, name) for name in names}

        def guarded_open(path, flags, *args, **kwargs):
            if flags & _WRITE_FLAGS and denied(path):
                refuse(path)
            return real["open"](path, flags, *args, **kwargs)

        def guard(name):
            def guarded(path, *args, **kwargs):
                target = args[0] if name in ("replace", "rename") else path
                if denied(path) or denied(target):
                    refuse(target)
                return real[name](path, *args, **kwargs)
            return guarded

        monkeypatch.setattr(os, "open", guarded_open)
        for name in names[1:]:
            monkeypatch.setattr(os, name, guard(name))
        assert _refuses_new_files(folder)
        return "simulated"

    yield make
    monkeypatch.undo()
    for folder in changed:
        folder.chmod(0o755)


READ_ONLY_SUITE = """
import os

def test_a(llm_snapshot):
    assert os.environ.get("SUITE_VERSION", "v1") + " a" == llm_snapshot

def test_b(llm_snapshot):
    assert "b is unchanged" == llm_snapshot
"""


def test_read_only_snapshot_folder_update_fails_clearly_and_changes_nothing(pytester, monkeypatch,
                                                                           make_read_only):
    pytester.makepyfile(test_ro=READ_ONLY_SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    folder = pytester.path / SNAPSHOTS / "test_ro"
    (folder / "test_removed.json").write_bytes(golden_for((folder / "test_b.json").read_bytes(),
                                                          "test_ro.py::test_removed"))  # unused: to delete
    (folder / "test_b.json.abc123.llmdet-tmp").write_text("leftover")
    before = golden_files(pytester.path)
    how = make_read_only(folder)
    assert how == ("simulated" if IS_ROOT and _has_dac_override() else "chmod")
    result = run(pytester, "--llm-snapshot-update")  # nothing to write; the unused file cannot be deleted
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["llmdet: ERROR: could not delete unused golden file */test_removed.json: "
                                 "Permission denied"])
    assert golden_files(pytester.path) == before
    monkeypatch.setenv("SUITE_VERSION", "v2")
    result = run(pytester, "--llm-snapshot-update")
    result.assert_outcomes(passed=2, errors=1)  # the write at the end of test_a fails: an error in teardown
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "_* ERROR at teardown of test_a _*",
        "pytest-llmdet: could not write golden file __llm_snapshots__/test_ro/test_a.json: Permission denied",
        "The file keeps its previous content (writes are atomic)*",
    ])
    # counted as what happened: an error, not "1 updated"; and a run with a teardown error deletes nothing
    result.stdout.fnmatch_lines(["1 passed, 0 failed, 0 written, 0 updated, 0 deleted, 1 unused, 1 error",
                                 '1 test(s) whose golden file could not be written (see their errors): '
                                 '"test_ro.py::test_a"',
                                 "not deleted: this run is partial (setup or teardown errors)"])
    assert "INTERNALERROR" not in result.stdout.str()
    assert golden_files(pytester.path) == before
    assert [p.name for p in temporaries(pytester.path)] == ["test_b.json.abc123.llmdet-tmp"]  # kept, harmless


def test_full_disk_during_update_fails_clearly_and_changes_nothing(pytester, monkeypatch):
    pytester.makepyfile(test_disk=READ_ONLY_SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    before = golden_files(pytester.path)

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    monkeypatch.setenv("SUITE_VERSION", "v2")
    result = run(pytester, "--llm-snapshot-update")
    result.assert_outcomes(passed=2, errors=1)  # the write at the end of test_a fails: an error in teardown
    result.stdout.fnmatch_lines([
        "_* ERROR at teardown of test_a _*",
        "pytest-llmdet: could not write golden file __llm_snapshots__/test_disk/test_a.json: "
        "No space left on device",
        "The file keeps its previous content (writes are atomic). Fix the cause (disk space, folder permissions), "
        'then re-record with: pytest --llm-snapshot-update "test_disk.py::test_a"',
        "=* llm snapshots =*",  # nothing else: one message, no traceback
    ])
    assert golden_files(pytester.path) == before and temporaries(pytester.path) == []


class _FailingStream:
    """A file whose write() stores half the bytes, then finds the disk full."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._stream.close()

    def write(self, data: bytes) -> int:
        self._stream.write(data[: len(data) // 2])
        self._stream.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._stream, name)


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
@pytest.mark.parametrize("existing", [True, False], ids=["existing-file", "new-file"])
def test_write_golden_on_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch,
                                                                                failing, existing):
    path = tmp_path / "m" / "test_x.json"
    old = GoldenFile("t.py::test_x", {}, {"0": GoldenEntry("old text")})
    if existing:
        write_golden(path, old)
    before = path.read_bytes() if existing else None

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failing == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FailingStream(real_fdopen(*a, **k)))
    else:
        monkeypatch.setattr(os, failing, no_space)
    with pytest.raises(OSError) as error:
        write_golden(path, GoldenFile("t.py::test_x", {}, {"0": GoldenEntry("new text " * 1000)}))
    assert error.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert (path.read_bytes() if path.exists() else None) == before
    assert temporaries(tmp_path) == []


def test_a_golden_file_too_big_to_read_back_is_never_written(tmp_path):
    path = tmp_path / "test_big.json"
    with pytest.raises(GoldenFileError, match="over the 20 MB limit for a golden file; it was not written"):
        write_golden(path, GoldenFile("t", {}, {"0": GoldenEntry("x" * (MAX_FILE_BYTES + 1))}))
    assert list(tmp_path.iterdir()) == []


# -- 7. filesystem trouble: locks ----------------------------------------------------------------------------

LOCK_HOLDER = """
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from pytest_llmdet.golden.locks import golden_lock

with ExitStack() as locks:
    for path in sys.argv[1:]:
        locks.enter_context(golden_lock(Path(path)))
    print("locked", flush=True)
    sys.stdin.read()  # holds the locks, like a stuck process, until the test closes its stdin
"""


@pytest.fixture
def stuck_lock_holder(pytester):
    """Start a process that takes the locks of the given golden files and keeps them until the test ends."""
    started: list[subprocess.Popen] = []

    def start(*paths: Path) -> subprocess.Popen:
        (pytester.path / "holder.py").write_text(LOCK_HOLDER)
        env = {**os.environ, "PYTHONPATH": str(Path(pytest_llmdet.__file__).parents[1])}
        process = subprocess.Popen([sys.executable, "holder.py", *map(str, paths)], cwd=pytester.path, env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline() == "locked\n"  # blocks until it holds every lock
        return process

    yield start
    for process in started:
        process.stdin.close()
        process.wait(timeout=60)


def test_a_stuck_lock_holder_costs_one_bounded_wait_and_is_named(pytester, monkeypatch, stuck_lock_holder):
    pytester.makepyfile(test_locked=READ_ONLY_SUITE.replace('"b is unchanged"',
                                                            'os.environ.get("SUITE_VERSION", "v1") + " b"'))
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    before = golden_files(pytester.path)
    golden_a, golden_b = (pytester.path / SNAPSHOTS / "test_locked" / f"test_{x}.json" for x in "ab")
    holder = stuck_lock_holder(golden_a.relative_to(pytester.path), golden_b.relative_to(pytester.path))
    monkeypatch.setattr(locks, "LOCK_TIMEOUT_SECONDS", 0.2)  # the run's budget for waiting, both files together
    monkeypatch.setenv("SUITE_VERSION", "v2")
    result = run(pytester, "--llm-snapshot-update")
    result.assert_outcomes(passed=2, errors=2)
    held_by = (f"is held by pid {holder.pid} ({sys.executable} holder.py {SNAPSHOTS}/test_locked/test_a.json "
               f"{SNAPSHOTS}/test_locked/test_b.json)")
    result.stdout.fnmatch_lines([
        "_* ERROR at teardown of test_a _*",
        f"pytest-llmdet: could not write golden file {SNAPSHOTS}/test_locked/test_a.json: its lock file "
        f"{locks.lock_path(golden_a)} {held_by}",
        "Gave up after 0.2 s: a run waits at most 0.2 s for golden-file locks, all files together",
        f"The file keeps its previous content. If that process is stuck, stop it (kill {holder.pid}), then "
        're-record with: pytest --llm-snapshot-update "test_locked.py::test_a"',
        "_* ERROR at teardown of test_b _*",
        f"pytest-llmdet: could not write golden file {SNAPSHOTS}/test_locked/test_b.json: its lock file "
        f"{locks.lock_path(golden_b)} {held_by}",
        "Not waited for: this run already waited its 0.2 s for golden-file locks",  # one wait, not one per file
        f"The file keeps its previous content. If that process is stuck, stop it (kill {holder.pid}), then "
        're-record with: pytest --llm-snapshot-update "test_locked.py::test_b"',
        "0 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused, 2 error",
    ])
    assert "disk space" not in result.stdout.str()
    assert golden_files(pytester.path) == before

    holder.stdin.close()
    holder.wait(timeout=60)
    result = run(pytester, "--llm-snapshot-update")  # the holder is gone: both files are written
    result.stdout.fnmatch_lines(["0 passed, 0 failed, 0 written, 2 updated, 0 deleted, 0 unused"])


def test_a_lock_folder_that_is_not_writable_is_named_as_such(pytester, monkeypatch, make_read_only):
    pytester.makepyfile(test_ro=READ_ONLY_SUITE)
    temporary = pytester.path / "tmp"
    (temporary / f"pytest-llmdet-locks-{os.getuid()}").mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    folder = locks.lock_folder()
    assert folder.parent == temporary
    make_read_only(folder)
    result = run(pytester, "--llm-snapshot-update")
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines([
        "_* ERROR at teardown of test_a _*",
        f"pytest-llmdet: could not write golden file {SNAPSHOTS}/test_ro/test_a.json: the lock folder {folder} "
        "is not writable (Permission denied); pytest-llmdet keeps one lock file per golden file there",
        f"The file keeps its previous content. Make {folder} a writable folder (remove it: it holds only lock "
        'files), or point TMPDIR at a writable folder, then re-record with: pytest --llm-snapshot-update '
        '"test_ro.py::test_a"',
    ])
    assert "disk space" not in result.stdout.str() and golden_files(pytester.path) == {}


def test_a_lock_holder_that_did_not_record_itself_is_called_another_process(tmp_path):
    path = tmp_path / "test_x.json"
    lock = locks.lock_path(path)
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    lock.with_suffix(".holder").write_text(f"{finished.pid}\n{sys.executable} -c pass\n")  # a stale record
    with FileLock(str(lock)):  # held without a record, as by another tool
        with pytest.raises(store.GoldenLockError) as refused:
            write_golden(path, GoldenFile("t.py::test_x", {}, {"0": GoldenEntry("x")}), locks.LockBudget(0))
    assert str(refused.value) == (
        f"{path}: its lock file {lock} is held by another process; not waited for: this run already waited its "
        f"0 s for golden-file locks. If the process that holds it is stuck, stop it (`lsof {lock}` names it on "
        "Linux and macOS)")
    assert not path.exists()
    lock.with_suffix(".holder").unlink()
