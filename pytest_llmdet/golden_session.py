"""The golden-file side of a run: outcomes of every snapshot, which golden files and snapshots no test used,
and (on a full `--llm-snapshot-update` run only) deleting them. Works across pytest-xdist workers: each
worker sends `to_data()`, and the controller merges them and decides."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmdet.golden_format import GoldenFile, GoldenFileError
from pytest_llmdet.location import SUFFIX, safe_file_stem
from pytest_llmdet.snapshot import SnapshotOutcome
from pytest_llmdet.store import clean_temporaries, delete_golden, read_golden, write_golden

STATUSES = ("passed", "failed", "written", "updated", "deleted", "unused")


@dataclass
class TestRecord:
    """One collected test that uses `llm_snapshot`."""

    golden: str  # its golden file
    outcome: str = "not run"  # passed, failed or skipped once it ran
    used: list[str] = field(default_factory=list)


@dataclass
class SnapshotRun:
    """Everything the summary and the unused-snapshot cleanup need to know about one run."""

    tests: dict[str, TestRecord] = field(default_factory=dict)
    module_folders: set[str] = field(default_factory=set)  # snapshot folders of the collected modules
    outcomes: list[SnapshotOutcome] = field(default_factory=list)
    partial_reasons: set[str] = field(default_factory=set)
    deleted: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # files the cleanup could not change, and why

    def to_data(self) -> dict[str, Any]:
        return {
            "tests": {k: [v.golden, v.outcome, v.used] for k, v in self.tests.items()},
            "module_folders": sorted(self.module_folders),
            "outcomes": [[o.nodeid, o.name, o.status, o.file, o.details] for o in self.outcomes],
            "partial_reasons": sorted(self.partial_reasons),
        }

    def merge(self, data: dict[str, Any]) -> None:
        """Add what one xdist worker saw (every worker collects every test, but runs only some)."""
        for nodeid, (golden, outcome, used) in data["tests"].items():
            record = self.tests.setdefault(nodeid, TestRecord(golden))
            if outcome != "not run":
                record.outcome, record.used = outcome, used
        self.module_folders.update(data["module_folders"])
        self.outcomes += [SnapshotOutcome(*row) for row in data["outcomes"]]
        self.partial_reasons.update(data["partial_reasons"])

    def set_outcome(self, nodeid: str, outcome: str, used: list[str] | None = None) -> None:
        record = self.tests.get(nodeid)
        if record is None:
            return
        if outcome != "passed" or record.outcome in ("not run", "passed"):
            record.outcome = outcome  # a failed teardown after a passed call still counts as failed
        if used is not None:
            record.used = used

    def prunes_now(self, nodeid: str) -> bool:
        """Whether the unused snapshots of this test, which just ended, would be removed by a full update
        run: it passed and the run is not partial (so far)."""
        record = self.tests.get(nodeid)
        return record is not None and record.outcome == "passed" and not self.partial_reasons

    def find_unused(self) -> tuple[list[Path], dict[Path, list[str]]]:
        """Golden files that no collected test owns, and unused snapshot names in files of passed tests."""
        owned = {Path(r.golden) for r in self.tests.values()}
        files: list[Path] = []
        for folder in map(Path, sorted(self.module_folders)):
            if folder.is_dir():
                files += sorted(p for p in folder.glob(f"*{SUFFIX}") if p not in owned)
        for snapshot_dir in sorted({Path(f).parent for f in self.module_folders}):
            for folder in sorted(p for p in snapshot_dir.glob("*") if p.is_dir()):
                if str(folder) not in self.module_folders and not _module_exists(snapshot_dir, folder.name):
                    files += sorted(folder.glob(f"*{SUFFIX}"))
        names: dict[Path, list[str]] = {}
        for record in self.tests.values():
            if record.outcome != "passed":
                continue
            path = Path(record.golden)
            try:
                golden = read_golden(path)
            except GoldenFileError:
                continue
            if golden is not None:
                extra = sorted(set(golden.snapshots) - set(record.used))
                if extra:
                    names[path] = extra
        return files, names

    def finish(self, update: bool) -> None:
        """Report unused golden files and snapshots; delete them only on a full update run.

        In either mode, leftover temporary files of a killed update are removed from the collected modules'
        folders (never a golden file: a check run changes no golden file). A file that cannot be deleted or
        rewritten is listed in `errors` and the rest goes on.
        """
        for folder in map(Path, sorted(self.module_folders)):
            clean_temporaries(folder)
        # unused snapshots already left out when their test wrote its file (TestSnapshots.write)
        self.deleted += [f"{o.file} [{o.name}]" for o in self.outcomes if o.status == "deleted"]
        try:
            files, names = self.find_unused()
        except OSError as error:
            self.errors.append(f"could not look for unused golden files: {error}")
            return
        delete = update and not self.partial_reasons
        for path in files:
            if not delete:
                self.unused.append(str(path))
                continue
            try:
                if delete_golden(path):
                    self.deleted.append(str(path))
            except OSError as error:
                self.errors.append(f"could not delete unused golden file {path}: {error.strerror or error}")
        for path, extra in names.items():
            if not delete:
                self.unused += [f"{path} [{name}]" for name in extra]
                continue
            try:
                golden = read_golden(path)
                if golden is None:
                    continue
                kept = {k: v for k, v in golden.snapshots.items() if k not in extra}
                write_golden(path, GoldenFile(golden.test, golden.fingerprint, kept))
            except (OSError, GoldenFileError) as error:
                self.errors.append(f"could not remove unused snapshots {', '.join(map(repr, extra))} from "
                                   f"{path}: {getattr(error, 'strerror', None) or error}")
                continue
            self.deleted += [f"{path} [{name}]" for name in extra]

    def counts(self) -> dict[str, int]:
        counter = Counter("failed" if o.status == "missing" else o.status for o in self.outcomes)
        counter["deleted"], counter["unused"] = len(self.deleted), len(self.unused)
        return {status: counter.get(status, 0) for status in STATUSES}

    def fragile(self) -> list[SnapshotOutcome]:
        """Snapshots recorded with a margin below llm_near_tie, by test and name."""
        return sorted((o for o in self.outcomes if "fragile" in o.details), key=lambda o: (o.nodeid, o.name))

    def failed_tests(self) -> list[str]:
        return sorted({o.nodeid for o in self.outcomes if o.status in ("failed", "missing")})


def _module_exists(snapshot_dir: Path, folder_name: str) -> bool:
    """Whether a test module whose golden-file folder is named `folder_name` still exists.

    Module folders are named by `safe_file_stem`, which may add a hash (`test_API` becomes `test_API-<hash>`),
    so module names are mapped, not compared. The test folder is the nearest ancestor of `snapshot_dir`
    holding such a module (the snapshot folder may be nested, like `golden/llm`); when in doubt the folder
    counts as used: a golden file is never deleted because its module could not be found.
    """
    for folder in snapshot_dir.parents:
        try:
            if any(safe_file_stem(module.stem) == folder_name for module in folder.glob("*.py")):
                return True
        except OSError:
            return True
    return False
