"""Where a model comes from (the embedded model, a local directory, a hub id), found without loading anything,
and its generation_config.json read without transformers: what the report header needs on every run, so no
dataclass (defining one costs about 0.5 ms) and nothing heavy is imported here."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

EMBEDDED_MODEL_DIR = Path(__file__).parent.parent / "embedded_model"  # pytest_llmdet/embedded_model
EMBEDDED_MODEL_NAME = "pytest-llmdet/embedded-tiny-qwen2"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelLoadError(Exception):
    """A model could not be loaded; the message says what was tried and what to do."""


class ModelSource(NamedTuple):
    """Where a model comes from: the embedded model, a local directory, or a hub id."""

    kind: str  # "embedded", "local" or "hub"
    location: str  # a directory path, or the hub id
    name: str  # as the user wrote it

    def describe(self) -> str:
        if self.kind == "embedded":
            return f"{self.name} (embedded, {self.location})"
        if self.kind == "local":
            return f"{self.name} (local directory {self.location})"
        return f"{self.name} (hub)"


WHAT_TO_SET = "--llm-model / llm_model (or @pytest.mark.llm_model)"


def resolve_source(name: str | None, base_dirs: list[Path]) -> ModelSource:
    """Map what the user wrote to a model source: None is the embedded model; an existing directory
    (tried relative to each of `base_dirs`) is local; anything else shaped like `org/name` is a hub id.

    A file is refused (it is neither a model directory nor a hub id), and so is a name that is neither; the
    message names each path tried, once."""
    if name is None:
        return ModelSource("embedded", str(EMBEDDED_MODEL_DIR), EMBEDDED_MODEL_NAME)
    path = Path(name).expanduser()
    tried = [path] if path.is_absolute() else [base / path for base in base_dirs]
    candidates = list(dict.fromkeys(Path(os.path.abspath(candidate)) for candidate in tried))  # each path once
    for candidate in candidates:
        if candidate.is_dir():
            return ModelSource("local", str(candidate.resolve()), name)
    files = [candidate for candidate in candidates if candidate.exists()]
    if files:
        folder = files[0].parent
        hint = f"here: {folder}" if (folder / "config.json").is_file() else "what save_pretrained writes"
        raise ModelLoadError(
            f"model {name!r} is a file ({files[0]}), not a model directory; point {WHAT_TO_SET} at the folder "
            f"that holds config.json, the weights and the tokenizer files ({hint})")
    if _HUB_ID_RE.match(name) and not name.startswith("."):
        return ModelSource("hub", name, name)
    where = (f"{candidates[0]} is not a directory" if len(candidates) == 1 else
             f"none of {', '.join(map(str, candidates))} is a directory")
    raise ModelLoadError(
        f"model {name!r} not found: {where}, and {name!r} is not a hub id (org/name); point {WHAT_TO_SET} at "
        "a model directory or a hub id such as Qwen/Qwen1.5-0.5B-Chat")


def read_local_generation_config(source: ModelSource) -> dict[str, Any] | None:
    """The model's generation_config.json as a dict, read without transformers; None when not local."""
    if source.kind == "hub":
        return None
    path = Path(source.location) / "generation_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
