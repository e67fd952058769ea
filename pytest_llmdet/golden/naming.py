"""The names of one test's snapshots: `llm_snapshot(name="x")` as given, unnamed comparisons numbered 0, 1, ... in
order; a name used both ways is refused (the two comparisons would share, and overwrite, one snapshot); and one
name compared twice must be one output, which then counts once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_llmdet.golden.entry import SnapshotUsageError, same_output
from pytest_llmdet.golden.format import GoldenEntry


@dataclass
class SnapshotNames:
    """The names one test has claimed and compared so far."""

    nodeid: str
    used: list[str] = field(default_factory=list)  # the names compared, in order
    _next: int = 0
    _named: set[str] = field(default_factory=set)  # given with llm_snapshot(name=...)
    _numbered: set[str] = field(default_factory=set)  # given to unnamed comparisons
    _first: dict[str, tuple[GoldenEntry, Any]] = field(default_factory=dict)  # each name's entry and result

    def claim(self, name: str | None) -> str:
        """The snapshot name of the next comparison: `name` as given, or the next number for an unnamed one."""
        if name is None:
            name = str(self._next)
            self._next += 1
            clash = name in self._named
            self._numbered.add(name)
        else:
            clash = name in self._numbered
            self._named.add(name)
        if clash:
            raise SnapshotUsageError(
                f"snapshot name {name!r} is used twice in {self.nodeid}: by llm_snapshot(name={name!r}) and by an "
                f"unnamed comparison (unnamed snapshots are numbered 0, 1, 2, ... in order); give the named one "
                f"another name, or name both"
            )
        return name

    def earlier(self, name: str, current: GoldenEntry) -> tuple[bool, Any]:
        """(True, the result of its first comparison) when `name` was compared before with this output; (False,
        None) when it was not; a usage error when it was, with another output (in a check and an update alike)."""
        if name not in self._first:
            return False, None
        first, result = self._first[name]
        if not same_output(first, current):
            raise SnapshotUsageError(f"snapshot {name!r} was compared twice in {self.nodeid} with different outputs; "
                                     "give each comparison its own name: llm_snapshot(name=...)")
        return True, result

    def compared(self, name: str, current: GoldenEntry, result: Any) -> None:
        """Snapshot `name` was compared, with output `current`, giving `result`."""
        self._first[name] = (current, result)


__all__ = ["SnapshotNames"]
