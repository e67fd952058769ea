"""--llm-prefetch against a real HTTP server (tests/openai_stub.py): the recorded calls of the selected tests
are sent at once and answer the tests; a server whose batched answers differ (not batch-invariant) gives no
false alarm, because each differing result is confirmed by a lone request; a changed model fails as without the
prefetch; an update never prefetches; the JSON report marks each result. And what the server says of itself
(/v1/models, /version) is in the fingerprint, so a changed deployment is named."""

import json
from pathlib import Path

import openai  # noqa: F401 - imported before any in-process run (pytester drops modules first imported in one)
import pytest
from sessions import golden_files, on_openai, run

SUITE = """
import pytest

def test_story(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=12) == llm_snapshot
    assert llm.generate("A cat sat", max_new_tokens=6) == llm_snapshot

def test_chat(llm, llm_snapshot):
    assert llm.generate([{"role": "user", "content": "Hi"}], max_new_tokens=8) == llm_snapshot

def test_plain(llm):
    llm.generate("Not recorded", max_new_tokens=3)
"""
RECORDED_CALLS = 3  # the snapshot calls of SUITE

pytestmark = pytest.mark.usefixtures("only_this_plugin")


def recorded(pytester: pytest.Pytester, url: str) -> dict[str, bytes]:
    """SUITE's goldens, recorded on the openai engine against the server at `url` (lone requests)."""
    pytester.makepyfile(test_pf=SUITE)
    run(pytester, "--llm-snapshot-update", *on_openai(url)).assert_outcomes(passed=3)
    return golden_files(pytester.path)


def report_of(pytester: pytest.Pytester) -> dict[tuple[str, str], str | None]:
    data = json.loads((pytester.path / "report.json").read_text(encoding="utf-8"))
    return {(entry["test"].split("::")[-1], entry["name"]): entry["prefetch"] for entry in data["snapshots"]}


def test_a_check_with_prefetch_sends_the_recorded_calls_at_once_and_is_answered_by_them(pytester, start_stub):
    stub = start_stub()
    files = recorded(pytester, stub.url)
    stub.requests.clear()
    result = run(pytester, "--llm-snapshot", "--llm-prefetch", "--llm-report", "report.json",
                                *on_openai(stub.url))
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([
        "llmdet: prefetch: the recorded calls of the selected tests sent at once when the server is first needed, "
        "32 in flight (llm_concurrency)*",
        "*= llm prefetch =*",
        f"prefetch: {RECORDED_CALLS} recorded call(s) generated at once (1 batch(es), * s); {RECORDED_CALLS} answered "
        "from the batch, 0 differed from the golden and were generated again alone, 0 unused"])
    calls = stub.completions()
    # The connection's probe, the prefetch of the three recorded calls, then only the call no golden recorded.
    assert [call["max_tokens"] for call in calls[:1]] == [1]
    assert sorted(call["max_tokens"] for call in calls[1:1 + RECORDED_CALLS]) == [6, 8, 12]
    assert [call["max_tokens"] for call in calls[1 + RECORDED_CALLS:]] == [3]
    assert set(report_of(pytester).values()) == {"batched"}
    assert golden_files(pytester.path) == files


def test_a_server_that_is_not_batch_invariant_gives_no_false_alarm_and_is_named(pytester, start_stub):
    files = recorded(pytester, start_stub().url)
    stub = start_stub(batch_variant=RECORDED_CALLS)  # its answers to the prefetch's batch differ from lone ones
    result = run(pytester, "-rA", "--llm-snapshot", "--llm-prefetch", "--llm-report", "report.json",
                                *on_openai(stub.url))
    result.assert_outcomes(passed=3)  # each differing batched result was confirmed alone, and the lone one matched
    result.stdout.fnmatch_lines([
        f"prefetch: {RECORDED_CALLS} recorded call(s) generated at once (1 batch(es), * s); 0 answered from the batch, "
        f"{RECORDED_CALLS} differed from the golden and were generated again alone, 0 unused",
        f"prefetch: in {RECORDED_CALLS} call(s) a lone request gave other tokens than the batch "
        "(test_pf.py::test_chat, test_pf.py::test_story): the engine is not batch-invariant (vLLM: set "
        "VLLM_BATCH_INVARIANT=1 *SGLang: --enable-deterministic-inference); each was judged by its lone output, "
        "so batching failed no test"])
    note = "2 call(s) of this test gave other tokens in the prefetch's batch than in a lone request"
    assert note in result.stdout.str()
    assert set(report_of(pytester).values()) == {"disagreed"}
    lone = stub.completions()[1 + RECORDED_CALLS:]
    assert sorted(call["max_tokens"] for call in lone) == [3, 6, 8, 12]  # each recorded call again, alone
    assert len(files) == 2


def test_a_changed_model_fails_with_prefetch_as_without_it(pytester, start_stub):
    recorded(pytester, start_stub().url)
    stub = start_stub(perturb=True)
    plain = run(pytester, "--llm-snapshot", *on_openai(stub.url))
    plain.assert_outcomes(passed=1, failed=2)
    result = run(pytester, "--llm-snapshot", "--llm-prefetch", "--llm-report", "report.json",
                                *on_openai(stub.url))
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*0 answered from the batch, 2 differed from the golden and were generated again "
                                 "alone, 1 unused"])  # test_story failed at its first call: its second is unused
    assert report_of(pytester) == {("test_story", "0"): "confirmed", ("test_chat", "0"): "confirmed"}
    assert "lone request gave other tokens" not in result.stdout.str()


def test_an_update_never_prefetches(pytester, start_stub):
    stub = start_stub()
    pytester.makepyfile(test_pf=SUITE)
    result = run(pytester, "--llm-snapshot-update", "--llm-prefetch", *on_openai(stub.url))
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["llmdet: prefetch: off in an update (--llm-snapshot-update records every golden "
                                 "from a lone call)"])
    assert "llm prefetch" not in result.stdout.str()
    assert len(stub.completions()) == 1 + RECORDED_CALLS + 1  # the probe, then each call alone


def test_llm_prefetch_in_the_ini_file_and_nothing_sent_by_collect_only(pytester, start_stub):
    stub = start_stub()
    recorded(pytester, stub.url)
    pytester.makeini("[pytest]\nllm_prefetch = true\nllm_concurrency = 2\n")
    stub.requests.clear()
    collected = run(pytester, "--collect-only", "--llm-snapshot", *on_openai(stub.url))
    assert collected.ret == 0 and not stub.requests  # prefetched when a test needs the model, not before
    result = run(pytester, "--llm-snapshot", *on_openai(stub.url))
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*2 in flight (llm_concurrency)*", "*3 answered from the batch*"])


def test_bad_concurrency_is_a_usage_error(pytester):
    pytester.makepyfile(test_pf="def test_it():\n    pass\n")
    result = run(pytester, "--llm-concurrency", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "bad value '0' for --llm-concurrency" in result.stderr.str()


def test_on_transformers_the_flag_says_there_is_nothing_to_prefetch(pytester):
    pytester.makepyfile(test_pf=SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=3)
    result = run(pytester, "--llm-snapshot", "--llm-prefetch")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["llmdet: prefetch: nothing to prefetch on the transformers engine*"])
    assert "llm prefetch" not in result.stdout.str()


CHANGED = """
import pytest

def test_story(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=11) == llm_snapshot  # not the recorded settings
    assert llm.generate("A cat sat", max_new_tokens=6) == llm_snapshot

@pytest.mark.llm_determinism(runs=2)
def test_chat(llm, llm_snapshot):
    assert llm.generate([{"role": "user", "content": "Hi"}], max_new_tokens=8) == llm_snapshot

def test_plain(llm):
    llm.generate("Not recorded", max_new_tokens=3)
"""


def test_only_calls_as_recorded_are_answered_and_never_a_determinism_run(pytester, start_stub):
    stub = start_stub()
    recorded(pytester, stub.url)
    pytester.makepyfile(test_pf=CHANGED)
    result = run(pytester, "--llm-snapshot", "--llm-prefetch", "--llm-report", "report.json",
                                *on_openai(stub.url))
    result.assert_outcomes(passed=2, failed=1)  # test_story's first call changed its settings: a real failure
    # test_chat is checked for nondeterminism: its recorded call is not prefetched, and its runs are generated
    assert report_of(pytester)[("test_chat", "0")] is None
    result.stdout.fnmatch_lines(["prefetch: 2 recorded call(s) generated at once (1 batch(es), * s); 0 answered from "
                                 "the batch, 0 differed from the golden and were generated again alone, 2 unused"])


# What a server says of itself -----------------------------------------------------------------------------

def test_a_changed_deployment_is_named_in_the_environment_line(pytester, start_stub):
    stub = start_stub()
    pytester.makepyfile(test_pf=SUITE)
    run(pytester, "--llm-snapshot-update", *on_openai(stub.url)).assert_outcomes(passed=3)
    golden = json.loads(next(Path(pytester.path).rglob("test_story.json")).read_text(encoding="utf-8"))
    assert golden["fingerprint"]["served_root"] == stub.model_dir
    assert golden["fingerprint"]["served_max_model_len"] == 512
    assert golden["fingerprint"]["engine_version"] == "vllm 0.32.0"
    moved = start_stub(perturb=True, version="0.33.1", root="/models/other-build", max_model_len=256)
    result = run(pytester, "--llm-snapshot", *on_openai(moved.url))
    result.assert_outcomes(passed=1, failed=2)
    output = result.stdout.str()
    assert f"served_root: {stub.model_dir} → /models/other-build" in output
    assert "served_max_model_len: 512 → 256" in output
    assert "engine_version: vllm 0.32.0 → vllm 0.33.1" in output


# The answering rule, without a server ----------------------------------------------------------------------

def _row(token_ids):
    from pytest_llmdet.engines.rows import RowOutput

    return RowOutput(list(token_ids), [1.0] * len(token_ids), [0.0] * len(token_ids), None, None, frozenset())


def test_a_batched_row_is_used_only_when_it_equals_a_recorded_golden():
    from pytest_llmdet.engines.llm import call_key
    from pytest_llmdet.golden.prefetch import Prefetch, PrefetchStats

    stats = PrefetchStats(unused=3)
    prefetched = Prefetch(stats)
    same, changed, flaky = (call_key([1, n], {"max_new_tokens": 2}, 0) for n in (1, 2, 3))
    for key, batched, golden in ((same, [5, 6], (5, 6)), (changed, [7, 7], (5, 6)), (flaky, [7, 7], (5, 6))):
        prefetched.results[key], prefetched.expected[key] = _row(batched), {golden}

    def never():
        raise AssertionError("a batched row equal to its golden needs no lone request")

    assert prefetched.answer(same, never) == (prefetched.results[same], "batched")
    assert prefetched.answer(changed, lambda: _row([7, 7]))[1] == "confirmed"  # the model changed: it fails
    row, source = prefetched.answer(flaky, lambda: _row([5, 6]))  # the batch alone differed
    assert (row.token_ids, source) == ([5, 6], "disagreed")
    assert prefetched.answer(call_key([9], {"max_new_tokens": 2}, 0), never) is None  # not prefetched
    assert prefetched.answer(call_key([1, 1], {"max_new_tokens": 2}, 1), never) is None  # other top-k
    assert (stats.batched, stats.confirmed, stats.unused) == (1, 1, 0)
    prefetched.answer(same, never)  # the same call in another test: answered again, counted once as used
    assert (stats.batched, stats.unused) == (2, 0)
