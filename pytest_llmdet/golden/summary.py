"""The `llm snapshots` section of the terminal summary: counts, what to run, unused, deleted and foreign files,
fragile snapshots, and (with --llm-snapshot-details) every snapshot. Built from the run's ledger."""

from __future__ import annotations

import os

from pytest_llmdet.commands import command_targets, join_command
from pytest_llmdet.golden.ledger import SnapshotRun
from pytest_llmdet.golden.outcome import SnapshotOutcome
from pytest_llmdet.vocabulary import Label, SnapshotStatus

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


def rerecord_commands(failed: list[SnapshotOutcome], paths: tuple[str, ...] = ()) -> str:
    """The commands that re-record the `failed` snapshots, joined by `; `.

    One command per set of flags: the tests a tolerant comparison failed need --llm-compare tolerant, which
    stores the top-k candidates that comparison uses (a plain update would store none). Each names its tests as
    their outcomes' commands do (a pytest-repeat step by its test), or for many tests their files, or the run's
    own paths: every command runs as printed."""
    by_flags: dict[tuple[str, str], list[str]] = {}
    for o in sorted(failed, key=lambda o: (o.details.command_env, o.details.update_flags, o.nodeid)):
        tests = by_flags.setdefault((o.details.command_env, o.details.update_flags), [])
        test = o.details.command_id or o.nodeid
        if test not in tests:
            tests.append(test)
    return "; ".join(join_command(environment, flags, command_targets(tests, paths))
                     for (environment, flags), tests in by_flags.items())


def review_command(pending: list[str]) -> str:
    """The command that reviews the `pending` files (it searches the current folder by default; pending files
    elsewhere are named by their folders)."""
    outside = sorted({os.path.dirname(p) for p in pending if os.path.isabs(p) or p.startswith("..")})
    return "python -m pytest_llmdet review" + "".join(f' "{folder}"' for folder in outside)


def summary_lines(run: SnapshotRun, update: bool, details: bool, paths: tuple[str, ...] = (),
                  review: bool = False) -> list[str]:
    """The section's lines; `paths`: the run's own file and folder arguments (what a command of many tests
    names); `review`: a review run. The error count is shown only when a write failed."""
    listed = "; listed below" if details else ""  # --llm-snapshot-details lists every snapshot anyway
    lines = [count_line(run.counts())]
    lines += _failure_lines(run, paths)
    if review and "the run stopped early" in run.partial_reasons:
        lines.append("the review run stopped early (-x, --maxfail, --stepwise, Ctrl-C): the tests after that were "
                     "not reviewed, so accepting what is pending may still leave the gate failing")
    lines += _not_compared_lines(run, listed, details)
    lines += _tolerated_lines(run, listed, details)
    lines += _error_lines(run)
    lines += _cleanup_lines(run, update)
    if details:
        lines += _detail_lines(run)
    return lines


def _failure_lines(run: SnapshotRun, paths: tuple[str, ...]) -> list[str]:
    failed_outcomes = run.failed_outcomes()
    lines = []
    no_top_k = [o for o in failed_outcomes if o.details.divergence and o.details.divergence.label == Label.NO_TOP_K]
    if no_top_k:  # the real reason first: re-recording without --llm-compare tolerant would not help
        lines.append(f"{len(no_top_k)} snapshot(s) could not be compared tolerantly: their golden snapshot has no "
                     "top-k candidates (it was recorded without --llm-compare tolerant)")
    if failed_outcomes:
        lines.append(f"{len(run.failed_tests())} test(s) with changed or missing snapshots. If the change is "
                     f"intended, re-record with: {rerecord_commands(failed_outcomes, paths)}")
    if run.pending:
        lines.append(f"{len(run.pending)} pending file(s) keep the new outputs beside their golden files (which are "
                     f"unchanged); accept or reject them one by one with: {review_command(run.pending)}")
    return lines


def _not_compared_lines(run: SnapshotRun, listed: str, details: bool) -> list[str]:
    if not run.not_compared:
        return []
    lines = [f"{len(run.not_compared)} snapshot(s) not compared: their test failed before comparing them; pytest "
             f"--llm-snapshot-review compares them all (and keeps each change pending){listed}:"]
    return lines + ([] if details else _listed([f"{n.nodeid} [{n.name}]  {n.file}" for n in run.not_compared]))


def _tolerated_lines(run: SnapshotRun, listed: str, details: bool) -> list[str]:
    tolerated = run.tolerated()
    if not tolerated:
        return []
    lines = [f"{len(tolerated)} snapshot(s) passed tolerantly although their tokens diverged (each side's token "
             f"among the other side's top-k){listed}:"]
    return lines + ([] if details else _listed([f"{o.nodeid} [{o.name}]  token {o.tolerated_at}  {o.file}"
                                                for o in tolerated]))


def _error_lines(run: SnapshotRun, limit: int = 5) -> list[str]:
    # Each error's first lines too: a run stopped by Ctrl-C shows no teardown error of its own.
    errored = [o for o in run.outcomes if o.status == SnapshotStatus.ERROR]
    if not errored:
        return []
    lines = [f"{len(run.errored_tests())} test(s) whose golden file could not be written (see their errors): "
             + _quoted(run.errored_tests())]
    shown = list(dict.fromkeys(o.details.error for o in errored if o.details.error))
    lines += [f"  {line}" for error in shown[:limit] for line in error.splitlines()[:2]]
    return lines + ([f"  ... {len(shown) - limit} more"] if len(shown) > limit else [])


def _cleanup_lines(run: SnapshotRun, update: bool) -> list[str]:
    lines = []
    if run.unused:
        lines.append(f"{len(run.unused)} unused golden file(s) or snapshot(s) no test asked for:")
        lines += _listed(run.unused)
        reasons = run.whole_run_reasons()
        if update and reasons:
            lines.append(f"not deleted: this run is partial ({'; '.join(sorted(reasons))})")
        elif not update and reasons:
            lines.append(f"a full run with --llm-snapshot-update deletes them (no failure here: this run is partial "
                         f"({'; '.join(sorted(reasons))}))")
        elif not update:
            lines.append("the gate fails on them: a full run with --llm-snapshot-update would delete them (run it, "
                         "or bring back the tests that compared them)")
    if run.deleted:
        lines.append(f"deleted {len(run.deleted)} unused golden file(s) or snapshot(s) (committed ones come back "
                     "with: git checkout -- <file>):")
        lines += [f"  {d}" for d in run.deleted]
    if run.foreign:
        lines.append(f"{len(run.foreign)} file(s) in snapshot folders that are not golden files of this suite "
                     "(never deleted):")
        lines += _listed(run.foreign)
    return lines


def _detail_lines(run: SnapshotRun) -> list[str]:
    lines = []
    for o in sorted(run.outcomes, key=lambda o: (o.status, o.nodeid, o.name, o.file)):
        compared = f"  (compared with {o.details.compared_with})" if o.details.compared_with else ""
        status = f"{o.status:>8}"
        if o.tolerated_at is not None:
            status += f" (tolerant: diverged at token {o.tolerated_at}, within top-k)"
        lines.append(f"{status}  {o.nodeid} [{o.name}]  {o.file}{compared}")
    return lines + [f"{'not compared':>8}  {n.nodeid} [{n.name}]  {n.file}" for n in run.not_compared]


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
