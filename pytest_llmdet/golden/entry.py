"""What a compared value becomes in a golden file: a `Generation` its tokens, text, margins, prompt and settings
as the file will hold them; a `str` its text alone. Anything else is a usage error of the test."""

from __future__ import annotations

from typing import Any

from pytest_llmdet.generation import Generation
from pytest_llmdet.golden.format import GoldenEntry, as_stored, prompt_hash

# What one output is: one snapshot name compared twice must give these the same (top-k log-probs wobble like
# margins, so they are not compared).
SAME_OUTPUT_FIELDS = ("token_ids", "text", "finish_reason", "prompt", "prompt_sha256", "settings")


class SnapshotUsageError(TypeError):
    """`llm_snapshot` was compared with something it cannot store, or used in a way it cannot be."""


def entry_from(value: Any) -> GoldenEntry:
    """The golden entry for a Generation (tokens, text, margins) or a plain string (text only)."""
    if isinstance(value, Generation):
        # The prompt and settings as the file will hold them: a tuple in a chat prompt or a setting would
        # otherwise differ from the list read back, and every update of an unchanged output would rewrite it.
        return GoldenEntry(text=value.text, token_ids=list(value.token_ids), margins=list(value.margins),
                           prompt=_stored(value.prompt, "prompt"), prompt_sha256=prompt_hash(value.prompt_token_ids),
                           finish_reason=value.finish_reason, settings=_stored(dict(value.settings), "settings"),
                           top_k_ids=value.top_k_ids, top_k_logprobs=value.top_k_logprobs)
    if isinstance(value, str):
        _check_storable(value)
        return GoldenEntry(text=value)
    raise SnapshotUsageError(
        f"llm_snapshot compares a Generation (from llm.generate) or a str, not {type(value).__name__}"
    )


def same_output(first: GoldenEntry, second: GoldenEntry) -> bool:
    """Whether two entries are one output (one snapshot name compared twice in a test must be)."""
    return all(getattr(first, name) == getattr(second, name) for name in SAME_OUTPUT_FIELDS)


def _stored(value: Any, what: str) -> Any:
    try:
        return as_stored(value)
    except (TypeError, ValueError, UnicodeEncodeError) as error:
        failure = f"the generation's {what} cannot be stored in a golden file (JSON data only): {error}"
    raise SnapshotUsageError(failure)


def _check_storable(text: str) -> None:
    # A lone surrogate (only possible in a hand-made str, never in decoded model output) has no UTF-8 form:
    # refuse it here, with the position, rather than fail while writing the golden file.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise SnapshotUsageError(
            f"the text has a lone surrogate {text[error.start]!r} at index {error.start}, which a UTF-8 "
            "golden file cannot store; compare valid text"
        ) from None


__all__ = ["SnapshotUsageError", "entry_from", "same_output"]
