"""Judging one snapshot, a pure function: the golden file as read, the current value, and how the run compares
in; a typed `SnapshotResult` out (its status, the entry compared, the entry an update writes and where, the
details the outcome keeps). Nothing is written, rendered or recorded here.

The check fails exactly where an update writes: the outputs or the recorded inputs differ, or the snapshot is
missing. A tolerated divergence is neither a failure nor re-recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytest_llmdet.generation import Generation
from pytest_llmdet.golden.compare import Comparison, compare_text, compare_tokens, smallest_margin
from pytest_llmdet.golden.format import GoldenEntry, GoldenFile
from pytest_llmdet.golden.inputs import input_changes
from pytest_llmdet.golden.outcome import Fragile, OutcomeDetails
from pytest_llmdet.golden.render import text_diff
from pytest_llmdet.golden.tolerant import compare_tolerant
from pytest_llmdet.golden.variants import Environment, choose_variant, describe, is_exact, recorded_here
from pytest_llmdet.settings import ComparePlan
from pytest_llmdet.vocabulary import CompareMode, SnapshotMode, SnapshotStatus


@dataclass(frozen=True)
class CheckContext:
    """How a snapshot is judged: the run's mode, the test's comparison, llm_near_tie, --llm-snapshot-variant."""

    mode: SnapshotMode
    plan: ComparePlan
    near_tie: float
    record_variant: bool = False


@dataclass
class SnapshotResult:
    """What judging one snapshot found."""

    name: str
    status: SnapshotStatus  # passed, failed or missing; in update mode unwritten (queued) where a check fails
    details: OutcomeDetails
    record: GoldenEntry | None = None  # the snapshot an update writes, or a pending file keeps (None: nothing)
    current: GoldenEntry | None = None  # the current output, which that puts at `target`
    target: str | None = None  # the variant key `record` replaces (None: the default entry)
    compared: GoldenEntry | None = None  # the entry compared with (None: the snapshot is missing)
    variant: str | None = None  # its variant key (None: the default)
    comparison: Comparison | None = None
    default_environment: Environment | None = None  # where the file's default entries were recorded
    current_environment: Environment | None = None

    @property
    def failed(self) -> bool:
        return self.status in (SnapshotStatus.FAILED, SnapshotStatus.MISSING)

    @property
    def exact(self) -> bool:
        """Whether the compared entry was recorded in exactly this environment."""
        return is_exact(self.variant, self.default_environment, self.current_environment)

    @property
    def compared_environment(self) -> Environment | None:
        return self.default_environment if self.variant is None else Environment.parse(self.variant)


def judge(golden_file: GoldenFile | None, name: str, value: Any, current: GoldenEntry, context: CheckContext,
          fingerprint: dict[str, Any] | None) -> SnapshotResult:
    """Judge snapshot `name` of `golden_file` (None: there is none) against `value` (a Generation or a str; its
    entry `current`), where `fingerprint` is the current environment's (None for a text-only value)."""
    details = _details(current, context, fingerprint)
    stored = golden_file.snapshots.get(name) if golden_file else None
    if stored is None:
        return _missing(name, current, context, details)
    default_env = Environment.of_fingerprint(golden_file.fingerprint)
    current_env = Environment.of_fingerprint(fingerprint)
    variant = choose_variant(list(stored.variants), default_env, current_env) \
        if isinstance(value, Generation) else None
    golden = stored if variant is None else stored.variants[variant]
    details.variant = variant
    if stored.variants:
        details.compared_with = describe(variant, default_env)
    comparison = compare(golden, value, context).with_input_changes(input_changes(golden, current))
    if isinstance(value, Generation):
        details.divergence = comparison.summary()
    result = SnapshotResult(name, SnapshotStatus.PASSED, details, compared=golden, variant=variant,
                            comparison=comparison, default_environment=default_env, current_environment=current_env)
    if comparison.matched:
        return result
    result.target = _target(variant, default_env, current_env, context.record_variant, bool(stored.variants))
    result.record, result.current = stored.replaced(result.target, current), current
    if context.mode == SnapshotMode.UPDATE:
        result.status, details.queued = SnapshotStatus.UNWRITTEN, SnapshotStatus.UPDATED
        return result
    result.status = SnapshotStatus.FAILED
    if comparison.text_changed:  # for the JUnit XML and the JSON report, which carry no full report
        details.text_diff = text_diff(golden.text, value.text if isinstance(value, Generation) else value)
    return result


def compare(golden: GoldenEntry, value: Any, context: CheckContext) -> Comparison:
    """The comparison of a value with one entry: tolerant or exact tokens for a Generation, text for a str."""
    if isinstance(value, Generation) and golden.token_ids is not None and context.plan.mode == CompareMode.TOLERANT:
        return compare_tolerant(golden, value.token_ids, value.margins, value.text, value.finish_reason,
                                value.top_k_ids, context.plan.top_k, context.near_tie)
    if isinstance(value, Generation) and golden.token_ids is not None:
        return compare_tokens(golden, value.token_ids, value.margins, value.text, value.finish_reason,
                              context.near_tie)
    comparison = compare_text(golden, value.text if isinstance(value, Generation) else value)
    if isinstance(value, Generation):  # the golden holds text only: record tokens to compare them
        comparison.matched = False
        comparison.notes.append("the golden snapshot holds text only; re-record it to store token IDs")
    return comparison


def _missing(name: str, current: GoldenEntry, context: CheckContext, details: OutcomeDetails) -> SnapshotResult:
    # The first recording is the default, with or without --llm-snapshot-variant.
    if context.mode == SnapshotMode.UPDATE:
        details.queued = SnapshotStatus.WRITTEN
        return SnapshotResult(name, SnapshotStatus.UNWRITTEN, details, record=current, current=current)
    return SnapshotResult(name, SnapshotStatus.MISSING, details, record=current, current=current)


def _details(current: GoldenEntry, context: CheckContext, fingerprint: dict[str, Any] | None) -> OutcomeDetails:
    # At record time, the step with the smallest margin below llm_near_tie makes the snapshot fragile: another
    # machine, kernel or dtype may flip it.
    details = OutcomeDetails(compare=CompareMode(context.plan.mode),
                             fingerprint=fingerprint if current.token_ids is not None else None)
    smallest = smallest_margin(current.margins) if context.mode == SnapshotMode.UPDATE else None
    if smallest is not None and smallest[1] < context.near_tie:
        details.fragile = Fragile(smallest[0], round(smallest[1], 6))
    return details


def _target(compared: str | None, default_env: Environment | None, current_env: Environment | None,
            record_variant: bool, has_variants: bool) -> str | None:
    # Which entry an update replaces (None: the default). The entry compared, when it was recorded in this
    # environment (as far as its key tells); else the default, when that was; else this environment's variant,
    # with --llm-snapshot-variant or when the snapshot has variants already (it serves several environments: a
    # plain update never replaces another environment's entry); else, in a snapshot of one environment only, its
    # default.
    if compared is not None and recorded_here(compared, default_env, current_env):
        return compared
    if current_env is None or recorded_here(None, default_env, current_env):
        return None
    return current_env.key if record_variant or has_variants else None


__all__ = ["CheckContext", "SnapshotResult", "compare", "judge"]
