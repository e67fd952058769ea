"""The environment fingerprint in each golden file's header: what produced the recorded tokens.

A local model is identified by a hash of its weight files, cached by path, size and modification time so
that a large model is hashed once, not on every run; a hub model by its revision.
"""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from pytest_llmdet.versions import package_version

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
DEFAULT_ENGINE = "transformers"


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a model directory, in a stable order."""
    return sorted({p for pattern in WEIGHT_PATTERNS for p in directory.glob(pattern) if p.is_file()})


def hash_weights(directory: Path, cache: MutableMapping[str, str] | None = None) -> str:
    """sha256 over the weight files (names and bytes); reuses `cache` entries keyed by path, size, mtime."""
    digest = hashlib.sha256()
    for path in weight_files(directory):
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        file_hash = cache.get(key) if cache is not None else None
        if file_hash is None:
            file_hash = _hash_file(path)
            if cache is not None:
                cache[key] = file_hash
        digest.update(f"{path.name}:{file_hash}\n".encode())
    return digest.hexdigest()[:16]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def environment_fingerprint(
    *, model: str, source_kind: str, location: str, revision: str | None, dtype: str, device: str,
    generation: dict[str, Any], cache: MutableMapping[str, str] | None = None,
    compute_capability: str | None = None, weights: bool = True, device_map: str | None = None,
    engine: str = "transformers", engine_version: str | None = None, engine_arguments: dict[str, Any] | None = None,
    served_model: str | None = None, logprobs: str | None = None,
) -> dict[str, Any]:
    """The header fingerprint: model and revision or weights hash, dtype, device type, versions, settings, and
    accelerate's device map when one placed the model, and the engine when it is not transformers (its
    version and arguments, the served model, and whether the margins come from processed log-probs).

    `weights=False` leaves out a local model's weights hash (reading every weight file) for a check that does
    not need it: one that passes, with no JSON report asked for."""
    identity: dict[str, Any] = {"model": model}
    if source_kind == "hub":
        identity["revision"] = revision
    elif weights:
        identity["weights_sha256"] = hash_weights(Path(location), cache)
    fingerprint = {
        **identity,
        "dtype": dtype,
        "device_type": device.split(":")[0],
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "generation": generation,
    }
    if device_map is not None:  # only then: the fingerprints of golden files recorded without one stay as they are
        fingerprint["device_map"] = device_map
    if engine != DEFAULT_ENGINE:  # only then: golden files recorded on transformers keep their fingerprints
        fingerprint["engine"] = engine
        fingerprint["engine_version"] = engine_version
        if engine_arguments:
            fingerprint["engine_arguments"] = dict(sorted(engine_arguments.items()))
        if served_model is not None:
            fingerprint["served_model"] = served_model
        fingerprint["logprobs"] = logprobs
    if compute_capability is not None:  # a GPU's (such as "8.0"): snapshot variants may be keyed by it
        fingerprint["compute_capability"] = compute_capability
    return fingerprint


def engine_of(fingerprint: dict[str, Any] | None) -> str:
    """The engine that produced a fingerprint (transformers when it names none)."""
    return str((fingerprint or {}).get("engine") or DEFAULT_ENGINE)


def fingerprint_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields that differ, as `field: old → new` lines (nested settings flattened; a fingerprint that names
    no engine was recorded on transformers, so a check on vLLM says `engine: transformers → vllm`)."""
    old, new = _flatten(recorded), _flatten(current)
    for side in (old, new):
        side.setdefault("engine", DEFAULT_ENGINE)
    return [
        f"{key}: {old.get(key, '(absent)')} → {new.get(key, '(absent)')}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
