"""Shared helpers: local model directories derived from the embedded tiny model (no hub access needed)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import shutil
from pathlib import Path

import pytest

import pytest_llmdet
from pytest_llmdet.engines.models import EMBEDDED_MODEL_DIR

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
