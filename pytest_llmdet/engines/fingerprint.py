"""The environment fingerprint in each golden file's header: what produced the recorded tokens.

A local model is identified by a hash of its weight files, cached by path, size, modification and change
time and inode so that a large model is hashed once, not on every run (and a file replaced in place with its
size and modification time kept, by `cp -p`, `tar x` or `touch -r`, is hashed again); a hub model by its
revision. The tokenizer's files and the chat template are hashed too, so that an in-place change of the
model folder that changes the prompt tokens is named; and on a CPU, the instruction set torch's kernels use
(`ATEN_CPU_CAPABILITY` chooses an older one), which changes bfloat16 outputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from pytest_llmdet.versions import package_version

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
# The files a tokenizer is loaded from (transformers' names for every kind of tokenizer); the chat template, in its
# own file or in tokenizer_config.json, has a hash of its own (chat_template_sha256).
TOKENIZER_PATTERNS = ("tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                      "*.model")
DEFAULT_ENGINE = "transformers"
# Fields added to the fingerprint after golden files were first recorded: a file recorded without one does not
# say what it was, so its absence is not shown as a change.
LATER_FIELDS = ("cpu_capability", "tokenizer_sha256", "chat_template_sha256", "eos_token_ids", "served_root",
                "served_max_model_len")


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a model directory, in a stable order."""
    return sorted({p for pattern in WEIGHT_PATTERNS for p in directory.glob(pattern) if p.is_file()})


def tokenizer_files(directory: Path) -> list[Path]:
    """The tokenizer and chat-template files of a model directory, in a stable order."""
    return sorted({p for pattern in TOKENIZER_PATTERNS for p in directory.glob(pattern) if p.is_file()})


def hash_tokenizer(directory: Path) -> str | None:
    """sha256 over the tokenizer files (names and bytes; small, so not cached); None when there are none."""
    files = tokenizer_files(directory)
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(directory).as_posix()}:{hashlib.sha256(path.read_bytes()).hexdigest()}\n"
                      .encode())
    return digest.hexdigest()[:16]


def hash_chat_template(template: Any) -> str | None:
    """A short hash of the chat template a tokenizer renders chat prompts with (a string, or a dict of named
    templates); None when it has none."""
    if not template:
        return None
    text = template if isinstance(template, str) else json.dumps(template, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def cpu_capability() -> str:
    """The CPU instruction set torch's kernels use here, lower case (avx512, avx2, default, ...); imports torch."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability()).lower()


def _cache_key(path: Path) -> str:
    # Size and modification time alone miss a file replaced with both kept (cp -p, tar x, touch -r): the change
    # time and the inode change then.
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}|{stat.st_ctime_ns}"


def hash_weights(directory: Path, cache: MutableMapping[str, str] | None = None) -> str:
    """sha256 over the weight files (names and bytes); reuses `cache` entries keyed by path, size, modification
    and change time and inode."""
    digest = hashlib.sha256()
    for path in weight_files(directory):
        key = _cache_key(path)
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
    served_model: str | None = None, logprobs: str | None = None, chat_template: Any = None,
    eos_token_ids: list[int] | None = None, served_root: str | None = None, served_max_model_len: int | None = None,
) -> dict[str, Any]:
    """The header fingerprint: model and revision or weights hash, dtype, device type, versions, settings, and
    accelerate's device map when one placed the model, and the engine when it is not transformers (its
    version and arguments, the served model, and whether the margins come from processed log-probs; of a
    server, what its /v1/models says of the model: its root, the weights it loaded, and its max_model_len).

    `weights=False` leaves out a local model's weights and tokenizer hashes (reading every weight file) and the
    chat template's, for a check that does not need them: one that passes, with no JSON report asked for."""
    identity = model_identity(model, source_kind, location, revision, cache, weights, chat_template)
    device_type = device.split(":")[0]
    fingerprint = {
        **identity,
        "dtype": dtype,
        "device_type": device_type,
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "generation": generation,
    }
    if device_map is not None:  # only then: the fingerprints of golden files recorded without one stay as they are
        fingerprint["device_map"] = device_map
    if engine != DEFAULT_ENGINE:  # only then: golden files recorded on transformers keep their fingerprints
        fingerprint.update(engine_fields(engine, engine_version, engine_arguments, served_model, served_root,
                                         served_max_model_len, logprobs))
    if compute_capability is not None:  # a GPU's (such as "8.0"): snapshot variants may be keyed by it
        fingerprint["compute_capability"] = compute_capability
    if device_type == "cpu":  # the CPU's instruction set: variants are keyed by it too (cpu:bfloat16:avx2)
        fingerprint["cpu_capability"] = cpu_capability()
    if eos_token_ids is not None:  # an early or late EOS from a changed EOS set is named by it
        fingerprint["eos_token_ids"] = list(eos_token_ids)
    return fingerprint


def model_identity(model: str, source_kind: str, location: str, revision: str | None,
                   cache: MutableMapping[str, str] | None, weights: bool, chat_template: Any) -> dict[str, Any]:
    """The model's name and what identifies its files: a hub model's revision; a local model's weights and
    tokenizer hashes (with `weights`); the chat template's hash (with `weights`)."""
    identity: dict[str, Any] = {"model": model}
    if source_kind == "hub":
        identity["revision"] = revision
    elif weights:
        identity["weights_sha256"] = hash_weights(Path(location), cache)
        tokenizer = hash_tokenizer(Path(location))
        if tokenizer is not None:
            identity["tokenizer_sha256"] = tokenizer
    if weights and hash_chat_template(chat_template) is not None:
        identity["chat_template_sha256"] = hash_chat_template(chat_template)
    return identity


def engine_fields(engine: str, version: str | None, arguments: dict[str, Any] | None, served_model: str | None,
                  served_root: str | None, served_max_model_len: int | None, logprobs: str | None) -> dict[str, Any]:
    """What a fingerprint records of an engine other than transformers: its name, version and arguments, the
    served model, what a server's /v1/models says of it (root: a redeployment from another folder or hub id),
    and where the margins come from; fields without a value are left out."""
    fields: dict[str, Any] = {"engine": engine, "engine_version": version}
    if arguments:
        fields["engine_arguments"] = dict(sorted(arguments.items()))
    optional = {"served_model": served_model, "served_root": served_root, "served_max_model_len": served_max_model_len}
    fields.update({name: value for name, value in optional.items() if value is not None})
    fields["logprobs"] = logprobs
    return fields


def engine_of(fingerprint: dict[str, Any] | None) -> str:
    """The engine that produced a fingerprint (transformers when it names none)."""
    return str((fingerprint or {}).get("engine") or DEFAULT_ENGINE)


def fingerprint_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields that differ, as `field: old → new` lines (nested settings flattened; a fingerprint that names
    no engine was recorded on transformers, so a check on vLLM says `engine: transformers → vllm`; a field of
    LATER_FIELDS that the recorded one lacks is not known, so not a change)."""
    old, new = _flatten(recorded), _flatten(current)
    for side in (old, new):
        side.setdefault("engine", DEFAULT_ENGINE)
    return [
        f"{key}: {old.get(key, '(absent)')} → {new.get(key, '(absent)')}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and not (key in LATER_FIELDS and key not in old)
    ]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
