"""Variants: one golden entry per environment (device, dtype, CPU instruction set, engine), chosen exact match
first, keys that round-trip, and no environment ever replacing another's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sessions import (
    DEPENDENT,
    ONE_TEST,
    SNAPSHOTS,
    golden_files,
    rerecord_command,
    run,
    run_command,
    run_in_process_of_its_own,
    validate_report,
)

from pytest_llmdet.golden.format import GoldenEntry, GoldenFileError, loads

pytestmark = pytest.mark.usefixtures("only_this_plugin")


FABLES = """
import pytest

@pytest.mark.parametrize("prompt", ["The fox and the crow", "The lion and the mouse"])
def test_fable(llm, llm_snapshot, prompt):
    assert llm.generate(prompt) == llm_snapshot
"""


def _fable_goldens(root: Path) -> list[Path]:
    return sorted((root / "__llm_snapshots__/test_fables").glob("*.json"))


def test_a_float32_golden_with_a_bfloat16_variant_picks_the_right_one_in_each_dtype(pytester):
    from pytest_llmdet.engines.fingerprint import cpu_capability

    key = f"cpu:bfloat16:{cpu_capability()}"  # the variant key names this CPU's instruction set
    pytester.makepyfile(test_fables=FABLES)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    recorded = {p.name: json.loads(p.read_text()) for p in _fable_goldens(pytester.path)}

    # both outputs diverge in bfloat16 on CPU, so both get a variant (an output that matched would not)
    result = run(pytester, "--llm-snapshot-update", "--llm-snapshot-variant", "--llm-dtype", "bfloat16")
    result.stdout.fnmatch_lines(["0 passed, 0 failed, 0 written, 2 updated, 0 deleted, 0 unused"])
    for path in _fable_goldens(pytester.path):
        data = json.loads(path.read_text())
        old = recorded[path.name]
        assert data["fingerprint"] == old["fingerprint"]  # still the default's: float32
        variants = data["snapshots"]["0"].pop("variants")
        assert data["snapshots"] == old["snapshots"]  # the default is untouched
        assert list(variants) == [key] and variants[key]["token_ids"] != \
            old["snapshots"]["0"]["token_ids"]
    with_variant = golden_files(pytester.path)

    result = run(pytester, "--llm-snapshot", "--llm-snapshot-details", "--llm-report=f32.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*passed  test_fables.py::test_fable?The fox and the crow? ?0?  "
                                 f"*(compared with the default (cpu:float32:{cpu_capability()}))"])
    result = run(pytester, "--llm-snapshot", "--llm-snapshot-details", "--llm-dtype", "bfloat16",
                 "--llm-report=bf16.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*passed  test_fables.py::test_fable?The lion and the mouse? ?0?  "
                                 f"*(compared with variant {key})"])
    for report, variant in (("f32.json", None), ("bf16.json", key)):
        data = json.loads((pytester.path / report).read_text())
        validate_report(data)
        assert [s["variant"] for s in data["snapshots"]] == [variant, variant]
    run(pytester, "--llm-snapshot-update", "--llm-snapshot-variant", "--llm-dtype", "bfloat16").assert_outcomes(
        passed=2)
    assert golden_files(pytester.path) == with_variant  # nothing changed: no byte rewritten

    # a changed variant fails only in its own dtype, and the report names it
    fox = _fable_goldens(pytester.path)[0]
    data = json.loads(fox.read_text())
    data["snapshots"]["0"]["variants"][key]["token_ids"][3] += 1
    fox.write_text(json.dumps(data))
    run(pytester, "--llm-snapshot").assert_outcomes(passed=2)
    result = run(pytester, "--llm-snapshot", "--llm-dtype", "bfloat16")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*assert output differs from snapshot '0' in *test_fable*.json, variant {key}",
                                 "*first divergence at token 3 of 32*"])
    assert "the environment differs" not in result.stdout.str()  # the variant was recorded in bf16

    result = run(pytester, "--llm-snapshot", "--llm-snapshot-variant")
    result.stderr.fnmatch_lines(["*--llm-snapshot-variant records a variant, so it needs --llm-snapshot-update*"])


def test_variants_are_chosen_exact_match_first_then_same_device_type_then_default():
    from pytest_llmdet.golden.variants import Environment, choose_variant

    keys = ["cuda:bfloat16", "cuda:float16:8.0", "cpu:bfloat16"]
    default = Environment("cpu", "float32")
    chosen = {env: choose_variant(keys, default, Environment(*env.split(":")))
              for env in ("cuda:float16:8.0", "cuda:float16:9.0", "cuda:float32:8.0", "cpu:float32", "cpu:bfloat16",
                          "cpu:float16", "mps:float32")}
    assert chosen == {
        "cuda:float16:8.0": "cuda:float16:8.0",  # exact
        "cuda:float16:9.0": "cuda:float16:8.0",  # same device type and dtype, another GPU generation
        "cuda:float32:8.0": "cuda:bfloat16",  # same device type: the first such key
        "cpu:float32": None,  # the default was recorded here
        "cpu:bfloat16": "cpu:bfloat16",
        "cpu:float16": None,  # the default and cpu:bfloat16 share only the device type: the default wins
        "mps:float32": None,
    }


@pytest.mark.parametrize("engine", ["transformers", "vllm", "openai"])
def test_every_variant_key_round_trips_and_reads_back_from_a_golden_file(engine):
    from pytest_llmdet.golden.format import dumps
    from pytest_llmdet.golden.variants import Environment

    keys = []
    for device in ("cpu", "cuda", "mps", "server"):
        for dtype in ("float32", "bfloat16", "float16", "unknown"):
            for capability in (None, "avx2", "avx512", "default", "8.0", "9.0"):
                environment = Environment(device, dtype, capability, engine)
                assert Environment.parse(environment.key) == environment
                keys.append(environment.key)
    entry = GoldenEntry("x", token_ids=[1], margins=[0.5], prompt="p", prompt_sha256="h", finish_reason="length",
                        settings={})
    entry.variants = {key: GoldenEntry("y", token_ids=[2], margins=[0.5], prompt="p", prompt_sha256="h",
                                       finish_reason="length", settings={}) for key in keys}
    from pytest_llmdet.golden.format import GoldenFile

    text = dumps(GoldenFile("t.py::test", {}, {"0": entry}))
    assert sorted(loads(text.encode(), "golden").snapshots["0"].variants) == sorted(keys)


@pytest.mark.parametrize("key", ["cpu", "cpu:", "/cpu:float32", "vllm/", "a b/cpu:float32", "cpu:float32:8.0:x"])
def test_a_malformed_variant_key_is_refused_naming_the_key_and_the_form(key):
    data = {"format_version": 1, "test": "t.py::test", "fingerprint": {}, "snapshots": {"0": {
        "text_lines": ["x"], "variants": {key: {"text_lines": ["y"]}}}}}
    with pytest.raises(GoldenFileError) as error:
        loads(json.dumps(data).encode(), "golden.json")
    assert repr(key) in str(error.value) and "[<engine>/]<device type>:<dtype>[:<capability>]" in str(error.value)


CAPABILITY_DEPENDENT = """
import pytest
import torch


@pytest.fixture(autouse=True)
def capability_dependent(request):
    # torch's default kernels (an older CPU) give other tokens, as bfloat16 does across instruction sets
    if "llm" not in request.fixturenames:
        yield
        return
    llm = request.getfixturevalue("llm")

    def hook(module, args, output):
        if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
            output.logits[..., 7] += 50.0
        return output

    handle = llm.model.register_forward_hook(hook)
    yield
    handle.remove()
"""


def test_two_cpus_each_record_their_variant_once_and_then_neither_rewrites(pytester):
    from pytest_llmdet.engines.fingerprint import cpu_capability

    native = cpu_capability()
    if native == "default":
        pytest.skip("torch runs its default CPU kernels here already: no second instruction set to compare")
    pytester.makeconftest(CAPABILITY_DEPENDENT)
    pytester.makepyfile(test_story=ONE_TEST)
    older = {"ATEN_CPU_CAPABILITY": "default"}

    def on(env, *args):  # this CPU's kernels in this process; the older ones in a process of their own
        return run_in_process_of_its_own(pytester, env, *args) if env else run(pytester, *args)

    on({}, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = pytester.path / SNAPSHOTS / "test_story" / "test_story.json"
    assert json.loads(golden.read_text())["fingerprint"]["cpu_capability"] == native
    check = on(older, "--llm-snapshot")
    check.assert_outcomes(failed=1)
    check.stdout.fnmatch_lines([f"*the environment differs from the one recorded*cpu_capability: {native} → default*",
                                f"*recorded in cpu:float32:{native}, compared in cpu:float32:default: to keep the "
                                "outputs of both, record this environment's variant instead: *--llm-snapshot-variant*"])
    on(older, "--llm-snapshot-update", "--llm-snapshot-variant").stdout.fnmatch_lines(
        ["0 passed, 0 failed, 0 written, 1 updated, 0 deleted, 0 unused"])
    data = json.loads(golden.read_text())
    assert list(data["snapshots"]["0"]["variants"]) == ["cpu:float32:default"]
    assert data["fingerprint"]["cpu_capability"] == native  # the default stays this machine's
    recorded = golden_files(pytester.path)
    for env in ({}, older):
        on(env, "--llm-snapshot").assert_outcomes(passed=1)
        on(env, "--llm-snapshot-update").stdout.fnmatch_lines(["1 passed, 0 failed, 0 written, 0 updated*"])
        on(env, "--llm-snapshot-update", "--llm-snapshot-variant").assert_outcomes(passed=1)
    assert golden_files(pytester.path) == recorded

    # a plain update of the exact variant replaces it, and keeps the file's fingerprint: the default's CPU
    data["snapshots"]["0"]["variants"]["cpu:float32:default"]["token_ids"][0] += 1
    golden.write_text(json.dumps(data))
    on(older, "--llm-snapshot-update").stdout.fnmatch_lines(["*0 written, 1 updated*"])
    assert json.loads(golden.read_text())["fingerprint"]["cpu_capability"] == native
    assert golden_files(pytester.path) == recorded


DTYPE_DEPENDENT = DEPENDENT.replace("{torch.get_num_threads()}|{torch.initial_seed()}|{module.name_or_path}", "")


def test_a_plain_update_never_replaces_another_environments_entry(pytester):
    pytester.makeconftest(DTYPE_DEPENDENT)
    pytester.makepyfile(test_story=ONE_TEST)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    run(pytester, "--llm-snapshot-update", "--llm-snapshot-variant", "--llm-dtype", "bfloat16").assert_outcomes(
        passed=1)
    path = pytester.path / SNAPSHOTS / "test_story" / "test_story.json"
    data = json.loads(path.read_text())
    default = data["snapshots"]["0"]["token_ids"]
    (key,) = data["snapshots"]["0"]["variants"]
    # as an older pytest-llmdet wrote it: no capability in the key or the fingerprint; then the bf16 output changed
    data["fingerprint"].pop("cpu_capability")
    variant = data["snapshots"]["0"]["variants"].pop(key)
    variant["token_ids"][1] += 1
    data["snapshots"]["0"]["variants"]["cpu:bfloat16"] = variant
    path.write_text(json.dumps(data))
    check = run(pytester, "--llm-snapshot", "--llm-dtype", "bfloat16")
    check.assert_outcomes(failed=1)
    run_command(pytester, rerecord_command(check.stdout.str())).assert_outcomes(passed=1)
    after = json.loads(path.read_text())["snapshots"]["0"]
    assert after["token_ids"] == default and list(after["variants"]) == ["cpu:bfloat16"]  # the variant replaced
    run(pytester, "--llm-snapshot").assert_outcomes(passed=1)  # and the float32 gate still green
    run(pytester, "--llm-snapshot", "--llm-dtype", "bfloat16").assert_outcomes(passed=1)

    # a variant of another CPU compared here: the plain update adds this CPU's, leaving the default and that one
    data = json.loads(path.read_text())
    data["fingerprint"]["cpu_capability"] = "native-here"
    data["snapshots"]["0"]["variants"] = {"cpu:bfloat16:other-cpu": data["snapshots"]["0"]["variants"]["cpu:bfloat16"]}
    data["snapshots"]["0"]["variants"]["cpu:bfloat16:other-cpu"]["token_ids"][1] += 1
    path.write_text(json.dumps(data))
    check = run(pytester, "--llm-snapshot", "--llm-dtype", "bfloat16")
    check.assert_outcomes(failed=1)
    run_command(pytester, rerecord_command(check.stdout.str())).assert_outcomes(passed=1)
    after = json.loads(path.read_text())["snapshots"]["0"]
    assert after["token_ids"] == default
    assert sorted(after["variants"]) == sorted(["cpu:bfloat16:other-cpu", key])
