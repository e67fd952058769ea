"""The openai engine against a real HTTP server (tests/openai_stub.py: vLLM's response format, generating with
the embedded model through transformers): goldens recorded on the transformers engine pass on it, a changed
server fails them and names the engine change, and every way the server can be wrong is one clear error."""

import importlib.util
import json
import socket
from pathlib import Path

import openai  # noqa: F401 - imported before any in-process run (pytester drops modules first imported in one)
import pytest
from openai_stub import VERSION, OpenAIStub
from sessions import on_openai

from pytest_llmdet.engines.sources import EMBEDDED_MODEL_NAME
from pytest_llmdet.golden.format import prompt_hash

SUITE = """
def test_story(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=12) == llm_snapshot

def test_chat(llm, llm_snapshot):
    assert llm.generate([{"role": "user", "content": "Hi"}], max_new_tokens=8) == llm_snapshot
"""

TWO_TESTS = """
def test_first(llm):
    llm.generate("The fox", max_new_tokens=4)

def test_second(llm):
    llm.generate("The fox", max_new_tokens=4)
"""


@pytest.fixture
def stub(start_stub) -> OpenAIStub:
    return start_stub()


def golden_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("__llm_snapshots__/**/*.json"))}


def served_line(stub: OpenAIStub, label: str = f"vllm {VERSION}") -> str:
    return f"{EMBEDDED_MODEL_NAME} on the openai engine: {stub.model_dir} served by {label} at {stub.url}"


def error_messages(result) -> list[str]:
    """The message of each test error, as its ERRORS section shows it (the short summary cuts lines); the
    section names each test errored."""
    output = result.stdout.str()
    assert "ERROR at setup of test_first" in output and "ERROR at setup of test_second" in output, output
    return [line for line in result.stdout.lines if line.startswith("pytest-llmdet: ")]


def free_port() -> int:
    """A port nothing listens on: bound, read and closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# a. ------------------------------------------------------------------------------------------------------

def test_goldens_recorded_on_transformers_pass_on_the_openai_engine(pytester, stub):
    pytester.makepyfile(test_oa_suite=SUITE)
    pytester.runpytest("--llm-snapshot-update").assert_outcomes(passed=2)
    files = golden_files(pytester.path)
    assert len(files) == 2
    assert not stub.requests  # the recording ran on transformers

    result = pytester.runpytest("--llm-snapshot", *on_openai(stub.url))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*= llm snapshots =*", "2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused",
                                 "*= llm =*", "model loads: 1 (*", f"  {served_line(stub)}: * s",
                                 "generations: 2 (*"])
    assert golden_files(pytester.path) == files
    # One connection (models, version, the one-token probe), then a request per call with the plan in full:
    # greedy, the model's repetition penalty, its EOS tokens as the only stop tokens.
    assert [(method, path) for method, path, _ in stub.requests[:3]] == [
        ("GET", "/v1/models"), ("GET", "/version"), ("POST", "/v1/completions")]
    calls = stub.completions()[1:]
    assert [call["max_tokens"] for call in calls] == [12, 8]
    for call in calls:
        assert call["model"] == stub.model_dir and call["temperature"] == 0
        assert call["repetition_penalty"] == 1.05 and call["stop_token_ids"] == [0, 2] and call["ignore_eos"]
        assert call["return_token_ids"] and call["return_tokens_as_token_ids"]
    story = json.loads(files["__llm_snapshots__/test_oa_suite/test_story.json"])
    assert prompt_hash(calls[0]["prompt"]) == story["snapshots"]["0"]["prompt_sha256"]  # tokenized as recorded
    assert "engine" not in story["fingerprint"]  # recorded on transformers


# b. ------------------------------------------------------------------------------------------------------

def test_a_changed_server_fails_the_goldens_and_names_the_engine_change(pytester, start_stub):
    stub = start_stub(perturb=True)
    pytester.makepyfile(test_oa_suite=SUITE)
    pytester.runpytest("--llm-snapshot-update").assert_outcomes(passed=2)
    files = golden_files(pytester.path)

    result = pytester.runpytest("--llm-snapshot", *on_openai(stub.url))
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*output differs from snapshot '0' in __llm_snapshots__/test_oa_suite/test_story.json",
                                 "*first divergence at token 0 of 12*",
                                 "*0 passed, 2 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    output = result.stdout.str()
    assert output.count("engine: transformers → openai") >= 2  # one report per failed test
    assert f"served_model: (absent) → {stub.model_dir}" in output
    assert golden_files(pytester.path) == files  # a check never rewrites a golden file


# c. ------------------------------------------------------------------------------------------------------

def test_an_unreachable_server_errors_every_test_with_one_line(pytester):
    url = f"http://127.0.0.1:{free_port()}/v1"
    pytester.makepyfile(test_oa_two=TWO_TESTS)
    result = pytester.runpytest(*on_openai(url))
    result.assert_outcomes(errors=2)
    messages = error_messages(result)
    assert len(messages) == 2, result.stdout.str()
    for line in messages:  # the reason and what to do, on the one line
        assert line.startswith(f"pytest-llmdet: cannot reach the OpenAI-compatible server at {url} ("), line
        assert "60 s, llm_request_timeout" in line  # how long a request may wait, and the setting
        assert "start the server (for vLLM: python -m vllm.entrypoints.openai.api_server" in line
        assert line.endswith("or point --llm-base-url / llm_base_url at it"), line
    assert "Traceback" not in result.stdout.str() and "openai.APIConnectionError" not in result.stdout.str()


# d. ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [VERSION, None], ids=["with-version", "no-version-endpoint"])
def test_a_server_that_returns_no_token_ids_errors_every_test_and_is_asked_once(pytester, start_stub, version):
    stub = start_stub(token_ids=False, version=version)
    pytester.makepyfile(test_oa_two=TWO_TESTS)
    result = pytester.runpytest(*on_openai(stub.url))
    result.assert_outcomes(errors=2)
    label = f"vllm {version}" if version else "vllm"
    message = (f"pytest-llmdet: the {label} server at {stub.url} (/version: {version or 'not served'}) returned "
               "no token IDs: its completion has no `token_ids` field")
    messages = error_messages(result)
    assert len(messages) == 2 and all(line.startswith(message) for line in messages), result.stdout.str()
    # The failure is remembered: the second test does not reach the server again.
    assert stub.count("GET", "/v1/models") == 1
    assert stub.count("GET", "/version") == 1
    assert len(stub.completions()) == 1


# e. ------------------------------------------------------------------------------------------------------

def test_a_processor_the_server_cannot_apply_fails_the_call_and_sends_nothing(pytester, stub):
    pytester.makepyfile(test_oa_ngram="""
        def test_ngram(llm):
            llm.generate("The fox", no_repeat_ngram_size=2)
        """)
    result = pytester.runpytest(*on_openai(stub.url))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no_repeat_ngram_size=2 cannot be applied by the openai engine*"])
    assert len(stub.completions()) == 1  # only the connection's probe: the call was refused, not sent without it


# f. ------------------------------------------------------------------------------------------------------

def test_the_openai_engine_without_a_url_is_a_usage_error(pytester):
    pytester.makepyfile(test_oa_two=TWO_TESTS)
    result = pytester.runpytest("--llm-engine", "openai")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--llm-base-url" in result.stderr.str()
    assert "llm_base_url" in result.stderr.str()


# g. ------------------------------------------------------------------------------------------------------

MIXED = """
import pytest

def test_a(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=10) == llm_snapshot

{marker}
def test_b(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=10) == llm_snapshot
"""


def test_a_marker_puts_one_test_on_the_openai_engine_beside_transformers(pytester, stub):
    pytester.makepyfile(test_oa_mixed=MIXED.format(marker=""))
    pytester.runpytest("--llm-snapshot-update").assert_outcomes(passed=2)
    files = golden_files(pytester.path)
    recorded = [json.loads(content)["snapshots"]["0"]["token_ids"] for content in files.values()]
    assert len(recorded) == 2 and recorded[0] == recorded[1]

    pytester.makepyfile(test_oa_mixed=MIXED.format(marker='@pytest.mark.llm_model(engine="openai")'))
    result = pytester.runpytest("--llm-snapshot", "--llm-base-url", stub.url)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused", "*= llm =*",
                                 "model loads: 2 (*"])
    output = result.stdout.str()
    assert f"  {EMBEDDED_MODEL_NAME} float32 cpu: " in output
    assert f"  {served_line(stub)}: " in output
    calls = stub.completions()
    assert len(calls) == 2 and calls[1]["max_tokens"] == 10  # the probe, then test_b alone
    assert golden_files(pytester.path) == files


# h. ------------------------------------------------------------------------------------------------------

def test_the_batch_probe_sends_concurrent_requests(pytester, stub):
    pytester.makepyfile(test_oa_batch="""
        import pytest

        @pytest.mark.llm_determinism(runs=2, batch=True)
        def test_batch(llm):
            llm.generate("The fox", max_new_tokens=7)
        """)
    result = pytester.runpytest("-rA", *on_openai(stub.url))
    result.assert_outcomes(passed=1)
    calls = [call for call in stub.completions() if call["max_tokens"] == 7]
    runs, batch = calls[:2], calls[2:]
    assert runs[0]["prompt"] == runs[1]["prompt"]
    assert len(batch) == 4  # the batch probe's 4 rows, each its own request (sent at once, from a pool)
    prompts = [call["prompt"] for call in batch]  # in the order the server took them, which the pool decides
    assert prompts.count(runs[0]["prompt"]) == 1  # row 0 is the call itself
    others = [prompt for prompt in prompts if prompt != runs[0]["prompt"]]
    assert len(others) == 3 and any(len(prompt) > len(runs[0]["prompt"]) for prompt in others)  # a longer one
    assert all(call["repetition_penalty"] == 1.05 and call["stop_token_ids"] == [0, 2] for call in batch)


# i. ------------------------------------------------------------------------------------------------------

def test_the_api_key_is_sent_but_written_nowhere(pytester, stub, monkeypatch):
    key = "sk-llmdet-test-0d1e2f3a4b5c"
    monkeypatch.setenv("LLMDET_TEST_SERVER_KEY", key)
    pytester.makepyfile(test_oa_key=SUITE + """
def test_fails(llm):
    assert llm.generate("The fox", max_new_tokens=3).text == "not this"
""")
    result = pytester.runpytest("-rA", "-l", "--llm-snapshot-update", "--llm-report", "report.json",
                                "--llm-api-key-env", "LLMDET_TEST_SERVER_KEY", *on_openai(stub.url))
    result.assert_outcomes(passed=2, failed=1)
    assert stub.authorizations and set(stub.authorizations) == {f"Bearer {key}"}
    written = golden_files(pytester.path)
    assert len(written) == 2
    assert all(json.loads(content)["fingerprint"]["engine"] == "openai" for content in written.values())
    report = (pytester.path / "report.json").read_text(encoding="utf-8")
    for where, text in [*((name, content.decode()) for name, content in written.items()), ("report.json", report),
                        ("stdout", result.stdout.str()), ("stderr", result.stderr.str())]:
        assert key not in text, where
    assert "LLMDET_TEST_SERVER_KEY" not in report  # not even the variable's name is needed there


def test_a_refused_key_names_the_variable_not_the_key(pytester, stub, monkeypatch):
    key = "sk-wrong-9f8e7d"
    monkeypatch.setenv("LLMDET_TEST_SERVER_KEY", key)
    stub.answer = lambda method, path, body: (401, {"error": {"message": "Unauthorized", "type": "Unauthorized"}})
    pytester.makepyfile(test_oa_two=TWO_TESTS)
    result = pytester.runpytest("--llm-api-key-env", "LLMDET_TEST_SERVER_KEY", *on_openai(stub.url))
    result.assert_outcomes(errors=2)
    messages = error_messages(result)
    assert len(messages) == 2 and all(line.startswith(f"pytest-llmdet: the server at {stub.url} refused the API "
                                                      "key (read from $LLMDET_TEST_SERVER_KEY, set)")
                                      for line in messages), result.stdout.str()
    assert key not in result.stdout.str() and key not in result.stderr.str()
    assert stub.count("GET", "/v1/models") == 1


# j. ------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_the_vllm_engine_without_vllm_names_the_extra(pytester):
    pytester.makepyfile(test_oa_two=TWO_TESTS)
    result = pytester.runpytest("--llm-engine", "vllm")
    result.assert_outcomes(errors=2)
    messages = error_messages(result)
    assert len(messages) == 2, result.stdout.str()
    for line in messages:
        assert line.startswith("pytest-llmdet: llm_engine = vllm needs vLLM, which is not installed"), line
        assert "pip install 'pytest-llmdet[vllm]'" in line


# Found by a hostile review --------------------------------------------------------------------------------

def test_a_server_serving_another_model_is_refused_unless_llm_served_model_names_it(pytester, start_stub):
    stub = start_stub(served_name="prod-model")
    pytester.makepyfile(test_oa_two=TWO_TESTS)
    result = pytester.runpytest(*on_openai(stub.url))
    result.assert_outcomes(errors=2)
    messages = error_messages(result)
    assert all(f"the server at {stub.url} serves prod-model, and none is named like model" in line
               and "--llm-served-model / llm_served_model" in line for line in messages), messages
    assert not stub.completions()  # nothing generated under another model's name
    result = pytester.runpytest(*on_openai(stub.url), "--llm-served-model", "prod-model")
    result.assert_outcomes(passed=2)
    assert {body["model"] for body in stub.completions()} == {"prod-model"}


def test_a_server_that_stops_answering_is_waited_for_once_and_then_remembered(pytester, start_stub):
    stub = start_stub(hang=True)
    pytester.makepyfile(test_oa_two=TWO_TESTS)
    result = pytester.runpytest(*on_openai(stub.url), "--llm-request-timeout", "0.5")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert f"the vllm {VERSION} server at {stub.url} did not answer (" in out
    assert "a request waits at most 0.5 s, llm_request_timeout, and is retried 1 time" in out
    assert "stopped answering earlier in this session" in out  # the second test is not made to wait again
    assert len(stub.completions()) == 3  # the probe, then the first test's request and its one retry


def test_a_server_that_returns_fewer_log_probs_than_asked_is_an_error_not_infinite_margins(pytester, start_stub):
    stub = start_stub(few_candidates=True)
    pytester.makepyfile(test_oa_two=TWO_TESTS)
    result = pytester.runpytest(*on_openai(stub.url))
    result.assert_outcomes(errors=2)
    messages = error_messages(result)
    assert all(f"server at {stub.url} returned 1 log-prob(s) at step 0, and pytest-llmdet asked for 2" in line
               for line in messages), messages
    assert len(stub.completions()) == 1  # found by the connection probe, remembered


TORCH_SETTINGS = """
import pytest
import torch

def test_on_the_server(llm):
    llm.generate("Hi", max_new_tokens=2)
    assert not torch.are_deterministic_algorithms_enabled()

@pytest.mark.llm_model(engine="transformers")
def test_in_this_process(llm):
    assert torch.are_deterministic_algorithms_enabled()
"""


def test_torchs_deterministic_settings_wait_for_a_model_that_runs_in_the_process(pytester, stub):
    # a server's outputs do not depend on them, and making them imports torch's compiler (1.5 s)
    pytester.makepyfile(test_torch_settings=TORCH_SETTINGS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *on_openai(stub.url))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*the server at * (its dtype, device and deterministic algorithms are the server's*"])
