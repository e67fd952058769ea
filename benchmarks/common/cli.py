"""A benchmark script's command line and its `main`: parse `--quick` and `--threads`, measure, store the
section in the results file, print it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from . import report, runner


def arguments(description: str) -> argparse.Namespace:
    """The command line every benchmark script takes: `--quick` for a fast smoke run, `--threads` (which sets
    runner.TORCH_THREADS for every measured process)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke run with fewer repetitions (results go to results-quick.json)")
    parser.add_argument("--threads", default="1",
                        help="torch intra-op threads of every measured process, or 'default' (default 1)")
    args = parser.parse_args()
    runner.TORCH_THREADS = None if args.threads == "default" else int(args.threads)
    return args


def main(name: str, doc: str, measure: Callable[[bool], dict[str, Any]]) -> None:
    """A benchmark script's whole run: `measure(quick)` returns its section (report.make_section), stored
    under `name` in the results file and printed. `doc` is the script's docstring (its first line is the
    command line's description)."""
    args = arguments(doc.splitlines()[0])
    section = measure(args.quick)
    report.save_section(name, section, args.quick)
    report.print_section(section)
