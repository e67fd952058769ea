"""Writing golden files: every write is atomic, an update killed at any moment leaves each file old or
new, leftover temporaries are recognised by name, and a failed write is an error, never counted as written."""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import golden_for
from filelock import FileLock
from sessions import (
    ONE_TEST,
    READ_ONLY_SUITE,
    SNAPSHOTS,
    SUITE,
    clean_env,
    golden_files,
    pytest_command,
    recorded,
    report,
    retokened,
    run,
    run_subprocess,
    temporaries,
)

from pytest_llmdet.golden import locks
from pytest_llmdet.golden.format import MAX_FILE_BYTES, GoldenEntry, GoldenFile, GoldenFileError, loads
from pytest_llmdet.golden.store import TMP_SUFFIX, clean_temporaries, read_golden, temporary_target, write_golden

pytestmark = pytest.mark.usefixtures("only_this_plugin")


IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


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


def _has_dac_override() -> bool:
    """Whether this process may write where permissions say it may not (CAP_DAC_OVERRIDE, Linux)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return IS_ROOT
    effective = int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(effective & (1 << 1))  # CAP_DAC_OVERRIDE is capability 1


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


INTERRUPTED = """
import filelock
import pytest


@pytest.fixture(autouse=True)
def interrupted_writes(monkeypatch):
    def timeout(self, *args, **kwargs):
        pytest.fail("Timeout (>4.0s) from pytest-timeout.")

    monkeypatch.setattr(filelock.FileLock, "acquire", timeout)
"""


def test_a_write_cut_off_by_any_exception_is_an_error_and_named_not_counted_as_updated(pytester):
    pytester.makepyfile(test_story=ONE_TEST)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = pytester.path / SNAPSHOTS / "test_story" / "test_story.json"
    retokened(golden, ["0"])
    before = golden.read_bytes()
    pytester.makeconftest(INTERRUPTED)
    result = run(pytester, "--llm-snapshot-update", "--llm-report=report.json")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*golden file __llm_snapshots__/test_story/test_story.json was not written: the write was interrupted "
        "(Failed: Timeout (>4.0s) from pytest-timeout.)*",
        '*re-record with: pytest --llm-snapshot-update "test_story.py::test_story"',
        "0 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused, 1 error",
    ])
    assert golden.read_bytes() == before
    assert [s["status"] for s in report(pytester)["snapshots"]] == ["error"]
