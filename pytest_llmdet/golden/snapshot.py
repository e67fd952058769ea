"""The `llm_snapshot` object a test compares against: `assert llm.generate("...") == llm_snapshot`.

Each test gets one `TestSnapshots`, which loads the test's golden file once, compares (check mode) or
queues new content (update mode), and writes the file atomically when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_llmdet.engines.fingerprint import fingerprint_changes
from pytest_llmdet.generation import Generation
from pytest_llmdet.golden.compare import (
    Comparison,
    compare_text,
    compare_tokens,
    divergence_summary,
    render_comparison,
    smallest_margin,
    summary_line,
    text_diff,
)
from pytest_llmdet.golden.format import GoldenEntry, GoldenFile, GoldenFileError, as_stored, prompt_hash
from pytest_llmdet.golden.inputs import PROMPT_TOKEN_SOURCES, input_changes, prompt_token_sources
from pytest_llmdet.golden.store import GoldenLockError, LockBudget, edit_golden, golden_digest, read_golden
from pytest_llmdet.golden.tolerant import compare_tolerant, top_k_lines
from pytest_llmdet.golden.variants import (
    Environment,
    choose_variant,
    describe,
    environment_of,
    is_exact,
    recorded_fingerprint,
)
from pytest_llmdet.settings import ComparePlan

CHECK, UPDATE = "check", "update"
_COMPARED_FIELDS = ("token_ids", "text", "finish_reason", "prompt", "prompt_sha256", "settings")


class SnapshotUsageError(TypeError):
    """`llm_snapshot` was compared with something it cannot store."""


@dataclass
class Fragile:
    """At record time: the step whose margin is below llm_near_tie (another machine may flip it)."""

    position: int
    margin: float


@dataclass
class OutcomeDetails:
    """What the summary, the JSON report and the JUnit properties show of one snapshot's outcome."""

    compare: str = "exact"  # how it was compared: exact or tolerant
    fingerprint: dict[str, Any] | None = None  # the current environment (None: a text-only snapshot)
    variant: str | None = None  # the environment variant compared (None: the default)
    compared_with: str | None = None  # in words, when the snapshot has variants
    divergence: dict[str, Any] | None = None  # compare.divergence_summary: plain data for the JSON report
    checked: str | None = None  # a tolerant comparison: what it checked, in words
    fragile: Fragile | None = None
    error: str | None = None  # why the golden file could not be read (a check) or written (an update)
    update_flags: str = ""  # what an update of this snapshot gives besides --llm-snapshot-update
    command_env: str = ""  # the environment its update command sets (ATEN_CPU_CAPABILITY=...), if any
    command_id: str = ""  # the test as its update command names it
    queued: str | None = None  # an update's: written or updated, what it counts as once the file holds it
    text_diff: list[str] | None = None  # a failed comparison whose text changed: the bounded diff of the texts

    def to_data(self) -> dict[str, Any]:
        """As plain data (an xdist worker sends it to the controller)."""
        return asdict(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> OutcomeDetails:
        fragile = data.get("fragile")
        return cls(**{**data, "fragile": Fragile(**fragile) if fragile else None})


@dataclass
class SnapshotOutcome:
    """What happened to one snapshot in this run."""

    nodeid: str
    name: str
    status: str  # passed, failed, missing, written, updated, error (a write that failed), or unwritten (queued)
    file: str
    details: OutcomeDetails = field(default_factory=OutcomeDetails)

    def to_data(self) -> dict[str, Any]:
        return {"nodeid": self.nodeid, "name": self.name, "status": self.status, "file": self.file,
                "details": self.details.to_data()}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> SnapshotOutcome:
        return cls(data["nodeid"], data["name"], data["status"], data["file"],
                   OutcomeDetails.from_data(data["details"]))


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
    # Top-k log-probs wobble like margins, so only their presence counts: a tolerant update adds them to a
    # golden that lacks them, and never rewrites a file for float noise; an exact update keeps them.
    if current.top_k_ids is not None and golden.top_k_ids is None:
        return False
    return all(getattr(golden, name) == getattr(current, name) for name in _COMPARED_FIELDS)


WRITTEN, UPDATED, UNWRITTEN = "written", "updated", "unwritten"


@dataclass
class TestSnapshots:
    """The snapshots of one test: its golden file, what it compared, and what it will write."""

    nodeid: str  # the test as it ran
    path: Path
    display_path: str
    mode: str
    near_tie: float
    update_command: str  # the command that re-records this test's golden file
    decoder: Callable[[], Callable[[list[int]], str] | None]
    fingerprint: Callable[[], dict[str, Any] | None]
    record: Callable[[SnapshotOutcome], None]
    compare: ComparePlan = field(default_factory=ComparePlan)
    update_flags: str = ""  # what its update command gives besides --llm-snapshot-update (shown per outcome)
    command_env: str = ""  # the environment its update command sets (ATEN_CPU_CAPABILITY=...), if any
    command_id: str = ""  # the test as its update command names it (default: `test`)
    test: str = ""  # the test whose golden file this is: `nodeid` without a pytest-repeat step (default: nodeid)
    record_variant: bool = False  # --llm-snapshot-variant: record for this environment, keep the default
    review: bool = False  # --llm-snapshot-review: every comparison passes; the test fails at its end instead
    # the fingerprint without a local model's weights hash, which a passing check does not need (None: use the
    # full one); choosing a variant needs only the device type, dtype and capability
    environment: Callable[[], dict[str, Any] | None] | None = None
    locks: LockBudget | None = None  # the run's wait for golden-file locks, all files together
    used: list[str] = field(default_factory=list)
    updates: dict[str, GoldenEntry] = field(default_factory=dict)
    targets: dict[str, str | None] = field(default_factory=dict)  # each update's entry: None the default, or a variant
    reports: list[str] = field(default_factory=list)  # full failure reports, shown as a report section
    outcomes: list[SnapshotOutcome] = field(default_factory=list)  # this test's, for its JUnit properties
    _compared: dict[str, tuple[GoldenEntry, tuple[bool, list[str]]]] = field(default_factory=dict)  # each name's
    # first comparison: what it compared, and its result
    pending: dict[str, tuple[GoldenEntry, str, str]] = field(default_factory=dict)  # check mode: entry, status,
    # report of each changed or new snapshot, kept as a pending file for review outside CI
    _auto_index: int = 0
    _named: set[str] = field(default_factory=set)  # names given with llm_snapshot(name=...)
    _numbered: set[str] = field(default_factory=set)  # names given to unnamed comparisons: "0", "1", ...
    _golden: GoldenFile | None = None
    _loaded: bool = False
    passive: bool = False  # a re-run of the determinism check: compare, record and write nothing
    pending_file: str | None = None  # the pending file settle_pending wrote, as the user reads its path

    def __post_init__(self) -> None:
        self.test = self.test or self.nodeid
        self.command_id = self.command_id or self.test

    def claim(self, name: str | None) -> str:
        """The snapshot name of the next comparison: `name` as given, or the next number for an unnamed one.

        A name used both ways in one test is refused: `llm_snapshot(name="0")` and the first unnamed comparison
        would otherwise share (and overwrite) one snapshot."""
        if name is None:
            name = str(self._auto_index)
            self._auto_index += 1
            clash = name in self._named
            self._numbered.add(name)
        else:
            clash = name in self._numbered
            self._named.add(name)
        if clash:
            raise SnapshotUsageError(
                f"snapshot name {name!r} is used twice in {self.nodeid}: by llm_snapshot(name={name!r}) and by an "
                f"unnamed comparison (unnamed snapshots are numbered 0, 1, 2, ... in order); give the named one "
                f"another name, or name both"
            )
        return name

    def golden(self, name: str | None = None) -> GoldenFile | None:
        """The test's golden file, read once; a file that cannot be used fails the test in check mode (counted
        as a failure of snapshot `name`, so the summary lists the test to re-record)."""
        if not self._loaded:
            failure = None
            try:
                self._golden = read_golden(self.path, self.display_path)
            except GoldenFileError as error:
                failure = f"{error}\nRe-record it with: {self.update_command}"
                self._golden = None  # an update replaces an unusable file, as asked
            if failure is not None and self.mode != UPDATE:
                import pytest

                if name is not None:
                    self._outcome(name, "failed", OutcomeDetails(error=failure))
                pytest.fail(failure, pytrace=False)  # outside the except block: one message, not a chain
            self._loaded = True
        return self._golden

    def check(self, name: str, value: Any) -> tuple[bool, list[str]]:
        """Compare `value` with snapshot `name`; in update mode queue it instead. Returns (ok, report); in a
        review run every comparison is ok (the test fails at its end instead: `review_failure`)."""
        if self.passive:
            return True, []
        current = entry_from(value)
        if name in self._compared:  # in either mode: one name, one output, one outcome
            first, result = self._compared[name]
            if not _same_output(first, current):
                raise SnapshotUsageError(
                    f"snapshot {name!r} was compared twice in {self.nodeid} with different outputs; "
                    "give each comparison its own name: llm_snapshot(name=...)"
                )
        else:
            result = self._check(name, value, current)
            self._compared[name] = (current, result)
        return (True, []) if self.review else result

    def _check(self, name: str, value: Any, current: GoldenEntry) -> tuple[bool, list[str]]:
        # The check fails exactly where an update writes: the outputs or the recorded inputs differ (a
        # tolerated divergence is neither a failure nor re-recorded).
        self.used.append(name)
        golden_file = self.golden(name)
        stored = golden_file.snapshots.get(name) if golden_file else None
        details = self._details(current)
        if stored is None or golden_file is None:
            return self._missing(name, current, details)
        default_env = environment_of(golden_file.fingerprint)
        current_env = environment_of(details.fingerprint)
        variant = choose_variant(list(stored.variants), default_env, current_env) \
            if isinstance(value, Generation) else None
        golden = stored if variant is None else stored.variants[variant]
        details.variant = variant
        if stored.variants:
            details.compared_with = describe(variant, default_env)
        target = self._target(variant, default_env, current_env)
        comparison = self._compare(golden, value).with_input_changes(input_changes(golden, current))
        if isinstance(value, Generation):
            details.divergence = divergence_summary(comparison)
            if comparison.checked:
                details.checked = comparison.checked
        if comparison.matched:
            self._outcome(name, "passed", details)
            return True, []
        if self.mode == UPDATE:
            self._queue(name, _replaced(stored, target, current), target, UPDATED, details)
            return True, []
        if comparison.text_changed:  # for the JUnit XML and the JSON report, which carry no full report
            details.text_diff = text_diff(golden.text, value.text if isinstance(value, Generation) else value)
        self._outcome(name, "failed", details)
        exact = is_exact(variant, default_env, current_env)
        report = self._report(name, golden, comparison, value, golden_file, variant, exact)
        self.pending[name] = (_replaced(stored, target, current), "changed", self.reports[-1])
        self.targets[name] = target
        return False, report

    def _target(self, compared: str | None, default_env: Environment | None,
                current_env: Environment | None) -> str | None:
        # Which entry an update replaces (None: the default). A plain update replaces the compared entry when
        # it was recorded in exactly this environment, else the default; --llm-snapshot-variant never touches
        # a default recorded elsewhere: it replaces or adds the variant of this environment.
        if compared is not None and is_exact(compared, default_env, current_env):
            return compared
        if not self.record_variant or current_env is None or is_exact(None, default_env, current_env):
            return None
        return current_env.key

    def _details(self, current: GoldenEntry) -> OutcomeDetails:
        # At record time, the step with the smallest margin below llm_near_tie makes the snapshot fragile:
        # another machine, kernel or dtype may flip it.
        details = OutcomeDetails(compare=self.compare.mode)
        cheap = self.environment is not None and self.mode != UPDATE
        fingerprint = (self.environment if cheap else self.fingerprint)() if current.token_ids is not None else None
        details.fingerprint = fingerprint
        smallest = smallest_margin(current.margins) if self.mode == UPDATE else None
        if smallest is not None and smallest[1] < self.near_tie:
            details.fragile = Fragile(smallest[0], round(smallest[1], 6))
        return details

    def _compare(self, golden: GoldenEntry, value: Any) -> Comparison:
        if isinstance(value, Generation) and golden.token_ids is not None and self.compare.mode == "tolerant":
            return compare_tolerant(golden, value.token_ids, value.margins, value.text, value.finish_reason,
                                    value.top_k_ids, self.compare.top_k, self.near_tie)
        if isinstance(value, Generation) and golden.token_ids is not None:
            return compare_tokens(golden, value.token_ids, value.margins, value.text, value.finish_reason,
                                  self.near_tie)
        text = value.text if isinstance(value, Generation) else value
        comparison = compare_text(golden, text)
        if isinstance(value, Generation):  # the golden holds text only: record tokens to compare them
            comparison.matched = False
            comparison.notes.append("the golden snapshot holds text only; re-record it to store token IDs")
        return comparison

    def _missing(self, name: str, current: GoldenEntry, details: OutcomeDetails) -> tuple[bool, list[str]]:
        if self.mode == UPDATE:  # the first recording is the default, with or without --llm-snapshot-variant
            self._queue(name, current, None, WRITTEN, details)
            return True, []
        self._outcome(name, "missing", details)
        lines = [
            f"snapshot {name!r} of {self.nodeid} is missing from {self.display_path}",
            f"record it with: {self.update_command}",
        ]
        self.pending[name] = (current, "new", "\n".join(lines))
        self.targets[name] = None
        return False, lines

    def _queue(self, name: str, entry: GoldenEntry, target: str | None, status: str,
               details: OutcomeDetails) -> None:
        # Counted as written or updated only once the file holds it (`write`); until then it is unwritten.
        self.updates[name] = entry
        self.targets[name] = target
        details.queued = status
        self._outcome(name, UNWRITTEN, details)

    def _outcome(self, name: str, status: str, details: OutcomeDetails | None = None) -> None:
        details = details or OutcomeDetails()
        details.update_flags, details.command_env, details.command_id = \
            self.update_flags, self.command_env, self.command_id
        outcome = SnapshotOutcome(self.nodeid, name, status, self.display_path, details)
        self.outcomes.append(outcome)
        self.record(outcome)

    def _report(self, name: str, golden: GoldenEntry, comparison: Comparison, value: Any,
                golden_file: GoldenFile, variant: str | None, exact: bool) -> list[str]:
        text = value.text if isinstance(value, Generation) else value
        ids = value.token_ids if isinstance(value, Generation) else []
        changed = "input of" if comparison.input_changes else "output differs from"
        lines = [f"{changed} snapshot {name!r} in {self.display_path}"]
        stored = golden_file.snapshots.get(name)
        default_env = environment_of(golden_file.fingerprint)
        if stored is not None and stored.variants:
            lines[0] += f", {describe(variant, default_env)}"
        if comparison.input_changes:
            lines[0] += " changed"
        decode = _safe_decoder(self.decoder())
        current_fingerprint = self.fingerprint()
        recorded = recorded_fingerprint(golden_file.fingerprint, variant)
        sources = prompt_token_sources(recorded, current_fingerprint) if comparison.input_changes else None
        lines += render_comparison(comparison, golden, text, ids, decode, self.near_tie, sources)
        if self.compare.mode == "tolerant" and comparison.divergence is not None and isinstance(value, Generation):
            at = next((i for i, line in enumerate(lines) if line.startswith("  current:")), len(lines) - 1) + 1
            lines[at:at] = top_k_lines(golden, value.top_k_ids, value.top_k_logprobs, comparison.divergence.index,
                                       self.compare.top_k, decode)
        if current_fingerprint is not None:
            # what the input line already named (the tokenizer's and chat template's hashes) is not repeated
            shown = {k: v for k, v in recorded.items() if not (sources and k in PROMPT_TOKEN_SOURCES)}
            changes = fingerprint_changes(shown, {k: v for k, v in current_fingerprint.items() if k in shown
                                                  or not (sources and k in PROMPT_TOKEN_SOURCES)})
            if changes:
                lines.append("the environment differs from the one recorded (this may explain the change): "
                             + "; ".join(changes))
        lines.append(f"if the change is intended, re-record with: {self.update_command}")
        current_env = environment_of(current_fingerprint)
        compared_env = default_env if variant is None else Environment.parse(variant)
        if not exact and current_env is not None and compared_env is not None and not comparison.input_changes:
            # indented: the full report's, not the assertion's (pytest cuts that short)
            lines.append(f"  recorded in {compared_env.key}, compared in {current_env.key}: to keep the outputs of "
                         f"both, record this environment's variant instead: {self.variant_command}")
        self.reports.append("\n".join(lines))
        return _compact(lines)

    @property
    def variant_command(self) -> str:
        """The update command that records this environment's variant rather than replacing the default."""
        return self.update_command.replace("--llm-snapshot-update", "--llm-snapshot-update --llm-snapshot-variant",
                                           1)

    def review_failure(self) -> str | None:
        """In a review run, at the end of the test: the failure that lists every changed or missing snapshot it
        compared (None when none changed)."""
        if not self.review or self.passive:
            return None
        changed = [o for o in self.outcomes if o.status in ("failed", "missing")]
        if not changed:
            return None
        lines = [f"{len(changed)} snapshot(s) of {self.nodeid} changed or missing (a review run compared each "
                 "one and went on):"]
        for outcome in changed:
            divergence = outcome.details.divergence
            lines.append(f"  [{outcome.name}] {summary_line(divergence) if divergence else outcome.status}")
        where = f"kept as pending in {self.pending_file}" if self.pending_file else "not kept as pending"
        lines.append(f"{where}; accept or reject them with: python -m pytest_llmdet review")
        return "\n".join(lines)

    def write(self) -> bool:
        """At the end of the test, in update mode: write the queued snapshots (atomically); True if written.

        The file is read again under its lock and the queued snapshots go into what it holds now. Snapshots
        the test did not compare stay in the file: whether they are unused is decided once, at the end of a
        whole run (golden.ledger.SnapshotRun.finish). The queued outcomes count as written or updated once
        the write is done (`mark_unwritten` makes them errors when it fails)."""
        if self.passive or self.mode != UPDATE or not self.updates:
            return False
        fingerprint = self.fingerprint()

        def merged(existing: GoldenFile | None) -> GoldenFile:
            snapshots = dict(existing.snapshots) if existing else {}
            snapshots.update(self.updates)
            return GoldenFile(test=self.test, fingerprint=self._file_fingerprint(existing, fingerprint),
                              snapshots=dict(sorted(snapshots.items())))

        written = edit_golden(self.path, merged, self.locks, replace_unusable=True)
        for outcome in self.outcomes:
            if outcome.status == UNWRITTEN:
                outcome.status = outcome.details.queued or UPDATED
        return written

    def _file_fingerprint(self, existing: GoldenFile | None, current: dict[str, Any] | None) -> dict[str, Any]:
        # The file's fingerprint names the environment of its default entries: it is replaced only when one of
        # them is (re)recorded here; a variant alone (and --llm-snapshot-variant) keeps the file's.
        if existing is not None and (current is None or self.record_variant
                                     or all(self.targets.get(n) is not None for n in self.updates)):
            return existing.fingerprint
        return current or {}

    def mark_unwritten(self, reason: str) -> None:
        """The write failed: what was to be written or updated is an error (in the summary and the report)."""
        for outcome in self.outcomes:
            if outcome.status == UNWRITTEN:
                outcome.status = "error"
                outcome.details.error = reason

    def settle_pending(self, ci: bool) -> str | None:
        """At the end of the test, outside CI (or in any review run): a check run writes its changed or new
        outputs as a pending file beside the golden file (never the golden file itself), or removes a stale one
        when all matched; an update removes it (the update supersedes it). Returns a note when the pending file
        could not be written."""
        from pytest_llmdet.golden.location import PENDING_SUFFIX
        from pytest_llmdet.golden.pending import PendingFile, pending_path, remove_pending, write_pending

        if self.passive or (ci and not self.review) or self.mode not in (CHECK, UPDATE):
            return None
        try:
            if self.mode == UPDATE:
                remove_pending(self.path)
                return None
            if not self.pending:
                if self.outcomes and all(o.status == "passed" for o in self.outcomes):
                    remove_pending(self.path)
                return None
            if not self.path.parent.is_dir():
                return None  # a check run creates no folder: record the first snapshots with an update
            golden = self._golden
            variants_only = golden is not None and all(self.targets.get(n) is not None for n in self.pending)
            fingerprint = golden.fingerprint if variants_only else self.fingerprint() or {}
            write_pending(PendingFile(
                pending_path(self.path), self.test, fingerprint,
                {name: entry for name, (entry, _, _) in self.pending.items()},
                {name: status for name, (_, status, _) in self.pending.items()},
                {name: report for name, (_, _, report) in self.pending.items()},
                golden_sha256=golden_digest(self.path) or "",
            ))
            self.pending_file = self.display_path + PENDING_SUFFIX
        except (OSError, GoldenFileError) as error:
            reason = getattr(error, "strerror", None) or error
            return f"could not write the pending file {pending_path(self.path)}: {reason}"
        return None

    def write_error(self, error: BaseException) -> str:
        """The failure message when the golden file could not be written (a full disk, a read-only folder, a
        lock held by a stuck process, the test interrupted or timed out while it wrote)."""
        if isinstance(error, GoldenLockError):
            waiting = f"{error.waiting[:1].upper()}{error.waiting[1:]}\n" if error.waiting else ""
            return (f"pytest-llmdet: could not write golden file {self.display_path}: {error.reason}\n{waiting}"
                    f"The file keeps its previous content. {error.advice}, then re-record with: "
                    f"{self.update_command}")
        if isinstance(error, OSError | GoldenFileError):
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            return (f"pytest-llmdet: could not write golden file {self.display_path}: {reason}\n"
                    "The file keeps its previous content (writes are atomic). Fix the cause (disk space, folder "
                    f"permissions), then re-record with: {self.update_command}")
        first = (str(error).strip().splitlines() or [""])[0]
        what = f"{type(error).__name__}: {first}" if first else type(error).__name__
        notes = "".join(f"; {note}" for note in getattr(error, "__notes__", ()))
        return (f"pytest-llmdet: golden file {self.display_path} was not written: the write was interrupted "
                f"({what}){notes}\nThe file keeps its previous content (writes are atomic); re-record with: "
                f"{self.update_command}")


def _replaced(stored: GoldenEntry, target: str | None, current: GoldenEntry) -> GoldenEntry:
    """The snapshot with its default (target None) or one variant replaced by `current`; others are kept."""
    if target is None:
        return replace(current, variants=dict(stored.variants))
    return replace(stored, variants=dict(sorted({**stored.variants, target: current}.items())))


def _compact(lines: list[str], limit: int = 7) -> list[str]:
    # pytest truncates assertion explanations past 8 lines outside CI; the full report (text diff included)
    # is attached to the test report as the section "llm snapshot", so keep the essentials here.
    kept = ("golden", "current", "prompt", "setting")  # the two sides, and each changed input
    essential = [line for line in lines if not line.startswith("  ") or line.lstrip().startswith(kept)]
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
        name = self._snapshots.claim(self._name)
        matched, self.failure = self._snapshots.check(name, other)
        return matched

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"llm_snapshot({self._name!r})" if self._name else "llm_snapshot"
