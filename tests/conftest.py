"""Shared helpers: local model directories derived from the embedded tiny model (no hub access needed)."""

from __future__ import annotations

import errno
import importlib
import json
import os
import pkgutil
import shutil
from pathlib import Path

import pytest

import pytest_llmdet
from pytest_llmdet.engines.sources import EMBEDDED_MODEL_DIR

pytest_plugins = ["pytester"]

# pytester's in-process runs drop modules first imported during a run from sys.modules; importing a
# C extension such as torch a second time crashes the interpreter. Import them once, up front.
import filelock  # noqa: E402,F401
import numpy  # noqa: E402,F401
import safetensors.torch  # noqa: E402,F401
import tokenizers  # noqa: E402,F401
import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: E402,F401
from transformers.models.qwen2 import modeling_qwen2, tokenization_qwen2  # noqa: E402,F401

# The plugin imports most of its own modules lazily (see docs/llm-fixture.md, "Cheap when unused"). Import them all here
# too, so that every in-process run and every test (monkeypatching one, say) sees the same module objects,
# rather than a fresh copy per run that a test's `from pytest_llmdet import x` would not see.
for _module in pkgutil.walk_packages(pytest_llmdet.__path__, "pytest_llmdet."):
    if not _module.name.endswith("__main__"):
        importlib.import_module(_module.name)


def copy_model(destination: Path, generation_config: dict | None = None) -> Path:
    """A copy of the embedded model, optionally with its generation_config.json replaced."""
    shutil.copytree(EMBEDDED_MODEL_DIR, destination)
    if generation_config is not None:
        (destination / "generation_config.json").write_text(json.dumps(generation_config), encoding="utf-8")
    return destination


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """A local model directory: the embedded model copied under tmp_path."""
    return copy_model(tmp_path / "local-model")


@pytest.fixture
def embedded_generation_config() -> dict:
    return json.loads((EMBEDDED_MODEL_DIR / "generation_config.json").read_text(encoding="utf-8"))


def golden_for(content: bytes, nodeid: str) -> bytes:
    """A golden file's bytes as test `nodeid` would have written them: what a renamed or removed test leaves
    behind (only a file that names the test its path belongs to counts as a golden file of the suite)."""
    from pytest_llmdet.golden.format import dumps, loads

    golden = loads(content, "copy")
    golden.test = nodeid
    return dumps(golden).encode("utf-8")


@pytest.fixture
def only_this_plugin(monkeypatch):
    """In-process runs load only pytest-llmdet (and what a test names with -p): third-party plugins installed
    beside it would be imported again on every in-process run (pytester drops the modules a run imports). No CI,
    so that check runs keep pending files, and no ATEN_CPU_CAPABILITY from the outer run in fresh processes. A run
    with --llm-threads sets torch's thread count for the whole process: it is put back."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def refuses_new_files(folder: Path) -> bool:
    try:
        os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except PermissionError:
        return True
    os.unlink(folder / "probe")
    return False


@pytest.fixture
def make_read_only(monkeypatch):
    """Make a folder read-only with chmod. Where that does not stop writes (root, as in CI), the kernel's
    answer is simulated instead: every call that would create, rename or delete an entry in the folder
    fails with EACCES. Either way, the folder is checked to really refuse a new file."""
    changed: list[Path] = []

    def make(folder: Path) -> str:
        folder.chmod(0o555)
        changed.append(folder)
        if refuses_new_files(folder):
            return "chmod"
        inside = os.path.realpath(folder) + os.sep

        def denied(path) -> bool:
            return isinstance(path, (str, bytes, os.PathLike)) and \
                os.path.realpath(os.fsdecode(path)).startswith(inside)

        def refuse(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

        names = ("open", "replace", "rename", "unlink", "rmdir", "mkdir")
        real = {name: getattr(os, name) for name in names}

        def guarded_open(path, flags, *args, **kwargs):
            if flags & WRITE_FLAGS and denied(path):
                refuse(path)
            return real["open"](path, flags, *args, **kwargs)

        def guard(name):
            def guarded(path, *args, **kwargs):
                target = args[0] if name in ("replace", "rename") else path
                if denied(path) or denied(target):
                    refuse(target)
                return real[name](path, *args, **kwargs)
            return guarded

        monkeypatch.setattr(os, "open", guarded_open)
        for name in names[1:]:
            monkeypatch.setattr(os, name, guard(name))
        assert refuses_new_files(folder)
        return "simulated"

    yield make
    monkeypatch.undo()
    for folder in changed:
        folder.chmod(0o755)


@pytest.fixture
def start_stub():
    """Start stubs of an OpenAI-compatible server (tests/openai_stub.py) with the given options, stopped at
    teardown: each test counts its own requests. The model they share is loaded first, once per process, so that
    an in-process pytester run does not drop what it imports."""
    from openai_stub import OpenAIStub, load

    load(str(EMBEDDED_MODEL_DIR))
    started: list[OpenAIStub] = []

    def start(**options) -> OpenAIStub:
        started.append(OpenAIStub(**options).start())
        return started[-1]

    yield start
    for stub in started:
        stub.stop()
