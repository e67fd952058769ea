"""The snapshots of one test: its golden file read once, each comparison judged (check.py), its outcome recorded
and its report rendered (render.py), what an update writes queued for the run's writer (writer.py), which writes
it when the test ends. `LLMSnapshot` (assertion.py) is the object the test compares with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from pytest_llmdet.commands import RerecordCommand
from pytest_llmdet.generation import Generation
from pytest_llmdet.golden.check import CheckContext, SnapshotResult, judge
from pytest_llmdet.golden.entry import SnapshotUsageError, entry_from
from pytest_llmdet.golden.format import GoldenEntry, GoldenFile, GoldenFileError
from pytest_llmdet.golden.location import PENDING_SUFFIX
from pytest_llmdet.golden.naming import SnapshotNames
from pytest_llmdet.golden.outcome import OutcomeDetails, SnapshotOutcome, TestOutcomes
from pytest_llmdet.golden.render import Decoder
from pytest_llmdet.golden.report import (
    environment_changes,
    failure_report,
    missing_report,
    review_failure,
    variant_command,
)
from pytest_llmdet.golden.source import comparison_line
from pytest_llmdet.golden.store import read_golden
from pytest_llmdet.golden.tokens import view_of
from pytest_llmdet.golden.writer import Pending, Queued, SnapshotWriter, pending_error_message, write_error_message
from pytest_llmdet.settings import ComparePlan
from pytest_llmdet.vocabulary import Label, PendingStatus, SnapshotMode, SnapshotStatus


@dataclass(frozen=True)
class SnapshotContext:
    """What every test of a run shares: how it judges and records, the re-record command, the run's writer,
    where outcomes go, and how a test fails (`pytest.fail`, given by the hooks: golden/ imports no pytest)."""

    mode: SnapshotMode
    near_tie: float
    writer: SnapshotWriter
    record: Callable[[SnapshotOutcome], None]
    fail: Callable[[str], NoReturn]
    command: RerecordCommand = field(default_factory=RerecordCommand)
    record_variant: bool = False  # --llm-snapshot-variant
    review: bool = False  # --llm-snapshot-review: every comparison passes; the test fails at its end instead
    ci: bool = False  # a check writes pending files outside CI only (or when a review run asks for them)
    invocation_dir: str = "."  # where pytest was started: where its commands run


@dataclass(frozen=True)
class TestIdentity:
    """Which test, which golden file, and how a command names it."""

    nodeid: str  # the test as it ran
    path: Path  # its golden file
    display_path: str  # as the user reads it
    test: str = ""  # whose golden file it is: `nodeid` without a pytest-repeat step (default: nodeid)
    command_id: str = ""  # as a command run from where pytest was started names it (default: `test`)
    source: str = ""  # the test's file (where a comparison's line is looked up; empty: none)
    source_shown: str = ""  # as the user reads its path
    def_line: int | None = None  # the line of its `def`: where a failure points when no comparison line is found

    @property
    def golden_test(self) -> str:
        return self.test or self.nodeid

    @property
    def shown_in_commands(self) -> str:
        return self.command_id or self.golden_test

    def location(self) -> dict[str, Any] | None:
        """Where in the test's file the comparison being made is: its line, else the test's `def` line."""
        line = (comparison_line(self.source) if self.source else None) or self.def_line
        return None if line is None or not self.source_shown else {"file": self.source_shown, "line": line}


@dataclass(frozen=True)
class TestCommands:
    """The commands a test's reports and outcomes name, as this run made it and as its comparison needs."""

    command: RerecordCommand
    test: str  # as a command run from where pytest was started names it
    update_flags: list[str]  # what re-recording this test's comparison needs (`--llm-compare tolerant`)

    @property
    def check(self) -> str:
        """The command that repeats this test's check."""
        return self.command.line([self.test], self.update_flags, mode="--llm-snapshot")

    @property
    def update(self) -> str:
        """The command that re-records this test's golden file."""
        return self.command.line([self.test], self.update_flags)

    @property
    def variant(self) -> str:
        """The update command that records this environment's variant rather than replacing the default."""
        return variant_command(self.update)

    def stamp(self, details: OutcomeDetails) -> None:
        """Give an outcome what the summary's and the reports' commands need."""
        details.update_flags = self.command.flags_line(self.update_flags)
        details.command_env, details.command_id = self.command.environment_line(), self.test


@dataclass(frozen=True)
class ModelAccess:
    """What a test's snapshots learn from its model, each asked only when needed: the decoder of token IDs, the
    full fingerprint, and the cheap one that a passing check needs (no weights hash; None: the full one)."""

    decoder: Callable[[], Decoder | None] = lambda: None
    fingerprint: Callable[[], dict[str, Any] | None] = lambda: None
    environment: Callable[[], dict[str, Any] | None] | None = None

    def for_judging(self, current: GoldenEntry, mode: SnapshotMode) -> dict[str, Any] | None:
        """The fingerprint a comparison of `current` is judged by: none for a text-only snapshot (no environment
        to choose a variant by), the cheap one in a check, the full one in an update (it is recorded)."""
        if current.token_ids is None:
            return None
        cheap = self.environment is not None and mode != SnapshotMode.UPDATE
        return (self.environment if cheap else self.fingerprint)()


def _safe(decode: Decoder | None) -> Decoder | None:
    # A hand-edited golden file may hold token IDs the tokenizer cannot decode: show them, do not crash.
    if decode is None:
        return None

    def safe(ids: list[int]) -> str:
        try:
            return decode(ids)
        except Exception:  # noqa: BLE001 - any tokenizer failure becomes a placeholder in the report
            return "<not decodable>"

    return safe


def read_usable(identity: TestIdentity, update_command: str) -> tuple[GoldenFile | None, str | None]:
    """A test's golden file (None: there is none), or None and why it cannot be used, with the command that
    re-records it (an update replaces an unusable file, as asked)."""
    try:
        return read_golden(identity.path, identity.display_path), None
    except GoldenFileError as error:
        return None, f"{error}\nRe-record it with: {update_command}"


def keep_tokens(result: SnapshotResult, value: Any, decoder: Callable[[], Decoder | None]) -> None:
    """A failed or tolerated snapshot keeps both sides' tokens near its divergence (the HTML report's view);
    `decoder` is asked only then."""
    divergence = result.details.divergence
    if divergence is None or divergence.first is None or not isinstance(value, Generation) \
            or result.compared is None or result.compared.token_ids is None:
        return
    if result.failed or divergence.label == Label.TOLERATED:
        result.details.tokens = view_of(result.compared, value, divergence.first.index, _safe(decoder()))


@dataclass
class TestSnapshots:
    """The snapshots of one test: its golden file, what it compared, and what it will write."""

    context: SnapshotContext
    identity: TestIdentity
    plan: ComparePlan = field(default_factory=ComparePlan)
    model: ModelAccess = field(default_factory=ModelAccess)
    passive: bool = False  # a re-run of the determinism check: compare, record and write nothing
    queued: Queued = field(default_factory=Queued)  # what an update writes at the test's end
    pending: Pending = field(default_factory=Pending)  # what a check keeps for review
    reports: list[str] = field(default_factory=list)  # full failure reports, shown as a report section
    log: TestOutcomes | None = None  # this test's outcomes (default: recorded to the context's run)
    pending_file: str | None = None  # the pending file `settle_pending` wrote, as the user reads its path
    names: SnapshotNames | None = None  # default: the test's own
    _golden: GoldenFile | None = None
    _loaded: bool = False

    def __post_init__(self) -> None:
        self.names = self.names or SnapshotNames(self.identity.nodeid)
        self.log = self.log or TestOutcomes(self.context.record)

    @property
    def outcomes(self) -> list[SnapshotOutcome]:
        """This test's outcomes so far (its JUnit properties)."""
        return self.log.items

    @property
    def used(self) -> list[str]:
        """The snapshot names the test compared, in order."""
        return self.names.used

    @property
    def commands(self) -> TestCommands:
        """The commands that repeat this test's check and re-record its golden file."""
        return TestCommands(self.context.command, self.identity.shown_in_commands, self.plan.update_flags.split())

    def claim(self, name: str | None) -> str:
        """The snapshot name of the next comparison (naming.SnapshotNames)."""
        return self.names.claim(name)

    @property
    def golden_as_read(self) -> GoldenFile | None:
        """The golden file as the test's first comparison read it (None: not read, none, or unusable)."""
        return self._golden

    def golden(self, name: str | None = None) -> GoldenFile | None:
        """The test's golden file, read once; a file that cannot be used fails the test in check mode (counted
        as a failure of snapshot `name`, so the summary lists the test to re-record)."""
        if not self._loaded:
            self._golden, failure = read_usable(self.identity, self.commands.update)
            if failure is not None and self.context.mode != SnapshotMode.UPDATE:
                if name is not None:
                    self._outcome(name, SnapshotStatus.FAILED, OutcomeDetails(error=failure))
                self.context.fail(failure)  # outside the except block: one message, not a chain
            self._loaded = True
        return self._golden

    def check(self, name: str, value: Any) -> tuple[bool, list[str]]:
        """Compare `value` with snapshot `name`; in update mode queue it instead. Returns (ok, report); in a
        review run every comparison is ok (the test fails at its end instead: `review_failure`)."""
        if self.passive:
            return True, []
        current = entry_from(value)
        seen, result = self.names.earlier(name, current)  # in either mode: one name, one output, one outcome
        if not seen:
            result = self._check(name, value, current)
            self.names.compared(name, current, result)
        return (True, []) if self.context.review else result

    def _check(self, name: str, value: Any, current: GoldenEntry) -> tuple[bool, list[str]]:
        self.names.used.append(name)
        golden_file = self.golden(name)
        c = self.context
        result = judge(golden_file, name, value, current, CheckContext(c.mode, self.plan, c.near_tie, c.record_variant),
                       self.model.for_judging(current, c.mode))
        result.details.prefetch = value.prefetch if isinstance(value, Generation) else None
        self._outcome(name, result.status, result.details)
        if result.status == SnapshotStatus.UNWRITTEN:
            self.queued.add(name, result.current, result.target)  # applied to the file as it is when written
            return True, []
        keep_tokens(result, value, self.model.decoder)
        if not result.failed:
            return True, []
        if result.compared is None:
            report = missing_report(name, self.identity.nodeid, self.identity.display_path, self.commands.update)
        else:
            report = failure_report(result, value, golden_file, self.identity.display_path, self.plan,
                                    self.context.near_tie, _safe(self.model.decoder()), self.model.fingerprint(),
                                    self.commands.update)
            self.reports.append("\n".join(report.full()))
            current = self.model.fingerprint()
            if current is not None:
                result.details.environment_changes = environment_changes(result, golden_file, current)
        status = PendingStatus.NEW if result.compared is None else PendingStatus.CHANGED
        self.pending.keep(name, result.record, result.target, status, "\n".join(report.full()))
        return False, report.compact() if result.compared is not None else report.full()

    def _outcome(self, name: str, status: SnapshotStatus, details: OutcomeDetails) -> None:
        self.commands.stamp(details)
        if status in (SnapshotStatus.FAILED, SnapshotStatus.MISSING):
            details.location = self.identity.location()
        self.log.add(SnapshotOutcome(self.identity.nodeid, name, status, self.identity.display_path, details))

    def review_failure(self) -> str | None:
        """In a review run, at the end of the test: the failure that lists every changed or missing snapshot it
        compared (None when none changed)."""
        if not self.context.review or self.passive:
            return None
        return review_failure(self.identity.nodeid, self.outcomes, self.pending_file)

    def write(self) -> bool:
        """At the end of the test, in update mode: write the queued snapshots; True if the file changed. The
        queued outcomes count as written or updated once the write is done (errors when it is not: `end_test`)."""
        if self.passive or self.context.mode != SnapshotMode.UPDATE or not self.queued.entries:
            return False
        written = self.context.writer.write(self.identity.path, self.identity.golden_test, self.queued,
                                            self.model.fingerprint(), self.context.record_variant)
        self.log.written()
        return written


def end_test(snapshots: TestSnapshots) -> tuple[str | None, str | None]:
    """At the end of a test whose call ran: write its golden file, then settle its pending file. Returns (the
    failure when the write did not complete, a note when the pending file could not be written). A write that
    does not complete, for whatever reason (a full disk, a lock, pytest-timeout's Timeout, Ctrl-C), leaves its
    snapshots counted as errors, never as written; Ctrl-C and SystemExit go on stopping the run once marked."""
    failure = None
    try:
        snapshots.write()
    except (KeyboardInterrupt, SystemExit) as error:
        snapshots.log.unwritten(write_error_message(snapshots.identity.display_path, error,
                                                    snapshots.commands.update))
        raise
    except BaseException as error:  # noqa: BLE001 - pytest-timeout's Timeout (a pytest.fail) too
        failure = write_error_message(snapshots.identity.display_path, error, snapshots.commands.update)
        snapshots.log.unwritten(failure)
    return failure, settle_pending(snapshots)


def settle_pending(snapshots: TestSnapshots) -> str | None:
    """At the end of a test, outside CI (or in any review run): a check keeps its changed or new outputs as a
    pending file beside the golden file (never the golden file itself), or removes a stale one when all matched;
    an update removes it (the update supersedes it). A note when the pending file could not be written."""
    context, identity = snapshots.context, snapshots.identity
    if snapshots.passive or (context.ci and not context.review) or context.mode == SnapshotMode.OFF:
        return None
    try:
        kept = context.writer.settle_pending(identity.path, identity.golden_test, snapshots.pending,
                                             snapshots.golden_as_read, snapshots.model.fingerprint,
                                             drop=context.mode == SnapshotMode.UPDATE or snapshots.log.all_passed,
                                             check=(snapshots.commands.check, context.invocation_dir))
    except (OSError, GoldenFileError) as error:
        return pending_error_message(identity.path, error)
    if kept:
        snapshots.pending_file = identity.display_path + PENDING_SUFFIX
    return None


__all__ = ["ModelAccess", "SnapshotContext", "SnapshotUsageError", "TestCommands", "TestIdentity", "TestSnapshots",
           "end_test", "keep_tokens", "read_usable", "settle_pending"]
