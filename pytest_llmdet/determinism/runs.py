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
from pytest_llmdet.settings import FACTOR_NAMES

EXCERPT_CHARS = 40
MAX_CALL_REPORTS = 8
MAX_OFFENDERS = 10
MAX_MATRIX_ROWS = 50  # beyond it, the matrix shows only the rows that are not all `=`
MAX_MARGIN_LINES = 10
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


def render_factor_difference(difference: FactorDifference, calls: int,
                             decode: Decode | None = None) -> list[str]:
    """The report lines of one call whose output changed under a factor."""
    d = difference
    lines = [f"{d.heading}: call {d.index + 1} of {calls} ({prompt_excerpt(d.prompt)}) {d.vs}"]
    return lines + _divergence_lines(d.divergence, d.reference, d.changed, decode)


def render_report(comparison: RunComparison, factors: Sequence[FactorDifference] = (),
                  decode: Decode | None = None) -> list[str]:
    """The failure report of a test whose runs (or factors) did not agree; [] when everything agreed.

    Calls whose input changed come first: then the test itself, not the model, is not reproducible.
    """
    if comparison.deterministic and not factors:
        return []
    calls = comparison.calls
    lines: list[str] = []
    names = list(dict.fromkeys(d.factor for d in factors))
    if not comparison.deterministic:
        lines.append(f"pytest-llmdet: {comparison.runs} runs of this test did not generate the same tokens")
    elif names == ["batch"]:
        lines.append(f"pytest-llmdet: {comparison.runs} run{_plural(comparison.runs)} of this test agreed, "
                     "but the batch probe found batch-dependent outputs")
    else:
        sensitive = {d.factor for d in factors if d.sensitivity}
        changed = ", ".join(f"{n} (a sensitivity)" if n in sensitive else n for n in names)
        agreed = (f"{comparison.runs} runs of this test agreed, but the tokens" if comparison.runs > 1
                  else "the tokens of this test")
        lines.append(f"pytest-llmdet: {agreed} changed under {changed}")
    ordered = sorted(comparison.differences, key=lambda d: (not d.changed_input, d.index))
    blocks = [render_call_difference(d, calls, decode) for d in ordered if d.changed_input]
    if len(set(comparison.call_counts)) > 1:
        counts = ", ".join(f"run {n}: {c}" for n, c in enumerate(comparison.call_counts, start=1))
        blocks.append([f"nondeterministic: the runs made different numbers of llm.generate calls ({counts}); "
                       "does the test's control flow depend on the output or on an unseeded source?"])
    blocks += [render_call_difference(d, calls, decode) for d in ordered if not d.changed_input]
    blocks += [render_factor_difference(d, calls, decode) for d in factors]
    for block in blocks[:MAX_CALL_REPORTS]:
        lines += block
    if len(blocks) > MAX_CALL_REPORTS:
        lines.append(f"… and {len(blocks) - MAX_CALL_REPORTS} more")
    if "batch" in names or any(d.divergence is not None for d in comparison.differences):
        lines.append(CAUSES_HINT)  # the model's output moved; a changing input is the test's own doing
    advice = {d.factor: d.advice for d in factors if d.advice}
    lines += [f"what to do ({name}): {text}" for name, text in advice.items()]
    return lines


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


def summary_lines(verdicts: Sequence[Verdict], limit: int = MAX_OFFENDERS) -> list[str]:
    """The `llm determinism` summary: counts, the worst offenders (earliest divergence first), and the factor
    matrix when factors were checked."""
    if not verdicts:
        return []
    bad = sorted((v for v in verdicts if v.status != "deterministic"), key=lambda v: (v.severity(), v.nodeid))
    nondeterministic = sum(v.status == "nondeterministic" for v in verdicts)
    sensitive = len(bad) - nondeterministic
    lines = [f"{len(verdicts)} checked, {len(verdicts) - len(bad)} deterministic, {nondeterministic} "
             "nondeterministic" + (f", {sensitive} dtype-sensitive" if sensitive else "")]
    if bad:
        lines.append("worst offenders:" if len(bad) > 1 else "offender:")
        lines += [f"  {v.nodeid}: {v.detail}" for v in bad[:limit]]
        if len(bad) > limit:
            lines.append(f"  … and {len(bad) - limit} more")
    return lines + matrix_lines(verdicts)


def matrix_lines(verdicts: Sequence[Verdict], limit: int = MAX_MATRIX_ROWS) -> list[str]:
    """The factor matrix: a row per test checked under factors, a column per factor, each cell `=`, the first
    diverging token or n/a; then the margins at the divergences and why factors were not applicable."""
    rows = sorted((v for v in verdicts if v.factors), key=lambda v: v.nodeid)
    if not rows:
        return []
    columns = [name for name in FACTOR_NAMES if any(name in v.factors for v in rows)]
    legend = "=: same tokens, N: the first diverging token, n/a: not applicable"
    if any(name not in v.factors for v in rows for name in columns):
        legend += ", -: not asked for"
    if "dtype" in columns:
        legend += "; dtype is a sensitivity (bfloat16 against the loaded dtype), not nondeterminism"
    shown = rows
    if len(rows) > limit:
        shown = [v for v in rows if any(c.status != "same" for c in v.factors.values())][:limit]
    width = max(len("test"), *(len(v.nodeid) for v in shown)) if shown else len("test")
    widths = [max(len(name), 3) for name in columns]

    def row(first: str, cells: list[str]) -> str:
        padded = "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True))
        return f"  {first.ljust(width)}  {padded}".rstrip()

    lines = [f"factor matrix ({legend}):", row("test", columns)]
    for v in shown:
        lines.append(row(v.nodeid, [v.factors[n].text() if n in v.factors else "-" for n in columns]))
    if len(shown) < len(rows):
        lines.append(f"  … and {len(rows) - len(shown)} more tests, every factor = or n/a only where listed below")
    return lines + _margin_lines(rows) + _not_applicable_lines(rows)


def _margin_lines(rows: Sequence[Verdict]) -> list[str]:
    diverged = [(v.nodeid, name, cell) for v in rows for name, cell in v.factors.items() if cell.status == "diverged"]
    if not diverged:
        return []

    def recorded(entry: tuple[str, str, FactorCell]) -> float:
        margin = entry[2].reference_margin
        return -(margin if margin is not None else float("inf"))  # the call ended there: no near-tie either

    diverged.sort(key=lambda entry: (recorded(entry), entry[0], FACTOR_NAMES.index(entry[1])))
    lines = ["margins at the divergences, the largest recorded margin first (a large one is no near-tie: more "
             "than rounding changed):"]
    for nodeid, name, cell in diverged[:MAX_MARGIN_LINES]:
        lines.append(f"  {nodeid} {name}: call {cell.call} token {cell.position}: margin "
                     f"{format_margin(cell.reference_margin)} {cell.reference}, "
                     f"{format_margin(cell.changed_margin)} {cell.changed}")
    if len(diverged) > MAX_MARGIN_LINES:
        lines.append(f"  … and {len(diverged) - MAX_MARGIN_LINES} more")
    return lines


def _not_applicable_lines(rows: Sequence[Verdict]) -> list[str]:
    groups: dict[tuple[str, str], list[str]] = {}
    for v in rows:
        for name, cell in v.factors.items():
            if cell.status == "n/a":
                groups.setdefault((name, cell.reason or ""), []).append(v.nodeid)
    if not groups:
        return []
    lines = ["not applicable:"]
    for (name, reason), tests in sorted(groups.items(), key=lambda g: (FACTOR_NAMES.index(g[0][0]), g[0][1])):
        where = tests[0] if len(tests) == 1 else f"{len(tests)} tests"
        lines.append(f"  {name} ({where}): {reason}")
    return lines


def verdicts_to_data(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """Verdicts as plain dicts (what an xdist worker can send)."""
    return [asdict(v) for v in verdicts]


def verdicts_from_data(data: Sequence[dict[str, Any]]) -> list[Verdict]:
    """The inverse of `verdicts_to_data`."""
    return [Verdict(**{**item, "factors": {name: FactorCell(**cell)
                                           for name, cell in item.get("factors", {}).items()}})
            for item in data]
