"""pytest-rerunfailures (`--reruns`): a re-run snapshot test counts each snapshot once, with its last attempt;
a test checked by llm_determinism is not re-run, and the header says both."""

import json
import xml.etree.ElementTree as ElementTree

import pytest
import sessions

pytest.importorskip("pytest_rerunfailures")  # a test-only dependency (the `test` extra)

RERUN_SUITE = """
import os
from pathlib import Path

def first_attempt(name):
    marker = Path(__file__).with_name(name + ".attempted")
    first = not marker.exists()
    marker.write_text("")
    return first

def test_flaky_output(llm_snapshot):
    # with FLAKY set, the first attempt's output differs from the golden and the re-run's matches it
    flaky = os.environ.get("FLAKY") and first_attempt("output")
    assert ("changed" if flaky else "recorded") == llm_snapshot

def test_changed(llm_snapshot):
    assert os.environ.get("SUITE_VERSION", "v1") == llm_snapshot
"""

HEADER = ("llmdet: --reruns {n}: a re-run snapshot test counts each snapshot once (its last attempt); tests checked "
          "by llm_determinism are not re-run (their runs are the check: a re-run would hide nondeterminism)")


pytestmark = pytest.mark.usefixtures("only_this_plugin")


def run(pytester, *args: str):
    return sessions.run(pytester, "-p", "pytest_rerunfailures", *args)


def outcomes(result) -> dict[str, int]:
    """The counts of pytest's last line, warnings left out (an in-process run may warn about re-imports)."""
    return {k: v for k, v in result.parseoutcomes().items() if k not in ("warning", "warnings")}


def test_a_re_run_snapshot_test_counts_each_snapshot_once_with_its_last_attempt(pytester, monkeypatch):
    pytester.makepyfile(test_rr=RERUN_SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    monkeypatch.setenv("FLAKY", "1")
    monkeypatch.setenv("SUITE_VERSION", "v2")
    result = run(pytester, "--llm-snapshot", "--reruns", "1", "--llm-report=report.json", "--junitxml=junit.xml")
    assert outcomes(result) == {"passed": 1, "failed": 1, "rerun": 2}
    result.stdout.fnmatch_lines([
        HEADER.format(n=1),
        "*= llm snapshots =*",
        "1 passed, 1 failed, 0 written, 0 updated, 0 deleted, 0 unused",  # not "1 passed, 3 failed"
        '1 test(s) with changed or missing snapshots. If the change is intended, re-record with: pytest '
        '--llm-snapshot-update "test_rr.py::test_changed"',
    ])
    report = json.loads((pytester.path / "report.json").read_text())
    assert report["summary"]["passed"] == 1 and report["summary"]["failed"] == 1
    assert [(s["test"], s["name"], s["status"]) for s in report["snapshots"]] == [
        ("test_rr.py::test_changed", "0", "failed"), ("test_rr.py::test_flaky_output", "0", "passed")]
    # JUnit XML has a test case per attempt: each carries its own attempt's snapshot property, once
    cases = ElementTree.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    properties = [(case.get("name"), [p.get("value").split(";")[0] for p in case.iter("property")
                                      if p.get("name") == "llm_snapshot[0]"]) for case in cases]
    assert properties == [("test_flaky_output", ["failed"]), ("test_flaky_output", ["passed"]),
                          ("test_changed", ["failed"]), ("test_changed", ["failed"])]


def test_reruns_leave_a_determinism_checked_test_to_its_own_runs_and_the_header_says_so(pytester):
    pytester.makepyfile(test_checked="""
        from pathlib import Path

        import pytest

        @pytest.mark.llm_determinism(runs=3)
        def test_checked():
            marker = Path(__file__).with_name("attempted")
            first = not marker.exists()
            marker.write_text("")
            assert not first, "fails on its first attempt only"
    """)
    result = run(pytester, "--reruns", "2")
    assert outcomes(result) == {"failed": 1}  # not re-run into a pass, and counted once
    result.stdout.fnmatch_lines([
        HEADER.format(n=2),
        "*AssertionError: fails on its first attempt only*",
        "*= llm determinism =*",
        "1 not checked: failed or skipped before all runs completed, or the batch probe or a factor could not run",
    ])


def test_without_reruns_the_header_has_no_reruns_line(pytester):
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert "--reruns" not in result.stdout.str()
