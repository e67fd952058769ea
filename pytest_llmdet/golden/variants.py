"""Per-environment variants of a snapshot, chosen by best match as transformers' `Expectations` does.

A snapshot holds a default entry (recorded in the environment of the file's fingerprint) and optional
variants keyed by environment: `<device type>:<dtype>` or `<device type>:<dtype>:<compute capability>`, such as
`cpu:bfloat16` or `cuda:float16:8.0`, with the engine in front when it is not transformers (`vllm/cuda:bfloat16`,
`openai/server:unknown`). For the current environment the best candidate wins: an exact match
first (device type, dtype and, when the key names one, compute capability), then the same device type and
dtype, then the same device type, then the default; on a tie the default wins, then the first key in order. A
candidate of another engine never matches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT = None  # the variant name of the default entry
DEFAULT_ENGINE = "transformers"  # the engine of a key or fingerprint that names none


@dataclass(frozen=True)
class Environment:
    """What a variant is keyed by."""

    device_type: str
    dtype: str
    capability: str | None = None
    engine: str = DEFAULT_ENGINE

    @property
    def key(self) -> str:
        key = ":".join(part for part in (self.device_type, self.dtype, self.capability) if part)
        return key if self.engine == DEFAULT_ENGINE else f"{self.engine}/{key}"


def environment_of(fingerprint: Mapping[str, Any] | None) -> Environment | None:
    """The variant environment of a fingerprint (None when it has no device type or dtype)."""
    if not fingerprint or not fingerprint.get("device_type") or not fingerprint.get("dtype"):
        return None
    capability = fingerprint.get("compute_capability")
    return Environment(str(fingerprint["device_type"]), str(fingerprint["dtype"]),
                       str(capability) if capability else None, str(fingerprint.get("engine") or DEFAULT_ENGINE))


def parse_key(key: str) -> Environment | None:
    """The environment of a variant key, or None when the key is malformed."""
    engine, slash, rest = key.rpartition("/")
    if slash and not engine:
        return None
    parts = rest.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        return None
    return Environment(parts[0], parts[1], parts[2] if len(parts) == 3 else None, engine or DEFAULT_ENGINE)


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


def describe(key: str | None, default: Environment | None) -> str:
    """How a report names the compared candidate."""
    if key is None:
        return f"the default ({default.key})" if default else "the default"
    return f"variant {key}"
