"""Where in the test's own file a comparison was made: the line of the `assert ... == llm_snapshot` (or of the
call, in the test, of the helper that compared), found from the call stack at the time of the comparison. What
a CI annotation points at."""

from __future__ import annotations

import os
import sys


def _normal(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def comparison_line(source: str, depth: int = 200) -> int | None:
    """The line being run in the innermost frame of file `source` on the current call stack, looking `depth`
    frames up at most (None: none)."""
    target = _normal(source)
    frame = sys._getframe(1)
    while frame is not None and depth > 0:
        if frame.f_code.co_filename == source or _normal(frame.f_code.co_filename) == target:
            return frame.f_lineno
        frame, depth = frame.f_back, depth - 1
    return None


__all__ = ["comparison_line"]
