"""`python -m pytest_llmdet review|accept|reject|pending`: walk the pending snapshots a check run left beside
the goldens, show each one's divergence report, and accept (write it into the golden file) or reject it.

    review [PATH ...]          one by one: [a]ccept, [r]eject, [s]kip, [q]uit
    accept [PATH ...]          accept every pending snapshot
    reject [PATH ...]          reject every pending snapshot
    pending [--json] [PATH ...]  list them (--json for other tools)

PATH is a folder to search (default: the current one) or a pending file; a PATH that matches nothing is an
error (exit status 1). Goldens change only on accept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import TextIO

from pytest_llmdet.golden.format import GoldenFileError
from pytest_llmdet.golden.location import PENDING_SUFFIX
from pytest_llmdet.golden.pending import PendingFile, accept, entries, find_pending, read_pending, reject
from pytest_llmdet.golden.store import LockBudget


class _Printable:
    """A text stream that never fails on what it is given: a lone surrogate (a hand-edited report, a file name
    that is not UTF-8) is written as its escape."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(text.encode("utf-8", "backslashreplace").decode("utf-8"))

    def flush(self) -> None:
        self.stream.flush()


def _display(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def _load(paths: list[Path], err: TextIO) -> tuple[list[PendingFile], int]:
    """The readable pending files; each unreadable one, and each PATH that matches nothing (no such file or
    folder, a file that is no pending file), is reported on `err` (never on stdout, which may be JSON) and
    counted."""
    loaded, errors = [], 0
    for path in paths:
        if not path.exists():
            err.write(f"error: nothing matched {_display(path)}: there is no such file or folder\n")
            errors += 1
        elif not path.is_dir() and not path.name.endswith(PENDING_SUFFIX):
            err.write(f"error: nothing matched {_display(path)}: it is neither a folder to search nor a pending "
                      f"file (<golden file>.json{PENDING_SUFFIX})\n")
            errors += 1
    for path in find_pending(paths):
        try:
            loaded.append(read_pending(path))
        except GoldenFileError as error:
            err.write(f"skipped: {error}\n")
            errors += 1
    return loaded, errors


def listing(pending: list[PendingFile]) -> list[dict]:
    """The pending snapshots as plain data (what `pending --json` prints)."""
    return [{"pending_file": _display(p.path), "golden_file": _display(p.golden), "test": p.test,
             "snapshots": [{"name": name, "status": status, "report": report}
                           for name, status, report in entries(p)]}
            for p in pending]


def _settle(item: PendingFile, act, names: list[str] | None, err: TextIO) -> list[str] | None:
    """Accept or reject `names` of one pending file; a file that cannot be (a golden file changed since, an
    unusable one) is reported on `err` and the others go on: None."""
    try:
        return act(item, names)
    except (OSError, GoldenFileError) as error:
        err.write(f"error: {getattr(error, 'strerror', None) or error}\n")
        return None


def review(pending: list[PendingFile], stdin: TextIO, out: TextIO, err: TextIO | None = None,
           locks: LockBudget | None = None) -> dict[str, int]:
    """Ask about each pending snapshot in turn; returns how many were accepted, rejected, skipped and could not
    be settled (errors). `locks` bounds the wait for golden-file locks, all files together."""
    err = err or sys.stderr
    counts = {"accepted": 0, "rejected": 0, "skipped": 0}
    total = sum(len(p.snapshots) for p in pending)
    number, stop = 0, False
    for item in pending:
        decisions: dict[str, str] = {}
        for name, status, report in entries(item):
            number += 1
            if stop:
                counts["skipped"] += 1
                continue
            out.write(f"\n[{number}/{total}] {item.test} [{name}] ({status}) -> {_display(item.golden)}\n")
            out.write(report.rstrip() + "\n")
            answer = ""
            while answer not in ("a", "r", "s", "q"):
                out.write("accept (a), reject (r), skip (s), quit (q)? ")
                out.flush()
                line = stdin.readline()
                answer = line.strip().lower()[:1] if line else "q"  # end of input: stop, change nothing more
            if answer == "q":
                stop = True
                counts["skipped"] += 1
            elif answer == "s":
                counts["skipped"] += 1
            else:
                decisions[name] = answer
        for act, key, answer in ((partial(accept, locks=locks), "accepted", "a"), (reject, "rejected", "r")):
            names = [n for n, a in decisions.items() if a == answer]
            done = _settle(item, act, names, err) if names else []
            if done is None:
                counts["errors"] = counts.get("errors", 0) + 1
                counts["skipped"] += len(names)
            else:
                counts[key] += len(done)
    return counts


def argument_parser() -> argparse.ArgumentParser:
    """The command line's four commands, each taking the paths to search."""
    parser = argparse.ArgumentParser(prog="python -m pytest_llmdet",
                                     description="review the pending snapshots of pytest-llmdet check runs")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("review", "accept or reject each pending snapshot"), ("accept", "accept all"),
                       ("reject", "reject all"), ("pending", "list the pending snapshots")):
        command = commands.add_parser(name, help=text)
        command.add_argument("paths", nargs="*", type=Path, default=[Path(".")],
                             help="folders to search, or pending files (default: .)")
        if name == "pending":
            command.add_argument("--json", action="store_true", help="print JSON for other tools")
    return parser


def list_pending(pending: list[PendingFile], as_json: bool, out: TextIO) -> None:
    """`pending`: one line a snapshot and their count, or (`--json`) the listing as JSON."""
    if as_json:
        # ASCII with escapes: valid JSON whatever the paths and reports hold (undecodable bytes too)
        out.write(json.dumps(listing(pending), indent=2, ensure_ascii=True) + "\n")
        return
    for item in listing(pending):
        for snapshot in item["snapshots"]:
            out.write(f"{snapshot['status']:>8}  {item['test']} [{snapshot['name']}]  {item['golden_file']}\n")
    out.write(f"{sum(len(p.snapshots) for p in pending)} pending snapshot(s)\n")


def settle_all(pending: list[PendingFile], command: str, out: TextIO, err: TextIO, locks: LockBudget) -> int:
    """`accept` or `reject`: every pending snapshot at once; returns how many files could not be settled."""
    act = partial(accept, locks=locks) if command == "accept" else reject
    settled = [_settle(item, act, None, err) for item in pending]
    done = sum(len(names) for names in settled if names)
    out.write(f"{done} pending snapshot(s) {command}ed\n")
    return sum(1 for done in settled if done is None)


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """The command line; returns the exit status (1 when a pending file could not be read or written).

    Problems (a pending file skipped as unreadable, a failed write) go to stderr, so that the stdout of
    `pending --json` is JSON and nothing else."""
    out, err = _Printable(stdout or sys.stdout), _Printable(stderr or sys.stderr)
    args = argument_parser().parse_args(argv)
    pending, errors = _load(args.paths, err)
    locks = LockBudget()  # one wait for a stuck lock holder per command, not one per file
    try:
        if args.command == "pending":
            list_pending(pending, args.json, out)
        elif args.command == "review":
            counts = review(pending, stdin or sys.stdin, out, err, locks)
            errors += counts.get("errors", 0)
            out.write("\n" + ", ".join(f"{v} {k}" for k, v in counts.items()) + "\n")
        else:
            errors += settle_all(pending, args.command, out, err, locks)
    except (OSError, GoldenFileError) as error:
        out.flush()
        err.write(f"error: {getattr(error, 'strerror', None) or error}\n")
        return 1
    return 1 if errors else 0
