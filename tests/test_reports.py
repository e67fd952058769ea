"""What a run reports beside the terminal: the JSON report, JUnit XML properties and text diffs, and the
snapshots a failed test never compared."""

from __future__ import annotations

import json

import pytest
from sessions import GOLDEN, ONE_TEST, SNAPSHOTS, STORY, THREE, THREE_GOLDEN, run, validate_report

from pytest_llmdet.golden.render import text_diff

pytestmark = pytest.mark.usefixtures("only_this_plugin")


REPORT_SUITE = """
import pytest

def test_story(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=12) == llm_snapshot

def test_text(llm_snapshot):
    assert "plain text" == llm_snapshot(name="text")

@pytest.mark.llm_determinism(runs=2)
def test_checked(llm):
    llm.generate("The crow", max_new_tokens=4)
"""


def test_json_report_and_junit_properties_describe_every_snapshot_and_determinism_result(pytester):
    import xml.etree.ElementTree as ElementTree

    pytester.makepyfile(test_story=REPORT_SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=3)
    golden = pytester.path / GOLDEN
    data = json.loads(golden.read_text())
    original = data["snapshots"]["0"]["token_ids"][5]
    data["snapshots"]["0"]["token_ids"][5] = original + 1
    golden.write_text(json.dumps(data))

    result = run(pytester, "--llm-snapshot", "--llm-report=out/report.json", "--junitxml=junit.xml")
    result.assert_outcomes(passed=2, failed=1)
    report = json.loads((pytester.path / "out/report.json").read_text(encoding="utf-8"))
    validate_report(report)
    assert report["snapshot_mode"] == "check" and report["exit_status"] == 1
    assert report["summary"]["passed"] == 1 and report["summary"]["failed"] == 1
    story, text = report["snapshots"]
    assert (story["test"], story["name"], story["status"], story["file"]) == (
        "test_story.py::test_story", "0", "failed", GOLDEN)
    assert story["variant"] is None and story["compare"] == "exact"
    assert story["fingerprint"]["dtype"] == "float32" and story["fingerprint"]["device_type"] == "cpu"
    divergence = story["divergence"]
    assert divergence["matched"] is False and divergence["golden_length"] == divergence["current_length"] == 12
    assert divergence["first_divergence"]["index"] == 5
    assert divergence["first_divergence"]["golden_token"] == original + 1
    assert divergence["first_divergence"]["current_token"] == original
    assert divergence["first_divergence"]["label"] in ("near-tie", "regression")
    assert (text["name"], text["status"], text["fingerprint"], text["divergence"]) == ("text", "passed", None, None)
    assert report["determinism"] == [{
        "test": "test_story.py::test_checked", "status": "deterministic", "runs": 2, "kind": None,
        "position": None, "distinct_outputs": 1, "detail": None, "factors": {}}]

    cases = {case.get("name"): case for case in ElementTree.parse(pytester.path / "junit.xml").iter("testcase")}
    properties = {name: {p.get("name"): p.get("value") for p in case.iter("property")}
                  for name, case in cases.items()}
    assert properties["test_story"]["llm_snapshot[0]"].startswith(
        f"failed; first divergence at token 5 ({divergence['first_divergence']['label']}): "
        f"golden {original + 1}, current {original}; lengths 12/12")
    assert properties["test_text"] == {"llm_snapshot[text]": "passed"}
    assert properties["test_checked"] == {"llm_determinism": "deterministic in 2 runs"}


def test_json_report_of_a_record_run_lists_fragile_snapshots_and_validates(pytester):
    pytester.makepyfile(test_story=STORY)
    pytester.makeini("[pytest]\nllm_near_tie = 100\n")  # every margin is below: the smallest one is reported
    run(pytester, "--llm-snapshot-update", "--llm-report=report.json").assert_outcomes(passed=1)
    report = json.loads((pytester.path / "report.json").read_text(encoding="utf-8"))
    validate_report(report)
    margins = json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]["margins"]
    (entry,) = report["snapshots"]
    assert entry["status"] == "written" and entry["divergence"] is None
    assert entry["fragile"]["position"] == margins.index(min(m for m in margins if m is not None))
    assert report["determinism"] == [] and report["snapshot_mode"] == "update"


def test_snapshots_a_failed_test_never_compared_are_counted_and_listed_as_not_compared(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_three=THREE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    pytester.makepyfile(test_three=THREE.replace('"first"', '"first!"'))

    result = run(pytester, "--llm-snapshot", "--llm-report=report.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "1 passed, 1 failed, 0 written, 0 updated, 0 deleted, 0 unused, 2 not compared",  # 4 snapshots, 4 counted
        '1 test(s) with changed or missing snapshots. If the change is intended, re-record with: pytest '
        '--llm-snapshot-update "test_three.py::test_three"',
        "2 snapshot(s) not compared: their test failed before comparing them; pytest --llm-snapshot-review "
        "compares them all (and keeps each change pending):",
        f"  test_three.py::test_three [[]b[]]  {THREE_GOLDEN}",
        f"  test_three.py::test_three [[]c[]]  {THREE_GOLDEN}",
    ], consecutive=True)
    report = json.loads((pytester.path / "report.json").read_text())
    validate_report(report)
    assert report["summary"]["not_compared"] == 2
    assert report["not_compared"] == [{"test": "test_three.py::test_three", "name": name, "file": THREE_GOLDEN}
                                      for name in ("b", "c")]

    pytester.makepyfile(test_three=THREE.replace('"second"', '"second!"'))  # fails at b: only c is left
    result = run(pytester, "--llm-snapshot", "--llm-snapshot-details")
    result.stdout.fnmatch_lines([
        "2 passed, 1 failed, 0 written, 0 updated, 0 deleted, 0 unused, 1 not compared",
        "*re-record with*",
        "1 snapshot(s) not compared: their test failed before comparing them; pytest --llm-snapshot-review "
        "compares them all (and keeps each change pending); listed below:",
        f"  failed  test_three.py::test_three [[]b[]]  {THREE_GOLDEN}",
        "  passed  test_three.py::test_other [[]0[]]  *",
        f"  passed  test_three.py::test_three [[]a[]]  {THREE_GOLDEN}",
        f"not compared  test_three.py::test_three [[]c[]]  {THREE_GOLDEN}",
    ], consecutive=True)

    pytester.makepyfile(test_three=THREE)
    result = run(pytester, "--llm-snapshot", "--llm-report=report.json")
    result.stdout.fnmatch_lines(["4 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert json.loads((pytester.path / "report.json").read_text())["not_compared"] == []


def test_long_outputs_diff_in_lines_a_person_can_read():
    golden = " ".join(f"word{i}" for i in range(800))
    current = golden.replace("word400", "WORD400")
    diff = text_diff(golden, current)
    assert max(map(len, diff)) <= 121  # a +, - or space, then at most DIFF_WIDTH characters
    assert any(line.startswith("-") and "word400" in line for line in diff)
    assert any(line.startswith("+") and "WORD400" in line for line in diff)


def test_junit_xml_carries_the_text_diff_of_a_failed_snapshot(pytester):
    import xml.etree.ElementTree as ElementTree

    pytester.makepyfile(test_story=ONE_TEST)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = pytester.path / SNAPSHOTS / "test_story" / "test_story.json"
    data = json.loads(golden.read_text())
    data["snapshots"]["0"]["text_lines"] = ["an edited golden text"]
    golden.write_text(json.dumps(data))
    run(pytester, "--llm-snapshot", "--junitxml=junit.xml").assert_outcomes(failed=1)
    tree = ElementTree.parse(pytester.path / "junit.xml")
    properties = {p.get("name"): p.get("value") for p in tree.iter("property")}
    diff = properties["llm_snapshot[0] text diff"]
    assert "-an edited golden text" in diff.splitlines() and diff.splitlines()[0] == "--- golden"
