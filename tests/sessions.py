"""What the plugin's tests share: running pytest with only this plugin loaded (in-process, or in a fresh
process with a clean environment), reading what a run left on disk, and the small suites several test files
record and check. Fixtures shared the same way live in conftest.py (`only_this_plugin`, `make_read_only`)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmdet.golden.store import TMP_SUFFIX

SNAPSHOTS = "__llm_snapshots__"


def run(pytester, *args: str):
    """Run pytest in-process on the pytester folder with pytest-llmdet (and what `args` names with -p)."""
    return pytester.runpytest("-p", "pytest_llmdet.plugin", "-p", "no:cacheprovider", *args)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a pytest subprocess: no settings of the outer run, only the plugins named."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LLMDET_", "SUITE_"))}
    env.update(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def pytest_command(*args: str, xdist: bool = False) -> list[str]:
    plugins = ["-p", "pytest_llmdet.plugin"] + (["-p", "xdist.plugin"] if xdist else [])
    return [sys.executable, "-m", "pytest", *plugins, "-p", "no:cacheprovider", "-q", *args]


def run_subprocess(cwd: Path, *args: str, xdist: bool = False, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(pytest_command(*args, xdist=xdist), cwd=cwd, env=clean_env(**env),
                          capture_output=True, text=True, timeout=300)


def golden_files(root: Path) -> dict[str, bytes]:
    """Every golden file below `root`, by path relative to it."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob(f"{SNAPSHOTS}/**/*.json"))
            if p.is_file()}


def pending_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.llmdet-pending"))


def section(output: str, test_name: str) -> str:
    """The failure section of one test in pytest's output."""
    header = rf"_{{3,}} {re.escape(test_name)} _{{3,}}\n"
    match = re.search(header + r"(.*?)(?=\n_{3,} |\n={3,} )", output, re.S)
    assert match, f"no failure section for {test_name}"
    return match.group(1)



def temporaries(root: Path) -> list[Path]:
    return sorted(root.rglob(f"*{TMP_SUFFIX}"))






READ_ONLY_SUITE = """
import os

def test_a(llm_snapshot):
    assert os.environ.get("SUITE_VERSION", "v1") + " a" == llm_snapshot

def test_b(llm_snapshot):
    assert "b is unchanged" == llm_snapshot
"""


STORY = """
def test_story(llm, llm_snapshot):
    assert llm.generate("The fox", max_new_tokens=12) == llm_snapshot
"""


GOLDEN = "__llm_snapshots__/test_story/test_story.json"


SCHEMA = Path(__file__).parent.parent / "docs" / "llm-report.schema.json"


TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
          "integer": int, "number": (int, float)}


def schema_errors(value, schema: dict, root: dict, where: str = "$") -> list[str]:
    """A small JSON Schema validator for the keywords the report schema uses (no dependency needed)."""
    if "$ref" in schema:
        return schema_errors(value, root["$defs"][schema["$ref"].rsplit("/", 1)[1]], root, where)
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not schema_errors(value, s, root, where)]
        return [] if len(matching) == 1 else [f"{where}: matches {len(matching)} of oneOf"]
    errors = []
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(isinstance(value, TYPES[t]) and not (isinstance(value, bool) and t in ("integer", "number"))
                   for t in types):
            return errors + [f"{where}: {value!r} is not {types}"]
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errors.append(f"{where}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        errors += [f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                errors += schema_errors(item, sub, root, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += schema_errors(item, schema["items"], root, f"{where}[{index}]")
    return errors


def validate_report(report: dict) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert schema_errors(report, schema, schema) == []
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.validate(report, schema)


THREE = """
def test_three(llm_snapshot):
    assert "first" == llm_snapshot(name="a")
    assert "second" == llm_snapshot(name="b")
    assert "third" == llm_snapshot(name="c")

def test_other(llm_snapshot):
    assert "other" == llm_snapshot
"""


THREE_GOLDEN = "__llm_snapshots__/test_three/test_three.json"


# Plain-string snapshots: no model, so each run takes a fraction of a second.
SUITE = """
def test_a(llm_snapshot):
    assert "a one" == llm_snapshot(name="one")
    assert "a two" == llm_snapshot(name="two")

def test_b(llm_snapshot):
    assert "b" == llm_snapshot
"""


def goldens(root: Path) -> dict[str, bytes]:
    """Every file below the snapshot folders (golden or not), by path relative to `root`."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and SNAPSHOTS in p.parts}


def recorded(pytester, suite: str = SUITE) -> dict[str, bytes]:
    pytester.makepyfile(test_mod=suite)
    result = run(pytester, "--llm-snapshot-update")
    assert result.ret == 0, result.stdout.str()
    return goldens(pytester.path)


UPDATE_LINE = "If the change is intended, re-record with: "


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


class cwd:
    def __init__(self, path: Path) -> None:
        self.path, self.old = path, None

    def __enter__(self) -> None:
        self.old = os.getcwd()
        os.chdir(self.path)

    def __exit__(self, *exc) -> None:
        os.chdir(self.old)


SEVERAL = """
def test_several(llm, llm_snapshot):
    assert llm.generate("The fox and the crow", max_new_tokens=6) == llm_snapshot(name="fox")
    assert llm.generate("The lion and the mouse", max_new_tokens=6) == llm_snapshot(name="lion")
    assert llm.generate("Once upon a time", max_new_tokens=6) == llm_snapshot(name="time")
"""


def retokened(golden: Path, names: list[str]) -> None:
    data = json.loads(golden.read_text())
    for name in names:
        data["snapshots"][name]["token_ids"][1] += 1
    golden.write_text(json.dumps(data))


def on_openai(url: str) -> tuple[str, ...]:
    return ("--llm-engine", "openai", "--llm-base-url", url)
