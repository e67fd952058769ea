"""Per-environment variants of a snapshot, chosen by best match as transformers' `Expectations` does.

A snapshot holds a default entry (recorded in the environment of the file's fingerprint) and optional
variants keyed by environment: `[<engine>/]<device type>:<dtype>[:<capability>]`, where the capability is a
GPU's compute capability (`cuda:float16:8.0`) or the CPU instruction set torch's kernels use
(`cpu:bfloat16:avx2`, `cpu:bfloat16:avx512`), and the engine is named when it is not transformers
(`vllm/cuda:bfloat16`, `openai/server:unknown`). `Environment.parse` reads a key and `Environment.key` writes
one: the golden-file reader, the writer, the chooser and the fingerprint diff all go through them.

For the current environment the best candidate wins: an exact match first (device type, dtype and
capability), then the same device type and dtype, then the same device type, then the default; on a tie the
default wins, then the first key in order. A candidate of another engine never matches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT = None  # the variant name of the default entry
DEFAULT_ENGINE = "transformers"  # the engine of a key or fingerprint that names none
_PART = re.compile(r"^[A-Za-z0-9_.-]+$")
# The fingerprint field that holds the capability of each device type (any other: compute_capability).
CAPABILITY_FIELDS = {"cpu": "cpu_capability"}
KEY_FORM = '[<engine>/]<device type>:<dtype>[:<capability>], like "cpu:bfloat16:avx2" or "vllm/cuda:float16:8.0"'


def capability_field(device_type: str) -> str:
    """The fingerprint field that records the capability of `device_type`."""
    return CAPABILITY_FIELDS.get(device_type, "compute_capability")


@dataclass(frozen=True)
class Environment:
    """What a variant is keyed by: engine, device type, dtype and (when known) the device's capability."""

    device_type: str
    dtype: str
    capability: str | None = None
    engine: str = DEFAULT_ENGINE

    @property
    def key(self) -> str:
        """The variant key of this environment (`parse` reads it back)."""
        key = ":".join(part for part in (self.device_type, self.dtype, self.capability) if part)
        return key if self.engine == DEFAULT_ENGINE else f"{self.engine}/{key}"

    @classmethod
    def parse(cls, key: str) -> Environment:
        """The environment of a variant key; ValueError saying what is wrong when it is malformed."""
        engine, slash, rest = key.rpartition("/") if isinstance(key, str) else ("", "", "")
        parts = rest.split(":")
        if (slash and not _PART.match(engine)) or len(parts) not in (2, 3) or not all(map(_PART.match, parts)):
            raise ValueError(f"{key!r} is not a variant key of the form {KEY_FORM}")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None, engine or DEFAULT_ENGINE)

    @classmethod
    def of_fingerprint(cls, fingerprint: Mapping[str, Any] | None) -> Environment | None:
        """The environment a fingerprint was recorded in (None when it has no device type or dtype)."""
        if not fingerprint or not fingerprint.get("device_type") or not fingerprint.get("dtype"):
            return None
        device_type = str(fingerprint["device_type"])
        capability = fingerprint.get(capability_field(device_type))
        return cls(device_type, str(fingerprint["dtype"]), str(capability) if capability else None,
                   str(fingerprint.get("engine") or DEFAULT_ENGINE))

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fingerprint fields this environment determines (a capability it does not know is absent)."""
        fields: dict[str, Any] = {"device_type": self.device_type, "dtype": self.dtype}
        if self.capability is not None:
            fields[capability_field(self.device_type)] = self.capability
        return fields


def environment_of(fingerprint: Mapping[str, Any] | None) -> Environment | None:
    """The variant environment of a fingerprint (None when it has no device type or dtype)."""
    return Environment.of_fingerprint(fingerprint)


def parse_key(key: str) -> Environment | None:
    """The environment of a variant key, or None when the key is malformed."""
    try:
        return Environment.parse(key)
    except ValueError:
        return None


def recorded_fingerprint(fingerprint: dict[str, Any], variant: str | None) -> dict[str, Any]:
    """The fingerprint a variant was recorded under, as far as its key tells: the file's, with its environment
    (a capability the key does not name is unknown, so left out)."""
    if variant is None:
        return fingerprint
    environment = Environment.parse(variant)
    capabilities = {"compute_capability", *CAPABILITY_FIELDS.values()}
    recorded = {k: v for k, v in fingerprint.items() if k not in capabilities}
    recorded.update(environment.fingerprint_fields())
    return recorded


def match_score(candidate: Environment | None, current: Environment) -> int:
    """3 exact, 2 same device type and dtype, 1 same device type, 0 no match (another engine never matches)."""
    if candidate is None or candidate.device_type != current.device_type or candidate.engine != current.engine:
        return 0
    if candidate.dtype != current.dtype:
        return 1
    return 3 if candidate.capability == current.capability else 2


def choose_variant(keys: list[str], default: Environment | None, current: Environment | None) -> str | None:
    """The variant to compare with (None: the default)."""
    if current is None:
        return DEFAULT
    best, best_score = DEFAULT, match_score(default, current)
    for key in keys:
        score = match_score(parse_key(key), current)
        if score > best_score:
            best, best_score = key, score
    return best


def is_exact(key: str | None, default: Environment | None, current: Environment | None) -> bool:
    """Whether the chosen candidate was recorded in exactly the current environment."""
    candidate = default if key is None else parse_key(key)
    return current is not None and match_score(candidate, current) == 3


def recorded_here(key: str | None, default: Environment | None, current: Environment | None) -> bool:
    """Whether a candidate was recorded in this environment as far as its key tells: exactly, or with the same
    engine, device type and dtype where the key names no capability (a key or fingerprint written before the
    capability was recorded)."""
    candidate = default if key is None else parse_key(key)
    score = 0 if current is None else match_score(candidate, current)
    return score == 3 or (score == 2 and candidate.capability is None)


def describe(key: str | None, default: Environment | None) -> str:
    """How a report names the compared candidate."""
    if key is None:
        return f"the default ({default.key})" if default else "the default"
    return f"variant {key}"
