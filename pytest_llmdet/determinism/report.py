"""The failure report of one determinism-checked test: the lines that say which calls differed between its runs
(or under a factor), where their tokens first diverged, and what to do about it.

Plain functions of determinism/runs.py's data: neither pytest nor torch is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pytest_llmdet.determinism.runs import CallDifference, FactorDifference, RunComparison
from pytest_llmdet.divergence import Divergence, format_margin, token_label
from pytest_llmdet.generation import Prompt
from pytest_llmdet.vocabulary import FactorName

EXCERPT_CHARS = 40
MAX_CALL_REPORTS = 8
CAUSES_HINT = ("known causes: batch composition and padding, thread count, dtype, attention kernel, "
               "non-deterministic GPU algorithms, TF32 (README: Nondeterminism detection)")

Decode = Callable[[list[int]], str]


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
        if d.prompts is not None:
            lines.append(f"  run 1 prompt: {prompt_excerpt(d.prompts[0], 2 * EXCERPT_CHARS)}")
            lines.append(f"  run {d.other_run} prompt: {prompt_excerpt(d.prompts[1], 2 * EXCERPT_CHARS)}")
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
    lines = [headline(comparison, factors)]
    blocks = _blocks(comparison, factors, decode)
    for block in blocks[:MAX_CALL_REPORTS]:
        lines += block
    if len(blocks) > MAX_CALL_REPORTS:
        lines.append(f"… and {len(blocks) - MAX_CALL_REPORTS} more")
    batch = any(d.factor == FactorName.BATCH for d in factors)
    if batch or any(d.divergence is not None for d in comparison.differences):
        lines.append(CAUSES_HINT)  # the model's output moved; a changing input is the test's own doing
    advice = {d.factor: d.advice for d in factors if d.advice}
    return lines + [f"what to do ({name}): {text}" for name, text in advice.items()]


def headline(comparison: RunComparison, factors: Sequence[FactorDifference]) -> str:
    """The report's first line: the runs disagreed, or they agreed but the tokens changed under factors."""
    runs = comparison.runs
    if not comparison.deterministic:
        return f"pytest-llmdet: {runs} runs of this test did not generate the same tokens"
    names = list(dict.fromkeys(d.factor for d in factors))
    if names == [FactorName.BATCH]:
        return (f"pytest-llmdet: {runs} run{_plural(runs)} of this test agreed, but the batch probe found "
                "batch-dependent outputs")
    sensitive = {d.factor for d in factors if d.sensitivity}
    changed = ", ".join(f"{n} (a sensitivity)" if n in sensitive else n for n in names)
    agreed = f"{runs} runs of this test agreed, but the tokens" if runs > 1 else "the tokens of this test"
    return f"pytest-llmdet: {agreed} changed under {changed}"


def _blocks(comparison: RunComparison, factors: Sequence[FactorDifference], decode: Decode | None
            ) -> list[list[str]]:
    """A block of lines per finding: changed inputs, differing call counts, diverging calls, then factors."""
    calls = comparison.calls
    ordered = sorted(comparison.differences, key=lambda d: (not d.changed_input, d.index))
    blocks = [render_call_difference(d, calls, decode) for d in ordered if d.changed_input]
    if len(set(comparison.call_counts)) > 1:
        counts = ", ".join(f"run {n}: {c}" for n, c in enumerate(comparison.call_counts, start=1))
        blocks.append([f"nondeterministic: the runs made different numbers of llm.generate calls ({counts}); "
                       "does the test's control flow depend on the output or on an unseeded source?"])
    blocks += [render_call_difference(d, calls, decode) for d in ordered if not d.changed_input]
    return blocks + [render_factor_difference(d, calls, decode) for d in factors]
