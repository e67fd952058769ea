"""The re-run check for nondeterminism: its plain data (the differences, the factor matrix's cells, the verdict
an xdist worker sends), the comparison of N runs of one test call by call, and the verdict that condenses it.
The failure report is in determinism/report.py, the summary and the factor matrix in determinism/summary.py.

Plain data and functions: neither pytest nor torch is imported here, so all of it is testable on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pytest_llmdet.divergence import Divergence, divergence_of
from pytest_llmdet.generation import Generation, Prompt


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
    inputs: tuple[Any, Any] | None = None  # run 1's and the first different run's input, for the report
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

    factor: str  # "batch", "cache", ...
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

    status: str  # "same", "diverged" or "n/a"
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
        return {"same": "=", "n/a": "n/a"}.get(self.status, str(self.position))


def factor_cell(differences: Sequence[FactorDifference], applied: int, reasons: Sequence[str],
                sensitivity: bool = False) -> FactorCell:
    """The matrix cell of one factor of one test: its earliest difference, `=` when the `applied` calls (how
    many were regenerated under it) agreed, n/a with the `reasons` when none could be."""
    if not applied:
        return FactorCell("n/a", reason="; ".join(dict.fromkeys(reasons)) or "no call to regenerate",
                          sensitivity=sensitivity)
    if not differences:
        return FactorCell("same", sensitivity=sensitivity)
    first = min(differences, key=lambda d: (d.divergence.index, d.index))
    d = first.divergence
    return FactorCell("diverged", d.index, first.index + 1, d.reference_margin, d.other_margin, first.reference,
                      first.changed, sensitivity=sensitivity)


@dataclass
class Verdict:
    """The summary's view of one checked test; plain data that an xdist worker sends to the controller."""

    nodeid: str
    runs: int
    deterministic: bool
    kind: str = ""  # "input", "calls", "tokens", or the factor ("batch", "cache", "dtype", ...) that changed it
    position: int | None = None  # earliest diverging token, when there is one
    distinct_outputs: int = 1
    detail: str = ""  # one line for the list of offenders
    sensitive: bool = False  # a sensitivity factor (dtype) changed the tokens
    factors: dict[str, FactorCell] = field(default_factory=dict)  # the test's row of the factor matrix

    @property
    def status(self) -> str:
        """deterministic, nondeterministic, or sensitive (only a sensitivity factor changed the tokens)."""
        if not self.deterministic:
            return "nondeterministic"
        return "sensitive" if self.sensitive else "deterministic"

    def severity(self) -> tuple[int, int, int, int]:
        """Sort key, worst first: nondeterminism before a sensitivity; a changing input or call count, then
        the earliest divergence, then the most distinct outputs."""
        if self.kind in ("input", "calls"):
            early = -1
        else:
            early = self.position if self.position is not None else 10**9
        return (int(self.deterministic), early, -self.distinct_outputs, 0 if self.kind != "batch" else 1)


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


def _changed_input(first: Generation, other: Generation) -> list[str]:
    changed = []
    if repr(first.prompt) != repr(other.prompt) or first.prompt_token_ids != other.prompt_token_ids:
        changed.append("prompt")
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
            return CallDifference(index, first.prompt, len(generations), distinct_outputs(generations),
                                  changed_input=changed, inputs=(first.prompt, other.prompt),
                                  other_run=number)
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


def verdict_for(nodeid: str, comparison: RunComparison, factors: Sequence[FactorDifference] = (),
                cells: dict[str, FactorCell] | None = None) -> Verdict:
    """Condense a test's comparison (and its factors' differences and matrix row) into the summary's verdict."""
    invariance = [d for d in factors if not d.sensitivity]
    sensitivity = [d for d in factors if d.sensitivity]
    verdict = Verdict(nodeid, comparison.runs, deterministic=comparison.deterministic and not invariance,
                      sensitive=bool(sensitivity), factors=dict(cells or {}))
    if verdict.deterministic and not verdict.sensitive:
        return verdict
    changed = [d for d in comparison.differences if d.changed_input]
    diverged = [d for d in comparison.differences if d.divergence is not None]
    if changed:
        d = changed[0]
        verdict.kind, verdict.distinct_outputs = "input", d.distinct_outputs
        verdict.detail = f"the {' and the '.join(d.changed_input)} of call {d.index + 1} changed between runs"
    elif len(set(comparison.call_counts)) > 1:
        verdict.kind = "calls"
        verdict.detail = f"different numbers of calls per run ({', '.join(map(str, comparison.call_counts))})"
    elif diverged:
        d = min(diverged, key=lambda d: d.divergence.index)  # type: ignore[union-attr]
        assert d.divergence is not None
        verdict.kind, verdict.position = "tokens", d.divergence.index
        verdict.distinct_outputs = max(x.distinct_outputs for x in diverged)
        verdict.detail = (f"call {d.index + 1} diverges at token {d.divergence.index}; "
                          f"{d.distinct_outputs} distinct outputs in {d.runs} runs")
    else:
        b = min(invariance or sensitivity, key=lambda b: (b.divergence.index, b.index))
        verdict.kind, verdict.position, verdict.distinct_outputs = b.factor, b.divergence.index, 2
        verdict.detail = f"{b.heading}: call {b.index + 1} diverges at token {b.divergence.index} {b.where}"
    return verdict


def verdicts_to_data(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """Verdicts as plain dicts (what an xdist worker can send)."""
    return [asdict(v) for v in verdicts]


def verdicts_from_data(data: Sequence[dict[str, Any]]) -> list[Verdict]:
    """The inverse of `verdicts_to_data`."""
    return [Verdict(**{**item, "factors": {name: FactorCell(**cell)
                                           for name, cell in item.get("factors", {}).items()}})
            for item in data]
