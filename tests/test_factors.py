"""The factors of the determinism check (`factors=[...]`, `--llm-factors`): for each factor a model that differs
under it on any hardware, built with a forward hook that depends on exactly that factor, and a plain model that
stays `=`; the matrix in the summary and in the JSON report; the real eager-vs-sdpa case where this CPU has one."""

import json
import os
import re

import pytest
import torch
from sessions import validate_report
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from pytest_llmdet.engines.sources import EMBEDDED_MODEL_DIR

# Forward hooks that add 100 x a fixed permutation of 0..vocab-1 (torch's Mersenne Twister, the same on every
# machine) to the logits when, and only when, their factor is in effect. Steps of 100 outweigh the model's own
# logits, so the token changes. Each hook leaves the prompt's forward pass alone (token 0 is the model's own, so
# the report has a token before the divergence) and acts on the decoding steps:
# - cache: the model is shown again the sequence of its previous pass, one token longer: only without a KV cache;
# - static-cache: the cache passed in is a StaticCache;
# - attention: the model's config says eager attention;
# - threads: torch runs 1 thread;
# - dtype: the logits come out in bfloat16.
# `dtype_proof_llm` is the plain model of the dtype factor: a hook sets the logits to 10 on one token chosen from
# the last input token, so no dtype can change which token wins.
FACTOR_MODELS = """
import pytest
import torch


def permutation_noise(logits):
    generator = torch.Generator().manual_seed(1234)
    return 100 * torch.randperm(logits.shape[-1], generator=generator).to(torch.float32)


def decoding_step(kwargs):
    return kwargs["input_ids"].shape[1] == 1  # with a KV cache each step after the prompt's sees one new token


class Recomputed:
    def __init__(self):
        self.previous = None

    def __call__(self, module, kwargs, output):
        ids, previous = kwargs["input_ids"], self.previous
        self.previous = ids
        return (previous is not None and ids.shape == (previous.shape[0], previous.shape[1] + 1)
                and torch.equal(ids[:, :-1], previous))


CONDITIONS = {
    "cache": Recomputed,
    "static-cache": lambda: lambda module, kwargs, output: (
        type(kwargs.get("cache")).__name__ == "StaticCache" and decoding_step(kwargs)),
    "attention": lambda: lambda module, kwargs, output: (
        module.config._attn_implementation == "eager" and decoding_step(kwargs)),
    "threads": lambda: lambda module, kwargs, output: torch.get_num_threads() == 1 and decoding_step(kwargs),
    "dtype": lambda: lambda module, kwargs, output: output.logits.dtype == torch.bfloat16 and decoding_step(kwargs),
}


def hooked(llm, condition):
    def hook(module, args, kwargs, output):
        if condition(module, kwargs, output):
            output.logits = output.logits.float() + permutation_noise(output.logits)
        return output

    return llm.model.register_forward_hook(hook, with_kwargs=True)


def dependent_on(factor):
    @pytest.fixture
    def fixture(llm):
        handle = hooked(llm, CONDITIONS[factor]())
        yield llm
        handle.remove()

    return fixture


cache_dependent_llm = dependent_on("cache")
static_cache_dependent_llm = dependent_on("static-cache")
attention_dependent_llm = dependent_on("attention")
threads_dependent_llm = dependent_on("threads")
dtype_dependent_llm = dependent_on("dtype")


@pytest.fixture
def dtype_proof_llm(llm):
    def hook(module, args, kwargs, output):
        logits = torch.zeros(output.logits.shape, dtype=output.logits.dtype)
        chosen = (kwargs["input_ids"][:, -1] * 7 + 3) % logits.shape[-1]
        logits[:, -1, :].scatter_(1, chosen.unsqueeze(1), 10.0)
        output.logits = logits
        return output

    handle = llm.model.register_forward_hook(hook, with_kwargs=True)
    yield llm
    handle.remove()
"""

# The embedded model in float32 gives these prompts margins of 0.19 and more: far above what float32 rounding
# can move, so the plain model gives the same tokens under every factor but dtype on any CPU.
PROMPTS = ["Once upon a time", "The fox"]
ALL_BUT_DTYPE = ["batch", "cache", "static-cache", "attention", "threads"]

FACTOR_SUITE = f"""
import pytest

PROMPTS = {PROMPTS!r}


def generate(llm):
    return [llm.generate(prompt, max_new_tokens=8) for prompt in PROMPTS]


@pytest.mark.llm_determinism(runs=1, factors={ALL_BUT_DTYPE!r})
def test_cache(cache_dependent_llm):
    generate(cache_dependent_llm)


@pytest.mark.llm_determinism(runs=1, factors={ALL_BUT_DTYPE!r})
def test_static_cache(static_cache_dependent_llm):
    generate(static_cache_dependent_llm)


@pytest.mark.llm_determinism(runs=1, factors={ALL_BUT_DTYPE!r})
def test_attention(attention_dependent_llm):
    generate(attention_dependent_llm)


@pytest.mark.llm_determinism(runs=1, factors="all")
def test_dtype(dtype_dependent_llm):
    generate(dtype_dependent_llm)


@pytest.mark.llm_determinism(runs=1, factors={ALL_BUT_DTYPE!r})
def test_plain(llm):
    assert min(margin for g in generate(llm) for margin in g.margins) > 0.01


@pytest.mark.llm_determinism(runs=1, factors=["dtype"])
def test_dtype_proof(dtype_proof_llm):
    generate(dtype_proof_llm)
"""


def matrix(output: str) -> dict[str, list[str]]:
    """The factor matrix of a run's summary: test name -> its cells; and "test" -> the column names."""
    block = output.split("factor matrix (")[1].split("\n", 1)[1]
    rows = {}
    for line in block.splitlines():
        if not line.startswith("  "):
            break
        name, *cells = line.split()
        rows[name.split("::")[-1]] = cells
    return rows


def test_each_factor_changes_only_the_model_that_depends_on_it_and_the_plain_model_stays_equal(pytester):
    pytester.makeconftest(FACTOR_MODELS)
    pytester.makepyfile(test_matrix=FACTOR_SUITE)
    result = pytester.runpytest("--llm-threads", "1", "--llm-report", "report.json", "-rs")
    result.assert_outcomes(passed=2, failed=4)
    result.stdout.fnmatch_lines([
        "*_ test_cache _*",
        "pytest-llmdet: the tokens of this test changed under cache",
        "cache-variant: call 1 of 2 ('Once upon a time') with the KV cache vs without (the whole sequence "
        "recomputed at each step)",
        "  first divergence at token 1: with the cache gave * (margin *), without gave * (margin *)",
        "*_ test_static_cache _*",
        "static-cache-variant: call 1 of 2 ('Once upon a time') with the dynamic KV cache vs a static one "
        '(cache_implementation="static")',
        "*_ test_attention _*",
        "pytest-llmdet: the tokens of this test changed under attention",
        "attention-variant: call 1 of 2 ('Once upon a time') with sdpa attention (loaded) vs eager",
        "  first divergence at token 1: sdpa gave * (margin *), eager gave * (margin *)",
        "  largest |Δ logprob| of the chosen token before the divergence: *",
        "attention-variant: call 2 of 2 ('The fox') with sdpa attention (loaded) vs eager",
        "what to do (attention): pin the attention implementation you serve with*",
        "*_ test_dtype _*",
        "pytest-llmdet: the tokens of this test changed under dtype (a sensitivity)",
        "dtype-sensitive: call 1 of 2 ('Once upon a time') in float32 (loaded) vs bfloat16",
        "  first divergence at token 1: float32 gave * (margin *), bfloat16 gave * (margin *)",
        "what to do (dtype): a sensitivity, not nondeterminism*",
        "*= llm determinism =*",
        "6 checked, 2 deterministic, 3 nondeterministic, 1 dtype-sensitive",
        "worst offenders:",
        "  test_matrix.py::test_attention: attention-variant: call 1 diverges at token 1 with eager attention",
        "  test_matrix.py::test_cache: cache-variant: call 1 diverges at token 1 without a KV cache",
        "  test_matrix.py::test_static_cache: static-cache-variant: call 1 diverges at token 1 with a static KV "
        "cache",
        "  test_matrix.py::test_dtype: dtype-sensitive: call 1 diverges at token 1 in bfloat16",
        "factor matrix (=: same tokens, N: the first diverging token, n/a: not applicable, -: not asked for; "
        "dtype is a sensitivity (bfloat16 against the loaded dtype), not nondeterminism):",
        "margins at the divergences, the largest recorded margin first*",
        "not applicable:",
        "  prefix-cache (test_matrix.py::test_dtype): the transformers engine has no prefix cache (each generate "
        "computes its whole prompt): a factor of the vllm engine",
        "  threads (5 tests): this session already runs 1 torch thread (llm_threads or torch's default), so there "
        "is nothing to compare 1 with; set --llm-threads to the count the other machine uses",
    ])
    rows = matrix(result.stdout.str())
    assert rows == {
        "test": ["batch", "cache", "static-cache", "prefix-cache", "attention", "threads", "dtype"],
        "test_attention": ["=", "=", "=", "-", "1", "n/a", "-"],
        "test_cache": ["=", "1", "=", "-", "=", "n/a", "-"],
        "test_dtype": ["=", "=", "=", "n/a", "=", "n/a", "1"],  # "all": prefix-cache too, n/a on transformers
        "test_static_cache": ["=", "=", "1", "-", "=", "n/a", "-"],
        "test_dtype_proof": ["-", "-", "-", "-", "-", "-", "="],
        "test_plain": ["=", "=", "=", "-", "=", "n/a", "-"],
    }
    report = json.loads((pytester.path / "report.json").read_text(encoding="utf-8"))
    validate_report(report)
    entries = {entry["test"].split("::")[-1]: entry for entry in report["determinism"]}
    assert (entries["test_dtype"]["status"], entries["test_dtype"]["kind"]) == ("sensitive", "dtype")
    assert entries["test_cache"]["status"] == "nondeterministic"
    cache = entries["test_cache"]["factors"]["cache"]
    assert (cache["status"], cache["cell"], cache["position"], cache["call"]) == ("diverged", "1", 1, 1)
    assert (cache["reference"], cache["changed"]) == ("with the cache", "without")
    assert entries["test_plain"]["status"] == "deterministic"
    assert {name: cell["cell"] for name, cell in entries["test_plain"]["factors"].items()} == {
        "batch": "=", "cache": "=", "static-cache": "=", "attention": "=", "threads": "n/a"}
    assert entries["test_plain"]["factors"]["threads"]["reason"].startswith("this session already runs 1 torch")


THREADS_SUITE = """
import pytest


@pytest.mark.llm_determinism(runs=1, factors=["threads"])
def test_threads(threads_dependent_llm):
    threads_dependent_llm.generate("Once upon a time", max_new_tokens=4)


@pytest.mark.llm_determinism(runs=1, factors=["threads"])
def test_plain(llm):
    assert min(llm.generate("Once upon a time", max_new_tokens=4).margins) > 0.01
"""


def test_the_threads_factor_compares_one_thread_with_the_sessions_count(pytester):
    pytester.makeconftest(FACTOR_MODELS)
    pytester.makepyfile(test_threads=THREADS_SUITE)
    result = pytester.runpytest("--llm-threads", "2")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "threads-variant: call 1 of 1 ('Once upon a time') with 2 torch threads vs 1",
        "  first divergence at token 1: 2 threads gave * (margin *), 1 thread gave * (margin *)",
        "what to do (threads): a CPU splits its sums by thread*",
        "2 checked, 1 deterministic, 1 nondeterministic",
    ])
    rows = matrix(result.stdout.str())
    assert rows == {"test": ["threads"], "test_threads": ["1"], "test_plain": ["="]}
    assert torch.get_num_threads() == 2  # the session's count is back after the factor


AUDIT_SUITE = """
def test_cache_dependent(cache_dependent_llm):
    cache_dependent_llm.generate("Once upon a time", max_new_tokens=4)


def test_plain(llm):
    llm.generate("The fox", max_new_tokens=4)


def test_without_llm():
    pass
"""


def test_llm_factors_audits_every_test_that_uses_llm_and_xdist_merges_the_matrix(pytester):
    pytest.importorskip("xdist")
    pytester.makeconftest(FACTOR_MODELS)
    pytester.makepyfile(test_audit_a=AUDIT_SUITE,
                        test_audit_b="def test_other(llm):\n    llm.generate('Hi', max_new_tokens=2)\n")
    result = pytester.runpytest_subprocess("-n", "2", "--llm-factors", "cache", "--llm-threads", "1")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "*= llm determinism =*",
        "3 checked, 2 deterministic, 1 nondeterministic",
        "offender:",
        "  test_audit_a.py::test_cache_dependent: cache-variant: call 1 diverges at token 1 without a KV cache",
        "factor matrix (=: same tokens, N: the first diverging token, n/a: not applicable):",
        "  test                                   cache",
        "  test_audit_a.py::test_cache_dependent  1",
        "  test_audit_a.py::test_plain            =",
        "  test_audit_b.py::test_other            =",
        "margins at the divergences, the largest recorded margin first*",
        "  test_audit_a.py::test_cache_dependent cache: call 1 token 1: margin * with the cache, * without",
        "generations: 3 (*s)",  # one run each: --llm-factors alone re-runs nothing
    ])


def test_bad_factor_names_are_usage_errors_that_name_the_allowed_ones(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.llm_determinism(factors=["cache", "kv"])
        def test_typo():
            pass

        @pytest.mark.llm_determinism(factors="cache")
        def test_string_is_a_comma_list():
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*pytest-llmdet: usage: @pytest.mark.llm_determinism(runs=N, batch=False), with N >= 1; batch=True or a "
        "batch size >= 2; factors=[[]...[]]: \"all\" or a list of batch, cache, static-cache, prefix-cache, "
        "attention, threads, dtype; got factors=[[]'cache', 'kv'[]]: unknown factor(s) kv; allowed values: all, or "
        "a comma list of batch, cache, static-cache, prefix-cache, attention, threads, dtype",
    ])
    result = pytester.runpytest("--llm-factors", "cache,prefix_cache")
    result.stderr.fnmatch_lines([
        "*bad value 'cache,prefix_cache' for --llm-factors; unknown factor(s) prefix_cache; allowed values: all, or "
        "a comma list of batch, cache, static-cache, prefix-cache, attention, threads, dtype",
    ])
    pytester.makeini("[pytest]\nllm_factors = thread\n")
    result = pytester.runpytest()
    result.stderr.fnmatch_lines(["*bad value 'thread' for llm_factors in *; unknown factor(s) thread; *"])


def test_a_factor_the_model_cannot_apply_is_not_applicable_with_the_reason(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.llm_determinism(runs=1, factors=["cache", "static-cache", "dtype"])
        def test_own_settings(llm):
            llm.generate("Once upon a time", max_new_tokens=4, use_cache=False)
        """
    )
    result = pytester.runpytest("--llm-dtype", "bfloat16")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "  test_*.py::test_own_settings  n/a    n/a           n/a",
        "not applicable:",
        "  cache (test_*.py::test_own_settings): the call generates without a KV cache already (use_cache=False)",
        "  static-cache (test_*.py::test_own_settings): the call generates without a KV cache already "
        "(use_cache=False)",
        "  dtype (test_*.py::test_own_settings): the model is loaded in bfloat16 already; load it in float32 to "
        "measure this sensitivity",
    ])


# -- the real case: eager vs sdpa attention in bfloat16 on the embedded model ------------------------------

FORCE_NO_ATTENTION_DIVERGENCE = "LLMDET_TEST_FORCE_NO_ATTENTION_DIVERGENCE"
REAL_PROMPTS = ["The fox and the crow", "She opened the door and", "The king said", "In the morning",
                "A long time ago", "Once upon a time"]
REAL_NEW_TOKENS = 24


def plain_attention_divergences(prompts: list[str]) -> dict[int, int]:
    """With plain transformers, no plugin: for each prompt whose greedy tokens with eager attention differ from
    those with sdpa, the embedded model in bfloat16 (its repetition_penalty kept, as the plugin keeps it), its
    index -> the first token that differs."""
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_DIR, dtype=torch.bfloat16).eval()
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=REAL_NEW_TOKENS, repetition_penalty=1.05,
                              bos_token_id=0, eos_token_id=[2, 0], pad_token_id=0)
    divergences = {}
    for index, prompt in enumerate(prompts):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        outputs = {}
        for implementation in ("sdpa", "eager"):
            model.set_attn_implementation(implementation)
            with torch.inference_mode():
                outputs[implementation] = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                         generation_config=config)[0, ids.shape[1]:].tolist()
        sdpa, eager = outputs["sdpa"], outputs["eager"]
        if sdpa != eager:
            divergences[index] = next((i for i, (a, b) in enumerate(zip(sdpa, eager, strict=False)) if a != b),
                                      min(len(sdpa), len(eager)))
    return divergences


def test_the_attention_factor_finds_the_real_bf16_eager_sdpa_divergence_where_this_cpu_has_one(pytester):
    """eager and sdpa attention sum in other orders; in bfloat16 that flips near-ties of the embedded model on
    some CPUs (9 of 20 prompts on an AVX-512-BF16 EPYC). Plain transformers asks this CPU first; where it shows
    no divergence the test is skipped, saying so. LLMDET_TEST_FORCE_NO_ATTENTION_DIVERGENCE=1 forces the skip."""
    if os.environ.get(FORCE_NO_ATTENTION_DIVERGENCE) == "1":
        pytest.skip(f"this CPU shows no bf16 eager/sdpa divergence with plain transformers: forced by "
                    f"{FORCE_NO_ATTENTION_DIVERGENCE}=1")
    divergences = plain_attention_divergences(REAL_PROMPTS)
    if not divergences:
        pytest.skip(f"this CPU shows no bf16 eager/sdpa divergence with plain transformers: each of the "
                    f"{len(REAL_PROMPTS)} prompts gave the same {REAL_NEW_TOKENS} greedy tokens with both")
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.llm_determinism(runs=1, factors=["attention"])
        def test_bf16(llm):
            for prompt in {REAL_PROMPTS!r}:
                llm.generate(prompt, max_new_tokens={REAL_NEW_TOKENS})
        """
    )
    result = pytester.runpytest("--llm-dtype", "bfloat16")
    result.assert_outcomes(failed=1)
    first = min(divergences.values())
    result.stdout.fnmatch_lines([
        "pytest-llmdet: the tokens of this test changed under attention",
        f"  test_*.py::test_bf16  {first}",
    ])
    report = result.stdout.str().split("short test summary info")[0]  # with CI set, pytest repeats it there
    reported = {(int(call) - 1, int(token)) for call, token in re.findall(
        r"^attention-variant: call (\d+) of \d+ .*\n  first divergence at token (\d+):", report, re.M)}
    assert reported == set(divergences.items())  # the calls, and the tokens, plain transformers found
