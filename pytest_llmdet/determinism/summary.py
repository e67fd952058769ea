"""The `llm determinism` section of the terminal summary: how many tests were checked and came out
deterministic, the worst offenders, and the factor matrix (a row per test, a column per factor) with the margins
at its divergences and why factors did not apply.

Plain functions of determinism/runs.py's verdicts: neither pytest nor torch is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence

from pytest_llmdet.determinism.runs import CellStatus, FactorCell, Verdict, VerdictStatus
from pytest_llmdet.divergence import format_margin
from pytest_llmdet.vocabulary import FACTOR_NAMES, FactorName

MAX_OFFENDERS = 10
MAX_MATRIX_ROWS = 50  # beyond it, the matrix shows only the rows that are not all `=`
MAX_MARGIN_LINES = 10


def summary_lines(verdicts: Sequence[Verdict], limit: int = MAX_OFFENDERS) -> list[str]:
    """The `llm determinism` summary: counts, the worst offenders (earliest divergence first), and the factor
    matrix when factors were checked."""
    if not verdicts:
        return []
    bad = sorted((v for v in verdicts if v.status != VerdictStatus.DETERMINISTIC),
                 key=lambda v: (v.severity(), v.nodeid))
    nondeterministic = sum(v.status == VerdictStatus.NONDETERMINISTIC for v in verdicts)
    sensitive = len(bad) - nondeterministic
    lines = [f"{len(verdicts)} checked, {len(verdicts) - len(bad)} deterministic, {nondeterministic} "
             "nondeterministic" + (f", {sensitive} dtype-sensitive" if sensitive else "")]
    if bad:
        lines.append("worst offenders:" if len(bad) > 1 else "offender:")
        lines += [f"  {v.nodeid}: {v.detail}" for v in bad[:limit]]
        if len(bad) > limit:
            lines.append(f"  … and {len(bad) - limit} more")
    return lines + matrix_lines(verdicts)


def matrix_lines(verdicts: Sequence[Verdict], limit: int = MAX_MATRIX_ROWS) -> list[str]:
    """The factor matrix: a row per test checked under factors, a column per factor, each cell `=`, the first
    diverging token or n/a; then the margins at the divergences and why factors were not applicable."""
    rows = sorted((v for v in verdicts if v.factors), key=lambda v: v.nodeid)
    if not rows:
        return []
    columns = [name for name in FACTOR_NAMES if any(name in v.factors for v in rows)]
    legend = "=: same tokens, N: the first diverging token, n/a: not applicable"
    if any(name not in v.factors for v in rows for name in columns):
        legend += ", -: not asked for"
    if FactorName.DTYPE in columns:
        legend += "; dtype is a sensitivity (bfloat16 against the loaded dtype), not nondeterminism"
    shown = rows
    if len(rows) > limit:
        shown = [v for v in rows if any(c.status != CellStatus.SAME for c in v.factors.values())][:limit]
    width = max(len("test"), *(len(v.nodeid) for v in shown)) if shown else len("test")
    widths = [max(len(name), 3) for name in columns]

    def row(first: str, cells: list[str]) -> str:
        padded = "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True))
        return f"  {first.ljust(width)}  {padded}".rstrip()

    lines = [f"factor matrix ({legend}):", row("test", columns)]
    for v in shown:
        lines.append(row(v.nodeid, [v.factors[n].text() if n in v.factors else "-" for n in columns]))
    if len(shown) < len(rows):
        lines.append(f"  … and {len(rows) - len(shown)} more tests, every factor = or n/a only where listed below")
    return lines + _margin_lines(rows) + _not_applicable_lines(rows)


def _margin_lines(rows: Sequence[Verdict]) -> list[str]:
    diverged = [(v.nodeid, name, cell) for v in rows for name, cell in v.factors.items()
                if cell.status == CellStatus.DIVERGED]
    if not diverged:
        return []

    def recorded(entry: tuple[str, FactorName, FactorCell]) -> float:
        margin = entry[2].reference_margin
        return -(margin if margin is not None else float("inf"))  # the call ended there: no near-tie either

    diverged.sort(key=lambda entry: (recorded(entry), entry[0], FACTOR_NAMES.index(entry[1])))
    lines = ["margins at the divergences, the largest recorded margin first (a large one is no near-tie: more "
             "than rounding changed):"]
    for nodeid, name, cell in diverged[:MAX_MARGIN_LINES]:
        lines.append(f"  {nodeid} {name}: call {cell.call} token {cell.position}: margin "
                     f"{format_margin(cell.reference_margin)} {cell.reference}, "
                     f"{format_margin(cell.changed_margin)} {cell.changed}")
    if len(diverged) > MAX_MARGIN_LINES:
        lines.append(f"  … and {len(diverged) - MAX_MARGIN_LINES} more")
    return lines


def _not_applicable_lines(rows: Sequence[Verdict]) -> list[str]:
    groups: dict[tuple[FactorName, str], list[str]] = {}
    for v in rows:
        for name, cell in v.factors.items():
            if cell.status == CellStatus.NOT_APPLICABLE:
                groups.setdefault((name, cell.reason or ""), []).append(v.nodeid)
    if not groups:
        return []
    lines = ["not applicable:"]
    for (name, reason), tests in sorted(groups.items(), key=lambda g: (FACTOR_NAMES.index(g[0][0]), g[0][1])):
        where = tests[0] if len(tests) == 1 else f"{len(tests)} tests"
        lines.append(f"  {name} ({where}): {reason}")
    return lines
