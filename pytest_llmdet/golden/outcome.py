"""What happened to one snapshot in a run, as typed values: the outcome the summary counts, the JSON report and the
JUnit properties show, and pytest-xdist workers send to the controller (`to_data` / `from_data`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_llmdet.golden.inputs import InputChange
from pytest_llmdet.vocabulary import CompareMode, Label, SnapshotStatus


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 4)


@dataclass(frozen=True)
class FirstDivergence:
    """Where the current output first left its golden snapshot, and how that is judged."""

    index: int
    golden_token: int | None  # None: the golden output ended here
    current_token: int | None  # None: the current output ended here
    golden_margin: float | None
    current_margin: float | None
    label: Label


@dataclass(frozen=True)
class DivergenceSummary:
    """A comparison as the outcome keeps it: matched or not, where, which lengths, what else it noticed."""

    matched: bool
    first: FirstDivergence | None
    golden_length: int
    current_length: int
    golden_finish: str | None
    current_finish: str | None
    text_changed: bool
    notes: tuple[str, ...] = ()
    checked: str | None = None  # a tolerant comparison: what it checked, in words
    input_changes: tuple[InputChange, ...] = ()

    @property
    def label(self) -> Label | None:
        return None if self.first is None else self.first.label

    def line(self) -> str:
        """One line: where, which tokens, which label (or what input changed)."""
        d = self.first
        if self.input_changes:
            more = f" (and {len(self.input_changes) - 1} more)" if len(self.input_changes) > 1 else ""
            where = f"; first divergence at token {d.index}" if d is not None else "; the output tokens are unchanged"
            return f"input changed: {self.input_changes[0].line()}{more}{where}"
        if d is None:
            if self.golden_length != self.current_length:
                return f"length: golden {self.golden_length} tokens, current {self.current_length}"
            return "text differs" if self.text_changed else "identical"
        return (f"first divergence at token {d.index} ({d.label}): golden {d.golden_token}, current "
                f"{d.current_token}; lengths {self.golden_length}/{self.current_length}")

    def to_data(self) -> dict[str, Any]:
        """As the JSON report (and an xdist worker) writes it; margins rounded, infinite ones null."""
        d = self.first
        return {
            "matched": self.matched,
            "first_divergence": None if d is None else {
                "index": d.index, "golden_token": d.golden_token, "current_token": d.current_token,
                "golden_margin": _finite(d.golden_margin), "current_margin": _finite(d.current_margin),
                "label": d.label.value,  # plain strings: execnet (xdist) sends only built-in types
            },
            "golden_length": self.golden_length, "current_length": self.current_length,
            "golden_finish": self.golden_finish, "current_finish": self.current_finish,
            "text_changed": self.text_changed,
            "notes": list(self.notes),
            "checked": self.checked,
            "input_changes": [change.to_data() for change in self.input_changes],
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> DivergenceSummary:
        first = data["first_divergence"]
        return cls(
            matched=data["matched"],
            first=None if first is None else FirstDivergence(**{**first, "label": Label(first["label"])}),
            golden_length=data["golden_length"], current_length=data["current_length"],
            golden_finish=data["golden_finish"], current_finish=data["current_finish"],
            text_changed=data["text_changed"], notes=tuple(data["notes"]), checked=data.get("checked"),
            input_changes=tuple(InputChange(**change) for change in data.get("input_changes", ())),
        )


@dataclass
class Fragile:
    """At record time: the step whose margin is below llm_near_tie (another machine may flip it)."""

    position: int
    margin: float


@dataclass
class OutcomeDetails:
    """What the summary, the JSON report and the JUnit properties show of one snapshot's outcome."""

    compare: CompareMode = CompareMode.EXACT  # how it was compared
    fingerprint: dict[str, Any] | None = None  # the current environment (None: a text-only snapshot)
    variant: str | None = None  # the environment variant compared (None: the default)
    compared_with: str | None = None  # in words, when the snapshot has variants
    divergence: DivergenceSummary | None = None
    fragile: Fragile | None = None
    error: str | None = None  # why the golden file could not be read (a check) or written (an update)
    update_flags: str = ""  # what its update command gives besides --llm-snapshot-update
    command_env: str = ""  # the environment its update command sets (ATEN_CPU_CAPABILITY=...), if any
    command_id: str = ""  # the test as its update command names it
    queued: SnapshotStatus | None = None  # an update's: written or updated, what it counts as once on disk
    text_diff: list[str] | None = None  # a failed comparison whose text changed: the bounded diff of the texts
    location: dict[str, Any] | None = None  # a failed one: {"file", "line"} of the comparison in the test's file
    tokens: dict[str, Any] | None = None  # a failed or tolerated one: both sides' tokens near it (tokens.py)
    environment_changes: list[str] | None = None  # a failed one: `field: old → new` of the environment recorded
    prefetch: str | None = None  # --llm-prefetch: how the output compared was got (golden/prefetch.Source)

    @property
    def checked(self) -> str | None:
        """What a tolerant comparison checked, in words."""
        return None if self.divergence is None else self.divergence.checked

    def to_data(self) -> dict[str, Any]:
        """As plain data (an xdist worker sends it to the controller)."""
        data = asdict(self)
        data.update(compare=self.compare.value, queued=None if self.queued is None else self.queued.value,
                    divergence=None if self.divergence is None else self.divergence.to_data())
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> OutcomeDetails:
        fragile, divergence, queued = data.get("fragile"), data.get("divergence"), data.get("queued")
        return cls(**{**data, "compare": CompareMode(data["compare"]),
                      "fragile": Fragile(**fragile) if fragile else None,
                      "divergence": DivergenceSummary.from_data(divergence) if divergence else None,
                      "queued": SnapshotStatus(queued) if queued else None})


@dataclass
class SnapshotOutcome:
    """What happened to one snapshot in this run."""

    nodeid: str
    name: str
    status: SnapshotStatus
    file: str
    details: OutcomeDetails = field(default_factory=OutcomeDetails)

    @property
    def tolerated_at(self) -> int | None:
        """Where a snapshot that passed tolerantly diverged from its golden (None: it did not)."""
        divergence = self.details.divergence
        if self.status != SnapshotStatus.PASSED or divergence is None or divergence.label != Label.TOLERATED:
            return None
        return divergence.first.index

    def to_data(self) -> dict[str, Any]:
        return {"nodeid": self.nodeid, "name": self.name, "status": self.status.value, "file": self.file,
                "details": self.details.to_data()}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> SnapshotOutcome:
        return cls(data["nodeid"], data["name"], SnapshotStatus(data["status"]), data["file"],
                   OutcomeDetails.from_data(data["details"]))


@dataclass
class TestOutcomes:
    """One test's snapshot outcomes, each recorded to the run as it happens; a queued one (unwritten) becomes
    written or updated once the test's write is done, or an error when it is not."""

    record: Callable[[SnapshotOutcome], None] = lambda outcome: None
    items: list[SnapshotOutcome] = field(default_factory=list)

    def add(self, outcome: SnapshotOutcome) -> None:
        self.items.append(outcome)
        self.record(outcome)

    def written(self) -> None:
        """The test's write is done: its queued snapshots are written or updated."""
        for outcome in self.items:
            if outcome.status == SnapshotStatus.UNWRITTEN:
                outcome.status = outcome.details.queued or SnapshotStatus.UPDATED

    def unwritten(self, reason: str) -> None:
        """The test's write failed: its queued snapshots are errors, for `reason`."""
        for outcome in self.items:
            if outcome.status == SnapshotStatus.UNWRITTEN:
                outcome.status = SnapshotStatus.ERROR
                outcome.details.error = reason

    @property
    def all_passed(self) -> bool:
        return bool(self.items) and all(o.status == SnapshotStatus.PASSED for o in self.items)


__all__ = ["DivergenceSummary", "FirstDivergence", "Fragile", "OutcomeDetails", "SnapshotOutcome", "TestOutcomes"]
