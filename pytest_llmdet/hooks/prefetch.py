"""--llm-prefetch, pytest side: `PrefetchPlugin`, registered by plugin.py only in a check with the flag (or
`llm_prefetch = true`), remembers the selected tests; when the `llm` fixture first hands out a model on an
engine that prefetches (vllm, openai), it generates the recorded calls of every selected snapshot test on that
model at once (golden/prefetch.py) and gives the handle the results. Under pytest-xdist a worker does not know
which tests it will be sent, so it prefetches per test file, as it starts the first test of a file: with
`--dist loadfile` (or loadscope) nothing is generated twice; with plain `--dist load` a file's tests are spread
over the workers, and the summary counts the results a worker generated for tests it was not sent (unused).

Tests checked for nondeterminism (llm_determinism, --llm-check-determinism, --llm-factors) are never answered
from the prefetch: their runs must be generated each time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmdet.engines.kinds import engine_kind
from pytest_llmdet.engines.llm import LLM
from pytest_llmdet.engines.models import ModelSpec
from pytest_llmdet.engines.sources import ModelLoadError
from pytest_llmdet.golden.location import golden_path
from pytest_llmdet.golden.prefetch import (
    BATCH_INVARIANCE,
    Prefetch,
    PrefetchStats,
    RecordedCall,
    Source,
    golden_calls,
    prefetch,
)
from pytest_llmdet.golden.prefetch import summary_lines as prefetch_lines
from pytest_llmdet.hooks import LLM_KEY
from pytest_llmdet.hooks.collection import golden_test_of
from pytest_llmdet.hooks.state import LLMDetSession
from pytest_llmdet.markers import compare_plan
from pytest_llmdet.settings import SnapshotSettings
from pytest_llmdet.settings.values import SettingsError


class PrefetchPlugin:
    """The prefetches of one pytest process and their hooks."""

    def __init__(self, session: LLMDetSession, snapshot_settings: SnapshotSettings) -> None:
        self.session = session
        self.snapshot_settings = snapshot_settings
        self.stats = PrefetchStats()
        self.items: list[pytest.Item] = []
        self.done: dict[tuple[ModelSpec, str | None], Prefetch] = {}

    # -- xdist: the prefetch's share (hooks/workers.py) --------------------------------------------------------

    def worker_data(self) -> dict[str, Any]:
        return self.stats.to_data()

    def merge_worker(self, data: dict[str, Any]) -> None:
        self.stats.merge(data)

    # -- the llm fixture ---------------------------------------------------------------------------------------

    def attach(self, node: pytest.Item, handle: LLM, spec: ModelSpec) -> None:
        """Give `handle` the prefetched results of its model (prefetching them first when none are), unless the
        engine does not prefetch or the test is checked for nondeterminism."""
        if not engine_kind(spec.engine).prefetches or not self._answerable(node):
            return
        group = self._group(node)
        if (spec, group) not in self.done:
            self.done[(spec, group)] = prefetch(handle, self._calls(spec, group), self.session.settings.concurrency,
                                                self.stats)
        handle.prefetch = self.done[(spec, group)]

    def _answerable(self, node: pytest.Item) -> bool:
        settings = self.session.settings
        return "llm_snapshot" in getattr(node, "fixturenames", ()) and \
            node.get_closest_marker("llm_determinism") is None and not settings.check_determinism \
            and not settings.factors

    def _group(self, node: pytest.Item) -> str | None:
        return None if self.session.worker is None else str(node.path)  # under xdist: per test file

    def _calls(self, spec: ModelSpec, group: str | None) -> Iterator[tuple[RecordedCall, int]]:
        """The recorded calls of the selected tests of `group` on `spec`'s model, each with the top-k its
        test's comparison records."""
        for item in self.items:
            if not self._answerable(item) or self._group(item) != group or self._spec(item) != spec:
                continue
            marker = item.get_closest_marker("llm_snapshot")
            try:
                top_k = compare_plan(self.snapshot_settings, marker.args if marker else None,
                                     marker.kwargs if marker else None).capture_top_k
            except SettingsError:
                continue  # the test fails with its marker's error itself
            path = golden_path(Path(str(item.path)), golden_test_of(item), self.snapshot_settings.snapshot_dir)
            yield from ((call, top_k) for call in golden_calls(path))

    def _spec(self, item: pytest.Item) -> ModelSpec | None:
        marker = item.get_closest_marker("llm_model")
        try:
            if marker is None:
                return self.session.default_spec()
            return self.session.spec_from_marker(marker.args, marker.kwargs, Path(str(item.path)).parent)
        except (ModelLoadError, SettingsError):
            return None

    # -- hooks -------------------------------------------------------------------------------------------------

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.items = list(session.items)  # the selected tests, as deselection left them

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Iterator[None]:
        outcome = yield
        report = outcome.get_result()
        handle = item.stash.get(LLM_KEY, None)
        if report.when != "call" or handle is None:
            return
        disagreed = [generation for generation in handle.calls if generation.prefetch == Source.DISAGREED]
        if disagreed:
            self.stats.disagreed += [item.nodeid] * len(disagreed)
            report.sections.append(("llm prefetch", disagreement_note(len(disagreed))))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        lines = prefetch_lines(self.stats)
        if lines:
            terminalreporter.write_sep("=", "llm prefetch")
            for line in lines:
                terminalreporter.write_line(line)


def disagreement_note(count: int) -> str:
    """The report section of a test in which a lone request disagreed with the batch."""
    return (f"{count} call(s) of this test gave other tokens in the prefetch's batch than in a lone request: "
            f"{BATCH_INVARIANCE}. The test was judged by the lone output.")


__all__ = ["PrefetchPlugin", "disagreement_note"]
