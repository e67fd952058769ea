"""What a hostile repository can do: no remote code unless configured, golden files parsed as data only,
no snapshot folder outside the project."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from conftest import copy_model
from sessions import run

import pytest_llmdet
from pytest_llmdet.golden.format import GoldenEntry, GoldenFile, dumps, loads
from pytest_llmdet.settings.values import SettingsError, parse_snapshot_dir

pytestmark = pytest.mark.usefixtures("only_this_plugin")


SPY_CONFTEST = """
import json
import os

import pytest
import transformers


@pytest.fixture(autouse=True)
def spy_on_from_pretrained(monkeypatch):
    log = os.environ["LLMDET_SPY_LOG"]
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):
            with open(log, "a", encoding="utf-8") as stream:
                stream.write(json.dumps([_name, kwargs.get("trust_remote_code", "absent")]) + "\\n")
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
"""


def _plant_remote_code(model: Path, marker: Path) -> None:
    """Give a model directory custom code that would create `marker` if transformers ever ran it."""
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    (model / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import Qwen2Config as EvilConfig, Qwen2ForCausalLM as EvilModel\n"
        "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n", encoding="utf-8")


def test_trust_remote_code_is_off_unless_configured(pytester, monkeypatch, tmp_path):
    model = copy_model(tmp_path / "model-with-code")
    marker = tmp_path / "remote-code-ran"
    _plant_remote_code(model, marker)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("LLMDET_SPY_LOG", str(log))
    pytester.makeconftest(SPY_CONFTEST)
    pytester.makepyfile(test_models=f"""
        import pytest

        def test_default(llm):
            llm.generate("Hi", max_new_tokens=2)

        @pytest.mark.llm_model({str(model)!r})
        def test_model_with_code(llm):
            llm.generate("Hi", max_new_tokens=2)
    """)
    run(pytester).assert_outcomes(passed=2)
    calls = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert len(calls) == 4 and all(trust is False for _, trust in calls), calls
    assert not marker.exists()  # the model's own code never ran

    log.unlink()
    run(pytester, "--llm-trust-remote-code", "true", "-k", "default").assert_outcomes(passed=1)
    assert [trust for _, trust in map(json.loads, log.read_text().splitlines())] == [True, True]


def test_golden_files_are_parsed_as_data_only():
    forbidden_modules = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "yaml", "dill", "joblib",
                         "torch"}
    forbidden_builtins = {"eval", "exec", "compile", "__import__"}
    package = Path(pytest_llmdet.__file__).parent
    for source in sorted((package / "golden").glob("*.py")):  # every golden-file module
        module = source.stem
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & forbidden_modules, module
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in forbidden_modules, module
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in forbidden_builtins, (module, node.func.id)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = getattr(node.func.value, "id", None)
                assert owner not in forbidden_modules, (module, owner, node.func.attr)
    # Text that looks like code is stored and read back as text.
    code = "__import__('os').system('touch pwned') {{7*7}} !!python/object/apply:os.system"
    golden = GoldenFile("t", {}, {code: GoldenEntry(code)})
    assert loads(dumps(golden).encode(), "f").snapshots[code].text == code


@pytest.mark.parametrize("folder", ["../outside", "a/../../outside", "/tmp/golden", "~/golden", "..\\outside",
                                    "C:\\golden", "\\\\server\\share\\golden", ".", "./"])
def test_a_snapshot_folder_outside_the_project_is_refused(pytester, folder):
    pytester.makeini(f"[pytest]\nllm_snapshot_dir = {folder}\n")
    pytester.makepyfile("def test_it(llm_snapshot):\n    assert 'x' == llm_snapshot\n")
    before = sorted(pytester.path.rglob("*"))
    result = run(pytester, "--llm-snapshot-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*llm_snapshot_dir = {folder!r} *"])
    errors = result.stderr.str()
    assert "outside the project root" in errors or "the test folder itself" in errors
    assert sorted(pytester.path.rglob("*")) == before  # nothing ran, nothing was written
    assert not (pytester.path.parent / "outside").exists()


def test_nested_relative_snapshot_folders_are_accepted():
    assert parse_snapshot_dir("golden/llm") == "golden/llm"
    with pytest.raises(SettingsError, match="outside the project root"):
        parse_snapshot_dir("golden/../../x")
