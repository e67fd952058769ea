"""The `llm` fixture: one load per session, forced greedy decoding, fixed seeds, clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from conftest import copy_model

RECORD_TOKENS = """
import json, pathlib

def test_record(llm):
    g = llm.generate("The fox")
    chat = llm.generate([{{"role": "user", "content": "Tell me a story about a fox."}}])
    pathlib.Path({out!r}).write_text(json.dumps([g.token_ids, chat.token_ids, g.settings]))
"""


def _run_and_read(pytester, tmp_path, name, *args):
    out = tmp_path / f"{name}.json"
    pytester.makepyfile(**{f"test_{name}": RECORD_TOKENS.format(out=str(out))})
    result = pytester.runpytest_subprocess(f"test_{name}.py", *args)
    result.assert_outcomes(passed=1)
    return json.loads(out.read_text())


def test_sampling_generation_config_still_gives_identical_tokens_across_processes(pytester, tmp_path,
                                                                                  embedded_generation_config):
    # the embedded model's generation_config.json samples, as Qwen1.5-Chat's does
    assert embedded_generation_config["do_sample"] is True
    first = _run_and_read(pytester, tmp_path, "first")
    second = _run_and_read(pytester, tmp_path, "second")
    assert first == second
    assert len(first[0]) == 32
    assert "temperature" not in first[2] and "top_p" not in first[2] and first[2]["do_sample"] is False


def test_tokens_equal_a_hand_written_greedy_loop(pytester):
    pytester.makepyfile(
        """
        import torch

        def reference_greedy(model, ids, steps, penalty):
            ids = torch.tensor([ids])
            for _ in range(steps):
                logits = model(ids).logits[0, -1].clone()
                seen = ids[0].unique()
                picked = logits[seen]
                logits[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
                ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
            return ids[0].tolist()

        def test_same_tokens(llm):
            g = llm.generate("The fox and the crow", max_new_tokens=20, min_new_tokens=20)
            assert g.settings["repetition_penalty"] == 1.05
            with torch.inference_mode():
                expected = reference_greedy(llm.model, g.prompt_token_ids, 20, 1.05)
            assert g.prompt_token_ids + g.token_ids == expected
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_nothing_is_logged_or_warned_on_the_default_path(pytester):
    pytester.makepyfile(
        """
        import logging, warnings

        def test_quiet(llm):
            records = []
            handler = logging.Handler()
            handler.emit = records.append
            logging.getLogger("transformers").addHandler(handler)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                llm.generate("Hello")
                llm.generate([{"role": "user", "content": "Hi"}], temperature=0)
            assert [r.getMessage() for r in records] == []
            assert [str(w.message) for w in caught] == []
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_generation_fields(pytester):
    pytester.makepyfile(
        """
        from pytest_llmdet import Generation

        def test_fields(llm):
            g = llm.generate("Once upon a time", max_new_tokens=5)
            assert isinstance(g, Generation)
            assert len(g.token_ids) == len(g.margins) == len(g.logprobs) == 5
            assert g.finish_reason == "length"
            assert all(m >= 0 for m in g.margins)
            assert all(lp <= 0 for lp in g.logprobs)
            assert g.text == llm.tokenizer.decode(g.token_ids, skip_special_tokens=True)
            assert g.prompt_token_ids == llm.tokenizer("Once upon a time")["input_ids"]
            assert g.settings["max_new_tokens"] == 5
            assert llm.calls == [g]

        def test_eos_finish(llm):
            eos = llm.tokenizer.convert_tokens_to_ids("<|im_end|>")
            g = llm.generate("Hello", max_new_tokens=10, forced_eos_token_id=eos, min_new_tokens=0)
            g2 = llm.generate("Hello", max_new_tokens=1, forced_eos_token_id=eos)
            assert g2.token_ids == [eos] and g2.finish_reason == "eos" and g2.text == ""
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_chat_messages_use_the_chat_template(pytester):
    pytester.makepyfile(
        """
        def test_chat(llm):
            messages = [{"role": "user", "content": "Hi"}]
            g = llm.generate(messages)
            rendered = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            assert rendered.endswith("<|im_start|>assistant\\n")
            assert g.prompt_token_ids == llm.tokenizer(rendered, add_special_tokens=False)["input_ids"]

        def test_bad_prompt(llm):
            import pytest
            from pytest_llmdet.engines.llm import PromptError
            with pytest.raises(PromptError, match="a prompt is a string or a list of chat messages"):
                llm.generate(42)
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_temperature_zero_is_greedy_and_sampling_needs_a_seed(pytester):
    pytester.makepyfile(
        """
        import pytest
        from pytest_llmdet.engines.greedy import GenerationArgumentError

        def test_it(llm):
            assert llm.generate("Once", temperature=0).token_ids == llm.generate("Once").token_ids
            a = llm.generate("Once", do_sample=True, seed=7, temperature=1.5)
            b = llm.generate("Once", do_sample=True, seed=7, temperature=1.5)
            assert a.token_ids == b.token_ids
            assert a.settings["seed"] == 7 and a.settings["do_sample"] is True
            with pytest.raises(GenerationArgumentError, match="needs an explicit seed"):
                llm.generate("Once", do_sample=True)
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_three_modules_cause_one_load(pytester):
    for name in ("a", "b", "c"):
        pytester.makepyfile(**{f"test_{name}": "def test_it(llm):\n    llm.generate('Hi', max_new_tokens=2)\n"})
    result = pytester.runpytest()
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*= llm =*", "model loads: 1 (*s)", "generations: 3 (*s)"])


def test_marker_uses_another_model_loaded_once(pytester, tmp_path):
    other = copy_model(tmp_path / "other-model")
    pytester.makepyfile(
        f"""
        import pytest

        OTHER = {str(other)!r}

        @pytest.mark.llm_model(OTHER)
        def test_one(llm):
            assert llm.name == OTHER

        @pytest.mark.llm_model(OTHER, dtype="bfloat16")
        def test_bf16(llm):
            import torch
            assert llm.model.dtype == torch.bfloat16

        @pytest.mark.llm_model(OTHER)
        def test_two(llm):
            assert llm.name == OTHER

        def test_default(llm):
            assert llm.name == "pytest-llmdet/embedded-tiny-qwen2"
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["model loads: 3 (*s)"])


def test_marker_with_bad_arguments_errors_that_test_only(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.llm_model("x", dtype="float8")
        def test_bad(llm):
            pass

        def test_good(llm):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*bad argument to @pytest.mark.llm_model: allowed values: float32*"])


def test_missing_model_errors_clearly_and_the_rest_runs(pytester, monkeypatch):
    import huggingface_hub.constants

    # HF_HUB_OFFLINE=1 (read at import, so patch it): no hub here, and it must not be advised when already set
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.llm_model("./no/such/model")
        def test_missing_dir(llm):
            pass

        @pytest.mark.llm_model("no-such-org/no-such-model")
        def test_offline_hub(llm):
            pass

        def test_unrelated():
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=2)
    where = "--llm-model / llm_model (or @pytest.mark.llm_model)"
    # the test folder, the rootdir and the current directory are one folder here: tried once
    assert (f"pytest-llmdet: model './no/such/model' not found: {pytester.path}/no/such/model is not a directory, "
            f"and './no/such/model' is not a hub id (org/name); point {where} at a model directory or a hub id such "
            "as Qwen/Qwen1.5-0.5B-Chat") in result.stdout.lines
    assert ("pytest-llmdet: model 'no-such-org/no-such-model' is not in the local Hugging Face cache, and "
            "HF_HUB_OFFLINE=1 is set, so the hub was not asked; download it once where there is network "
            f"(hf download no-such-org/no-such-model), or point {where} at a local model directory"
            ) in result.stdout.lines
    output = result.stdout.str()
    assert "Traceback" not in output and "During handling" not in output and "direct cause" not in output
    assert "set HF_HUB_OFFLINE=1" not in output


def test_a_file_given_as_the_model_is_refused_not_taken_for_a_hub_id(pytester, tmp_path):
    model = copy_model(tmp_path / "model")
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.llm_model({str(model / "model.safetensors")!r})
        def test_weights_file(llm):
            pass

        @pytest.mark.llm_model("notes.txt")
        def test_other_file(llm):
            pass
        """
    )
    pytester.makefile(".txt", notes="not a model")
    result = pytester.runpytest()
    result.assert_outcomes(errors=2)
    where = "--llm-model / llm_model (or @pytest.mark.llm_model)"
    assert (f"pytest-llmdet: model '{model}/model.safetensors' is a file ({model}/model.safetensors), not a model "
            f"directory; point {where} at the folder that holds config.json, the weights and the tokenizer files "
            f"(here: {model})") in result.stdout.lines
    assert (f"pytest-llmdet: model 'notes.txt' is a file ({pytester.path}/notes.txt), not a model directory; point "
            f"{where} at the folder that holds config.json, the weights and the tokenizer files (what "
            "save_pretrained writes)") in result.stdout.lines
    assert "Hugging Face" not in result.stdout.str()


def test_a_failed_load_is_remembered_not_retried(monkeypatch):
    from pytest_llmdet.engines import models

    calls = []

    def failing_load(spec, worker=None):
        calls.append(spec)
        raise models.ModelLoadError("no such model")

    monkeypatch.setattr(models, "load_model", failing_load)
    pool = models.ModelPool()
    spec = models.ModelSpec(models.ModelSource("hub", "org/x", "org/x"))
    for _ in range(3):
        with pytest.raises(models.ModelLoadError, match="no such model"):
            pool.get(spec)
    assert len(calls) == 1


def test_broken_local_model_directory(pytester, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    pytester.makepyfile("def test_it(llm):\n    pass\n")
    result = pytester.runpytest("--llm-model", str(broken))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"pytest-llmdet: could not load model '{broken}' from {broken}: OSError: *not a "
                                 "valid JSON file*; the directory must hold what save_pretrained writes (config.json, "
                                 "weights, tokenizer files)"])
    assert "During handling" not in result.stdout.str() and "direct cause" not in result.stdout.str()


def test_seeds_are_set_before_each_test(pytester):
    pytester.makepyfile(
        """
        import random
        import numpy
        import torch

        def expected(seed):
            torch.manual_seed(seed)
            return random.Random(seed).random(), numpy.random.RandomState(seed).rand(), torch.rand(1).item()

        def current():
            return random.random(), numpy.random.rand(), torch.rand(1).item()

        def test_first_consumes_random_numbers(llm):
            assert current() == expected(11)
            current()
            llm.generate("Hi", max_new_tokens=2)

        def test_second_starts_from_the_seed_again(llm):
            assert current() == expected(11)
        """
    )
    pytester.runpytest("--llm-seed", "11").assert_outcomes(passed=2)


def test_torch_determinism_settings(pytester):
    pytester.makepyfile(
        """
        import os
        import torch

        def test_it(llm):
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
            assert torch.are_deterministic_algorithms_enabled()
            assert torch.is_deterministic_algorithms_warn_only_enabled()
            assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
            assert not torch.backends.cuda.matmul.allow_tf32
            assert torch.get_num_threads() == 1
        """
    )
    pytester.runpytest_subprocess("--llm-threads", "1").assert_outcomes(passed=1)


def test_report_header_shows_model_versions_and_overrides(pytester):
    pytester.makepyfile("def test_it(): pass")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines([
        "llmdet: model pytest-llmdet/embedded-tiny-qwen2 (embedded, *embedded_model)",
        "llmdet: dtype float32, device cpu, seed 0, max_new_tokens 32, deterministic algorithms warn",
        "llmdet: torch 2.*, transformers *",
    ])
    assert ("llmdet: generation: greedy forced; overridden from the model's config: do_sample=True, temperature=0.7, "
            "top_k=20, top_p=0.8; inherited: bos_token_id=0, eos_token_id=[2, 0], pad_token_id=0, "
            "repetition_penalty=1.05") in result.stdout.lines


def test_the_header_lists_every_field_of_the_generation_config_it_does_not_apply(pytester, tmp_path):
    # google/gemma-2-2b-it's generation_config.json: its cache setting used to vanish behind "nothing to override"
    gemma = copy_model(tmp_path / "gemma-like", {
        "_from_model_config": True, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
        "pad_token_id": 0, "transformers_version": "4.42.0.dev0", "max_length": 8192, "repetition_penalty": 1.0,
    })
    pytester.makepyfile("def test_it(): pass")
    result = pytester.runpytest("--llm-model", str(gemma))
    assert ("llmdet: generation: greedy forced; nothing to override; inherited: bos_token_id=2, eos_token_id=1, "
            "pad_token_id=0; dropped: cache_implementation='hybrid' (generate's default cache is used), "
            "max_length=8192 (llm_max_new_tokens sets the length), repetition_penalty=1.0 (its neutral value: no "
            "effect)") in result.stdout.lines


def test_inherit_processors_false_is_shown_and_applied(pytester):
    pytester.makeini("[pytest]\nllm_inherit_processors = false\n")
    pytester.makepyfile("def test_it(llm):\n    assert 'repetition_penalty' not in llm.generate('Hi').settings\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert ("llmdet: generation: greedy forced; overridden from the model's config: do_sample=True, temperature=0.7, "
            "top_k=20, top_p=0.8; inherited: bos_token_id=0, eos_token_id=[2, 0], pad_token_id=0; "
            "dropped: repetition_penalty=1.05 (llm_inherit_processors=false)") in result.stdout.lines


def test_importing_the_plugin_imports_no_torch_and_unused_fixtures_load_no_model(pytester):
    code = ("import sys, pytest_llmdet.plugin; "
            "print(sorted(m for m in ('torch', 'transformers', 'filelock') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    pytester.makeconftest(
        """
        import sys

        def pytest_sessionfinish(session):
            print("\\nheavy modules:", sorted(m for m in ("torch", "transformers") if m in sys.modules))
        """
    )
    pytester.makepyfile("def test_plain(): assert 1 + 1 == 2")
    result = pytester.runpytest_subprocess("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["heavy modules: []"])
    assert "model loads" not in result.stdout.str()


def test_a_run_that_uses_no_model_imports_only_the_settings_side_of_the_plugin(pytester):
    # pytest loads the plugin in every run of a project where it is installed: the model, golden-file,
    # determinism-report and summary code must wait until a test needs them (benchmarks/bench_import.py).
    pytester.makeconftest(
        """
        import sys

        def pytest_unconfigure(config):
            print("\\nllmdet modules:", " ".join(sorted(m for m in sys.modules if m.startswith("pytest_llmdet"))))
        """
    )
    pytester.makepyfile("def test_plain(): assert 1 + 1 == 2")
    result = pytester.runpytest_subprocess("-q", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "llmdet modules: pytest_llmdet pytest_llmdet.engines pytest_llmdet.engines.kinds pytest_llmdet.hooks "
        "pytest_llmdet.hooks.determinism pytest_llmdet.hooks.state pytest_llmdet.markers pytest_llmdet.plugin "
        "pytest_llmdet.settings pytest_llmdet.settings.options pytest_llmdet.settings.values",
    ])


def test_the_package_modules_are_plain_imports_and_only_its_init_is_rewritten(pytester, monkeypatch, tmp_path):
    # As installed from a wheel: pytest marks every module of a plugin's distribution for assertion rewriting
    # and would load each from its own bytecode cache, which costs many times the normal import, or compile each
    # from source on every run where it cannot write that cache (PYTHONDONTWRITEBYTECODE;
    # benchmarks/bench_import.py). Only the package's __init__, which puts its own finder first, is left to it,
    # at startup and later alike. A distribution that lists the package, first on the path, is that.
    import os

    import pytest_llmdet

    info = tmp_path / "dists" / "pytest_llmdet-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pytest-llmdet\nVersion: 0.1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[pytest11]\nllmdet = pytest_llmdet.plugin\n", encoding="utf-8")
    (info / "RECORD").write_text("pytest_llmdet/__init__.py,,\npytest_llmdet/plugin.py,,\n", encoding="utf-8")
    root = Path(pytest_llmdet.__file__).resolve().parent.parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(info.parent), str(root),
                                                                   os.environ.get("PYTHONPATH")])))
    pytester.makeconftest(
        """
        import sys

        def pytest_sessionfinish(session):
            import pytest_llmdet.golden.compare  # imported when a test compares a golden file

            names = ("pytest_llmdet", "pytest_llmdet.plugin", "pytest_llmdet.settings", "pytest_llmdet.hooks.state",
                     "pytest_llmdet.hooks.determinism", "pytest_llmdet.golden.compare")
            print("\\nloaders:", " ".join(f"{n}={type(sys.modules[n].__loader__).__name__}" for n in names))
        """
    )
    pytester.makepyfile("def test_plain(): assert 1 + 1 == 2")
    result = pytester.runpytest_subprocess("-q", "-s", "-W", "error::pytest.PytestAssertRewriteWarning")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "loaders: pytest_llmdet=AssertionRewritingHook pytest_llmdet.plugin=SourceFileLoader "
        "pytest_llmdet.settings=SourceFileLoader pytest_llmdet.hooks.state=SourceFileLoader "
        "pytest_llmdet.hooks.determinism=SourceFileLoader pytest_llmdet.golden.compare=SourceFileLoader",
    ])
    assert "PytestAssertRewriteWarning" not in result.stdout.str() + result.stderr.str()


def test_the_finder_leaves_other_modules_and_sys_meta_path_at_exit_alone(pytester):
    # _PlainImports answers for pytest_llmdet's submodules only, and is off sys.meta_path before shutdown.
    result = pytester.run(sys.executable, "-c", (
        "import atexit, sys\n"
        "ours = lambda: sum(getattr(f, 'prefix', None) == 'pytest_llmdet.' for f in sys.meta_path)\n"
        "atexit.register(lambda: print('at exit:', ours()))  # runs after the package's own (last in, first out)\n"
        "import pytest_llmdet\n"
        "finder = sys.meta_path[0]\n"
        "print('first:', finder.__name__, finder.find_spec('json', None), finder.find_spec('pytest_llmdetx', None))\n"
        "import importlib; importlib.reload(pytest_llmdet)\n"
        "print('installed:', ours())\n"))
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["first: _PlainImports None None", "installed: 1", "at exit: 0"])


def test_disabled_with_no_llmdet(pytester):
    pytester.makepyfile("def test_it(llm): pass")
    result = pytester.runpytest("-p", "no:llmdet")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'llm' not found*"])


def test_xdist_workers_each_load_once_and_the_summary_adds_them_up(pytester):
    pytest.importorskip("xdist")
    for name in ("a", "b", "c", "d"):
        pytester.makepyfile(**{f"test_{name}": "def test_it(llm):\n    llm.generate('Hi', max_new_tokens=2)\n"})
    result = pytester.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["model loads: 2 (*s)", "generations: 4 (*s)"])


def test_a_missing_model_names_each_path_tried_once(tmp_path):
    from pytest_llmdet.engines.sources import ModelLoadError, resolve_source

    here, there = tmp_path / "tests", tmp_path
    with pytest.raises(ModelLoadError) as caught:
        resolve_source("models/../nope/x/y", [here, there, here, Path(str(there) + "/")])
    assert str(caught.value) == (
        f"model 'models/../nope/x/y' not found: none of {here}/nope/x/y, {there}/nope/x/y is a directory, and "
        "'models/../nope/x/y' is not a hub id (org/name); point --llm-model / llm_model (or @pytest.mark.llm_model) "
        "at a model directory or a hub id such as Qwen/Qwen1.5-0.5B-Chat")


# -- devices: one CUDA device per xdist worker, accelerate's device map -----------------------------------------

FAKE_CUDA = """
import torch

# Two CUDA devices that hold nothing: torch sees them, and a model "moved" there stays on the CPU.
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 2
_to = torch.nn.Module.to


def _to_cpu_for_cuda(self, *args, **kwargs):
    target = args[0] if args else kwargs.get("device")
    return self if str(target).startswith("cuda") else _to(self, *args, **kwargs)


torch.nn.Module.to = _to_cpu_for_cuda
"""


@pytest.mark.parametrize(("worker", "cuda_devices", "device"), [
    (None, 0, "cpu"), ("gw0", 0, "cpu"), ("gw3", 0, "cpu"),
    (None, 2, "cuda"), ("gw0", 2, "cuda:0"), ("gw1", 2, "cuda:1"), ("gw2", 2, "cuda:0"), ("gw7", 3, "cuda:1"),
    ("gw5", 1, "cuda:0"), ("master", 2, "cuda"),
])
def test_auto_puts_xdist_worker_k_on_cuda_k_mod_the_device_count(worker, cuda_devices, device):
    from pytest_llmdet.engines.devices import auto_device

    assert auto_device(worker, cuda_devices) == device


def test_auto_counts_the_cuda_devices_torch_sees(monkeypatch):
    import torch

    from pytest_llmdet.engines.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)  # CUDA_VISIBLE_DEVICES shapes this count
    assert [resolve_device("auto", f"gw{k}") for k in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", "gw1") == "cpu"


def test_auto_under_xdist_gives_each_worker_its_own_device_and_says_so(pytester, monkeypatch):
    pytest.importorskip("xdist")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    pytester.makeconftest(FAKE_CUDA)
    for name in ("a", "b", "c", "d"):
        pytester.makepyfile(**{f"test_{name}": (
            "import os\n\n"
            "def test_it(llm):\n"
            "    assert llm.device == f\"cuda:{int(os.environ['PYTEST_XDIST_WORKER'][2:]) % 2}\"\n")})
    result = pytester.runpytest_subprocess("-n", "2", "--llm-device", "auto")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([
        "llmdet: dtype float32, device auto, seed 0, *",
        "llmdet: device auto, 2 xdist workers on 2 CUDA device(s) of CUDA_VISIBLE_DEVICES=2,3: gw0 cuda:0, gw1 cuda:1",
        "*= llm =*",
        "model loads: 2 (*s)",
        "  gw0: pytest-llmdet/embedded-tiny-qwen2 float32 cuda:0: *s",
        "  gw1: pytest-llmdet/embedded-tiny-qwen2 float32 cuda:1: *s",
    ])


def test_auto_under_xdist_without_cuda_puts_every_worker_on_the_cpu():
    from pytest_llmdet.header import worker_devices_line

    assert worker_devices_line(2, 0, None) == \
        "llmdet: device auto, 2 xdist workers: no CUDA device, every worker on cpu"
    assert worker_devices_line(10, 4, None).endswith(
        "gw0 cuda:0, gw1 cuda:1, gw2 cuda:2, gw3 cuda:3, gw4 cuda:0, gw5 cuda:1, gw6 cuda:2, gw7 cuda:3, ... "
        "(gwK on cuda:(K mod 4))")


def test_a_device_map_without_accelerate_errors_saying_what_to_install(pytester, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "accelerate", None)  # not importable, whether or not it is installed here
    pytester.makepyfile("def test_it(llm):\n    pass\n")
    result = pytester.runpytest("--llm-device-map", "auto")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "llmdet: dtype float32, device_map auto, seed 0, *",
        "*llm_device_map = auto loads model 'pytest-llmdet/embedded-tiny-qwen2' through accelerate's device map, "
        "but accelerate is not installed. Install it (pip install accelerate), or leave llm_device_map unset to "
        "put the whole model on llm_device.",
    ])


def test_a_device_map_is_passed_to_from_pretrained_and_recorded_in_the_fingerprint(monkeypatch):
    from pytest_llmdet.engines import models
    from pytest_llmdet.engines.fingerprint import environment_fingerprint
    from pytest_llmdet.engines.sources import resolve_source
    from pytest_llmdet.engines.transformers import TransformersEngine

    placed = []
    load = transformers.AutoModelForCausalLM.from_pretrained

    def from_pretrained(*args, device_map=None, **kwargs):  # accelerate is not needed to see what was asked
        placed.append(device_map)
        return load(*args, **kwargs)

    monkeypatch.setattr(models, "accelerate_installed", lambda: True)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    loaded = models.load_model(models.ModelSpec(resolve_source(None, []),
                                                options=models.TransformersOptions(device_map="balanced")))
    assert placed == ["balanced"] and loaded.device == "cpu"
    fingerprint = environment_fingerprint(**TransformersEngine(loaded).describe(), generation={}, weights=False)
    assert fingerprint["device_map"] == "balanced"
    plain = models.load_model(models.ModelSpec(resolve_source(None, [])))
    assert placed == ["balanced", None]
    assert "device_map" not in environment_fingerprint(**TransformersEngine(plain).describe(), generation={},
                                                       weights=False)


def test_a_device_map_loads_through_accelerate_and_gives_the_same_tokens(pytester):
    pytest.importorskip("accelerate")
    pytester.makepyfile(
        """
        import json, pathlib

        def test_it(llm, llm_snapshot):
            assert llm.generate("The fox", max_new_tokens=8) == llm_snapshot
        """
    )
    pytester.runpytest("--llm-snapshot-update").assert_outcomes(passed=1)
    golden = next(pytester.path.rglob("test_it.json"))
    recorded = json.loads(golden.read_text(encoding="utf-8"))
    golden.unlink()
    result = pytester.runpytest("--llm-snapshot-update", "--llm-device-map", "auto")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["  pytest-llmdet/embedded-tiny-qwen2 float32 device_map auto (inputs on cpu): *s"])
    mapped = json.loads(golden.read_text(encoding="utf-8"))
    assert mapped["fingerprint"]["device_map"] == "auto" and "device_map" not in recorded["fingerprint"]
    assert mapped["snapshots"]["0"]["token_ids"] == recorded["snapshots"]["0"]["token_ids"]
