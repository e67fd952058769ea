"""The `llm_snapshot` object a test compares against: `assert llm.generate("...") == llm_snapshot`. Comparing
asks the test's `TestSnapshots` to judge and record; the failure lines it keeps are what pytest shows."""

from __future__ import annotations

from pytest_llmdet.golden.entry import SnapshotUsageError
from pytest_llmdet.golden.snapshot import TestSnapshots


class LLMSnapshot:
    """Compare with `==`: `assert llm.generate(prompt) == llm_snapshot`; `llm_snapshot(name="x")` names it."""

    def __init__(self, snapshots: TestSnapshots, name: str | None = None) -> None:
        self._snapshots = snapshots
        self._name = name
        self.failure: list[str] = []

    def __call__(self, name: str) -> LLMSnapshot:
        if not isinstance(name, str) or not name:
            raise SnapshotUsageError(f"a snapshot name is a non-empty string, not {name!r}")
        return LLMSnapshot(self._snapshots, name)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LLMSnapshot):
            return other is self
        name = self._snapshots.claim(self._name)
        matched, self.failure = self._snapshots.check(name, other)
        return matched

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"llm_snapshot({self._name!r})" if self._name else "llm_snapshot"


__all__ = ["LLMSnapshot"]
