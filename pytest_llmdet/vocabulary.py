"""The words the golden-file code branches on, as enums whose members are their strings: JSON, reports and
comparisons with plain strings see exactly the words they saw before.

Not imported at startup (an enum class costs about 0.2 to 0.4 ms to define): the settings keep plain strings for
these (the factor names too: settings.values.FACTOR_WORDS), and the code that branches on them compares with these
members, which equal those strings."""

from __future__ import annotations

from enum import Enum


class Word(str, Enum):
    """A word of pytest-llmdet's vocabulary (a status, a kind, a factor): a str whose members print, format and
    go into JSON as their value, so that no report changes (enum.StrEnum, which Python 3.10 lacks)."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


class FactorName(Word):
    """The factors of the determinism check (determinism/factors.py), in the order the matrix shows them
    (settings.values.FACTOR_WORDS, the same words as plain strings)."""

    BATCH = "batch"
    CACHE = "cache"
    STATIC_CACHE = "static-cache"
    PREFIX_CACHE = "prefix-cache"
    ATTENTION = "attention"
    THREADS = "threads"
    DTYPE = "dtype"


FACTOR_NAMES: tuple[FactorName, ...] = tuple(FactorName)


class SnapshotMode(Word):
    """What a run does with golden files."""

    OFF = "off"
    CHECK = "check"  # --llm-snapshot (and --llm-snapshot-review): compare, never write a golden file
    UPDATE = "update"  # --llm-snapshot-update: record what a check would fail


class CompareMode(Word):
    """How a snapshot's tokens are compared."""

    EXACT = "exact"
    TOLERANT = "tolerant"  # vLLM's check_logprobs_close rule, lengths checked


class SnapshotStatus(Word):
    """What happened to one snapshot in a run."""

    PASSED = "passed"
    FAILED = "failed"
    MISSING = "missing"  # counted as failed
    WRITTEN = "written"  # a new snapshot, once its file holds it
    UPDATED = "updated"  # a changed one, once its file holds it
    ERROR = "error"  # its write did not complete
    UNWRITTEN = "unwritten"  # queued for the test's write, not yet on disk (an error if the run ends so)


class Label(Word):
    """How a first divergence from a golden snapshot is judged."""

    NEAR_TIE = "near-tie"  # either side's margin below llm_near_tie: may flip on other hardware
    REGRESSION = "regression"  # both margins at or above it
    LENGTH = "length"  # one output ends where the other goes on
    INPUT_CHANGED = "input-changed"  # the golden was recorded from another prompt, prompt tokens or settings
    TOLERATED = "tolerated"  # tolerant: each side's token among the other's top-k
    OUTSIDE_TOP_K = "outside-top-k"  # tolerant: a token outside the other side's top-k
    NO_TOP_K = "no-top-k"  # tolerant: a side has no candidates to judge by
    EOS = "eos"  # tolerant: one side ends with EOS, the other goes on


class PendingStatus(Word):
    """Why a snapshot is pending review."""

    CHANGED = "changed"
    NEW = "new"


__all__ = ["CompareMode", "Label", "PendingStatus", "SnapshotMode", "SnapshotStatus", "Word"]
