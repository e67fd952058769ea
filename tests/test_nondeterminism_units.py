"""Pure logic of the nondeterminism check: comparing runs call by call, the report, the summary, the batch
helpers; no model and no pytest session involved."""

import json

import execnet
import pytest

from pytest_llmdet.determinism.factors import BatchFactor, factor_differences
from pytest_llmdet.determinism.probe import companions, truncate_at_eos
from pytest_llmdet.determinism.report import prompt_excerpt, render_report
from pytest_llmdet.determinism.runs import (
    BatchedOutput,
    CellStatus,
    FactorCell,
    Verdict,
    VerdictKind,
    VerdictStatus,
    compare_outputs,
    compare_runs,
    distinct_outputs,
    factor_cell,
    verdict_for,
    verdicts_from_data,
    verdicts_to_data,
)
from pytest_llmdet.determinism.summary import matrix_lines, summary_lines
from pytest_llmdet.engines.transformers import left_pad
from pytest_llmdet.generation import Generation
from pytest_llmdet.json_report import determinism_entry
from pytest_llmdet.markers import CheckPlan, MarkerUsageError, check_plan
from pytest_llmdet.settings.values import parse_factors
from pytest_llmdet.vocabulary import FACTOR_NAMES, FactorName

TEXT = {1: " the", 2: " fox", 3: " dog", 4: " ran", 5: ".", 9: " cat"}


def decode(ids):
    return "".join(TEXT.get(i, f"<{i}>") for i in ids)


def gen(ids, prompt="Once upon a time", logprobs=None, margins=None, settings=None, prompt_ids=(7, 8)):
    return Generation(prompt=prompt, text=decode(ids), token_ids=list(ids), prompt_token_ids=list(prompt_ids),
                      finish_reason="length", margins=margins or [0.5] * len(ids),
                      logprobs=logprobs or [-0.1] * len(ids), settings=settings or {"max_new_tokens": 8})


def test_identical_runs_are_deterministic_and_report_nothing():
    runs = [[gen([1, 2, 4]), gen([1, 3], prompt="Hi")] for _ in range(3)]
    comparison = compare_runs(runs)
    assert comparison.deterministic and comparison.call_counts == [2, 2, 2]
    assert render_report(comparison) == []
    assert verdict_for("t.py::test", comparison) == Verdict("t.py::test", 3, True)


def test_tiny_logprob_noise_without_a_token_change_is_still_deterministic():
    runs = [[gen([1, 2], logprobs=[-0.1, -0.2])], [gen([1, 2], logprobs=[-0.1000001, -0.2])]]
    assert compare_runs(runs).deterministic


def test_a_diverging_call_names_the_call_position_tokens_margins_and_logprob_delta():
    first = gen([1, 2, 4, 5], logprobs=[-0.1, -0.2, -0.3, -0.4], margins=[0.9, 0.8, 0.0031, 0.7])
    same = gen([1, 2, 4, 5], logprobs=[-0.1, -0.2, -0.3, -0.4])
    other = gen([1, 2, 3, 5], logprobs=[-0.1000021, -0.2, -0.3, -0.4], margins=[0.9, 0.8, 0.0042, 0.7])
    untouched = gen([9], prompt="Second call")
    runs = [[untouched, first], [untouched, same], [untouched, other]]
    comparison = compare_runs(runs)
    assert not comparison.deterministic
    (difference,) = comparison.differences
    assert difference.index == 1 and difference.distinct_outputs == 2 and difference.other_run == 3
    d = difference.divergence
    assert (d.index, d.reference_token, d.other_token) == (2, 4, 3)
    assert (d.reference_margin, d.other_margin) == (0.0031, 0.0042)
    assert d.max_logprob_delta == pytest.approx(2.1e-06)
    lines = render_report(comparison, decode=decode)
    assert lines[0] == "pytest-llmdet: 3 runs of this test did not generate the same tokens"
    assert lines[1] == "nondeterministic: call 2 of 2 ('Once upon a time'): 3 runs gave 2 distinct outputs"
    assert lines[2] == ("  first divergence at token 2: run 1 gave 4 ' ran' (margin 0.0031), "
                        "run 3 gave 3 ' dog' (margin 0.0042)")
    assert lines[3] == "  largest |Δ logprob| of the chosen token before the divergence: 2.1e-06"
    assert lines[-1].startswith("known causes: batch composition and padding")


def test_the_earliest_divergence_among_all_runs_is_reported():
    runs = [[gen([1, 2, 3, 4])], [gen([1, 2, 3, 5])], [gen([1, 9, 3, 4])], [gen([1, 2, 3, 4])]]
    (difference,) = compare_runs(runs).differences
    assert difference.distinct_outputs == 3
    assert difference.other_run == 3 and difference.divergence.index == 1


def test_one_run_stopping_early_is_a_divergence_at_the_end_of_the_shorter_output():
    (difference,) = compare_runs([[gen([1, 2, 5])], [gen([1, 2])]]).differences
    d = difference.divergence
    assert (d.index, d.reference_token, d.other_token, d.other_margin) == (2, 5, None, None)
    report = "\n".join(render_report(compare_runs([[gen([1, 2, 5])], [gen([1, 2])]])))
    assert "run 2 gave (end of output)" in report


def test_a_divergence_at_the_first_token_has_no_logprob_delta():
    d = compare_outputs(gen([1, 2]), gen([3, 2]))
    assert d.index == 0 and d.max_logprob_delta is None
    lines = render_report(compare_runs([[gen([1])], [gen([3])]]))
    assert "  (the outputs differ from their first token)" in lines


def test_a_prompt_that_changes_between_runs_is_reported_first_as_the_tests_own_fault():
    runs = [[gen([1, 2]), gen([1], prompt="The time is 1700000001", prompt_ids=(1, 2, 3))],
            [gen([1, 3]), gen([1], prompt="The time is 1700000002", prompt_ids=(1, 2, 4))]]
    comparison = compare_runs(runs)
    assert [d.index for d in comparison.differences] == [0, 1]
    lines = render_report(comparison, decode=decode)
    assert lines[1].startswith("nondeterministic input: the prompt of call 2 of 2 ('The time is 1700000001') "
                               "differed between runs: the test's own input is not reproducible")
    assert lines[2] == "  run 1 prompt: 'The time is 1700000001'"
    assert lines[3] == "  run 2 prompt: 'The time is 1700000002'"
    assert lines[5].startswith("nondeterministic: call 1 of 2")
    assert lines[-1].startswith("known causes:")  # call 1's tokens diverged too
    only_input = compare_runs([[gen([1], prompt="a")], [gen([1], prompt="b")]])
    assert not render_report(only_input)[-1].startswith("known causes:")  # the test's own doing
    verdict = verdict_for("t.py::test_clock", comparison)
    assert verdict.kind == "input" and "prompt of call 2 changed" in verdict.detail


def test_changed_generation_settings_count_as_a_changed_input():
    runs = [[gen([1], settings={"max_new_tokens": 8})], [gen([1, 2], settings={"max_new_tokens": 9})]]
    (difference,) = compare_runs(runs).differences
    assert difference.changed_input == ["generation settings (max_new_tokens)"]


def test_a_different_number_of_calls_fails_and_the_common_calls_are_still_compared():
    runs = [[gen([1]), gen([2])], [gen([1]), gen([2]), gen([3])], [gen([1]), gen([4])]]
    comparison = compare_runs(runs)
    assert not comparison.deterministic and comparison.calls == 3
    text = "\n".join(render_report(comparison, decode=decode))
    assert "different numbers of llm.generate calls (run 1: 2, run 2: 3, run 3: 2)" in text
    assert "nondeterministic: call 2 of 3" in text
    assert verdict_for("t", comparison).kind == "calls"


def test_distinct_outputs_counts_token_sequences():
    assert distinct_outputs([gen([1, 2]), gen([1, 2]), gen([1, 3]), gen([])]) == 3


def test_the_batch_probe_report():
    singles = [gen([1, 2, 4], logprobs=[-0.5, -0.25, -0.1], margins=[1, 1, 0.01]), gen([5], prompt="Hi")]
    batch = BatchFactor(4)
    # call 2 was not probed: only call 1 has an output from the batch
    probed = [(0, batch.regeneration(BatchedOutput([1, 2, 3], [1, 1, 0.02], [-0.5, -0.2, -0.1])))]
    differences = factor_differences(batch, singles, probed)
    assert [d.index for d in differences] == [0]
    comparison = compare_runs([singles, singles])
    lines = render_report(comparison, differences, decode)
    assert lines[0] == ("pytest-llmdet: 2 runs of this test agreed, but the batch probe found "
                        "batch-dependent outputs")
    assert lines[1] == "batch-variant: call 1 of 2 ('Once upon a time') alone vs in a left-padded batch of 4"
    assert lines[2] == ("  first divergence at token 2: alone gave 4 ' ran' (margin 0.0100), "
                        "in the batch gave 3 ' dog' (margin 0.0200)")
    assert lines[3] == "  largest |Δ logprob| of the chosen token before the divergence: 0.05"
    verdict = verdict_for("t.py::test_b", comparison, differences)
    assert not verdict.deterministic and verdict.kind == "batch" and verdict.position == 2


def test_long_reports_are_bounded():
    runs = [[gen([i]) for i in range(20)], [gen([i + 1]) for i in range(20)]]
    lines = render_report(compare_runs(runs))
    assert "… and 12 more" in lines and len(lines) < 40


def test_prompt_excerpts():
    assert prompt_excerpt("short") == "'short'"
    assert prompt_excerpt("x" * 50) == repr("x" * 40 + "…")
    assert prompt_excerpt("a\n  b") == "'a b'"
    assert prompt_excerpt([{"role": "system", "content": "s"}, {"role": "user", "content": "Hi there"}]) \
        == "'[user] Hi there'"


def test_summary_lists_the_worst_offenders_first():
    verdicts = [
        Verdict("t.py::ok", 3, True),
        Verdict("t.py::late", 3, False, "tokens", 20, 2, "call 1 diverges at token 20"),
        Verdict("t.py::early", 3, False, "tokens", 3, 2, "call 1 diverges at token 3"),
        Verdict("t.py::many", 3, False, "tokens", 3, 3, "call 2 diverges at token 3"),
        Verdict("t.py::clock", 3, False, "input", None, 3, "the prompt of call 1 changed between runs"),
        Verdict("t.py::batch", 3, False, "batch", 1, 2, "batch-variant"),
    ]
    lines = summary_lines(verdicts)
    assert lines[0] == "6 checked, 1 deterministic, 5 nondeterministic"
    assert lines[1] == "worst offenders:"
    names = [line.split("::")[1].split(":")[0] for line in lines[2:]]
    assert names == ["clock", "batch", "many", "early", "late"]
    assert summary_lines(verdicts, limit=2)[-1] == "  … and 3 more"
    assert summary_lines([]) == []
    assert summary_lines([Verdict("t.py::ok", 3, True)]) == ["1 checked, 1 deterministic, 0 nondeterministic"]


def test_verdicts_survive_the_trip_to_the_xdist_controller():
    verdicts = [Verdict("a", 3, True), Verdict("b", 2, False, "tokens", 4, 2, "call 1 diverges at token 4")]
    assert verdicts_from_data(verdicts_to_data(verdicts)) == verdicts


def test_left_padding_and_attention_mask():
    ids, mask = left_pad([[5, 6], [1, 2, 3, 4], [9]], pad_id=0)
    assert ids == [[0, 0, 5, 6], [1, 2, 3, 4], [0, 0, 0, 9]]
    assert mask == [[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]]


def test_companions_make_the_probed_prompt_padded_within_the_position_limit():
    rows = companions([1, 2, 3], [[7, 8], [9]], size=4, limit=None)
    assert len(rows) == 3 and len(rows[0]) == 3 + 7 and rows[0][:4] == [7, 8, 9, 7]
    assert rows[1:] == [[7, 8], [9]]
    assert len(companions([1, 2, 3], [[7, 8]], size=2, limit=5)[0]) == 5


def test_a_batch_row_is_cut_after_its_first_eos():
    out = truncate_at_eos(BatchedOutput([4, 2, 0, 0], [1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0]), {2})
    assert out == BatchedOutput([4, 2], [1.0, 2.0], [-1.0, -2.0])


@pytest.mark.parametrize(
    ("kwargs", "check_all", "uses_llm", "expected"),
    [
        (None, False, True, None),
        (None, True, True, CheckPlan(3)),
        (None, True, False, None),
        ({}, False, False, CheckPlan(3)),
        ({"runs": 5}, False, True, CheckPlan(5)),
        ({"runs": None}, False, True, CheckPlan(3)),
        ({"batch": True}, False, True, CheckPlan(3, 4)),
        ({"batch": 8, "runs": 1}, False, True, CheckPlan(1, 8)),
        ({"factors": ["dtype", "cache"]}, False, True, CheckPlan(3, 0, ("cache", "dtype"))),
        ({"factors": ["batch"], "batch": 8}, False, True, CheckPlan(3, 8)),
        ({"factors": "batch,threads"}, False, True, CheckPlan(3, 4, ("threads",))),
        ({"factors": "all", "runs": 2}, False, True, CheckPlan(2, 4, FACTOR_NAMES[1:])),
    ],
)
def test_check_plan(kwargs, check_all, uses_llm, expected):
    assert check_plan((), kwargs, 3, check_all, uses_llm) == expected


@pytest.mark.parametrize(
    ("kwargs", "check_all", "uses_llm", "expected"),
    [
        (None, False, True, CheckPlan(1, 0, ("cache",))),  # --llm-factors alone re-runs nothing
        (None, True, True, CheckPlan(3, 0, ("cache",))),  # with --llm-check-determinism, N runs
        (None, False, False, None),  # a test that does not use llm has no calls to regenerate
        ({"factors": ["dtype"]}, False, True, CheckPlan(3, 0, ("cache", "dtype"))),  # the marker's and the suite's
    ],
)
def test_check_plan_with_suite_factors(kwargs, check_all, uses_llm, expected):
    assert check_plan((), kwargs, 3, check_all, uses_llm, default_factors=("cache",)) == expected
    assert expected is None or expected.factor_names == tuple(n for n in FACTOR_NAMES if n in expected.factors)


def test_factor_names_are_parsed_into_the_matrix_order():
    assert parse_factors("all") == FACTOR_NAMES
    assert parse_factors(" dtype, batch ,dtype") == ("batch", "dtype")
    assert parse_factors("") == ()
    with pytest.raises(ValueError, match="unknown factor.s. kv; allowed values: all, or a comma list of batch"):
        parse_factors(["cache", "kv"])
    assert parse_factors("dtype,prefix-cache,cache") == ("cache", "prefix-cache", "dtype")
    with pytest.raises(ValueError, match="unknown factor.s. prefix_cache; allowed values: all, or a comma list of "
                                         "batch, cache, static-cache, prefix-cache, attention"):
        parse_factors("prefix_cache")


def test_a_factor_cell_is_the_earliest_difference_equal_or_not_applicable():
    assert factor_cell([], 0, ["sampled", "sampled"]) == FactorCell("n/a", reason="sampled")
    assert factor_cell([], 2, []).text() == "="
    batch = BatchFactor(4)
    calls = [gen([1, 2, 3], prompt="a"), gen([1, 2], prompt="b")]
    probed = [(1, batch.regeneration(BatchedOutput([1, 3], [1, 0.75], [-0.1, -0.1]))),
              (0, batch.regeneration(BatchedOutput([1, 2, 4], [1, 1, 0.25], [-0.1, -0.1, -0.1])))]
    late, early = factor_differences(batch, calls, probed)  # in the order of the calls
    cell = factor_cell([late, early], 2, [])
    assert (cell.text(), cell.call, cell.reference_margin, cell.changed_margin) == ("1", 2, 0.5, 0.75)
    assert (cell.reference, cell.changed) == ("alone", "in the batch")


def test_the_matrix_shows_a_row_per_test_a_column_per_factor_then_margins_and_reasons():
    cache = FactorCell("diverged", 3, 1, 0.0031, 0.0042, "with the cache", "without")
    dtype = FactorCell("diverged", 7, 2, 0.5, 0.25, "float32", "bfloat16", sensitivity=True)
    same = FactorCell("same")
    threads = FactorCell("n/a", reason="this session already runs 1 torch thread")
    verdicts = [
        Verdict("t.py::b", 1, False, "cache", 3, 2, "x", factors={"cache": cache, "threads": threads}),
        Verdict("t.py::a", 1, True, "dtype", 7, 2, "y", sensitive=True,
                factors={"cache": same, "threads": threads, "dtype": dtype}),
        Verdict("t.py::unchecked_factors", 3, True),
    ]
    assert matrix_lines(verdicts) == [
        "factor matrix (=: same tokens, N: the first diverging token, n/a: not applicable, -: not asked for; "
        "dtype is a sensitivity (bfloat16 against the loaded dtype), not nondeterminism):",
        "  test     cache  threads  dtype",
        "  t.py::a  =      n/a      7",
        "  t.py::b  3      n/a      -",
        "margins at the divergences, the largest recorded margin first (a large one is no near-tie: more than "
        "rounding changed):",
        "  t.py::a dtype: call 2 token 7: margin 0.5000 float32, 0.2500 bfloat16",
        "  t.py::b cache: call 1 token 3: margin 0.0031 with the cache, 0.0042 without",
        "not applicable:",
        "  threads (2 tests): this session already runs 1 torch thread",
    ]
    assert matrix_lines([Verdict("t.py::ok", 3, True)]) == []
    lines = summary_lines(verdicts)
    assert lines[0] == "3 checked, 1 deterministic, 1 nondeterministic, 1 dtype-sensitive"
    assert lines[1:4] == ["worst offenders:", "  t.py::b: x", "  t.py::a: y"]  # a sensitivity after nondeterminism


def test_the_matrix_of_a_large_suite_shows_only_the_rows_that_are_not_all_equal():
    same = FactorCell("same")
    verdicts = [Verdict(f"t.py::t{i:03}", 1, True, factors={"cache": same}) for i in range(60)]
    verdicts[7].factors = {"cache": FactorCell("diverged", 2, 1, 0.1, 0.2, "with the cache", "without")}
    lines = matrix_lines(verdicts)
    assert lines[1:4] == ["  test        cache", "  t.py::t007  2",
                          "  … and 59 more tests, every factor = or n/a only where listed below"]


def test_verdicts_with_factor_cells_survive_the_trip_to_the_xdist_controller():
    cell = FactorCell("diverged", 3, 1, 0.1, None, "alone", "in the batch")
    verdicts = [Verdict("a", 1, False, "batch", 3, 2, "d", factors={"batch": cell, "dtype": FactorCell("n/a")})]
    assert verdicts_from_data(verdicts_to_data(verdicts)) == verdicts


def test_the_vocabulary_travels_and_prints_as_plain_words():
    cell = FactorCell(CellStatus.DIVERGED, 3, 1, 0.1, None, "alone", "in the batch")
    verdict = Verdict("a", 1, False, FactorName.STATIC_CACHE, 3, 2, "d",
                      factors={FactorName.STATIC_CACHE: cell, FactorName.DTYPE: FactorCell(CellStatus.NOT_APPLICABLE)})
    data = verdicts_to_data([verdict, Verdict("b", 3, False, VerdictKind.TOKENS, 4, 2, "e")])
    assert execnet.loads(execnet.dumps(data)) == data  # execnet sends plain values only, no enum
    words = [data[0]["kind"], *data[0]["factors"], data[0]["factors"]["static-cache"]["status"], data[1]["kind"]]
    assert words == ["static-cache", "static-cache", "dtype", "diverged", "tokens"]
    assert all(type(word) is str for word in words)
    back = verdicts_from_data(data)
    assert back[0].kind is FactorName.STATIC_CACHE and back[1].kind is VerdictKind.TOKENS
    assert back[0].factors[FactorName.DTYPE].status is CellStatus.NOT_APPLICABLE
    entry = json.dumps(determinism_entry(back[0]), sort_keys=True)
    assert '"kind": "static-cache"' in entry and '"status": "nondeterministic"' in entry
    assert '"static-cache": {' in entry and '"status": "n/a"' in entry
    assert [f"{word}" for word in (CellStatus.NOT_APPLICABLE, VerdictStatus.SENSITIVE, FactorName.BATCH)] == [
        "n/a", "sensitive", "batch"]
    assert str(VerdictKind.INPUT) == "input" and FACTOR_NAMES == tuple(FactorName)


@pytest.mark.parametrize("kwargs", [{"runs": 0}, {"runs": "3"}, {"runs": True}, {"batch": 1},
                                    {"batch": "yes"}, {"rnus": 2}, {"factors": ["kv"]}, {"factors": 3},
                                    {"factors": [None]}, {"factors": ["prefix_cache"]}])
def test_bad_marker_arguments(kwargs):
    with pytest.raises(MarkerUsageError, match="usage: @pytest.mark.llm_determinism"):
        check_plan((), kwargs, 3, False, True)
