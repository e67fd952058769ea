"""Beyond exact: near-ties judged on both margins, fragile snapshots listed, and tolerant comparison that
passes a near-tie flip and fails a real change."""

from __future__ import annotations

import json

import pytest
from sessions import GOLDEN, STORY, golden_files, run, validate_report

from pytest_llmdet.golden.compare import compare_tokens
from pytest_llmdet.golden.format import GoldenEntry
from pytest_llmdet.golden.render import render_comparison

pytestmark = pytest.mark.usefixtures("only_this_plugin")


def test_a_snapshot_recorded_with_a_margin_below_near_tie_is_listed_as_fragile(pytester):
    pytester.makepyfile(test_story=STORY)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    margins = json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]["margins"]
    smallest = min(m for m in margins if m is not None)
    position = margins.index(smallest)
    before = golden_files(pytester.path)

    pytester.makeini(f"[pytest]\nllm_near_tie = {smallest + 0.001}\n")
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines([
        "*= llm snapshots =*",
        "1 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused",
        f"1 fragile snapshot(s): a margin below llm_near_tie {smallest + 0.001} may flip on other hardware*",
        f"  test_story.py::test_story [[]0[]]  token {position} margin {smallest:.4f}  {GOLDEN}",
    ])
    assert golden_files(pytester.path) == before  # listing it changes no file

    pytester.makeini(f"[pytest]\nllm_near_tie = {smallest - 0.001}\n")
    assert "fragile snapshot" not in run(pytester, "--llm-snapshot-update").stdout.str()
    pytester.makeini(f"[pytest]\nllm_near_tie = {smallest + 0.001}\n")
    assert "fragile snapshot" not in run(pytester, "--llm-snapshot").stdout.str()  # listed at record time only


def _flip(pytester, index: int, token: int) -> dict:
    """Put `token` at `index` of the golden snapshot (and mark its text edited); returns the old entry."""
    golden = pytester.path / GOLDEN
    data = json.loads(golden.read_text())
    entry = data["snapshots"]["0"]
    old = json.loads(json.dumps(entry))
    entry["token_ids"][index] = token
    entry["text_lines"][0] = "(edited) " + entry["text_lines"][0]
    golden.write_text(json.dumps(data))
    return old


def test_tolerant_mode_passes_a_near_tie_flip_and_fails_a_real_change(pytester):
    pytester.makepyfile(test_story=STORY)
    run(pytester, "--llm-snapshot-update", "--llm-compare", "tolerant").assert_outcomes(passed=1)
    entry = json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]
    assert [len(step) for step in entry["top_k_ids"]] == [5] * 12
    assert [len(step) for step in entry["top_k_logprobs"]] == [5] * 12
    assert [step[0] for step in entry["top_k_ids"]] == entry["token_ids"]

    # a flip to the runner-up: each side's token is among the other side's top-5
    runner_up = entry["top_k_ids"][5][1]
    _flip(pytester, 5, runner_up)
    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant", "--llm-report=report.json")
    result.assert_outcomes(passed=1)
    (snapshot,) = json.loads((pytester.path / "report.json").read_text())["snapshots"]
    assert snapshot["compare"] == "tolerant" and snapshot["divergence"]["first_divergence"]["label"] == "tolerated"
    assert snapshot["checked"] == (
        "tolerant comparison (vLLM check_logprobs_close rule, lengths checked), top-5: tokens 0..4 identical; "
        f"at token 5 golden {runner_up} is rank 2 of the current top-5 and current {entry['token_ids'][5]} is "
        "rank 1 of the golden top-5; tokens after 5 not compared")
    validate_report(json.loads((pytester.path / "report.json").read_text()))
    run(pytester, "--llm-snapshot").assert_outcomes(failed=1)  # the exact comparison fails on the same file

    # a real change: the golden token is none of the current top-5
    outsider = next(t for t in range(100, 1000) if t not in entry["top_k_ids"][5])
    _flip(pytester, 5, outsider)
    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*first divergence at token 5 of 12 (outside top-k: a token is not among the other side's best*",
        f"*  golden : {outsider} *",
        "*    top-5 golden : *",
        "*    top-5 current: *",
        f"*at token 5 golden {outsider} is NOT in the current top-5 and current {entry['token_ids'][5]} is "
        "rank 1 of the golden top-5; tokens after 5 not compared",
    ])


def test_tolerant_mode_fails_an_early_eos(pytester):
    pytester.makepyfile(test_story=STORY)
    run(pytester, "--llm-snapshot-update", "--llm-compare", "tolerant").assert_outcomes(passed=1)
    token = json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]["token_ids"][5]
    # the same generation, ended by EOS after token 5: identical up to there, then 6 tokens short
    pytester.makepyfile(test_story=STORY.replace("max_new_tokens=12", f"max_new_tokens=12, eos_token_id={token}"))
    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*first divergence at token 6 of 12 (length: one output stops where the other goes on)",
        "*tokens 0..5 identical; the current output ends at token 6 before any divergence (golden 12 tokens, "
        "current 6): a length change is a failure",
        "*length: golden 12 tokens (length), current 6 tokens (eos): early EOS",
    ])


MARKED = """
import pytest

@pytest.mark.llm_snapshot(compare="tolerant", top_k=3)
def test_tolerant(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=6) == llm_snapshot

def test_exact(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=6) == llm_snapshot
"""


def test_the_marker_makes_one_test_tolerant_and_only_tolerant_goldens_store_top_k(pytester):
    pytester.makepyfile(test_marked=MARKED)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    folder = pytester.path / "__llm_snapshots__/test_marked"
    tolerant = json.loads((folder / "test_tolerant.json").read_text())["snapshots"]["0"]
    exact = json.loads((folder / "test_exact.json").read_text())["snapshots"]["0"]
    assert [len(step) for step in tolerant["top_k_ids"]] == [3] * 6
    assert "top_k_ids" not in exact and "top_k_logprobs" not in exact
    before = golden_files(pytester.path)

    # a golden without top-k (any v1 file) still reads; identical tokens need none, and since that check passes,
    # a tolerant update writes nothing either (a green gate means an update would write nothing)
    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*llm_compare tolerant (top-5)*"])
    result = run(pytester, "--llm-snapshot-update", "--llm-compare", "tolerant")
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert "top_k_ids" not in json.loads((folder / "test_exact.json").read_text())["snapshots"]["0"]
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    assert golden_files(pytester.path) == before  # no-op updates change no byte; an exact one keeps the top-k

    pytester.makepyfile(test_marked=MARKED.replace("top_k=3", "top_k=0"))
    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(passed=1, errors=1)  # a setup error of that test only
    result.stdout.fnmatch_lines(["*bad argument to @pytest.mark.llm_snapshot: allowed values: an integer >= 1*"])
    result = run(pytester, "--llm-snapshot", "--llm-compare", "close")
    result.stderr.fnmatch_lines(["*bad value 'close' for --llm-compare; allowed values: exact, tolerant*"])


def test_a_tolerant_check_of_a_golden_recorded_without_top_k_names_the_reason_and_a_command_that_works(
        pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")  # no pending files: this test is about the failure report
    pytester.makepyfile(test_story=STORY)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)  # exact mode stores no candidates
    entry = _flip(pytester, 5, json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]["token_ids"][5] + 1)
    token, margin = entry["token_ids"][5], entry["margins"][5]
    command = 'pytest --llm-snapshot-update --llm-compare tolerant "test_story.py::test_story"'

    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant", "--llm-report=report.json")
    result.assert_outcomes(failed=1)
    current = json.loads((pytester.path / "report.json").read_text())["snapshots"][0]["divergence"]
    current_margin = current["first_divergence"]["current_margin"]
    kind = "a near-tie" if min(margin, current_margin) < 0.01 else "a regression"  # either side's margin
    result.stdout.fnmatch_lines([
        f"E       assert output differs from snapshot '0' in {GOLDEN}",
        "E         first divergence at token 5 of 12 (cannot be judged tolerantly: the golden snapshot has no top-k "
        "candidates, it was recorded without --llm-compare tolerant)",
        "E         matched prefix: *",
        f"E           golden : {token + 1} * margin {margin:.4f}",
        f"E           current: {token} *",
        "E         tolerant comparison (vLLM check_logprobs_close rule, lengths checked), top-5: tokens 0..4 "
        "identical; at token 5 the golden snapshot has no top-k candidates to compare with; exact mode calls this "
        f"flip {kind} (golden margin {margin:.4f}, current margin {current_margin:.4f}, llm_near_tie 0.01)",
        f"E         if the change is intended, re-record with: {command}",
    ])
    result.stdout.fnmatch_lines([
        "*= llm snapshots =*",
        "0 passed, 1 failed, 0 written, 0 updated, 0 deleted, 0 unused",
        "1 snapshot(s) could not be compared tolerantly: their golden snapshot has no top-k candidates (it was "
        "recorded without --llm-compare tolerant)",
        f"1 test(s) with changed or missing snapshots. If the change is intended, re-record with: {command}",
    ], consecutive=True)
    assert "outside top-k" not in result.stdout.str()
    assert 'pytest --llm-snapshot-update "' not in result.stdout.str()  # no command that records no candidates
    report = json.loads((pytester.path / "report.json").read_text())
    validate_report(report)
    assert report["snapshots"][0]["divergence"]["first_divergence"]["label"] == "no-top-k"

    # the command given works: it stores the candidates, and the next tolerant check can judge a flip
    run(pytester, "--llm-snapshot-update", "--llm-compare", "tolerant", "test_story.py::test_story")
    recorded = json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]
    assert [len(step) for step in recorded["top_k_ids"]] == [5] * 12
    run(pytester, "--llm-snapshot", "--llm-compare", "tolerant").assert_outcomes(passed=1)


def test_a_tolerant_pass_that_diverged_is_counted_in_the_summary_and_shown_in_the_details(pytester):
    pytester.makepyfile(test_story=STORY)
    run(pytester, "--llm-snapshot-update", "--llm-compare", "tolerant").assert_outcomes(passed=1)
    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant")
    result.stdout.fnmatch_lines(["1 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])  # no divergence
    assert "tolerated" not in result.stdout.str()

    entry = json.loads((pytester.path / GOLDEN).read_text())["snapshots"]["0"]
    _flip(pytester, 5, entry["top_k_ids"][5][1])  # the runner-up: within top-k on both sides
    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant", "--llm-report=report.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "1 passed (1 tolerated), 0 failed, 0 written, 0 updated, 0 deleted, 0 unused",
        "1 snapshot(s) passed tolerantly although their tokens diverged (each side's token among the other side's "
        "top-k):",
        f"  test_story.py::test_story [[]0[]]  token 5  {GOLDEN}",
    ], consecutive=True)
    report = json.loads((pytester.path / "report.json").read_text())
    validate_report(report)
    assert (report["summary"]["passed"], report["summary"]["tolerated"]) == (1, 1)

    result = run(pytester, "--llm-snapshot", "--llm-compare", "tolerant", "--llm-snapshot-details")
    result.stdout.fnmatch_lines([
        "1 passed (1 tolerated), 0 failed, 0 written, 0 updated, 0 deleted, 0 unused",
        "1 snapshot(s) passed tolerantly although their tokens diverged (each side's token among the other side's "
        "top-k); listed below:",
        f"  passed (tolerant: diverged at token 5, within top-k)  test_story.py::test_story [[]0[]]  {GOLDEN}",
    ], consecutive=True)


def test_a_flip_is_a_near_tie_when_either_sides_margin_is_below_the_threshold():
    golden = GoldenEntry("abc", token_ids=[1, 2, 3], margins=[2.0, 0.125, 1.0], finish_reason="length")
    current_tie = compare_tokens(golden, [1, 9, 3], [2.0, 0.0, 1.0], "aXc", "length", near_tie=0.01)
    assert current_tie.divergence.label == "near-tie"
    lines = render_comparison(current_tie, golden, "aXc", [1, 9, 3], None, 0.01)
    assert lines[0] == ("first divergence at token 1 of 3 (near-tie: golden margin 0.1250, current margin 0.0000; "
                        "one below llm_near_tie 0.01)")
    both_clear = compare_tokens(golden, [1, 9, 3], [2.0, 0.5, 1.0], "aXc", "length", near_tie=0.01)
    assert both_clear.divergence.label == "regression"
