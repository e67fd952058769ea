"""The failure report of one snapshot, composed from its judged result (check.py): the headline, the comparison
(render.py), what differs from the environment recorded, the command that re-records it, and the one that
records this environment's variant instead. And the failure a review run gives a test at its end."""

from __future__ import annotations

from typing import Any

from pytest_llmdet.engines.fingerprint import fingerprint_changes
from pytest_llmdet.generation import Generation
from pytest_llmdet.golden.check import SnapshotResult
from pytest_llmdet.golden.format import GoldenFile
from pytest_llmdet.golden.inputs import PROMPT_TOKEN_SOURCES, prompt_token_sources
from pytest_llmdet.golden.outcome import SnapshotOutcome
from pytest_llmdet.golden.render import Decoder, Report, comparison_report, top_k_lines
from pytest_llmdet.golden.variants import describe, recorded_fingerprint
from pytest_llmdet.settings import ComparePlan
from pytest_llmdet.vocabulary import CompareMode, SnapshotStatus


def variant_command(update_command: str) -> str:
    """The update command that records this environment's variant rather than replacing the default."""
    return update_command.replace("--llm-snapshot-update", "--llm-snapshot-update --llm-snapshot-variant", 1)


def missing_report(name: str, nodeid: str, shown: str, update_command: str) -> Report:
    """The report of a snapshot its golden file does not hold."""
    report = Report()
    report.add(f"snapshot {name!r} of {nodeid} is missing from {shown}")
    report.add(f"record it with: {update_command}")
    return report


def failure_report(result: SnapshotResult, value: Any, golden_file: GoldenFile, shown: str, plan: ComparePlan,
                   near_tie: float, decode: Decoder | None, current: dict[str, Any] | None,
                   update_command: str) -> Report:
    """The report of a snapshot whose output or input differs (`shown`: its golden file as the user reads the
    path; `current`: the current environment's full fingerprint)."""
    comparison, golden = result.comparison, result.compared
    changed = "input of" if comparison.input_changes else "output differs from"
    headline = f"{changed} snapshot {result.name!r} in {shown}"
    if golden_file.snapshots[result.name].variants:
        headline += f", {describe(result.variant, result.default_environment)}"
    report = Report()
    report.add(headline + (" changed" if comparison.input_changes else ""))
    recorded = recorded_fingerprint(golden_file.fingerprint, result.variant)
    sources = prompt_token_sources(recorded, current) if comparison.input_changes else None
    generation = value if isinstance(value, Generation) else None
    candidates = top_k_lines(golden, generation.top_k_ids, generation.top_k_logprobs, comparison.divergence.index,
                             plan.top_k, decode) \
        if generation is not None and plan.mode == CompareMode.TOLERANT and comparison.divergence else None
    report.join(comparison_report(comparison, golden, value.text if generation else value,
                                  generation.token_ids if generation else [], decode, near_tie, sources, candidates))
    changes = environment_changes(result, golden_file, current)
    if changes:
        report.add("the environment differs from the one recorded (this may explain the change): " + "; ".join(changes))
    report.add(f"if the change is intended, re-record with: {update_command}")
    current_env, compared_env = result.current_environment, result.compared_environment
    if not result.exact and current_env is not None and compared_env is not None and not comparison.input_changes:
        report.add(f"  recorded in {compared_env.key}, compared in {current_env.key}: to keep the outputs of both, "
                   f"record this environment's variant instead: {variant_command(update_command)}", essential=False)
    return report


def environment_changes(result: SnapshotResult, golden_file: GoldenFile, current: dict[str, Any] | None) -> list[str]:
    """How the current environment (`current`: its full fingerprint) differs from the one the compared entry was
    recorded in, as `field: old → new`; what the input lines already name (the tokenizer's and chat template's
    hashes, when the prompt tokens changed) is not repeated."""
    if current is None:
        return []
    recorded = recorded_fingerprint(golden_file.fingerprint, result.variant)
    skip = PROMPT_TOKEN_SOURCES if result.comparison is not None and result.comparison.input_changes else ()
    return fingerprint_changes({k: v for k, v in recorded.items() if k not in skip},
                               {k: v for k, v in current.items() if k not in skip})


def review_failure(nodeid: str, outcomes: list[SnapshotOutcome], pending_file: str | None) -> str | None:
    """A review run's failure of a test at its end: every changed or missing snapshot it compared (None: none)."""
    changed = [o for o in outcomes if o.status in (SnapshotStatus.FAILED, SnapshotStatus.MISSING)]
    if not changed:
        return None
    lines = [f"{len(changed)} snapshot(s) of {nodeid} changed or missing (a review run compared each one and went "
             "on):"]
    for outcome in changed:
        divergence = outcome.details.divergence
        lines.append(f"  [{outcome.name}] {divergence.line() if divergence else outcome.status}")
    where = f"kept as pending in {pending_file}" if pending_file else "not kept as pending"
    lines.append(f"{where}; accept or reject them with: python -m pytest_llmdet review")
    return "\n".join(lines)


__all__ = ["environment_changes", "failure_report", "missing_report", "review_failure", "variant_command"]
