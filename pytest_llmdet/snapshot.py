"""The `llm_snapshot` object a test compares against: `assert llm.generate("...") == llm_snapshot`.

Each test gets one `TestSnapshots`, which loads the test's golden file once, compares (check mode) or
queues new content (update mode), and writes the file atomically when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmdet.compare import Comparison, compare_text, compare_tokens, render_comparison
from pytest_llmdet.fingerprint import fingerprint_changes
from pytest_llmdet.generation import Generation
from pytest_llmdet.golden_format import GoldenEntry, GoldenFile, GoldenFileError, prompt_hash
from pytest_llmdet.store import read_golden, write_golden

CHECK, UPDATE = "check", "update"
_COMPARED_FIELDS = ("token_ids", "text", "finish_reason", "prompt", "prompt_sha256", "settings")


class SnapshotUsageError(TypeError):
    """`llm_snapshot` was compared with something it cannot store."""


@dataclass
class SnapshotOutcome:
    """What happened to one snapshot in this run."""

    nodeid: str
    name: str
    status: str  # passed, failed, missing, written, updated or deleted (an unused snapshot)
    file: str


def entry_from(value: Any) -> GoldenEntry:
    """The golden entry for a Generation (tokens, text, margins) or a plain string (text only)."""
    if isinstance(value, Generation):
        return GoldenEntry(text=value.text, token_ids=list(value.token_ids), margins=list(value.margins),
                           prompt=value.prompt, prompt_sha256=prompt_hash(value.prompt_token_ids),
                           finish_reason=value.finish_reason, settings=dict(value.settings))
    if isinstance(value, str):
        _check_storable(value)
        return GoldenEntry(text=value)
    raise SnapshotUsageError(
        f"llm_snapshot compares a Generation (from llm.generate) or a str, not {type(value).__name__}"
    )


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


def _safe_decoder(decode: Callable[[list[int]], str] | None) -> Callable[[list[int]], str] | None:
    # A hand-edited golden file may hold token IDs the tokenizer cannot decode: show them, do not crash.
    if decode is None:
        return None

    def safe(ids: list[int]) -> str:
        try:
            return decode(ids)
        except Exception:  # noqa: BLE001 - any tokenizer failure becomes a placeholder in the report
            return "<not decodable>"

    return safe


def _same_output(golden: GoldenEntry, current: GoldenEntry) -> bool:
    return all(getattr(golden, name) == getattr(current, name) for name in _COMPARED_FIELDS)


@dataclass
class TestSnapshots:
    """The snapshots of one test: its golden file, what it compared, and what it will write."""

    nodeid: str
    path: Path
    display_path: str
    mode: str
    near_tie: float
    update_command: str
    decoder: Callable[[], Callable[[list[int]], str] | None]
    fingerprint: Callable[[], dict[str, Any] | None]
    record: Callable[[SnapshotOutcome], None]
    used: list[str] = field(default_factory=list)
    updates: dict[str, GoldenEntry] = field(default_factory=dict)
    reports: list[str] = field(default_factory=list)  # full failure reports, shown as a report section
    _auto_index: int = 0
    _golden: GoldenFile | None = None
    _loaded: bool = False
    passive: bool = False  # a re-run of the determinism check: compare, record and write nothing

    def next_name(self) -> str:
        name = str(self._auto_index)
        self._auto_index += 1
        return name

    def golden(self) -> GoldenFile | None:
        if not self._loaded:
            failure = None
            try:
                self._golden = read_golden(self.path, self.display_path)
            except GoldenFileError as error:
                failure = f"{error}\nRe-record it with: {self.update_command}"
                self._golden = None  # an update replaces an unusable file, as asked
            if failure is not None and self.mode != UPDATE:
                import pytest

                pytest.fail(failure, pytrace=False)  # outside the except block: one message, not a chain
            self._loaded = True
        return self._golden

    def check(self, name: str, value: Any) -> tuple[bool, list[str]]:
        """Compare `value` with snapshot `name`; in update mode queue it instead. Returns (ok, report)."""
        if self.passive:
            return True, []
        current = entry_from(value)
        self.used.append(name)
        golden_file = self.golden()
        golden = golden_file.snapshots.get(name) if golden_file else None
        if golden is None:
            return self._missing(name, current)
        comparison = self._compare(golden, value)
        if comparison.matched:
            if self.mode == UPDATE and isinstance(value, Generation) and not _same_output(golden, current):
                self._queue(name, current, "updated")  # same tokens, but the prompt or settings changed
            else:
                self._outcome(name, "passed")
            return True, []
        if self.mode == UPDATE:
            self._queue(name, current, "updated")
            return True, []
        self._outcome(name, "failed")
        return False, self._report(name, golden, comparison, value, golden_file)

    def _compare(self, golden: GoldenEntry, value: Any) -> Comparison:
        if isinstance(value, Generation) and golden.token_ids is not None:
            return compare_tokens(golden, value.token_ids, value.margins, value.text, value.finish_reason,
                                  self.near_tie)
        text = value.text if isinstance(value, Generation) else value
        comparison = compare_text(golden, text)
        if isinstance(value, Generation):  # the golden holds text only: record tokens to compare them
            comparison.matched = False
            comparison.notes.append("the golden snapshot holds text only; re-record it to store token IDs")
        return comparison

    def _missing(self, name: str, current: GoldenEntry) -> tuple[bool, list[str]]:
        if self.mode == UPDATE:
            self._queue(name, current, "written")
            return True, []
        self._outcome(name, "missing")
        return False, [
            f"snapshot {name!r} of {self.nodeid} is missing from {self.display_path}",
            f"record it with: {self.update_command}",
        ]

    def _queue(self, name: str, current: GoldenEntry, status: str) -> None:
        queued = self.updates.get(name)
        if queued is not None and not _same_output(queued, current):
            raise SnapshotUsageError(
                f"snapshot {name!r} was compared twice in {self.nodeid} with different outputs; "
                "give each comparison its own name: llm_snapshot(name=...)"
            )
        self.updates[name] = current
        self._outcome(name, status)

    def _outcome(self, name: str, status: str) -> None:
        self.record(SnapshotOutcome(self.nodeid, name, status, self.display_path))

    def _report(self, name: str, golden: GoldenEntry, comparison: Comparison, value: Any,
                golden_file: GoldenFile | None) -> list[str]:
        text = value.text if isinstance(value, Generation) else value
        ids = value.token_ids if isinstance(value, Generation) else []
        lines = [f"output differs from snapshot {name!r} in {self.display_path}"]
        decode = _safe_decoder(self.decoder())
        lines += render_comparison(comparison, golden, text, ids, decode, self.near_tie)
        current_fingerprint = self.fingerprint()
        if golden_file is not None and current_fingerprint is not None:
            changes = fingerprint_changes(golden_file.fingerprint, current_fingerprint)
            if changes:
                lines.append("the environment differs from the one recorded (this may explain the change): "
                             + "; ".join(changes))
        lines.append(f"if the change is intended, re-record with: {self.update_command}")
        self.reports.append("\n".join(lines))
        return _compact(lines)

    def write(self, drop_unused: bool = False) -> bool:
        """At the end of the test, in update mode: write the queued snapshots (atomically); True if written.

        `drop_unused` also leaves out the snapshots this test did not compare, which the end of a full update
        would remove anyway: the file is then written once, straight from its old to its new content, and
        each left-out snapshot is recorded as deleted.
        """
        if self.passive or self.mode != UPDATE or not self.updates:
            return False
        existing = self.golden()
        snapshots = dict(existing.snapshots) if existing else {}
        snapshots.update(self.updates)
        dropped = sorted(set(snapshots) - set(self.used)) if drop_unused else []
        snapshots = {name: entry for name, entry in snapshots.items() if name not in dropped}
        fingerprint = self.fingerprint()
        if fingerprint is None:
            fingerprint = existing.fingerprint if existing else {}
        golden = GoldenFile(test=self.nodeid, fingerprint=fingerprint,
                            snapshots=dict(sorted(snapshots.items())))
        written = write_golden(self.path, golden)
        for name in dropped:
            self.record(SnapshotOutcome(self.nodeid, name, "deleted", str(self.path)))
        return written


    def write_error(self, error: Exception) -> str:
        """The failure message when the golden file could not be written (a full disk, a read-only folder)."""
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return (f"pytest-llmdet: could not write golden file {self.display_path}: {reason}\n"
                "The file keeps its previous content (writes are atomic). Fix the cause (disk space, folder "
                f"permissions), then re-record with: {self.update_command}")


def _compact(lines: list[str], limit: int = 7) -> list[str]:
    # pytest truncates assertion explanations past 8 lines outside CI; the full report (text diff included)
    # is attached to the test report as the section "llm snapshot", so keep the essentials here.
    essential = [line for line in lines if not line.startswith("  ") or line.lstrip().startswith(("golden", "current"))]
    essential = [line for line in essential if line != "text diff:"]
    if len(essential) > limit:
        essential = essential[: limit - 1] + essential[-1:]
    return essential


class LLMSnapshot:
    """Compare with `==`: `assert llm.generate(prompt) == llm_snapshot`; `llm_snapshot(name="x")` names it."""

    def __init__(self, snapshots: TestSnapshots, name: str | None = None) -> None:
        self._snapshots = snapshots
        self._name = name
        self.failure: list[str] = []

    def __call__(self, name: str) -> LLMSnapshot:
        if not isinstance(name, str) or not name:
            raise SnapshotUsageError(f"a snapshot name is a non-empty string, not {name!r}")
        return LLMSnapshot(self._snapshots, name)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LLMSnapshot):
            return other is self
        name = self._name or self._snapshots.next_name()
        matched, self.failure = self._snapshots.check(name, other)
        return matched

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"llm_snapshot({self._name!r})" if self._name else "llm_snapshot"
