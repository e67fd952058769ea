"""The gate tells the truth: `pytest --llm-snapshot` passes exactly when `pytest --llm-snapshot-update` with the
same flags would write nothing; a changed input fails with its own label; every printed command does what it
says; labels and variants account for both margins and the CPU's instruction set."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import copy_model

from pytest_llmdet.engines.models import EMBEDDED_MODEL_DIR
from pytest_llmdet.golden.compare import compare_tokens
from pytest_llmdet.golden.format import GoldenEntry, GoldenFileError, loads
from pytest_llmdet.golden.render import render_comparison, text_diff

SNAPSHOTS = "__llm_snapshots__"
UPDATE_LINE = "If the change is intended, re-record with: "


@pytest.fixture(autouse=True)
def only_this_plugin(monkeypatch):
    """In-process runs load only pytest-llmdet (and what a test names with -p); no CI: pending files are kept."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)


@pytest.fixture(autouse=True)
def torch_threads():
    """A run with --llm-threads sets torch's thread count for the process: put it back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(pytester, *args: str):
    return pytester.runpytest("-p", "pytest_llmdet.plugin", "-p", "no:cacheprovider", *args)


def golden_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob(f"{SNAPSHOTS}/**/*.json"))}


def report(pytester, name: str = "report.json") -> dict:
    return json.loads((pytester.path / name).read_text(encoding="utf-8"))


def rerecord_command(output: str) -> str:
    """The one re-record command of the summary."""
    (line,) = [line for line in output.splitlines() if UPDATE_LINE in line]
    command = line.split(UPDATE_LINE, 1)[1]
    assert "; " not in command, command
    return command


def run_in_process_of_its_own(pytester, environment: dict[str, str], *args: str):
    """Run pytest in a fresh process with `environment` added (torch reads ATEN_CPU_CAPABILITY once, at import)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        return pytester.runpytest_subprocess("-p", "pytest_llmdet.plugin", "-p", "no:cacheprovider", *args)


def run_command(pytester, command: str):
    """Run a printed command verbatim (its NAME=value words as the environment, in a fresh process when it has
    any), with only the plugin loaded."""
    words = shlex.split(command)
    environment = {}
    while "=" in words[0] and not words[0].startswith("-"):
        name, _, value = words.pop(0).partition("=")
        environment[name] = value
    assert words[0] == "pytest", command
    if environment:
        return run_in_process_of_its_own(pytester, environment, *words[1:])
    return run(pytester, *words[1:])


# -- the invariant: green <=> an update would write nothing ---------------------------------------------------

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


# -- printed commands do what they say ------------------------------------------------------------------------

# A model whose tokens depend on each option a re-record command must repeat, on any hardware: a forward hook
# puts a large bonus on one token chosen from the dtype, torch's thread count and seed, and the model's folder.
DEPENDENT = """
import zlib

import pytest
import torch


@pytest.fixture(autouse=True)
def dependent(request):
    if "llm" not in request.fixturenames:
        yield
        return
    llm = request.getfixturevalue("llm")

    def hook(module, args, output):
        key = f"{module.dtype}|{torch.get_num_threads()}|{torch.initial_seed()}|{module.name_or_path}"
        token = zlib.crc32(key.encode()) % output.logits.shape[-1]
        output.logits[..., token] += 50.0
        return output

    handle = llm.model.register_forward_hook(hook)
    yield
    handle.remove()
"""

ONE_TEST = """
def test_story(llm, llm_snapshot):
    assert llm.generate("The fox and the crow", max_new_tokens=6) == llm_snapshot
"""


def _option_flags(pytester) -> dict[str, list[str]]:
    import torch

    other = copy_model(pytester.path / "other-model")
    return {
        "dtype": ["--llm-dtype", "bfloat16"],
        "model": ["--llm-model", str(other.relative_to(pytester.path))],
        "max_new_tokens": ["--llm-max-new-tokens", "4"],
        "seed": ["--llm-seed", "7"],
        "threads": ["--llm-threads", str(torch.get_num_threads() + 1)],
        "inherit_processors": ["--llm-inherit-processors", "false"],
        "compare": ["--llm-compare", "tolerant", "--llm-top-k", "3"],
        "ini override": ["-o", "llm_dtype=bfloat16"],
    }


@pytest.mark.parametrize("option", ["dtype", "model", "max_new_tokens", "seed", "threads", "inherit_processors",
                                    "compare", "ini override"])
def test_the_printed_rerecord_command_run_verbatim_makes_the_same_check_pass(pytester, option):
    pytester.makeconftest(DEPENDENT)
    pytester.makepyfile(test_story=ONE_TEST.replace(", max_new_tokens=6", "")
                        if option == "max_new_tokens" else ONE_TEST)
    import torch

    threads = torch.get_num_threads()  # each run starts as a fresh process would (in-process runs share torch)
    flags = _option_flags(pytester)[option]
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)  # recorded with the defaults
    if option == "compare":  # the comparison is no factor of the tokens: a changed golden fails the check
        _retokened(pytester.path / SNAPSHOTS / "test_story" / "test_story.json", ["0"])
    check = run(pytester, "--llm-snapshot", *flags)
    check.assert_outcomes(failed=1)
    command = rerecord_command(check.stdout.str())
    for word in flags:
        assert shlex.quote(word) in command.split(), (word, command)
    torch.set_num_threads(threads)
    run_command(pytester, command).assert_outcomes(passed=1)
    torch.set_num_threads(threads)
    run(pytester, "--llm-snapshot", *flags).assert_outcomes(passed=1)


def test_the_rerecord_command_carries_the_cpu_kernels_that_produced_the_output(pytester):
    from pytest_llmdet.engines.fingerprint import cpu_capability

    if cpu_capability() == "default":
        pytest.skip("torch runs its default CPU kernels here already: no other capability to choose")
    pytester.makeconftest(DEPENDENT.replace("{module.dtype}|", "{torch.backends.cpu.get_cpu_capability()}|"))
    pytester.makepyfile(test_story=ONE_TEST)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    check = run_in_process_of_its_own(pytester, {"ATEN_CPU_CAPABILITY": "default"}, "--llm-snapshot")
    check.assert_outcomes(failed=1)
    command = rerecord_command(check.stdout.str())
    assert command.startswith("ATEN_CPU_CAPABILITY=default pytest --llm-snapshot-update "), command
    run_command(pytester, command).assert_outcomes(passed=1)
    run_in_process_of_its_own(pytester, {"ATEN_CPU_CAPABILITY": "default"}, "--llm-snapshot").assert_outcomes(
        passed=1)


def test_a_rerecord_command_names_the_test_from_where_pytest_was_started(pytester):
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_story.py").write_text(ONE_TEST, encoding="utf-8")
    pytester.makeini("[pytest]\n")
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = pytester.path / "tests" / SNAPSHOTS / "test_story" / "test_story.json"
    data = json.loads(golden.read_text())
    data["snapshots"]["0"]["token_ids"][2] += 1
    golden.write_text(json.dumps(data))
    with _cwd(pytester.path / "tests"):
        check = run(pytester, "--llm-snapshot", "test_story.py")
        check.assert_outcomes(failed=1)
        command = rerecord_command(check.stdout.str())
        assert command.endswith(' "test_story.py::test_story"'), command  # not tests/test_story.py: run from here
        run_command(pytester, command).assert_outcomes(passed=1)


class _cwd:
    def __init__(self, path: Path) -> None:
        self.path, self.old = path, None

    def __enter__(self) -> None:
        self.old = os.getcwd()
        os.chdir(self.path)

    def __exit__(self, *exc) -> None:
        os.chdir(self.old)


def test_quoted_ids_reach_pytest_as_they_are():
    from pytest_llmdet.commands import quoted_id

    hostile = 't.py::test_x[$(touch /tmp/x)`id`"q"\\b]'
    shown = subprocess.run(["bash", "-c", f"printf %s {quoted_id(hostile)}"], capture_output=True, text=True)
    assert shown.stdout == hostile


def test_check_and_update_together_is_a_usage_error(pytester):
    pytester.makepyfile(test_story=ONE_TEST)
    for other in ("--llm-snapshot", "--llm-snapshot-review"):
        result = run(pytester, other, "--llm-snapshot-update")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*--llm-snapshot-update and {other} ask for opposite things*"])
    assert golden_files(pytester.path) == {}


# -- the review run --------------------------------------------------------------------------------------------

SEVERAL = """
def test_several(llm, llm_snapshot):
    assert llm.generate("The fox and the crow", max_new_tokens=6) == llm_snapshot(name="fox")
    assert llm.generate("The lion and the mouse", max_new_tokens=6) == llm_snapshot(name="lion")
    assert llm.generate("Once upon a time", max_new_tokens=6) == llm_snapshot(name="time")
"""


def _retokened(golden: Path, names: list[str]) -> None:
    data = json.loads(golden.read_text())
    for name in names:
        data["snapshots"][name]["token_ids"][1] += 1
    golden.write_text(json.dumps(data))


def test_a_review_run_compares_every_snapshot_and_after_accept_the_gate_passes(pytester, monkeypatch):
    from pytest_llmdet.review import main

    pytester.makepyfile(test_several=SEVERAL)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = pytester.path / SNAPSHOTS / "test_several" / "test_several.json"
    _retokened(golden, ["fox", "time"])
    monkeypatch.setenv("CI", "true")  # asked for explicitly, a review run keeps pending files in CI too
    before = golden_files(pytester.path)

    result = run(pytester, "--llm-snapshot-review")
    result.assert_outcomes(passed=1, errors=1)  # every comparison passed; the test fails at its end
    result.stdout.fnmatch_lines([
        "*2 snapshot(s) of test_several.py::test_several changed or missing (a review run compared each one and "
        "went on):",
        "*[[]fox] first divergence at token 1 (regression)*",
        "*[[]time] first divergence at token 1 (*",
        "*kept as pending in __llm_snapshots__/test_several/test_several.json.llmdet-pending; accept or reject "
        "them with: python -m pytest_llmdet review",
        "1 passed, 2 failed, 0 written, 0 updated, 0 deleted, 0 unused",
    ])
    assert golden_files(pytester.path) == before
    pending = json.loads(golden.with_name(golden.name + ".llmdet-pending").read_text())
    assert sorted(pending["snapshots"]) == ["fox", "time"]
    with _cwd(pytester.path):
        assert main(["accept"]) == 0
    run(pytester, "--llm-snapshot").assert_outcomes(passed=1)


def test_a_plain_check_stops_at_the_first_change_and_says_how_to_see_them_all(pytester):
    pytester.makepyfile(test_several=SEVERAL)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    _retokened(pytester.path / SNAPSHOTS / "test_several" / "test_several.json", ["fox", "time"])
    result = run(pytester, "--llm-snapshot")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["2 snapshot(s) not compared: their test failed before comparing them; "
                                 "pytest --llm-snapshot-review compares them all (and keeps each change pending):"])


# -- labels ----------------------------------------------------------------------------------------------------

def test_a_flip_is_a_near_tie_when_either_sides_margin_is_below_the_threshold():
    golden = GoldenEntry("abc", token_ids=[1, 2, 3], margins=[2.0, 0.125, 1.0], finish_reason="length")
    current_tie = compare_tokens(golden, [1, 9, 3], [2.0, 0.0, 1.0], "aXc", "length", near_tie=0.01)
    assert current_tie.divergence.label == "near-tie"
    lines = render_comparison(current_tie, golden, "aXc", [1, 9, 3], None, 0.01)
    assert lines[0] == ("first divergence at token 1 of 3 (near-tie: golden margin 0.1250, current margin 0.0000; "
                        "one below llm_near_tie 0.01)")
    both_clear = compare_tokens(golden, [1, 9, 3], [2.0, 0.5, 1.0], "aXc", "length", near_tie=0.01)
    assert both_clear.divergence.label == "regression"


def test_long_outputs_diff_in_lines_a_person_can_read():
    golden = " ".join(f"word{i}" for i in range(800))
    current = golden.replace("word400", "WORD400")
    diff = text_diff(golden, current)
    assert max(map(len, diff)) <= 121  # a +, - or space, then at most DIFF_WIDTH characters
    assert any(line.startswith("-") and "word400" in line for line in diff)
    assert any(line.startswith("+") and "WORD400" in line for line in diff)


def test_junit_xml_carries_the_text_diff_of_a_failed_snapshot(pytester):
    import xml.etree.ElementTree as ElementTree

    pytester.makepyfile(test_story=ONE_TEST)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = pytester.path / SNAPSHOTS / "test_story" / "test_story.json"
    data = json.loads(golden.read_text())
    data["snapshots"]["0"]["text_lines"] = ["an edited golden text"]
    golden.write_text(json.dumps(data))
    run(pytester, "--llm-snapshot", "--junitxml=junit.xml").assert_outcomes(failed=1)
    tree = ElementTree.parse(pytester.path / "junit.xml")
    properties = {p.get("name"): p.get("value") for p in tree.iter("property")}
    diff = properties["llm_snapshot[0] text diff"]
    assert "-an edited golden text" in diff.splitlines() and diff.splitlines()[0] == "--- golden"


# -- variant keys: one parser, one formatter --------------------------------------------------------------------

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


# -- CPUs differ, and variants say how ---------------------------------------------------------------------------

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


# -- nothing the review flow or a timeout does is lost or miscounted -----------------------------------------

HOLDER = """
import sys
from pathlib import Path
from pytest_llmdet.golden.locks import golden_lock

path = Path(sys.argv[1])
with golden_lock(path):
    print("locked", flush=True)
    sys.stdin.readline()
    if len(sys.argv) > 2:
        path.write_bytes(Path(sys.argv[2]).read_bytes())
"""


def hold_lock(golden: Path, replacement: Path | None = None) -> subprocess.Popen:
    """Another process holding `golden`'s lock (it writes `replacement` over it when told to let go)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(golden), *([str(replacement)] if replacement else [])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_accept_refuses_a_golden_file_that_another_process_replaced_while_it_waited_for_the_lock(
        pytester, monkeypatch, tmp_path):
    import filelock

    from pytest_llmdet.golden.pending import PendingConflict, accept, read_pending

    pytester.makepyfile(test_several=SEVERAL)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = pytester.path / SNAPSHOTS / "test_several" / "test_several.json"
    theirs = tmp_path / "theirs.json"
    _retokened(golden, ["fox"])
    theirs.write_bytes(golden.read_bytes())  # what a concurrent update writes
    _retokened(golden, ["fox"])
    run(pytester, "--llm-snapshot").assert_outcomes(failed=1)
    pending = read_pending(golden.with_name(golden.name + ".llmdet-pending"))

    holder = hold_lock(golden, theirs)
    waiting = threading.Event()
    acquire = filelock.FileLock.acquire

    def signalled(self, *args, **kwargs):
        waiting.set()  # accept is now at the lock: let the other process write and go
        return acquire(self, *args, **kwargs)

    monkeypatch.setattr(filelock.FileLock, "acquire", signalled)
    errors = []
    worker = threading.Thread(target=lambda: _catch(errors, lambda: accept(pending)))
    worker.start()
    assert waiting.wait(60)
    holder.communicate("go\n", timeout=60)
    worker.join(60)
    assert len(errors) == 1 and isinstance(errors[0], PendingConflict), errors
    assert golden.read_bytes() == theirs.read_bytes()  # the concurrent write stands


def _catch(errors: list, action) -> None:
    try:
        action()
    except Exception as error:  # noqa: BLE001 - the test inspects it
        errors.append(error)


INTERRUPTED = """
import filelock
import pytest


@pytest.fixture(autouse=True)
def interrupted_writes(monkeypatch):
    def timeout(self, *args, **kwargs):
        pytest.fail("Timeout (>4.0s) from pytest-timeout.")

    monkeypatch.setattr(filelock.FileLock, "acquire", timeout)
"""


def test_a_write_cut_off_by_any_exception_is_an_error_and_named_not_counted_as_updated(pytester):
    pytester.makepyfile(test_story=ONE_TEST)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = pytester.path / SNAPSHOTS / "test_story" / "test_story.json"
    _retokened(golden, ["0"])
    before = golden.read_bytes()
    pytester.makeconftest(INTERRUPTED)
    result = run(pytester, "--llm-snapshot-update", "--llm-report=report.json")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*golden file __llm_snapshots__/test_story/test_story.json was not written: the write was interrupted "
        "(Failed: Timeout (>4.0s) from pytest-timeout.)*",
        '*re-record with: pytest --llm-snapshot-update "test_story.py::test_story"',
        "0 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused, 1 error",
    ])
    assert golden.read_bytes() == before
    assert [s["status"] for s in report(pytester)["snapshots"]] == ["error"]


def test_a_write_timed_out_by_pytest_timeout_while_another_process_holds_the_lock_names_the_holder(pytester):
    pytest.importorskip("pytest_timeout")
    pytester.makepyfile(test_story="""
        import pytest

        def test_loads(llm):
            llm.generate("The fox", max_new_tokens=2)

        @pytest.mark.timeout(4)
        def test_story(llm, llm_snapshot):
            assert llm.generate("The fox and the crow", max_new_tokens=6) == llm_snapshot
        """)
    run(pytester, "-p", "pytest_timeout", "--llm-snapshot-update").assert_outcomes(passed=2)
    golden = pytester.path / SNAPSHOTS / "test_story" / "test_story.json"
    _retokened(golden, ["0"])
    before = golden.read_bytes()
    holder = hold_lock(golden)
    try:
        result = run(pytester, "-p", "pytest_timeout", "--llm-snapshot-update")
    finally:
        holder.communicate("go\n", timeout=60)
    result.stdout.fnmatch_lines([
        f"*was not written: the write was interrupted (Failed: Timeout*); while waiting for its lock, held by pid "
        f"{holder.pid} (*)*",
        "*0 written, 0 updated, 0 deleted, 0 unused, 1 error",
    ])
    assert golden.read_bytes() == before


def test_repetitions_compare_with_and_record_into_their_tests_own_golden(pytester):
    pytest.importorskip("pytest_repeat")
    pytester.makepyfile(test_story="""
        import pytest

        @pytest.mark.parametrize("prompt", ["The fox", "The lion"])
        def test_story(llm, llm_snapshot, prompt):
            assert llm.generate(prompt, max_new_tokens=4) == llm_snapshot

        def test_plain(llm, llm_snapshot):
            assert llm.generate("Once", max_new_tokens=4) == llm_snapshot
        """)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=3)
    recorded = golden_files(pytester.path)
    result = run(pytester, "-p", "pytest_repeat", "--llm-snapshot", "--count", "2")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["6 passed, 0 failed, 0 written, 0 updated, 0 deleted, 0 unused"])
    run(pytester, "-p", "pytest_repeat", "--llm-snapshot-update", "--count", "2").assert_outcomes(passed=6)
    assert golden_files(pytester.path) == recorded  # no golden file per repetition
    (fox,) = (pytester.path / SNAPSHOTS / "test_story").glob("test_story*The_fox*.json")
    _retokened(fox, ["0"])
    result = run(pytester, "-p", "pytest_repeat", "--llm-snapshot", "--count", "2")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(['*re-record with: pytest --llm-snapshot-update '
                                 '"test_story.py::test_story[[]The fox]"'])
    pending = sorted(p.name for p in pytester.path.rglob("*.llmdet-pending"))
    assert pending == [fox.name + ".llmdet-pending"]  # one per test, not per repetition
    from pytest_llmdet.review import main

    with _cwd(pytester.path):
        assert main(["accept"]) == 0
    assert sorted(golden_files(pytester.path)) == sorted(recorded)
    run(pytester, "-p", "pytest_repeat", "--llm-snapshot", "--count", "2").assert_outcomes(passed=6)


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


# -- machine-dependent parametrization -------------------------------------------------------------------------

def test_a_machine_dependent_parameter_list_loses_its_golden_but_a_skipped_param_keeps_it(pytester):
    pytester.makepyfile(test_devices="""
        import pytest

        HAS_GPU = True
        DEVICES = ["cpu"] + (["cuda"] if HAS_GPU else [])

        @pytest.mark.parametrize("device", DEVICES)
        def test_story(llm_snapshot, device):
            assert f"story on {device}" == llm_snapshot
        """)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    cuda = pytester.path / SNAPSHOTS / "test_devices" / "test_story[cuda].json"
    assert cuda.exists()
    # the documented pattern: the parameter is always collected, and skipped where it cannot run
    pytester.makepyfile(test_devices="""
        import pytest

        HAS_GPU = False
        DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_GPU, reason="no GPU here"))]

        @pytest.mark.parametrize("device", DEVICES)
        def test_story(llm_snapshot, device):
            assert f"story on {device}" == llm_snapshot
        """)
    result = run(pytester, "--llm-snapshot-update")
    result.assert_outcomes(passed=1, skipped=1)
    assert cuda.exists()
    # the pattern to avoid: the parameter disappears on this machine, and a full update deletes its golden
    pytester.makepyfile(test_devices="""
        import pytest

        HAS_GPU = False
        DEVICES = ["cpu"] + (["cuda"] if HAS_GPU else [])

        @pytest.mark.parametrize("device", DEVICES)
        def test_story(llm_snapshot, device):
            assert f"story on {device}" == llm_snapshot
        """)
    result = run(pytester, "--llm-snapshot-update")
    result.stdout.fnmatch_lines(["deleted 1 unused golden file(s) or snapshot(s) (committed ones come back with: "
                                 "git checkout -- <file>):",
                                 f"  {SNAPSHOTS}/test_devices/test_story[[]cuda].json"])
    assert not cuda.exists()


# -- what a hostile review of the gate found, each held now ------------------------------------------------------

TWO_NAMED = """
def test_several(llm_snapshot):
    assert "a fox" == llm_snapshot(name="fox")
    assert "a lion" == llm_snapshot(name="lion")
"""


def test_a_whole_check_with_unused_snapshots_fails_since_an_update_would_delete_them(pytester):
    pytester.makepyfile(test_two=TWO_NAMED)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    pytester.makepyfile(test_two=TWO_NAMED.replace('    assert "a lion" == llm_snapshot(name="lion")\n', ""))
    check = run(pytester, "--llm-snapshot")
    check.assert_outcomes(passed=1)  # the test itself passed: the gate fails at the end of the run
    assert check.ret == pytest.ExitCode.TESTS_FAILED
    check.stdout.fnmatch_lines(["1 unused golden file(s) or snapshot(s) no test asked for:",
                                "  __llm_snapshots__/test_two/test_several.json [[]lion]",
                                "the gate fails on them: a full run with --llm-snapshot-update would delete them*"])
    assert run(pytester, "--llm-snapshot", "-k", "several").ret == 0  # a partial check: nothing would be deleted
    run(pytester, "--llm-snapshot-update").stdout.fnmatch_lines(["*1 deleted, 0 unused"])
    assert run(pytester, "--llm-snapshot").ret == 0


ENV_STORY = """
import os

def test_story(llm_snapshot):
    assert os.environ.get("STORY", "one") == llm_snapshot
"""


def test_a_rerecord_command_keeps_an_ini_override_of_the_snapshot_folder(pytester, monkeypatch):
    pytester.makepyfile(test_story=ENV_STORY)
    run(pytester, "--llm-snapshot-update", "-o", "llm_snapshot_dir=golden").assert_outcomes(passed=1)
    monkeypatch.setenv("STORY", "two")
    check = run(pytester, "--llm-snapshot", "-o", "llm_snapshot_dir=golden")
    command = rerecord_command(check.stdout.str())
    assert "-o llm_snapshot_dir=golden" in command, command
    run_command(pytester, command).assert_outcomes(passed=1)
    assert not (pytester.path / SNAPSHOTS).exists()  # no stray golden file in the default folder
    run(pytester, "--llm-snapshot", "-o", "llm_snapshot_dir=golden").assert_outcomes(passed=1)


def test_the_summary_command_for_many_tests_names_their_files_and_runs_as_printed(pytester, monkeypatch):
    pytester.makepyfile(test_ids="""
        import os
        import pytest

        @pytest.mark.parametrize("word", ["a", "b", "c", "d", "e", "f", "g"])
        def test_word(llm_snapshot, word):
            assert os.environ.get("STORY", "one") + word == llm_snapshot
        """)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=7)
    monkeypatch.setenv("STORY", "two")
    check = run(pytester, "--llm-snapshot")
    check.assert_outcomes(failed=7)
    command = rerecord_command(check.stdout.str())
    assert command == 'pytest --llm-snapshot-update "test_ids.py"' and "..." not in command
    run_command(pytester, command).assert_outcomes(passed=7)
    run(pytester, "--llm-snapshot").assert_outcomes(passed=7)


def test_an_id_with_an_exclamation_mark_survives_an_interactive_bash():
    import shutil

    from pytest_llmdet.commands import quoted_id

    if shutil.which("bash") is None:
        pytest.skip("no bash here")
    for test_id in ('t.py::test_word[wow!]', "t.py::test_word[it's]", 't.py::test_word[plain]'):
        shell = subprocess.run(["bash", "-i"], input=f"printf '%s\\n' {quoted_id(test_id)}\n", capture_output=True,
                               text=True, timeout=60)
        assert shell.stdout.splitlines()[-1:] == [test_id], (test_id, shell.stdout, shell.stderr)


def test_a_rerecord_command_names_the_test_file_where_it_is_when_the_ini_file_is_elsewhere(pytester, monkeypatch):
    (pytester.path / "tests").mkdir()
    (pytester.path / "cfg").mkdir()
    (pytester.path / "cfg" / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (pytester.path / "tests" / "test_t.py").write_text(ENV_STORY, encoding="utf-8")
    run(pytester, "-c", "cfg/pytest.ini", "tests", "--llm-snapshot-update").assert_outcomes(passed=1)
    monkeypatch.setenv("STORY", "two")
    check = run(pytester, "-c", "cfg/pytest.ini", "tests", "--llm-snapshot")
    command = rerecord_command(check.stdout.str())
    assert command.endswith('"tests/test_t.py::test_story"'), command
    run_command(pytester, command).assert_outcomes(passed=1)
    run(pytester, "-c", "cfg/pytest.ini", "tests", "--llm-snapshot").assert_outcomes(passed=1)


def test_an_update_keeps_a_variant_another_process_wrote_after_it_compared(tmp_path):
    from pytest_llmdet.golden.format import GoldenFile
    from pytest_llmdet.golden.store import read_golden, write_golden
    from pytest_llmdet.golden.writer import Queued, SnapshotWriter

    def entry(text):
        return GoldenEntry(text, token_ids=[1], margins=[1.0], prompt="p", prompt_sha256="h", finish_reason="length",
                           settings={})

    path = tmp_path / "__llm_snapshots__" / "test_t" / "test_x.json"
    write_golden(path, GoldenFile("test_t.py::test_x", {}, {"0": entry("old")}))
    queued = Queued()
    queued.add("0", entry("new default"), None)  # what a float32 update compared and queued
    other = read_golden(path)  # meanwhile another process records its bfloat16 variant
    other.snapshots["0"].variants = {"cpu:bfloat16:avx2": entry("the other machine's")}
    write_golden(path, other)
    SnapshotWriter().write(path, "test_t.py::test_x", queued, {})
    written = read_golden(path).snapshots["0"]
    assert written.text == "new default" and list(written.variants) == ["cpu:bfloat16:avx2"]


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


def test_a_refused_accept_names_the_check_that_refreshes_its_pending_file_and_that_check_keeps_it(pytester):
    from pytest_llmdet.review import main

    pytester.makeconftest(DEPENDENT)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_story.py").write_text(ONE_TEST, encoding="utf-8")
    pytester.makeini("[pytest]\n")
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    golden = pytester.path / "tests" / SNAPSHOTS / "test_story" / "test_story.json"
    with _cwd(pytester.path / "tests"):
        run(pytester, "--llm-snapshot", "--llm-dtype", "bfloat16", "test_story.py").assert_outcomes(failed=1)
    pending = golden.with_name(golden.name + ".llmdet-pending")
    assert pending.exists()
    _retokened(golden, ["0"])  # a pull changed the golden file since
    err = io.StringIO()
    with _cwd(pytester.path):
        assert main(["accept"], stdout=io.StringIO(), stderr=err) == 1
    message = err.getvalue()
    command = message.split(": pytest ", 1)[1].split("; or reject it", 1)[0]
    assert f"from {shlex.quote(str(pytester.path / 'tests'))}: pytest --llm-snapshot --llm-dtype bfloat16 " in message
    assert command == '--llm-snapshot --llm-dtype bfloat16 "test_story.py::test_story"', message
    with _cwd(pytester.path / "tests"):  # run as printed, from where it says: the pending file is refreshed
        run(pytester, *shlex.split(command)).assert_outcomes(failed=1)
    assert pending.exists()
    with _cwd(pytester.path):
        assert main(["accept"], stdout=io.StringIO(), stderr=io.StringIO()) == 0
    with _cwd(pytester.path / "tests"):
        run(pytester, "--llm-snapshot", "--llm-dtype", "bfloat16", "test_story.py").assert_outcomes(passed=1)


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


def test_an_update_typed_on_the_command_line_wins_over_a_check_in_addopts(pytester, monkeypatch):
    pytester.makeini("[pytest]\naddopts = --llm-snapshot\n")
    pytester.makepyfile(test_story=ENV_STORY)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=1)
    monkeypatch.setenv("STORY", "two")
    check = run(pytester)  # the gate, from addopts
    check.assert_outcomes(failed=1)
    run_command(pytester, rerecord_command(check.stdout.str())).assert_outcomes(passed=1)
    run(pytester).assert_outcomes(passed=1)
    assert run(pytester, "--llm-snapshot", "--llm-snapshot-update").ret == pytest.ExitCode.USAGE_ERROR


def test_a_review_run_stopped_early_says_that_later_tests_were_not_reviewed(pytester, monkeypatch):
    pytester.makepyfile(test_two="""
        import os

        def test_a(llm_snapshot):
            assert os.environ.get("STORY", "one") + "a" == llm_snapshot

        def test_b(llm_snapshot):
            assert os.environ.get("STORY", "one") + "b" == llm_snapshot
        """)
    run(pytester, "--llm-snapshot-update").assert_outcomes(passed=2)
    monkeypatch.setenv("STORY", "two")
    result = run(pytester, "--llm-snapshot-review", "-x")
    result.stdout.fnmatch_lines(["the review run stopped early (-x, --maxfail, --stepwise, Ctrl-C): the tests after "
                                 "that were not reviewed*"])
