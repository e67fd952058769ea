"""The factors of the determinism check: named changes under which greedy tokens should not change, but may —
inside a batch, without a KV cache, with a static cache, with vLLM's prefix cache read or not, with another
attention implementation, with one torch thread — and bfloat16, under which they may (a sensitivity, reported
as such). Each factor says whether it applies to a recorded call (and why not) and generates that call once
more under its change;
`check_factors` runs the requested factors over a test's calls and compares each output with the recorded one.

A new factor is one small class: a name, `applies` and `regenerate`; one that varies the engine, a name, its
`variation` and how the two sides are `described`. The model is reached only through the engine's variation
verbs (engines.Engine) and the batch probe (determinism/probe.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pytest_llmdet.determinism.probe import batch_problem, generate_in_batch
from pytest_llmdet.determinism.runs import BatchedOutput, FactorCell, FactorDifference, compare_outputs, factor_cell
from pytest_llmdet.engines.greedy import GenerationArgumentError
from pytest_llmdet.engines.llm import LLM
from pytest_llmdet.engines.variation import Variation
from pytest_llmdet.generation import Generation
from pytest_llmdet.markers import DEFAULT_BATCH_SIZE
from pytest_llmdet.vocabulary import FactorName


@dataclass
class Regeneration:
    """A call generated again under a factor, and what the two sides were, for the report."""

    output: BatchedOutput
    vs: str  # "with the KV cache vs without (...)"
    reference: str  # the call as recorded: "with the cache"
    changed: str  # under the factor: "without"
    where: str  # the change, for the summary: "without a KV cache"


class Factor:
    """A named change that should not change greedy tokens (or, with `sensitivity`, may)."""

    name: ClassVar[FactorName]
    sensitivity: ClassVar[bool] = False
    advice: ClassVar[str] = ""  # what to do when the tokens change under it, one line
    skipped: ClassVar[str] = ""  # how a call it does not apply to is named ("not probed"); default below

    def applies(self, llm: LLM, call: Generation) -> str | None:
        """Why this factor cannot be applied to `call` (None: it can)."""
        raise NotImplementedError

    def regenerate(self, llm: LLM, call: Generation) -> list[Regeneration]:
        """`call` generated again under this factor: one output (attention: one per other implementation)."""
        raise NotImplementedError

    def regenerate_calls(self, llm: LLM, calls: Sequence[tuple[int, Generation]]
                         ) -> list[tuple[int, Regeneration]]:
        """Every (index, call) generated again under this factor, each with its index."""
        return [(index, r) for index, call in calls for r in self.regenerate(llm, call)]


class BatchFactor(Factor):
    """Row 0 of a left-padded batch with other prompts (the batch probe, determinism/probe.py)."""

    name = FactorName.BATCH
    advice = ("a serving stack batches requests, so there this output is not reproducible: where the model is "
              "served batched, compare tolerantly (--llm-compare tolerant) or check the batched output")
    skipped = "not probed"

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.batch_size = batch_size

    def applies(self, llm: LLM, call: Generation) -> str | None:
        return batch_problem(llm, call)

    def regenerate(self, llm: LLM, call: Generation) -> list[Regeneration]:
        return [self.regeneration(generate_in_batch(llm, call, self.batch_size))]

    def regeneration(self, output: BatchedOutput) -> Regeneration:
        """A call's `output` as row 0 of the batch, with what the two sides were."""
        where = f"in a left-padded batch of {self.batch_size}"
        return Regeneration(output, f"alone vs {where}", "alone", "in the batch", where)


class EngineFactor(Factor):
    """A factor that is a variation of the engine (engines/variation.py): the call generated again alone, with
    its own settings and seed, while the engine applies the change."""

    variation: ClassVar[Variation]  # the change, where there is one (attention has one per implementation)
    described: ClassVar[tuple[str, str, str, str]]  # what `describe` says, where that does not depend on the engine

    def variations(self, llm: LLM) -> list[Variation]:
        """The changes to generate under: the one `variation`, except for attention."""
        return [self.variation]

    def describe(self, base: Variation, variation: Variation) -> tuple[str, str, str, str]:
        """(vs, reference, changed, where) of a Regeneration under `variation`, the engine being at `base`."""
        return self.described

    def call_problem(self, call: Generation) -> str | None:
        """Why the call itself rules this factor out (its own settings already make the change)."""
        return None

    def applies(self, llm: LLM, call: Generation) -> str | None:
        problem = self.call_problem(call)
        if problem is not None:
            return problem
        try:
            llm.plan_of(call)
        except GenerationArgumentError as error:
            return str(error)
        reasons = [llm.engine.cannot_vary(variation) for variation in self.variations(llm)]
        if any(reason is None for reason in reasons):
            return None
        return "; ".join(dict.fromkeys(r for r in reasons if r)) or llm.engine.cannot_vary(Variation()) \
            or "nothing to change"

    def regenerate(self, llm: LLM, call: Generation) -> list[Regeneration]:
        return [r for _, r in self.regenerate_calls(llm, [(0, call)])]

    def regenerate_calls(self, llm: LLM, calls: Sequence[tuple[int, Generation]]
                         ) -> list[tuple[int, Regeneration]]:
        # The engine enters each variation once for all the calls: casting the weights of a large model, say,
        # costs more than a short generation.
        engine = llm.engine
        base = engine.baseline()
        regenerated = []
        for variation in self.variations(llm):
            if engine.cannot_vary(variation) is not None:
                continue
            described = self.describe(base, variation)
            with engine.varied(variation):
                for index, call in calls:
                    (row,) = llm.generate_rows([list(call.prompt_token_ids)], llm.plan_of(call))
                    output = BatchedOutput(row.token_ids, row.margins, row.logprobs)
                    regenerated.append((index, Regeneration(output, *described)))
        return regenerated


class CacheFactor(EngineFactor):
    name = FactorName.CACHE
    advice = ("the cached and the recomputed attention round differently: a flip at a near-tie is rounding "
              "(compare tolerantly: --llm-compare tolerant); a flip at a large margin is a bug in the model's "
              "cache code")
    variation = Variation(use_cache=False)
    described = ("with the KV cache vs without (the whole sequence recomputed at each step)", "with the cache",
                 "without", "without a KV cache")

    def call_problem(self, call: Generation) -> str | None:
        if call.settings.get("use_cache") is False:
            return "the call generates without a KV cache already (use_cache=False)"
        return None


class StaticCacheFactor(CacheFactor):
    name = FactorName.STATIC_CACHE
    advice = ("a static cache attends over its full, masked length, so the sums run over other shapes: gate "
              "with the cache you serve with (llm.generate(..., cache_implementation=\"static\")), or compare "
              "tolerantly")
    variation = Variation(cache_implementation="static")
    described = ('with the dynamic KV cache vs a static one (cache_implementation="static")', "dynamic cache",
                 "static cache", "with a static KV cache")

    def call_problem(self, call: Generation) -> str | None:
        if call.settings.get("cache_implementation") is not None:
            return f"the call sets cache_implementation={call.settings['cache_implementation']!r} itself"
        return super().call_problem(call)


class PrefixCacheFactor(EngineFactor):
    """The call generated twice more on vLLM: with its prefix cache not read (the whole prompt computed), then
    with the prompt's whole blocks read from the cache (the pass before cached them), each compared with the
    recorded call, which may have read the cache or not: a difference either way is one a cached prefix makes."""

    name = FactorName.PREFIX_CACHE
    advice = ("a prompt read from the prefix cache is attended over in other chunks than one computed afresh, "
              "so the sums round differently: a flip at a near-tie is rounding (compare tolerantly: --llm-compare "
              "tolerant; or gate with the prefix cache off: --llm-vllm-args enable_prefix_caching=false, and serve "
              "with --no-enable-prefix-caching where outputs must repeat); a flip at a large margin is a bug in "
              "the engine's cache")

    def variations(self, llm: LLM) -> list[Variation]:
        return [Variation(prefix_cache=False), Variation(prefix_cache=True)]  # in this order: the first caches

    def describe(self, base: Variation, variation: Variation) -> tuple[str, str, str, str]:
        if variation.prefix_cache:
            return ("as recorded vs with the prompt's prefix read from vLLM's prefix cache", "as recorded",
                    "cached prefix", "with the prompt's prefix read from the prefix cache")
        return ("as recorded vs with vLLM's prefix cache not read (the whole prompt computed)", "as recorded",
                "prefix cache not read", "with the prefix cache not read")

    def applies(self, llm: LLM, call: Generation) -> str | None:
        return super().applies(llm, call) or llm.engine.cannot_cache_prefix(len(call.prompt_token_ids))


class AttentionFactor(EngineFactor):
    name = FactorName.ATTENTION
    advice = ("pin the attention implementation you serve with (attn_implementation in the model's "
              "config.json), or record a variant for each environment (--llm-snapshot-variant)")

    def variations(self, llm: LLM) -> list[Variation]:
        loaded = llm.engine.baseline().attn_implementation
        return [Variation(attn_implementation=name) for name in llm.engine.attention_implementations()
                if name != loaded]

    def describe(self, base: Variation, variation: Variation) -> tuple[str, str, str, str]:
        other = variation.attn_implementation
        return (f"with {base.attn_implementation} attention (loaded) vs {other}", str(base.attn_implementation),
                str(other), f"with {other} attention")


class ThreadsFactor(EngineFactor):
    name = FactorName.THREADS
    advice = ("a CPU splits its sums by thread: pin the thread count where the goldens are recorded and checked "
              "(llm_threads), or compare tolerantly")
    variation = Variation(threads=1)

    def describe(self, base: Variation, variation: Variation) -> tuple[str, str, str, str]:
        return (f"with {base.threads} torch threads vs 1", f"{base.threads} threads", "1 thread",
                "with 1 torch thread")


class DtypeFactor(EngineFactor):
    name = FactorName.DTYPE
    sensitivity = True
    advice = ("a sensitivity, not nondeterminism: bfloat16 keeps 8 significant bits, so near-ties flip; where "
              "the model runs in bfloat16, record a variant for it (--llm-snapshot-update --llm-snapshot-variant "
              "--llm-dtype bfloat16) or compare tolerantly")
    variation = Variation(dtype="bfloat16")

    def describe(self, base: Variation, variation: Variation) -> tuple[str, str, str, str]:
        return f"in {base.dtype} (loaded) vs bfloat16", str(base.dtype), "bfloat16", "in bfloat16"


FACTORS: dict[FactorName, type[Factor]] = {factor.name: factor for factor in (
    BatchFactor, CacheFactor, StaticCacheFactor, PrefixCacheFactor, AttentionFactor, ThreadsFactor, DtypeFactor)}


@dataclass
class FactorFindings:
    """What the factors found for one test: the calls that changed, the test's row of the matrix, and a note
    per call a factor did not apply to (while it applied to others)."""

    differences: list[FactorDifference] = field(default_factory=list)
    cells: dict[FactorName, FactorCell] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def make_factor(name: FactorName, batch_size: int = DEFAULT_BATCH_SIZE) -> Factor:
    """The factor called `name`."""
    return BatchFactor(batch_size) if name == FactorName.BATCH else FACTORS[name]()


class FactorError(RuntimeError):
    """A factor failed while generating (not: it does not apply); the message names it and the cause."""


def check_factors(llm: LLM, calls: Sequence[Generation], names: Sequence[FactorName],
                  batch_size: int = DEFAULT_BATCH_SIZE) -> FactorFindings:
    """Regenerate each call once under each factor of `names` and compare it with the recorded output;
    FactorError when a factor fails while generating."""
    findings = FactorFindings()
    for name in names:
        factor = make_factor(name, batch_size)
        try:
            _check_factor(factor, llm, calls, findings)
        except Exception as error:  # noqa: BLE001 - the factor failing fails the test, with the reason
            what = "the batch probe" if name == FactorName.BATCH else f"the {name} factor"
            raise FactorError(f"{what} could not run: {type(error).__name__}: {error}") from error
    return findings


def _check_factor(factor: Factor, llm: LLM, calls: Sequence[Generation], findings: FactorFindings) -> None:
    applicable, skipped = [], []
    for index, call in enumerate(calls):
        reason = factor.applies(llm, call)
        if reason is None:
            applicable.append((index, call))
        else:
            skipped.append((index, reason))
    regenerated = factor.regenerate_calls(llm, applicable) if applicable else []
    differences = factor_differences(factor, calls, regenerated)
    findings.cells[factor.name] = factor_cell(differences, len(applicable), [reason for _, reason in skipped],
                                              factor.sensitivity)
    findings.differences += differences
    if applicable:  # some calls were checked: name the others (a factor that applied to none is n/a)
        how = factor.skipped or f"not checked under {factor.name}"
        findings.notes += [f"call {index + 1} {how}: {reason}" for index, reason in skipped]


def factor_differences(factor: Factor, calls: Sequence[Generation],
                       regenerated: Sequence[tuple[int, Regeneration]]) -> list[FactorDifference]:
    """The recorded calls whose output changed when `factor` regenerated them (each regeneration with the index
    of its call in `calls`), in the order of the calls."""
    differences = []
    for index, r in regenerated:
        call = calls[index]
        divergence = compare_outputs(call, r.output)
        if divergence is not None:
            differences.append(FactorDifference(factor.name, index, call.prompt, divergence, r.vs, r.reference,
                                                r.changed, r.where, factor.sensitivity, factor.advice))
    return sorted(differences, key=lambda d: d.index)
