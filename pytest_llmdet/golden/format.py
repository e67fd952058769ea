"""The golden file format: UTF-8 JSON (no byte-order mark written; one an editor added is read past) with
sorted keys, 2-space indent and a trailing newline.

Lists of numbers sit on one line and the text is a list of lines, so that a pull-request diff shows the
changed lines. Parsing is data-only (no pickle, no eval) and every problem is reported with the file.

    {
      "format_version": 1,
      "fingerprint": {...},          # model, revision or weights hash, dtype, device type, versions, settings
      "snapshots": {
        "<name>": {                  # one snapshot: its default entry, and optional environment variants
          "finish_reason": "length", "margins": [...], "prompt": "...", "prompt_sha256": "...",
          "settings": {...}, "text_lines": ["..."], "token_ids": [...],
          "top_k_ids": [[...], ...], "top_k_logprobs": [[...], ...],  # optional: tolerant comparison only
          "variants": {"cpu:bfloat16:avx2": {...an entry like this one, without variants...}}  # optional
        }
      },
      "test": "<node id>"
    }
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_llmdet.golden.variants import KEY_FORM, Environment

FORMAT_VERSION = 1
MAX_FILE_BYTES = 20 * 1024 * 1024
MARGIN_DECIMALS = 4
MAX_TOKEN_ID = 2**31 - 1  # tokenizers and torch take token IDs as 32-bit integers
MAX_DEPTH = 64  # nesting of objects and lists; ours go about 8 deep (a chat prompt in a variant)
UTF8_BOM = codecs.BOM_UTF8
_CONFLICT_MARKER = re.compile(r"^(<<<<<<<|>>>>>>>) ", re.MULTILINE)


class GoldenFileError(ValueError):
    """A golden file cannot be used: unreadable, not JSON, or not in the expected shape."""


@dataclass
class GoldenEntry:
    """One snapshot: what a generate call gave when it was recorded. `token_ids` is None for a text-only
    snapshot (a plain string compared as text)."""

    text: str
    token_ids: list[int] | None = None
    margins: list[float | None] | None = None
    prompt: Any = None
    prompt_sha256: str | None = None
    finish_reason: str | None = None
    settings: dict[str, Any] | None = None
    top_k_ids: list[list[int]] | None = None  # per step, best first; stored for a tolerant comparison only
    top_k_logprobs: list[list[float | None]] | None = None
    # entries recorded in other environments, keyed `[<engine>/]<device type>:<dtype>[:<capability>]` (variants.py)
    variants: dict[str, GoldenEntry] = field(default_factory=dict)

    def replaced(self, target: str | None, current: GoldenEntry) -> GoldenEntry:
        """This snapshot with its default (target None) or one variant replaced by `current`; others are kept."""
        if target is None:
            return replace(current, variants=dict(self.variants))
        return replace(self, variants=dict(sorted({**self.variants, target: current}.items())))


@dataclass
class GoldenFile:
    """The golden file of one test: a fingerprint of the environment and its named snapshots."""

    test: str
    fingerprint: dict[str, Any] = field(default_factory=dict)
    snapshots: dict[str, GoldenEntry] = field(default_factory=dict)


def prompt_hash(token_ids: list[int]) -> str:
    """A short, stable hash of prompt token IDs: reveals a changed tokenizer or chat template."""
    return hashlib.sha256(",".join(map(str, token_ids)).encode("ascii")).hexdigest()[:16]


def round_margin(value: float | None) -> float | None:
    """A margin as stored: rounded to 4 decimals; infinite (a single candidate) as null."""
    if value is None or math.isinf(value) or math.isnan(value):
        return None
    return round(value, MARGIN_DECIMALS)


def entry_to_data(entry: GoldenEntry) -> dict[str, Any]:
    data: dict[str, Any] = {"text_lines": entry.text.splitlines(keepends=True)}
    if entry.variants:
        data["variants"] = {key: entry_to_data(variant) for key, variant in entry.variants.items()}
    if entry.token_ids is not None:
        data.update(
            token_ids=entry.token_ids,
            margins=[round_margin(m) for m in entry.margins or []],
            prompt=entry.prompt,
            prompt_sha256=entry.prompt_sha256,
            finish_reason=entry.finish_reason,
            settings=entry.settings or {},
        )
        if entry.top_k_ids is not None:
            data.update(top_k_ids=entry.top_k_ids,
                        top_k_logprobs=[[round_margin(v) for v in step] for step in entry.top_k_logprobs or []])
    return data


def dumps(golden: GoldenFile) -> str:
    """Serialize deterministically: the same content always gives the same bytes."""
    data = {
        "format_version": FORMAT_VERSION,
        "test": golden.test,
        "fingerprint": golden.fingerprint,
        "snapshots": {name: entry_to_data(entry) for name, entry in golden.snapshots.items()},
    }
    return _encode(data, 0) + "\n"


def as_stored(value: Any) -> Any:
    """`value` as a golden file stores it and reads it back (tuples become lists, keys strings), so that a
    recorded prompt or settings compare equal to what the file holds. ValueError or TypeError when JSON cannot
    hold it."""
    return json.loads(_encode(value, 0))


def _encode(value: Any, level: int) -> str:
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{_scalar(str(k))}: {_encode(value[k], level + 1)}" for k in sorted(value)]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        if all(v is None or isinstance(v, (int, float, bool)) for v in value):
            return "[" + ", ".join(_scalar(v) for v in value) + "]"
        return "[\n" + ",\n".join(inner + _encode(v, level + 1) for v in value) + "\n" + pad + "]"
    return _scalar(value)


def _scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def loads(raw: bytes, where: str, size: int | None = None) -> GoldenFile:
    """Parse and validate a golden file; `where` names it in every error. `size` is the file's size when
    `raw` holds only its first bytes."""
    size = max(len(raw), size or 0)
    if size > MAX_FILE_BYTES:
        raise GoldenFileError(
            f"{where} is {size / 1e6:.1f} MB, over the {MAX_FILE_BYTES // (1024 * 1024)} MB limit for a "
            "golden file: it is not one pytest-llmdet wrote"
        )
    # A byte-order mark (some editors save one) is not part of the content: read past it. Writes never add one.
    skipped = len(UTF8_BOM) if raw.startswith(UTF8_BOM) else 0
    try:
        text = raw[skipped:].decode("utf-8")
    except UnicodeDecodeError as error:
        raise GoldenFileError(f"{where} is not valid UTF-8 (byte {error.start + skipped})") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                          object_pairs_hook=_refuse_duplicate_keys)
    except RecursionError:
        raise GoldenFileError(f"{where} is nested too deeply (over {MAX_DEPTH} levels): it is not one "
                              "pytest-llmdet wrote") from None
    except json.JSONDecodeError as error:
        hint = "an unresolved merge conflict?" if _CONFLICT_MARKER.search(text) else \
            "truncated or edited by hand?"
        raise GoldenFileError(f"{where} is not valid JSON: {error.msg} at line {error.lineno} column "
                              f"{error.colno} ({hint})") from None
    except ValueError as error:
        raise GoldenFileError(f"{where} is not valid JSON: {error}") from None
    _expect(_depth(data) <= MAX_DEPTH, where,
            f"nested too deeply (over {MAX_DEPTH} levels): it is not one pytest-llmdet wrote")
    return _from_data(data, where)


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys while a reviewer reads the first: refuse the file instead.
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"the key {duplicate!r} appears twice in one object (a reader sees the first, the "
                         "parser would take the last); keep one")
    return data


def _depth(data: Any) -> int:
    """How deeply objects and lists nest in `data`, counted without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a golden file")


def _finite_float(text: str) -> float:
    # 1e400 parses as infinity, which no golden file can hold (and which could not be written back).
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range in a golden file")
    return value


def _expect(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise GoldenFileError(f"{where}: {message}")


def _from_data(data: Any, where: str) -> GoldenFile:
    _expect(isinstance(data, dict), where, "the top level must be a JSON object")
    version = data.get("format_version")
    _expect(isinstance(version, int) and not isinstance(version, bool), where, "missing format_version")
    _expect(version <= FORMAT_VERSION, where,
            f"format_version {version} was written by a newer pytest-llmdet (this one reads "
            f"{FORMAT_VERSION}); upgrade pytest-llmdet")
    _expect(version == FORMAT_VERSION, where, f"unknown format_version {version}")
    _expect(isinstance(data.get("test"), str), where, "missing or non-string 'test'")
    _expect(isinstance(data.get("fingerprint"), dict), where, "missing or non-object 'fingerprint'")
    snapshots = data.get("snapshots")
    _expect(isinstance(snapshots, dict), where, "missing or non-object 'snapshots'")
    entries = {name: _entry_from_data(value, f"{where}, snapshot {name!r}")
               for name, value in snapshots.items()}
    return GoldenFile(test=data["test"], fingerprint=data["fingerprint"], snapshots=entries)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _entry_from_data(data: Any, where: str, variant: bool = False) -> GoldenEntry:
    entry = _plain_entry_from_data(data, where)
    variants = data.get("variants")
    if variants is None:
        return entry
    _expect(not variant, where, "a variant cannot hold 'variants' of its own")
    _expect(isinstance(variants, dict), where, f"'variants' must be an object keyed by environment, {KEY_FORM}")
    for key in variants:
        try:
            Environment.parse(key)
        except ValueError as error:
            raise GoldenFileError(f"{where}: 'variants' must be keyed by environment: {error}") from None
    entry.variants = {key: _entry_from_data(value, f"{where}, variant {key!r}", variant=True)
                      for key, value in variants.items()}
    return entry


def _plain_entry_from_data(data: Any, where: str) -> GoldenEntry:
    _expect(isinstance(data, dict), where, "must be a JSON object")
    lines = data.get("text_lines")
    _expect(isinstance(lines, list) and all(isinstance(x, str) for x in lines), where,
            "'text_lines' must be a list of strings")
    token_ids = data.get("token_ids")
    if token_ids is None:
        return GoldenEntry(text="".join(lines))
    _expect(isinstance(token_ids, list) and all(_is_int(t) and 0 <= t <= MAX_TOKEN_ID for t in token_ids),
            where, "'token_ids' must be a list of non-negative integers (token IDs)")
    margins = data.get("margins")
    _expect(isinstance(margins, list) and len(margins) == len(token_ids)
            and all(m is None or _is_finite_number(m) for m in margins),
            where, "'margins' must be a list of numbers (or null) as long as 'token_ids'")
    _expect(data.get("finish_reason") in ("eos", "length"), where,
            "'finish_reason' must be 'eos' or 'length'")
    _expect(isinstance(data.get("settings"), dict), where, "'settings' must be an object")
    _expect(data.get("prompt_sha256") is None or isinstance(data.get("prompt_sha256"), str), where,
            "'prompt_sha256' must be a string")
    top_ids, top_logprobs = _top_k_from_data(data, len(token_ids), where)
    return GoldenEntry(text="".join(lines), token_ids=token_ids, margins=margins, prompt=data.get("prompt"),
                       prompt_sha256=data.get("prompt_sha256"), finish_reason=data["finish_reason"],
                       settings=data["settings"], top_k_ids=top_ids, top_k_logprobs=top_logprobs)


def _top_k_from_data(data: dict[str, Any], steps: int, where: str
                     ) -> tuple[list[list[int]] | None, list[list[float | None]] | None]:
    # Optional (written for a tolerant comparison only), so a file without them is still format_version 1.
    ids, logprobs = data.get("top_k_ids"), data.get("top_k_logprobs")
    if ids is None and logprobs is None:
        return None, None
    _expect(isinstance(ids, list) and len(ids) == steps
            and all(isinstance(step, list) and all(_is_int(t) and 0 <= t <= MAX_TOKEN_ID for t in step)
                    for step in ids),
            where, "'top_k_ids' must be a list of token-ID lists, one per token")
    _expect(isinstance(logprobs, list) and len(logprobs) == steps
            and all(isinstance(step, list) and len(step) == len(step_ids)
                    and all(v is None or _is_finite_number(v) for v in step)
                    for step, step_ids in zip(logprobs, ids, strict=False)),
            where, "'top_k_logprobs' must be a list of number lists shaped like 'top_k_ids'")
    return ids, logprobs
