"""The machine-readable report (`--llm-report=PATH`): every snapshot outcome and determinism verdict as
JSON, and the one-line summaries that go into each test's JUnit XML properties.

The report's shape is documented (and checked in the tests) by docs/llm-report.schema.json; REPORT_VERSION
changes only when a field changes meaning or disappears, never when one is added.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pytest_llmdet.determinism.runs import FactorCell, Verdict
from pytest_llmdet.golden.ledger import NotCompared
from pytest_llmdet.golden.outcome import SnapshotOutcome
from pytest_llmdet.golden.store import replace_atomically
from pytest_llmdet.versions import package_version

REPORT_VERSION = 1


def snapshot_entry(outcome: SnapshotOutcome) -> dict[str, Any]:
    """One snapshot outcome as the report lists it."""
    details = outcome.details
    return {
        "test": outcome.nodeid,
        "name": outcome.name,
        "status": str(outcome.status),
        "file": outcome.file,
        "variant": details.variant,
        "compare": str(details.compare),
        "checked": details.checked,
        "fingerprint": details.fingerprint,
        "divergence": None if details.divergence is None else details.divergence.to_data(),
        "fragile": None if details.fragile is None else {"position": details.fragile.position,
                                                          "margin": details.fragile.margin},
        "error": details.error,
        "text_diff": details.text_diff,
        "location": details.location,
        "tokens": details.tokens,
        "environment_changes": details.environment_changes,
        "prefetch": details.prefetch,
    }


def determinism_entry(verdict: Verdict) -> dict[str, Any]:
    """One determinism verdict as the report lists it."""
    return {
        "test": verdict.nodeid,
        "status": verdict.status,
        "runs": verdict.runs,
        "kind": verdict.kind or None,
        "position": verdict.position,
        "distinct_outputs": verdict.distinct_outputs,
        "detail": verdict.detail or None,
        "factors": {name: factor_entry(cell) for name, cell in verdict.factors.items()},
    }


def factor_entry(cell: FactorCell) -> dict[str, Any]:
    """One cell of the factor matrix as the report lists it."""
    return {
        "status": cell.status,
        "cell": cell.text(),
        "position": cell.position,
        "call": cell.call,
        "reference_margin": cell.reference_margin,
        "changed_margin": cell.changed_margin,
        "reference": cell.reference or None,
        "changed": cell.changed or None,
        "reason": cell.reason,
        "sensitivity": cell.sensitivity,
    }


def build_report(*, mode: str, near_tie: float, exit_status: int, counts: dict[str, int],
                 outcomes: Iterable[SnapshotOutcome], unused: Sequence[str], deleted: Sequence[str],
                 verdicts: Iterable[Verdict], unchecked: int, foreign: Sequence[str] = (),
                 not_compared: Iterable[NotCompared] = (), pending: Sequence[str] = (),
                 rerecord_command: str | None = None, review_command: str | None = None) -> dict[str, Any]:
    """The whole report as plain data, sorted by test so that two runs of the same suite compare cleanly;
    `rerecord_command` and `review_command` as the `llm snapshots` summary prints them (None: nothing to run)."""
    version = package_version("pytest-llmdet")
    return {
        "report_version": REPORT_VERSION,
        "pytest_llmdet": version,
        "exit_status": int(exit_status),
        "snapshot_mode": mode,
        "near_tie": near_tie,
        "summary": dict(counts),
        "snapshots": sorted((snapshot_entry(o) for o in outcomes if o.status != "deleted"),
                            key=lambda e: (e["test"], e["name"])),
        "unused": sorted(unused),
        "deleted": sorted(deleted),
        "foreign": sorted(foreign),
        "not_compared": sorted(({"test": n.nodeid, "name": n.name, "file": n.file} for n in not_compared),
                               key=lambda e: (e["test"], e["name"])),
        "pending": sorted(pending),
        "determinism": sorted((determinism_entry(v) for v in verdicts), key=lambda e: e["test"]),
        "determinism_unchecked": unchecked,
        "rerecord_command": rerecord_command,
        "review_command": review_command,
    }


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write the report atomically (a reader never sees half of it); creates the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    replace_atomically(path, content.encode("utf-8"))


def junit_properties(outcomes: Iterable[SnapshotOutcome]) -> list[tuple[str, str]]:
    """A JUnit XML property per snapshot of a test: `llm_snapshot[name]` = status and divergence summary, and
    for a failed one whose text changed `llm_snapshot[name] text diff` = the bounded diff of the texts."""
    properties = []
    for outcome in outcomes:
        details = outcome.details
        parts = [str(outcome.status)]
        if details.variant:
            parts.append(f"variant {details.variant}")
        if details.compare != "exact":
            parts.append(f"compare {details.compare}")
        if details.divergence is not None:
            parts.append(details.divergence.line())
        if details.fragile is not None:
            fragile = details.fragile
            parts.append(f"fragile: token {fragile.position} margin {fragile.margin:.4f}")
        properties.append((f"llm_snapshot[{outcome.name}]", "; ".join(parts)))
        if details.text_diff:
            properties.append((f"llm_snapshot[{outcome.name}] text diff", "\n".join(details.text_diff)))
    return properties
