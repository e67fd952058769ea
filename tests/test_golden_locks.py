"""Concurrent writers: pytest-xdist workers and separate processes lock each golden file, corrupt
nothing, and a bounded wait names the process that holds the lock."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from filelock import FileLock
from sessions import (
    READ_ONLY_SUITE,
    SEVERAL,
    SNAPSHOTS,
    clean_env,
    golden_files,
    pytest_command,
    retokened,
    run,
    run_subprocess,
    temporaries,
)

import pytest_llmdet
from pytest_llmdet.golden import locks, store
from pytest_llmdet.golden.format import GoldenEntry, GoldenFile, loads
from pytest_llmdet.golden.store import read_golden, write_golden

pytestmark = pytest.mark.usefixtures("only_this_plugin")


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


HOLDER = """
import sys
from pathlib import Path
from pytest_llmdet.golden.locks import golden_lock

path = Path(sys.argv[1])
with golden_lock(path):
    print("locked", flush=True)
    sys.stdin.readline()
    if len(sys.argv) > 2:
        path.write_bytes(Path(sys.argv[2]).read_bytes())
"""


def hold_lock(golden: Path, replacement: Path | None = None) -> subprocess.Popen:
    """Another process holding `golden`'s lock (it writes `replacement` over it when told to let go)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(golden), *([str(replacement)] if replacement else [])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_accept_refuses_a_golden_file_that_another_process_replaced_while_it_waited_for_the_lock(
        pytester, monkeypatch, tmp_path):
    import filelock

    from pytest_llmdet.golden.pending import PendingConflict, accept, read_pending

    pytester.makepyfile(test_several=SEVERAL)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = pytester.path / SNAPSHOTS / "test_several" / "test_several.json"
    theirs = tmp_path / "theirs.json"
    retokened(golden, ["fox"])
    theirs.write_bytes(golden.read_bytes())  # what a concurrent update writes
    retokened(golden, ["fox"])
    run(pytester, "--llm-snapshot").assert_outcomes(failed=1)
    pending = read_pending(golden.with_name(golden.name + ".llmdet-pending"))

    holder = hold_lock(golden, theirs)
    waiting = threading.Event()
    acquire = filelock.FileLock.acquire

    def signalled(self, *args, **kwargs):
        waiting.set()  # accept is now at the lock: let the other process write and go
        return acquire(self, *args, **kwargs)

    monkeypatch.setattr(filelock.FileLock, "acquire", signalled)
    errors = []
    worker = threading.Thread(target=lambda: _catch(errors, lambda: accept(pending)))
    worker.start()
    assert waiting.wait(60)
    holder.communicate("go\n", timeout=60)
    worker.join(60)
    assert len(errors) == 1 and isinstance(errors[0], PendingConflict), errors
    assert golden.read_bytes() == theirs.read_bytes()  # the concurrent write stands


def _catch(errors: list, action) -> None:
    try:
        action()
    except Exception as error:  # noqa: BLE001 - the test inspects it
        errors.append(error)


def test_a_write_timed_out_by_pytest_timeout_while_another_process_holds_the_lock_names_the_holder(pytester):
    pytest.importorskip("pytest_timeout")
    pytester.makepyfile(test_story="""
        import pytest

        def test_loads(llm):
            llm.generate("The fox", max_new_tokens=2)

        @pytest.mark.timeout(4)
        def test_story(llm, llm_snapshot):
            assert llm.generate("The fox and the crow", max_new_tokens=6) == llm_snapshot
        """)
    run(pytester, "-p", "pytest_timeout", "--llm-snapshot-update").assert_outcomes(passed=2)
    golden = pytester.path / SNAPSHOTS / "test_story" / "test_story.json"
    retokened(golden, ["0"])
    before = golden.read_bytes()
    holder = hold_lock(golden)
    try:
        result = run(pytester, "-p", "pytest_timeout", "--llm-snapshot-update")
    finally:
        holder.communicate("go\n", timeout=60)
    result.stdout.fnmatch_lines([
        f"*was not written: the write was interrupted (Failed: Timeout*); while waiting for its lock, held by pid "
        f"{holder.pid} (*)*",
        "*0 written, 0 updated, 0 deleted, 0 unused, 1 error",
    ])
    assert golden.read_bytes() == before


def test_an_update_keeps_a_variant_another_process_wrote_after_it_compared(tmp_path):
    from pytest_llmdet.golden.format import GoldenFile
    from pytest_llmdet.golden.store import write_golden
    from pytest_llmdet.golden.writer import Queued, SnapshotWriter

    def entry(text):
        return GoldenEntry(text, token_ids=[1], margins=[1.0], prompt="p", prompt_sha256="h", finish_reason="length",
                           settings={})

    path = tmp_path / "__llm_snapshots__" / "test_t" / "test_x.json"
    write_golden(path, GoldenFile("test_t.py::test_x", {}, {"0": entry("old")}))
    queued = Queued()
    queued.add("0", entry("new default"), None)  # what a float32 update compared and queued
    other = read_golden(path)  # meanwhile another process records its bfloat16 variant
    other.snapshots["0"].variants = {"cpu:bfloat16:avx2": entry("the other machine's")}
    write_golden(path, other)
    SnapshotWriter().write(path, "test_t.py::test_x", queued, {})
    written = read_golden(path).snapshots["0"]
    assert written.text == "new default" and list(written.variants) == ["cpu:bfloat16:avx2"]
