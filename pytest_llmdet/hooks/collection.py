"""What the golden-file side records of the collection: every collected test and the golden file it owns
(pytest-repeat's steps own their test's), the tests deselected or filtered out (they keep their files), and
why the run is partial (a partial update deletes no unused snapshot)."""

from __future__ import annotations

import os

import pytest

from pytest_llmdet.golden.ledger import SnapshotRun
from pytest_llmdet.hooks import BEFORE_FILTERING_KEY

REPEAT_PARAMETER = "__pytest_repeat_step_number"  # pytest-repeat's: its steps share their test's golden file
PARTIAL_OPTIONS = (("keyword", "-k"), ("markexpr", "-m"), ("lf", "--lf/--ff"), ("failedfirst", "--lf/--ff"),
                   ("stepwise", "--stepwise"), ("setuponly", "--setup-only"), ("setupplan", "--setup-plan"),
                   ("collectonly", "--collect-only"))


def golden_test_of(item: pytest.Item) -> str:
    """The test whose golden file `item` uses: itself, or for a step of pytest-repeat (`--count`, the `repeat`
    marker) the test it repeats, its step's id (`1-2`) taken out of the node id."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or REPEAT_PARAMETER not in callspec.params:
        return item.nodeid
    ids = list(getattr(callspec, "_idlist", ()))
    step = f"{callspec.params[REPEAT_PARAMETER] + 1}-"
    matches = [i for i, part in enumerate(ids) if part.startswith(step) and part[len(step):].isdigit()]
    suffix = f"[{callspec.id}]"
    if not matches or not item.nodeid.endswith(suffix):
        return item.nodeid
    del ids[matches[-1]]
    return item.nodeid[: -len(suffix)] + (f"[{'-'.join(ids)}]" if ids else "")


def command_id_of(item: pytest.Item, test: str) -> str:
    """How a command run from where pytest was started names test `test` (item's, or its pytest-repeat step's):
    its file relative to that folder, then the rest of the node id. Node ids are relative to the rootdir (or to
    the ini file's folder, which may not hold the tests): the file's own path is what names it from there."""
    path = getattr(item, "path", None)
    if path is None or "::" not in test:
        return item.config.cwd_relative_nodeid(test)
    relative = os.path.relpath(path, item.config.invocation_params.dir).replace(os.sep, "/")
    return f"{relative}::{test.split('::', 1)[1]}"


def _module_items(items: list[pytest.Item]) -> list[pytest.Item]:
    return [item for item in items if getattr(item, "path", None) is not None and item.path.suffix == ".py"]


def remember_before_filtering(items: list[pytest.Item]) -> None:
    """Remember every collected test before plugins and conftests filter the list: a test dropped without
    pytest_deselected (a "fast mode" conftest, --lf) must keep its golden file."""
    if items:
        items[0].session.stash[BEFORE_FILTERING_KEY] = [(item.nodeid, item.path, golden_test_of(item))
                                                        for item in _module_items(items)]


def record_deselected(items: list[pytest.Item], run: SnapshotRun, snapshot_dir: str) -> None:
    """Deselected tests keep their golden files, and make the run partial."""
    run.partial_reasons.add("deselected tests")
    for item in _module_items(items):
        run.collection.deselect(item.nodeid, item.path, snapshot_dir, golden_test_of(item))


def record_collection(session: pytest.Session, run: SnapshotRun, snapshot_dir: str) -> None:
    """Record every collected test and the module folders collected, and why the run is partial."""
    kept = set()
    for item in _module_items(session.items):
        run.collection.collected(item.nodeid, item.path, "llm_snapshot" in getattr(item, "fixturenames", ()),
                                 snapshot_dir, golden_test_of(item))
        kept.add(item.nodeid)
    filtered = [(nodeid, path, test) for nodeid, path, test in session.stash.get(BEFORE_FILTERING_KEY, [])
                if nodeid not in kept and nodeid not in run.collection.deselected]
    if filtered:  # dropped by a plugin or a conftest without pytest_deselected: they still own their files
        run.partial_reasons.add("tests filtered out during collection")
        for nodeid, path, test in filtered:
            run.collection.deselect(nodeid, path, snapshot_dir, test)
    config = session.config
    run.partial_reasons.update(reason for flag, reason in PARTIAL_OPTIONS if getattr(config.option, flag, None))
    for arg in config.args:
        if "::" in arg:
            run.partial_reasons.add("node ids on the command line")
            run.collection.partly_collect(config.invocation_params.dir / arg.split("::", 1)[0], snapshot_dir)
    if session.testsfailed:  # at this point only collection errors count here
        run.partial_reasons.add("collection errors")


__all__ = ["command_id_of", "golden_test_of", "record_collection", "record_deselected", "remember_before_filtering"]
