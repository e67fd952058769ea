"""The re-run check for nondeterminism: compare the generations of N runs of one test call by call (and each
call alone with the same call inside a batch), and write the report of where they differ.

Plain data and functions: neither pytest nor torch is imported here, so all of it is testable on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pytest_llmdet.divergence import Divergence, divergence_of, format_margin, token_label
from pytest_llmdet.generation import Generation, Prompt

EXCERPT_CHARS = 40
MAX_CALL_REPORTS = 8
MAX_OFFENDERS = 10
CAUSES_HINT = ("known causes: batch composition and padding, thread count, dtype, attention kernel, "
               "non-deterministic GPU algorithms, TF32 (README: Nondeterminism detection)")

Decode = Callable[[list[int]], str]


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
class BatchDifference:
    """One call whose output alone differs from its output inside a left-padded batch."""

    index: int
    prompt: Prompt
    batch_size: int
    divergence: Divergence


@dataclass
class Verdict:
    """The summary's view of one checked test; plain data that an xdist worker sends to the controller."""

    nodeid: str
    runs: int
    deterministic: bool
    kind: str = ""  # "input", "calls", "tokens" or "batch" when not deterministic
    position: int | None = None  # earliest diverging token, when there is one
    distinct_outputs: int = 1
    detail: str = ""  # one line for the list of offenders

    def severity(self) -> tuple[int, int, int]:
        """Sort key, worst first: a changing input or call count, then the earliest divergence, then the
        most distinct outputs."""
        if self.kind in ("input", "calls"):
            early = -1
        else:
            early = self.position if self.position is not None else 10**9
        return (early, -self.distinct_outputs, 0 if self.kind != "batch" else 1)


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


def compare_batch(singles: Sequence[Generation], batched: Sequence[TokenOutput | None],
                  batch_size: int) -> list[BatchDifference]:
    """Compare each call's output alone with its output inside a batch (None: that call was not probed)."""
    differences = []
    for index, (single, in_batch) in enumerate(zip(singles, batched, strict=False)):
        if in_batch is None:
            continue
        divergence = compare_outputs(single, in_batch)
        if divergence is not None:
            differences.append(BatchDifference(index, single.prompt, batch_size, divergence))
    return differences


# -- reporting ----------------------------------------------------------------------------------------------


def prompt_excerpt(prompt: Prompt, limit: int = EXCERPT_CHARS) -> str:
    """The start of a prompt, quoted; for chat messages, the last message's role and content."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        text = f"[{prompt[-1].get('role', '?')}] {prompt[-1].get('content', '')}"
    else:
        text = str(prompt)
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _plural(count: int) -> str:
    return "" if count == 1 else "s"


def _token(token: int | None, margin: float | None, decode: Decode | None) -> str:
    label = token_label(token, decode)
    return label if token is None else f"{label} (margin {format_margin(margin)})"


def _divergence_lines(d: Divergence, left: str, right: str, decode: Decode | None) -> list[str]:
    left_token = _token(d.reference_token, d.reference_margin, decode)
    right_token = _token(d.other_token, d.other_margin, decode)
    lines = [f"  first divergence at token {d.index}: {left} gave {left_token}, "
             f"{right} gave {right_token}"]
    if d.max_logprob_delta is None:
        lines.append("  (the outputs differ from their first token)")
    else:
        lines.append("  largest |Δ logprob| of the chosen token before the divergence: "
                     f"{d.max_logprob_delta:.2g}")
    return lines


def render_call_difference(difference: CallDifference, calls: int, decode: Decode | None = None) -> list[str]:
    """The report lines of one call that differed between runs."""
    d = difference
    where = f"call {d.index + 1} of {calls} ({prompt_excerpt(d.prompt)})"
    outputs = f"{d.runs} runs gave {d.distinct_outputs} distinct output{_plural(d.distinct_outputs)}"
    if d.changed_input:
        changed = " and the ".join(d.changed_input)
        lines = [f"nondeterministic input: the {changed} of {where} differed between runs: the test's own "
                 "input is not reproducible (is it built from the clock or an unseeded random source?)"]
        if d.inputs is not None and "prompt" in d.changed_input:
            lines.append(f"  run 1 prompt: {prompt_excerpt(d.inputs[0], 2 * EXCERPT_CHARS)}")
            lines.append(f"  run {d.other_run} prompt: {prompt_excerpt(d.inputs[1], 2 * EXCERPT_CHARS)}")
        lines.append(f"  {outputs}")
        return lines
    lines = [f"nondeterministic: {where}: {outputs}"]
    if d.divergence is not None:
        lines += _divergence_lines(d.divergence, "run 1", f"run {d.other_run}", decode)
    return lines


def render_batch_difference(difference: BatchDifference, calls: int,
                            decode: Decode | None = None) -> list[str]:
    """The report lines of one call whose output changed inside a left-padded batch."""
    d = difference
    lines = [f"batch-variant: call {d.index + 1} of {calls} ({prompt_excerpt(d.prompt)}) alone vs in a "
             f"left-padded batch of {d.batch_size}"]
    return lines + _divergence_lines(d.divergence, "alone", "in the batch", decode)


def render_report(comparison: RunComparison, batch: Sequence[BatchDifference] = (),
                  decode: Decode | None = None) -> list[str]:
    """The failure report of a test whose runs (or batch probe) did not agree; [] when everything agreed.

    Calls whose input changed come first: then the test itself, not the model, is not reproducible.
    """
    if comparison.deterministic and not batch:
        return []
    calls = comparison.calls
    lines: list[str] = []
    if not comparison.deterministic:
        lines.append(f"pytest-llmdet: {comparison.runs} runs of this test did not generate the same tokens")
    else:
        lines.append(f"pytest-llmdet: {comparison.runs} run{_plural(comparison.runs)} of this test agreed, "
                     "but the batch probe found batch-dependent outputs")
    ordered = sorted(comparison.differences, key=lambda d: (not d.changed_input, d.index))
    blocks = [render_call_difference(d, calls, decode) for d in ordered if d.changed_input]
    if len(set(comparison.call_counts)) > 1:
        counts = ", ".join(f"run {n}: {c}" for n, c in enumerate(comparison.call_counts, start=1))
        blocks.append([f"nondeterministic: the runs made different numbers of llm.generate calls ({counts}); "
                       "does the test's control flow depend on the output or on an unseeded source?"])
    blocks += [render_call_difference(d, calls, decode) for d in ordered if not d.changed_input]
    blocks += [render_batch_difference(d, calls, decode) for d in batch]
    for block in blocks[:MAX_CALL_REPORTS]:
        lines += block
    if len(blocks) > MAX_CALL_REPORTS:
        lines.append(f"… and {len(blocks) - MAX_CALL_REPORTS} more")
    if batch or any(d.divergence is not None for d in comparison.differences):
        lines.append(CAUSES_HINT)  # the model's output moved; a changing input is the test's own doing
    return lines


def verdict_for(nodeid: str, comparison: RunComparison, batch: Sequence[BatchDifference] = ()) -> Verdict:
    """Condense a test's comparison into the summary's verdict."""
    verdict = Verdict(nodeid, comparison.runs, deterministic=comparison.deterministic and not batch)
    if verdict.deterministic:
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
        b = min(batch, key=lambda b: b.divergence.index)
        verdict.kind, verdict.position, verdict.distinct_outputs = "batch", b.divergence.index, 2
        verdict.detail = (f"batch-variant: call {b.index + 1} diverges at token {b.divergence.index} in a "
                          f"left-padded batch of {b.batch_size}")
    return verdict


def summary_lines(verdicts: Sequence[Verdict], limit: int = MAX_OFFENDERS) -> list[str]:
    """The `llm determinism` summary: counts, then the worst offenders (earliest divergence first)."""
    if not verdicts:
        return []
    bad = sorted((v for v in verdicts if not v.deterministic), key=lambda v: (v.severity(), v.nodeid))
    good = len(verdicts) - len(bad)
    lines = [f"{len(verdicts)} checked, {good} deterministic, {len(bad)} nondeterministic"]
    if bad:
        lines.append("worst offenders:" if len(bad) > 1 else "offender:")
        lines += [f"  {v.nodeid}: {v.detail}" for v in bad[:limit]]
        if len(bad) > limit:
            lines.append(f"  … and {len(bad) - limit} more")
    return lines


def verdicts_to_data(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """Verdicts as plain dicts (what an xdist worker can send)."""
    return [asdict(v) for v in verdicts]


def verdicts_from_data(data: Sequence[dict[str, Any]]) -> list[Verdict]:
    """The inverse of `verdicts_to_data`."""
    return [Verdict(**item) for item in data]
