"""The `llm snapshots` section of the terminal summary: counts, what to run, unused, deleted and foreign files,
fragile snapshots, and (with --llm-snapshot-details) every snapshot. Built from the run's ledger."""

from __future__ import annotations

import os

from pytest_llmdet.commands import join_command
from pytest_llmdet.golden.ledger import SnapshotRun, tolerated_at
from pytest_llmdet.golden.snapshot import SnapshotOutcome

LIST_LIMIT = 20


def _listed(paths: list[str], limit: int = LIST_LIMIT) -> list[str]:
    return [f"  {p}" for p in paths[:limit]] + ([f"  ... {len(paths) - limit} more"] if len(paths) > limit else [])


def _quoted(nodeids: list[str], limit: int = 5) -> str:
    return " ".join(f'"{t}"' for t in nodeids[:limit]) + (" ..." if len(nodeids) > limit else "")


def count_line(counts: dict[str, int]) -> str:
    """`2 passed, 4 failed, 0 written, 0 updated, 0 deleted, 0 unused`; the passes that diverged within top-k,
    a failed write and the snapshots not compared are shown only when there are any."""
    parts = []
    for key in ("passed", "failed", "written", "updated", "deleted", "unused", "error", "not_compared"):
        if key in ("error", "not_compared") and not counts[key]:
            continue
        part = f"{counts[key]} {key.replace('_', ' ')}"
        if key == "passed" and counts["tolerated"]:
            part += f" ({counts['tolerated']} tolerated)"
        parts.append(part)
    return ", ".join(parts)


def _rerecord_commands(failed: list[SnapshotOutcome], limit: int = 5) -> str:
    # One command per set of flags: the tests a tolerant comparison failed need --llm-compare tolerant, which
    # stores the top-k candidates that comparison uses (a plain update would store none). Each names the tests
    # as its outcomes' commands do (a pytest-repeat step by its test).
    by_flags: dict[tuple[str, str], list[str]] = {}
    for o in sorted(failed, key=lambda o: (o.details.command_env, o.details.update_flags, o.nodeid)):
        tests = by_flags.setdefault((o.details.command_env, o.details.update_flags), [])
        test = o.details.command_id or o.nodeid
        if test not in tests:
            tests.append(test)
    commands = []
    for (environment, flags), tests in by_flags.items():
        command = join_command(environment, flags, tests[:limit])
        commands.append(command + (" ..." if len(tests) > limit else ""))
    return "; ".join(commands)


def _review_command(pending: list[str]) -> str:
    # review searches the current folder by default; pending files elsewhere are named by their folders
    outside = sorted({os.path.dirname(p) for p in pending if os.path.isabs(p) or p.startswith("..")})
    return "python -m pytest_llmdet review" + "".join(f' "{folder}"' for folder in outside)


def summary_lines(run: SnapshotRun, update: bool, details: bool) -> list[str]:
    """The section's lines. The error count is shown only when a write failed."""
    counts = run.counts()
    lines = [count_line(counts)]
    failed, errored, reasons = run.failed_tests(), run.errored_tests(), run.whole_run_reasons()
    failed_outcomes = [o for o in run.outcomes if o.status in ("failed", "missing")]
    no_top_k = [o for o in failed_outcomes if _label(o) == "no-top-k"]
    if no_top_k:  # the real reason first: re-recording without --llm-compare tolerant would not help
        lines.append(f"{len(no_top_k)} snapshot(s) could not be compared tolerantly: their golden snapshot has no "
                     "top-k candidates (it was recorded without --llm-compare tolerant)")
    if failed:
        lines.append(f"{len(failed)} test(s) with changed or missing snapshots. If the change is intended, "
                     f"re-record with: {_rerecord_commands(failed_outcomes)}")
    if run.pending:
        lines.append(f"{len(run.pending)} pending file(s) keep the new outputs beside their golden files (which are "
                     f"unchanged); accept or reject them one by one with: {_review_command(run.pending)}")
    listed = "; listed below" if details else ""  # --llm-snapshot-details lists every snapshot anyway
    if run.not_compared:
        lines.append(f"{len(run.not_compared)} snapshot(s) not compared: their test failed before comparing "
                     f"them; pytest --llm-snapshot-review compares them all (and keeps each change pending){listed}:")
        if not details:
            lines += _listed([f"{n.nodeid} [{n.name}]  {n.file}" for n in run.not_compared])
    tolerated = run.tolerated()
    if tolerated:
        lines.append(f"{len(tolerated)} snapshot(s) passed tolerantly although their tokens diverged (each side's "
                     f"token among the other side's top-k){listed}:")
        if not details:
            lines += _listed([f"{o.nodeid} [{o.name}]  token {tolerated_at(o)}  {o.file}" for o in tolerated])
    if errored:
        lines.append(f"{len(errored)} test(s) whose golden file could not be written (see their errors): "
                     + _quoted(errored))
    if run.unused:
        lines.append(f"{len(run.unused)} unused golden file(s) or snapshot(s) no test asked for:")
        lines += _listed(run.unused)
        if update and reasons:
            lines.append(f"not deleted: this run is partial ({'; '.join(sorted(reasons))})")
        elif not update:
            lines.append("a full run with --llm-snapshot-update deletes them")
    if run.deleted:
        lines.append(f"deleted {len(run.deleted)} unused golden file(s) or snapshot(s) (committed ones come back "
                     "with: git checkout -- <file>):")
        lines += [f"  {d}" for d in run.deleted]
    if run.foreign:
        lines.append(f"{len(run.foreign)} file(s) in snapshot folders that are not golden files of this suite "
                     "(never deleted):")
        lines += _listed(run.foreign)
    if details:
        for o in sorted(run.outcomes, key=lambda o: (o.status, o.nodeid, o.name, o.file)):
            compared = f"  (compared with {o.details.compared_with})" if o.details.compared_with else ""
            index = tolerated_at(o) if o.status == "passed" else None
            status = f"{o.status:>8}"
            if index is not None:
                status += f" (tolerant: diverged at token {index}, within top-k)"
            lines.append(f"{status}  {o.nodeid} [{o.name}]  {o.file}{compared}")
        for n in run.not_compared:
            lines.append(f"{'not compared':>8}  {n.nodeid} [{n.name}]  {n.file}")
    return lines


def _label(outcome: SnapshotOutcome) -> str | None:
    first = (outcome.details.divergence or {}).get("first_divergence") or {}
    return first.get("label")


def fragile_lines(run: SnapshotRun, near_tie: float, limit: int = LIST_LIMIT) -> list[str]:
    """Snapshots recorded with a margin below llm_near_tie."""
    fragile = run.fragile()
    if not fragile:
        return []
    lines = [f"{len(fragile)} fragile snapshot(s): a margin below llm_near_tie {near_tie} may flip on other "
             "hardware, kernels or dtypes:"]
    lines += [f"  {o.nodeid} [{o.name}]  token {o.details.fragile.position} margin {o.details.fragile.margin:.4f}  "
              f"{o.file}" for o in fragile[:limit]]
    if len(fragile) > limit:
        lines.append(f"  ... {len(fragile) - limit} more")
    return lines
