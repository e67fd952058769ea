"""The rows of a check table (benchmarks/gpu_check.py and its steps): `Check` (what was checked, its result and
the detail that backs it, and whether it must pass), and what a row reads of a finished run's output."""

from __future__ import annotations

import re

from .runner import Run


class Check:
    """One row of the table: what was checked, its result (passed, FAILED, found, none found, skipped) and the
    detail that backs it."""

    def __init__(self, name: str, result: str, detail: str, must_pass: bool = True) -> None:
        self.name, self.result, self.detail, self.must_pass = name, result, detail, must_pass

    @property
    def failed(self) -> bool:
        return self.must_pass and self.result == "FAILED"


def tail(run: Run, lines: int = 6) -> str:
    """The end of a run's output, on one line, for a failed check."""
    text = (run.stdout + run.stderr).strip().splitlines()
    return " / ".join(line.strip() for line in text[-lines:])


def line_with(run: Run, pattern: str) -> str | None:
    """The first output line that matches `pattern`."""
    return next((line for line in run.stdout.splitlines() if re.search(pattern, line)), None)
