"""The re-run check for nondeterminism: its vocabulary and plain data (the differences, the factor matrix's
cells, the verdict an xdist worker sends), the comparison of N runs of one test call by call, and the verdict
that condenses it. The failure report is in determinism/report.py, the summary and matrix in determinism/summary.py.

Plain data and functions: neither pytest nor torch is imported here, so all of it is testable on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any, NamedTuple, Protocol

from pytest_llmdet.divergence import Divergence, divergence_of
from pytest_llmdet.generation import Generation, Prompt
from pytest_llmdet.vocabulary import FactorName, Word


class VerdictStatus(Word):
    """How a checked test came out: the JSON report's `status` of a determinism verdict."""

    DETERMINISTIC = "deterministic"
    NONDETERMINISTIC = "nondeterministic"
    SENSITIVE = "sensitive"  # only a sensitivity factor (dtype) changed the tokens


class VerdictKind(Word):
    """What a test's runs disagreed in: the JSON report's `kind` (where the runs agreed and a factor changed the
    tokens, the kind is that factor's FactorName)."""

    INPUT = "input"  # the test's own input changed between runs
    CALLS = "calls"  # the runs made different numbers of calls
    TOKENS = "tokens"  # the runs' tokens diverged


Kind = VerdictKind | FactorName
KINDS: dict[str, Kind] = {kind.value: kind for kind in (*VerdictKind, *FactorName)}


class CellStatus(Word):
    """How a test's calls fared under one factor: the JSON report's `status` of a factor cell."""

    SAME = "same"
    DIVERGED = "diverged"
    NOT_APPLICABLE = "n/a"


class TokenOutput(Protocol):
    """What a comparison needs of an output: a `Generation`, or a `BatchedOutput` of the batch probe."""

    token_ids: list[int]
    margins: list[float]
    logprobs: list[float]


@dataclass
class BatchedOutput:
    """One prompt's output when it was generated inside a batch."""

    token_ids: list[int]
    margins: list[float]
    logprobs: list[float]


@dataclass
class CallDifference:
    """One call whose outputs were not all the same across the runs."""

    index: int  # 0-based position of the call in the test
    prompt: Prompt  # as run 1 made it
    runs: int
    distinct_outputs: int
    changed_input: list[str] = field(default_factory=list)  # "prompt", "generation settings (...)"
    prompts: tuple[Prompt, Prompt] | None = None  # run 1's and the first different run's, when the prompt changed
    other_run: int = 0  # 1-based number of the run compared with run 1
    divergence: Divergence | None = None


@dataclass
class RunComparison:
    """The outcome of comparing the recordings of N runs of one test."""

    runs: int
    call_counts: list[int]
    differences: list[CallDifference] = field(default_factory=list)

    @property
    def deterministic(self) -> bool:
        return not self.differences and len(set(self.call_counts)) <= 1

    @property
    def calls(self) -> int:
        return max(self.call_counts, default=0)


@dataclass
class FactorDifference:
    """One call whose output changed when it was generated again under a factor (in a batch, without a KV
    cache, with another attention implementation, ...); the strings say what was compared, for the report."""

    factor: FactorName
    index: int  # 0-based position of the call in the test
    prompt: Prompt
    divergence: Divergence
    vs: str  # "alone vs in a left-padded batch of 4"
    reference: str  # the call as recorded: "alone"
    changed: str  # under the factor: "in the batch"
    where: str  # the change, for the summary: "in a left-padded batch of 4"
    sensitivity: bool = False  # dtype: a sensitivity, not nondeterminism
    advice: str = ""  # what to do about it, one line

    @property
    def heading(self) -> str:
        return f"{self.factor}-{'sensitive' if self.sensitivity else 'variant'}"


@dataclass
class FactorCell:
    """One cell of the factor matrix: how a test's calls fared under one factor."""

    status: CellStatus
    position: int | None = None  # the earliest diverging token
    call: int | None = None  # 1-based: the call that diverged there
    reference_margin: float | None = None  # the margins at that token, as recorded and under the factor
    changed_margin: float | None = None
    reference: str = ""  # what the two sides were ("alone", "in the batch")
    changed: str = ""
    reason: str | None = None  # n/a: why the factor could not be applied
    sensitivity: bool = False

    def text(self) -> str:
        """The cell as the matrix shows it: `=`, the first diverging token, or `n/a`."""
        return {CellStatus.SAME: "=", CellStatus.NOT_APPLICABLE: "n/a"}.get(self.status, str(self.position))

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> FactorCell:
        """The inverse of `asdict`: a cell as an xdist worker sent it."""
        return cls(**{**data, "status": CellStatus(data["status"])})


def factor_cell(differences: Sequence[FactorDifference], applied: int, reasons: Sequence[str],
                sensitivity: bool = False) -> FactorCell:
    """The matrix cell of one factor of one test: its earliest difference, `=` when the `applied` calls (how
    many were regenerated under it) agreed, n/a with the `reasons` when none could be."""
    if not applied:
        reason = "; ".join(dict.fromkeys(reasons)) or "no call to regenerate"
        return FactorCell(CellStatus.NOT_APPLICABLE, reason=reason, sensitivity=sensitivity)
    if not differences:
        return FactorCell(CellStatus.SAME, sensitivity=sensitivity)
    first = min(differences, key=lambda d: (d.divergence.index, d.index))
    d = first.divergence
    return FactorCell(CellStatus.DIVERGED, d.index, first.index + 1, d.reference_margin, d.other_margin,
                      first.reference, first.changed, sensitivity=sensitivity)


@dataclass
class Verdict:
    """The summary's view of one checked test; plain data that an xdist worker sends to the controller."""

    nodeid: str
    runs: int
    deterministic: bool
    kind: Kind | None = None  # what changed: the input, the calls, the tokens, or a factor (batch, cache, ...)
    position: int | None = None  # earliest diverging token, when there is one
    distinct_outputs: int = 1
    detail: str = ""  # one line for the list of offenders
    sensitive: bool = False  # a sensitivity factor (dtype) changed the tokens
    factors: dict[FactorName, FactorCell] = field(default_factory=dict)  # the test's row of the factor matrix

    @property
    def status(self) -> VerdictStatus:
        """deterministic, nondeterministic, or sensitive (only a sensitivity factor changed the tokens)."""
        if not self.deterministic:
            return VerdictStatus.NONDETERMINISTIC
        return VerdictStatus.SENSITIVE if self.sensitive else VerdictStatus.DETERMINISTIC

    def severity(self) -> tuple[int, int, int, int]:
        """Sort key, worst first: nondeterminism before a sensitivity; a changing input or call count, then
        the earliest divergence, then the most distinct outputs."""
        if self.kind in (VerdictKind.INPUT, VerdictKind.CALLS):
            early = -1
        else:
            early = self.position if self.position is not None else 10**9
        return (int(self.deterministic), early, -self.distinct_outputs, int(self.kind == FactorName.BATCH))


# -- comparing ----------------------------------------------------------------------------------------------


def compare_outputs(left: TokenOutput, right: TokenOutput) -> Divergence | None:
    """Where the token IDs of two outputs first differ (None when they are equal), with both margins there and
    the largest log-prob difference of the chosen tokens before it."""
    divergence = divergence_of(list(left.token_ids), list(right.token_ids), left.margins, right.margins)
    if divergence is not None:
        divergence.max_logprob_delta = max_logprob_delta([left, right], divergence.index)
    return divergence


def max_logprob_delta(outputs: Sequence[TokenOutput], before: int) -> float | None:
    """The largest |Δ| between the outputs' chosen-token log-probs at positions before `before`; None if
    there is no such position."""
    deltas = [
        abs(a - b)
        for other in outputs[1:]
        for a, b in zip(outputs[0].logprobs[:before], other.logprobs[:before], strict=False)
    ]
    return max(deltas) if deltas else None


def distinct_outputs(outputs: Sequence[TokenOutput]) -> int:
    """How many different token sequences the outputs hold."""
    return len({tuple(output.token_ids) for output in outputs})


def _prompt_changed(first: Generation, other: Generation) -> bool:
    return repr(first.prompt) != repr(other.prompt) or first.prompt_token_ids != other.prompt_token_ids


def _changed_input(first: Generation, other: Generation) -> list[str]:
    changed = ["prompt"] if _prompt_changed(first, other) else []
    if first.settings != other.settings:
        keys = sorted(k for k in set(first.settings) | set(other.settings)
                      if first.settings.get(k) != other.settings.get(k))
        changed.append(f"generation settings ({', '.join(keys)})")
    return changed


def compare_call(index: int, generations: Sequence[Generation]) -> CallDifference | None:
    """Compare one call across the runs (run 1 first); None when every run gave the same input and tokens."""
    first = generations[0]
    for number, other in enumerate(generations[1:], start=2):
        changed = _changed_input(first, other)
        if changed:  # the test's own input is not reproducible: comparing its outputs would say nothing
            prompts = (first.prompt, other.prompt) if _prompt_changed(first, other) else None
            return CallDifference(index, first.prompt, len(generations), distinct_outputs(generations),
                                  changed_input=changed, prompts=prompts, other_run=number)
    if distinct_outputs(generations) == 1:
        return None
    earliest: tuple[int, Divergence] | None = None
    for number, other in enumerate(generations[1:], start=2):
        divergence = compare_outputs(first, other)
        if divergence is not None and (earliest is None or divergence.index < earliest[1].index):
            earliest = (number, divergence)
    assert earliest is not None
    number, divergence = earliest
    # every run agrees with run 1 before the earliest divergence, so all of them can be compared there
    divergence.max_logprob_delta = max_logprob_delta(generations, divergence.index)
    return CallDifference(index, first.prompt, len(generations), distinct_outputs(generations),
                          other_run=number, divergence=divergence)


def compare_runs(recordings: Sequence[Sequence[Generation]]) -> RunComparison:
    """Compare the recorded generations of N runs of a test call by call (calls beyond the shortest run are
    reported through the differing call counts)."""
    counts = [len(calls) for calls in recordings]
    comparison = RunComparison(runs=len(recordings), call_counts=counts)
    if len(recordings) < 2:
        return comparison
    for index in range(min(counts)):
        difference = compare_call(index, [calls[index] for calls in recordings])
        if difference is not None:
            comparison.differences.append(difference)
    return comparison


class _Cause(NamedTuple):
    """What a verdict that is not plainly deterministic says about the test."""

    kind: Kind
    position: int | None
    distinct_outputs: int
    detail: str


def verdict_for(nodeid: str, comparison: RunComparison, factors: Sequence[FactorDifference] = (),
                cells: dict[FactorName, FactorCell] | None = None) -> Verdict:
    """Condense a test's comparison (and its factors' differences and matrix row) into the summary's verdict."""
    invariance = [d for d in factors if not d.sensitivity]
    sensitivity = [d for d in factors if d.sensitivity]
    verdict = Verdict(nodeid, comparison.runs, deterministic=comparison.deterministic and not invariance,
                      sensitive=bool(sensitivity), factors=dict(cells or {}))
    if verdict.deterministic and not verdict.sensitive:
        return verdict
    cause = _cause_in_runs(comparison) or _cause_in_factors(invariance or sensitivity)
    return replace(verdict, **cause._asdict())


def _cause_in_runs(comparison: RunComparison) -> _Cause | None:
    """What the runs disagree in, worst first: the input, the number of calls, the tokens; None: they agree."""
    changed = [d for d in comparison.differences if d.changed_input]
    if changed:
        d = changed[0]
        return _Cause(VerdictKind.INPUT, None, d.distinct_outputs,
                      f"the {' and the '.join(d.changed_input)} of call {d.index + 1} changed between runs")
    if len(set(comparison.call_counts)) > 1:
        counts = ", ".join(map(str, comparison.call_counts))
        return _Cause(VerdictKind.CALLS, None, 1, f"different numbers of calls per run ({counts})")
    diverged = [(d, d.divergence) for d in comparison.differences if d.divergence is not None]
    if not diverged:
        return None
    d, divergence = min(diverged, key=lambda pair: pair[1].index)
    return _Cause(VerdictKind.TOKENS, divergence.index, max(x.distinct_outputs for x, _ in diverged),
                  f"call {d.index + 1} diverges at token {divergence.index}; "
                  f"{d.distinct_outputs} distinct outputs in {d.runs} runs")


def _cause_in_factors(differences: Sequence[FactorDifference]) -> _Cause:
    """The earliest divergence under a factor (the runs agreed)."""
    b = min(differences, key=lambda b: (b.divergence.index, b.index))
    return _Cause(b.factor, b.divergence.index, 2,
                  f"{b.heading}: call {b.index + 1} diverges at token {b.divergence.index} {b.where}")


def verdicts_to_data(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """Verdicts as plain dicts of plain values (what an xdist worker can send: execnet knows no enum)."""
    return [_plain(asdict(v)) for v in verdicts]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value.value if isinstance(value, Enum) else value


def verdicts_from_data(data: Sequence[dict[str, Any]]) -> list[Verdict]:
    """The inverse of `verdicts_to_data`."""
    return [Verdict(**{**item, "kind": kind_of(item.get("kind")),
                       "factors": {FactorName(name): FactorCell.from_data(cell)
                                   for name, cell in item.get("factors", {}).items()}})
            for item in data]


def kind_of(value: str | None) -> Kind | None:
    """A verdict's kind from its value (the JSON report's `kind`); None for none."""
    return KINDS[value] if value else None
