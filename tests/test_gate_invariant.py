"""The gate's promise: `pytest --llm-snapshot` passes exactly when `pytest --llm-snapshot-update` with the
same flags would write nothing, and a changed input (template, tokenizer, settings, weights, EOS set) is named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import copy_model
from sessions import ONE_TEST, SNAPSHOTS, golden_files, report, run

from pytest_llmdet.engines.sources import EMBEDDED_MODEL_DIR

pytestmark = pytest.mark.usefixtures("only_this_plugin")


SUITE = """
def test_plain(llm, llm_snapshot):
    assert llm.generate("The fox and the crow") == llm_snapshot

def test_chat(llm, llm_snapshot):
    assert llm.generate([{"role": "user", "content": "Tell me a story about a fox."}]) == llm_snapshot

def test_named(llm, llm_snapshot):
    assert llm.generate("Once upon a time", max_new_tokens=6) == llm_snapshot(name="a")
    assert llm.generate([{"role": "user", "content": "Hi"}], max_new_tokens=6) == llm_snapshot(name="b")
"""


def edit_template(model: Path) -> None:
    path = model / "chat_template.jinja"
    path.write_text(path.read_text(encoding="utf-8").replace("helpful assistant.", "helpful assistant!"),
                    encoding="utf-8")


def drop_a_merge(model: Path) -> None:
    # without its first merge ("h" + "e") the tokenizer splits "The" and "the" into more tokens
    path = model / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["model"]["merges"][0] == ["h", "e"]
    data["model"]["merges"] = data["model"]["merges"][1:]
    path.write_text(json.dumps(data), encoding="utf-8")


def stronger_penalty(model: Path) -> None:
    path = model / "generation_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["repetition_penalty"] = 1.1
    path.write_text(json.dumps(data), encoding="utf-8")


def perturb_weights(model: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(model / "model.safetensors")
    generator = torch.Generator().manual_seed(7)
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.dim() == 2:
            tensors[name] = tensor + 0.2 * tensor.std() * torch.randn(tensor.shape, generator=generator)
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})


# mutation: (what it changes in the model folder, the flags of both runs, whether it must fail the gate; None:
# either way, as this CPU rounds)
MUTATIONS = {
    "no change": (None, [], False),
    "chat template": (edit_template, [], True),
    "tokenizer": (drop_a_merge, [], True),
    "generation config": (stronger_penalty, [], True),
    "weights": (perturb_weights, [], True),
    "dtype": (None, ["--llm-dtype", "bfloat16"], None),
    "max_new_tokens": (None, ["--llm-max-new-tokens", "5"], True),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_gate_passes_exactly_when_an_update_would_write_nothing(pytester, mutation):
    model = copy_model(pytester.path / "model")
    pytester.makeini("[pytest]\nllm_model = model\nllm_max_new_tokens = 8\n")
    pytester.makepyfile(test_suite=SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=3)
    change, flags, must_fail = MUTATIONS[mutation]
    if change is not None:
        change(model)

    check = run(pytester, "--llm-snapshot", *flags, "--llm-report=check.json")
    before = golden_files(pytester.path)
    update = run(pytester, "--llm-snapshot-update", *flags)
    wrote_nothing = golden_files(pytester.path) == before
    assert (check.ret == 0) == wrote_nothing, (mutation, check.stdout.str(), update.stdout.str())
    if must_fail is not None:
        assert (check.ret != 0) == must_fail, check.stdout.str()
    if wrote_nothing:
        update.stdout.fnmatch_lines(["* 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    run(pytester, "--llm-snapshot", *flags).assert_outcomes(passed=3)  # and after the update, green
    changed = [s for s in report(pytester, "check.json")["snapshots"] if s["status"] != "passed"]
    if mutation in ("chat template", "tokenizer", "generation config", "max_new_tokens"):
        # a changed input fails with its own label, never near-tie or regression
        assert changed and all(s["divergence"]["input_changes"] for s in changed)
        labels = {(s["divergence"]["first_divergence"] or {}).get("label") for s in changed}
        assert labels <= {"input-changed", None}, labels


def test_a_changed_chat_template_names_the_prompt_tokens_and_the_templates_hashes(pytester):
    model = copy_model(pytester.path / "model")
    pytester.makeini("[pytest]\nllm_model = model\nllm_max_new_tokens = 8\n")
    pytester.makepyfile(test_suite=SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=3)
    recorded = json.loads((pytester.path / SNAPSHOTS / "test_suite" / "test_chat.json").read_text())["fingerprint"]
    assert {"tokenizer_sha256", "chat_template_sha256", "cpu_capability"} <= set(recorded)
    edit_template(model)

    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(passed=1, failed=2)  # the plain prompt has no chat template
    old = recorded["chat_template_sha256"]
    result.stdout.fnmatch_lines([
        "input of snapshot '0' in __llm_snapshots__/test_suite/test_chat.json changed",
        "input changed since the golden was recorded (its outputs are not compared as a regression):",
        f"  prompt tokens: prompt_sha256 * → prompt_sha256 * (chat_template_sha256: {old} → *)",
    ])
    assert "(near-tie" not in result.stdout.str() and "(regression" not in result.stdout.str()

    # an in-place change of the tokenizer is named the same way, by the tokenizer files' hash
    (model / "chat_template.jinja").write_bytes((EMBEDDED_MODEL_DIR / "chat_template.jinja").read_bytes())
    drop_a_merge(model)
    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([f"  prompt tokens: prompt_sha256 * → prompt_sha256 * (tokenizer_sha256: "
                                 f"{recorded['tokenizer_sha256']} → *)"])


def test_a_changed_setting_is_named_old_to_new(pytester):
    model = copy_model(pytester.path / "model")
    pytester.makeini("[pytest]\nllm_model = model\nllm_max_new_tokens = 8\n")
    pytester.makepyfile(test_suite=SUITE)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=3)
    stronger_penalty(model)
    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["E         input changed since the golden was recorded*",
                                 "E           setting repetition_penalty: 1.05 → 1.1"])


def test_weights_replaced_in_place_with_size_and_mtime_kept_are_hashed_again(pytester):
    model = copy_model(pytester.path / "model")
    pytester.makepyfile(test_story=ONE_TEST)
    args = ("-p", "pytest_llmdet.plugin", "-p", "cacheprovider", "--llm-model", "model")  # the hash cache on
    assert pytester.runpytest(*args, "--llm-snapshot-update").ret == 0
    assert pytester.runpytest(*args, "--llm-snapshot").ret == 0  # the cache is filled
    weights = model / "model.safetensors"
    info = weights.stat()
    original = weights.read_bytes()
    perturb_weights(model)
    assert len(weights.read_bytes()) == len(original)
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns))  # as cp -p, tar x or touch -r leave it
    result = pytester.runpytest(*args, "--llm-snapshot")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*the environment differs from the one recorded*weights_sha256: * → *"])


def test_a_changed_eos_set_is_named_in_the_environment_line(pytester):
    model = copy_model(pytester.path / "model")
    pytester.makeini("[pytest]\nllm_model = model\nllm_max_new_tokens = 8\n")
    pytester.makepyfile(test_story=ONE_TEST)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = json.loads((pytester.path / SNAPSHOTS / "test_story" / "test_story.json").read_text())
    assert golden["fingerprint"]["eos_token_ids"] == [0, 2]
    fourth = golden["snapshots"]["0"]["token_ids"][3]
    config = json.loads((model / "generation_config.json").read_text())
    config["eos_token_id"] = [2, 0, fourth]  # a token of the output now ends it
    (model / "generation_config.json").write_text(json.dumps(config))
    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*the environment differs from the one recorded*eos_token_ids: [[]0, 2] → "
                                 f"[[]{', '.join(map(str, sorted([0, 2, fourth])))}]*"])
