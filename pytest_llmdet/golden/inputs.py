"""What a golden snapshot records about its input (the prompt, its token IDs, the generation settings), compared
with the current call's: a changed input is not a model regression, and a gate that ignored it would pass
while an update rewrites the file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pytest_llmdet.golden.format import GoldenEntry

ABSENT = "(absent)"
SHOWN_CHARS = 80  # of a prompt or a setting's value, in a report line
# The fingerprint fields that explain changed prompt tokens.
PROMPT_TOKEN_SOURCES = ("chat_template_sha256", "tokenizer_sha256")


@dataclass(frozen=True)
class InputChange:
    """One recorded input that differs: `field` is `prompt`, `prompt tokens` or `setting <name>`."""

    field: str
    old: Any
    new: Any

    def to_data(self) -> dict[str, Any]:
        return {"field": self.field, "old": self.old, "new": self.new}

    def line(self) -> str:
        """`setting repetition_penalty: 1.05 → 1.1`."""
        return f"{self.field}: {_shown(self.old)} → {_shown(self.new)}"


def input_changes(golden: GoldenEntry, current: GoldenEntry) -> list[InputChange]:
    """The recorded inputs of `golden` that `current` does not share (empty for text-only snapshots, and for a
    field the golden did not record)."""
    if golden.token_ids is None or current.token_ids is None:
        return []
    changes = []
    if golden.prompt != current.prompt:
        changes.append(InputChange("prompt", golden.prompt, current.prompt))
    elif golden.prompt_sha256 is not None and golden.prompt_sha256 != current.prompt_sha256:
        changes.append(InputChange("prompt tokens", f"prompt_sha256 {golden.prompt_sha256}",
                                   f"prompt_sha256 {current.prompt_sha256}"))
    if golden.settings is not None:
        old, new = golden.settings, current.settings or {}
        for name in sorted(set(old) | set(new)):
            if old.get(name, ABSENT) != new.get(name, ABSENT):
                changes.append(InputChange(f"setting {name}", old.get(name, ABSENT), new.get(name, ABSENT)))
    return changes


def prompt_token_sources(recorded: dict[str, Any], current: dict[str, Any] | None) -> str:
    """Why the prompt tokens may have changed, from the fingerprints: the chat template's and the tokenizer's
    hashes, old → new, or that they are unchanged (or were not recorded)."""
    current = current or {}
    changed = [f"{name}: {recorded[name]} → {current.get(name, ABSENT)}" for name in PROMPT_TOKEN_SOURCES
               if name in recorded and recorded[name] != current.get(name)]
    if changed:
        return "; ".join(changed)
    known = [name for name in PROMPT_TOKEN_SOURCES if name in recorded]
    if known:
        return f"{' and '.join(known)} unchanged: the tokenization itself changed (the tokenizers library?)"
    return "the golden file records no tokenizer or chat-template hash to compare (recorded by an older version)"


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) and value.startswith("prompt_sha256 ") else \
        json.dumps(value, ensure_ascii=False, sort_keys=True) if value is not ABSENT else ABSENT
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
