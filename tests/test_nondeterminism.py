"""The re-run check for nondeterminism: `@pytest.mark.llm_determinism`, `--llm-check-determinism`, the batch
probe, and how they work together with the golden-file gate and pytest-xdist."""

import json
import os
import re
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

# A forward hook that adds noise from os.urandom to the logits: nothing that seeding can reach. A little
# (1e-4, far below the margins) on the first three steps, then so much that the fourth token is random.
NOISY_MODEL = """
import os
import torch

def add_urandom_noise(model):
    steps = []

    def hook(module, args, output):
        steps.append(1)
        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
        scale = 1e-4 if len(steps) <= 3 else 1e3
        output.logits = output.logits + scale * torch.randn(output.logits.shape, generator=generator)
        return output

    return model.register_forward_hook(hook)


def generate_with_noise(llm, prompt, max_new_tokens):
    handle = add_urandom_noise(llm.model)
    try:
        return llm.generate(prompt, max_new_tokens=max_new_tokens)
    finally:
        handle.remove()
"""


def test_a_deterministic_model_passes_after_full_reruns_with_fresh_fixtures_and_seeds(pytester):
    pytester.makepyfile(
        """
        import random
        import pytest

        EVENTS = []

        @pytest.fixture(scope="module")
        def shared():
            EVENTS.append("module setup")
            yield
            EVENTS.append("module teardown")

        @pytest.fixture
        def per_run():
            EVENTS.append("setup")
            yield
            EVENTS.append("teardown")

        @pytest.mark.llm_determinism
        def test_story(shared, per_run, llm):
            EVENTS.append(random.random())
            llm.generate("Once upon a time", max_new_tokens=8)
            llm.generate([{"role": "user", "content": "Tell me about the fox."}], max_new_tokens=8)
            assert len(llm.calls) == 2  # a fresh handle each run

        def test_runs_were_complete(shared):
            assert EVENTS[0] == "module setup" and EVENTS.count("module setup") == 1
            runs = EVENTS[1:]
            assert runs[0::3] == ["setup"] * 3 and runs[2::3] == ["teardown"] * 3
            assert len(set(runs[1::3])) == 1  # random was reseeded before each run
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*= llm determinism =*", "1 checked, 1 deterministic, 0 nondeterministic",
                                 "*= llm =*", "generations: 6 (*s)"])


def test_logit_noise_from_os_urandom_fails_with_the_divergence_report(pytester):
    pytester.makeconftest(NOISY_MODEL)
    pytester.makepyfile(
        """
        import pytest
        from conftest import generate_with_noise

        @pytest.mark.llm_determinism(runs=3)
        def test_noisy(llm):
            llm.generate("Hello", max_new_tokens=4)
            generate_with_noise(llm, "Once upon a time", 24)
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "pytest-llmdet: 3 runs of this test did not generate the same tokens",
        "nondeterministic: call 2 of 2 ('Once upon a time'): 3 runs gave [23] distinct outputs",
        "  first divergence at token 3: run 1 gave * '*' (margin *), run [23] gave * '*' (margin *)",
        "  largest |Δ logprob| of the chosen token before the divergence: *",
        "known causes: batch composition and padding, thread count, dtype*",
        "*= llm determinism =*",
        "1 checked, 0 deterministic, 1 nondeterministic",
        "offender:",
        "  *.py::test_noisy: call 2 diverges at token 3; [23] distinct outputs in 3 runs",
    ])
    output = result.stdout.str()
    report = output.split("short test summary info")[0]  # with CI set, pytest repeats the message there
    assert "call 1 of 2" not in output and report.count("first divergence at token") == 1
    delta = float(output.split("before the divergence: ")[1].split()[0])
    assert 0 < delta < 1e-2  # the little noise of the first three tokens, and nothing else


def test_a_prompt_built_from_the_clock_fails_and_says_the_prompt_differed(pytester):
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.mark.llm_determinism(runs=2)
        def test_clock(llm):
            llm.generate(f"The time is {time.perf_counter_ns()}.", max_new_tokens=4)
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "pytest-llmdet: 2 runs of this test did not generate the same tokens",
        "nondeterministic input: the prompt of call 1 of 1 ('The time is *.') differed between runs: "
        "the test's own input is not reproducible (is it built from the clock or an unseeded random source?)",
        "  run 1 prompt: 'The time is *.'",
        "  run 2 prompt: 'The time is *.'",
        "*the prompt of call 1 changed between runs",
    ])


def test_a_real_failure_is_reported_as_is_and_stops_the_runs(pytester):
    pytester.makepyfile(
        test_a="""
        import pytest

        RUNS = []

        @pytest.fixture(scope="module")
        def shared():
            yield
            RUNS.append("module teardown")

        @pytest.mark.llm_determinism(runs=4)
        def test_second_run_fails(shared, llm):
            RUNS.append("run")
            llm.generate("Hello", max_new_tokens=2)
            assert RUNS.count("run") < 2, "the second run fails"
        """,
        test_b="""
        from test_a import RUNS

        def test_after():
            assert RUNS == ["run", "run", "module teardown"]
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: the second run fails*", "*= llm determinism =*",
                                 "1 not checked: failed or skipped before all runs completed*"])
    assert "pytest-llmdet:" not in result.stdout.str()


def test_check_determinism_audits_every_test_that_uses_llm(pytester):
    pytester.makeconftest(NOISY_MODEL)
    pytester.makepyfile(
        """
        from conftest import generate_with_noise

        def test_plain():
            pass

        def test_story(llm):
            llm.generate("Once upon a time", max_new_tokens=8)

        def test_noisy(llm):
            generate_with_noise(llm, "The fox", 24)
        """
    )
    pytester.runpytest().assert_outcomes(passed=3)
    result = pytester.runpytest("--llm-check-determinism", "--llm-determinism-runs", "2")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*nondeterministic: call 1 of 1 ('The fox'): 2 runs gave 2 distinct outputs",
        "2 checked, 1 deterministic, 1 nondeterministic",
        "offender:",
        "  *::test_noisy: call 1 diverges at token *",
        "generations: 4 (*s)",
    ])


def test_the_marker_is_registered_and_bad_arguments_error_that_test(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.llm_determinism(rnus=2)
        def test_typo():
            pass
        """
    )
    result = pytester.runpytest("--strict-markers")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*pytest-llmdet: usage: @pytest.mark.llm_determinism(runs=N, batch=False)*"
                                 "unknown: rnus"])
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.llm_determinism(runs=None, batch=False, factors=None): run this test*"])
    result = pytester.runpytest("--llm-determinism-runs", "0")
    result.stderr.fnmatch_lines(["*bad value '0' for --llm-determinism-runs; allowed values: an integer >= 1"])
    result = pytester.runpytest("-p", "no:llmdet", "--llm-check-determinism")
    result.stderr.fnmatch_lines(["*unrecognized arguments: --llm-check-determinism*"])


SNAPSHOT_SUITE = """
import pytest

@pytest.mark.llm_determinism
def test_story(llm, llm_snapshot):
    assert llm.generate("Once upon a time", max_new_tokens=12) == llm_snapshot
    assert llm.generate("The fox", max_new_tokens=6) == llm_snapshot(name="fox")
"""


def test_with_the_snapshot_gate_the_golden_comparison_happens_on_the_first_run_only(pytester):
    pytester.makepyfile(test_gate=SNAPSHOT_SUITE)
    result = pytester.runpytest("--llm-snapshot-update")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["1 checked, 1 deterministic, 0 nondeterministic",
                                 "0 passed, 0 failed, 2 written, 0 updated, 0 deleted, 0 unused"])
    golden = pytester.path / "__llm_snapshots__/test_gate"
    (path,) = golden.glob("*.json")
    assert set(json.loads(path.read_text())["snapshots"]) == {"0", "fox"}
    before = path.read_bytes()

    result = pytester.runpytest("--llm-snapshot")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused",
                                 "generations: 6 (*s)"])
    result = pytester.runpytest("--llm-snapshot-update")  # a full update run deletes nothing it used
    result.stdout.fnmatch_lines(["2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    assert path.read_bytes() == before


def test_under_xdist_the_gate_and_the_summary_work(pytester):
    pytest.importorskip("xdist")
    pytester.makeconftest(NOISY_MODEL)
    pytester.makepyfile(test_gate=SNAPSHOT_SUITE)
    pytester.makepyfile(
        test_more="""
        from conftest import generate_with_noise

        def test_greeting(llm):
            llm.generate("Hello", max_new_tokens=8)

        def test_noisy(llm):
            generate_with_noise(llm, "The fox", 24)
        """
    )
    pytester.runpytest("--llm-snapshot-update", "-k", "test_story").assert_outcomes(passed=1)
    result = pytester.runpytest_subprocess("-n", "2", "--llm-snapshot", "--llm-check-determinism")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*= llm determinism =*",
        "3 checked, 2 deterministic, 1 nondeterministic",
        "offender:",
        "  test_more.py::test_noisy: call 1 diverges at token 3; [23] distinct outputs in 3 runs",
        "*= llm snapshots =*",
        "2 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused",
    ])


# -- the batch probe ----------------------------------------------------------------------------------------

# Found by trying seeds and prompts: with these random weights, in bfloat16, on a CPU with AVX-512-BF16,
# several of these prompts give other tokens as row 0 of a left-padded batch of 4 than alone. How a CPU rounds
# bf16 decides it (an AVX2-only one may give the same tokens), so the test that uses them checks first.
BATCH_MODEL_SEED = 5
BATCH_PROMPTS = ["Alice was beginning to get very tired", "The cat sat on the mat", "The fox and the crow",
                 "She opened the door and"]


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (and <|endoftext|>), built in code: the test owns its token IDs."""
    vocab = {"<|endoftext|>": 0}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def random_tiny_qwen2(path: Path, seed: int) -> Path:
    """A random-weight Qwen2 of 2 layers and hidden size 64, the same for a given seed."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=257, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.1, bos_token_id=0, eos_token_id=0,
                         pad_token_id=0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model.save_pretrained(path)
    byte_level_tokenizer().save_pretrained(path)
    return path


BATCH_REPORT_LINES = [
    "pytest-llmdet: 2 runs of this test agreed, but the batch probe found batch-dependent outputs",
    "batch-variant: call ? of 4 (*) alone vs in a left-padded batch of 4",
    "  first divergence at token *: alone gave * (margin *), in the batch gave * (margin *)",
    "  largest |Δ logprob| of the chosen token before the divergence: *",
]

# A model whose output depends on the batch, whatever the CPU: a forward hook adds nothing to the logits of a
# batch of 1, and to those of each decoding step of a larger batch 100 x a permutation of 0..vocab-1 seeded by
# the batch size. The permutation is integers from torch's Mersenne Twister, the same on every machine; its
# steps of 100 outweigh the model's own logits, so from token 1 on a batch row takes the token the permutation
# ranks first, not what the model gives alone. (Token 0 comes from the prompt's forward pass, left alone, so
# the report has a token before the divergence.) Another hook records the batch size of every forward pass, to
# show that the probe ran while the test's fixtures were still set up.
BATCH_DEPENDENT_MODEL = """
import pytest
import torch

FORWARD_BATCH_SIZES = {}  # test name -> the batch size of each forward pass of the model during that test


def add_batch_size_noise(module, args, kwargs, output):
    batch_size, width = kwargs["input_ids"].shape
    if batch_size > 1 and width == 1:  # a decoding step in a batch; the prompt's step gives token 0 unchanged
        generator = torch.Generator().manual_seed(batch_size)
        noise = torch.randperm(output.logits.shape[-1], generator=generator).to(output.logits.dtype)
        output.logits = output.logits + 100 * noise
    return output


@pytest.fixture
def forward_batch_sizes(request, llm):
    sizes = FORWARD_BATCH_SIZES.setdefault(request.node.name, [])
    handle = llm.model.register_forward_hook(lambda module, args, output: sizes.append(output.logits.shape[0]))
    yield sizes
    handle.remove()


@pytest.fixture
def batch_dependent_llm(llm, forward_batch_sizes):
    handle = llm.model.register_forward_hook(add_batch_size_noise, with_kwargs=True)
    yield llm
    handle.remove()
"""


def test_the_batch_probe_finds_a_batch_dependent_model_and_stays_quiet_on_a_plain_one(pytester):
    pytester.makeconftest(BATCH_DEPENDENT_MODEL)
    pytester.makepyfile(
        """
        import pytest
        from conftest import FORWARD_BATCH_SIZES

        # Margins of 0.19 and more with the embedded model in float32: far above what float32 rounding can
        # move, so the plain model gives the same tokens alone and in a batch on any CPU.
        PROMPTS = ["Once upon a time", "The fox", "The cat sat on the mat", "Alice was beginning to get very tired"]

        @pytest.mark.llm_determinism(runs=2, batch=True)
        def test_batch_dependent(batch_dependent_llm):
            for prompt in PROMPTS:
                batch_dependent_llm.generate(prompt, max_new_tokens=16)

        @pytest.mark.llm_determinism(runs=2, batch=True)
        def test_plain(llm, forward_batch_sizes):
            generations = [llm.generate(prompt, max_new_tokens=16) for prompt in PROMPTS]
            assert min(margin for g in generations for margin in g.margins) > 0.01

        def test_both_were_probed_with_their_fixtures_set_up():
            assert set(FORWARD_BATCH_SIZES) == {"test_batch_dependent", "test_plain"}
            for sizes in FORWARD_BATCH_SIZES.values():
                assert set(sizes) == {1, 4} and sizes.count(4) >= len(PROMPTS)
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*_ test_batch_dependent _*",
        *BATCH_REPORT_LINES,
        "2 checked, 1 deterministic, 1 nondeterministic",
        "  *::test_batch_dependent: batch-variant: call ? diverges at token * in a left-padded batch of 4",
    ])
    output = result.stdout.str()
    assert "test_plain _" not in output and "test_both_were_probed" not in output
    report = output.split("short test summary info")[0]  # with CI set, pytest repeats the message there
    assert report.count("\nbatch-variant: call ") == 4 and report.count("first divergence at token 1:") == 4
    deltas = [float(part.split()[0]) for part in report.split("before the divergence: ")[1:]]
    assert len(deltas) == 4 and max(deltas) < 1e-2  # token 0 is the model's own, in the batch as alone


FORCE_NO_BF16_DIVERGENCE = "LLMDET_TEST_FORCE_NO_BF16_DIVERGENCE"
BF16_NEW_TOKENS = 16


def plain_bf16_batch_divergences(model_dir: Path, prompts: list[str]) -> dict[int, int]:
    """With plain transformers, no plugin: for each prompt whose greedy tokens alone differ from its tokens as
    row 0 of a left-padded batch of 4 with the model in bfloat16, its index -> the first token that differs.

    The batch is laid out as the batch probe lays it out (with its own helpers, which generate nothing): the
    pre-check asks this CPU the probe's question, without the plugin's generate."""
    from pytest_llmdet.determinism.probe import COMPANION_TEXTS, companions
    from pytest_llmdet.engines.transformers import left_pad
    from pytest_llmdet.markers import DEFAULT_BATCH_SIZE

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=BF16_NEW_TOKENS, eos_token_id=0,
                              pad_token_id=0, bos_token_id=0)
    encoded = [list(tokenizer(text)["input_ids"]) for text in COMPANION_TEXTS]
    limit = model.config.max_position_embeddings - BF16_NEW_TOKENS
    divergences = {}
    for index, prompt in enumerate(prompts):
        ids = list(tokenizer(prompt)["input_ids"])
        rows, mask = left_pad([ids, *companions(ids, encoded, DEFAULT_BATCH_SIZE, limit)], pad_id=ids[0])
        with torch.inference_mode():
            alone = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)).long(),
                                   generation_config=config)[0, len(ids):].tolist()
            batched = model.generate(input_ids=torch.tensor(rows), attention_mask=torch.tensor(mask),
                                     generation_config=config)[0, len(rows[0]):].tolist()
        if 0 in batched:  # alone, generation stops at EOS; in the batch, the row goes on with padding
            batched = batched[:batched.index(0) + 1]
        if alone != batched:
            divergences[index] = next((i for i, (a, b) in enumerate(zip(alone, batched, strict=False)) if a != b),
                                      min(len(alone), len(batched)))
    return divergences


def test_the_batch_probe_finds_a_real_bf16_divergence_where_this_cpu_has_one(pytester, tmp_path):
    """The real case: a random tiny Qwen2 in bfloat16 gives other tokens for some prompts as row 0 of a
    left-padded batch than alone, on CPUs whose bf16 matmuls round differently for another shape (one with
    AVX-512-BF16 does; an AVX2-only one may not). First, plain transformers asks this CPU whether it shows such
    a divergence at all; where it does not, the test is skipped, saying so.

    Set LLMDET_TEST_FORCE_NO_BF16_DIVERGENCE=1 to make that pre-check report no divergence, and so exercise
    the skip on any CPU."""
    if os.environ.get(FORCE_NO_BF16_DIVERGENCE) == "1":
        pytest.skip(f"this CPU shows no bf16 batch divergence with plain transformers: forced by "
                    f"{FORCE_NO_BF16_DIVERGENCE}=1")
    model = random_tiny_qwen2(tmp_path / "random-qwen2", BATCH_MODEL_SEED)
    divergences = plain_bf16_batch_divergences(model, BATCH_PROMPTS)
    if not divergences:
        pytest.skip(f"this CPU shows no bf16 batch divergence with plain transformers: each of the "
                    f"{len(BATCH_PROMPTS)} prompts gave the same {BF16_NEW_TOKENS} greedy tokens alone and as row 0 "
                    f"of a left-padded batch of 4")
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.llm_model({str(model)!r}, dtype="bfloat16")
        @pytest.mark.llm_determinism(runs=2, batch=True)
        def test_bf16(llm):
            for prompt in {BATCH_PROMPTS!r}:
                llm.generate(prompt, max_new_tokens={BF16_NEW_TOKENS})
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*_ test_bf16 _*",
        *BATCH_REPORT_LINES[:3],
        "1 checked, 0 deterministic, 1 nondeterministic",
        "  *::test_bf16: batch-variant: call ? diverges at token * in a left-padded batch of 4",
    ])
    report = result.stdout.str().split("short test summary info")[0]  # with CI set, pytest repeats it there
    reported = {(int(call) - 1, int(token)) for call, token in
                re.findall(r"^batch-variant: call (\d+) of 4 .*\n  first divergence at token (\d+):", report, re.M)}
    assert reported == set(divergences.items())  # the calls, and the tokens, plain transformers found


def test_calls_the_batch_probe_skips_are_named_in_a_warning_when_the_test_passes(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.llm_determinism(runs=2, batch=True)
        def test_mixed(llm):
            llm.generate("Once upon a time", max_new_tokens=6)
            llm.generate("Once upon a time", max_new_tokens=6, no_repeat_ngram_size=3)
            llm.generate("Once upon a time", max_new_tokens=6, min_length=6)
            llm.generate("Once upon a time", max_new_tokens=6, do_sample=True, seed=1)
        """
    )
    result = pytester.runpytest("-W", "always")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines([
        "*LLMDetWarning: test_calls_the_batch_probe_skips*.py::test_mixed: "
        "call 2 not probed: no_repeat_ngram_size=3 takes the padding tokens for n-grams of the prompt, so a batch "
        "would change the output for that reason alone; only the runs are compared; "
        "call 3 not probed: min_length=6 counts the padding as part of the sequence*; "
        "call 4 not probed: a sampled call draws other random numbers inside a batch; only greedy calls are probed",
    ])
    assert "call 1 not probed" not in result.stdout.str()
