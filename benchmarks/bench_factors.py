"""Factors: what checking a test under each factor costs. Goal: one extra generation per call per factor, no
more (the batch factor's generation computes a batch of 4 rows; attention one per other implementation).

In one process, the embedded model, chat prompts with 32 new tokens: the prompts are generated as a test would
(`LLM.generate`, the recorded calls), then each factor regenerates those calls (`check_factors`, the function
the plugin's hook calls). `model.generate` is counted during each factor pass, and the pass is timed against
generating the same calls again; interleaved per round, medians over rounds. The threads factor compares with
the session's thread count, so its row (and only its row) runs with 2 threads, its calls timed with 2 as well.

    python benchmarks/bench_factors.py [--quick]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common import cli, report, runner, suites

GOAL = 1  # extra model.generate calls per recorded call, per factor (attention: per other implementation)
THREADS_ROW_THREADS = 2


class Timings:
    """Per factor: the calls alone and the factor's pass over them (seconds per round), the generate calls
    each pass made, and the factor's matrix cell."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.alone: dict[str, list[float]] = {name: [] for name in names}
        self.passes: dict[str, list[float]] = {name: [] for name in names}
        self.generations: dict[str, set[int]] = {name: set() for name in names}
        self.cells: dict[str, str] = {}


def measure(prompt_count: int, rounds: int) -> dict[str, Any]:
    """Count and time each factor's pass over the recorded calls."""
    load_before = runner.load_average()
    with runner.workdir("factors") as work:
        return _measure(work, prompt_count, rounds, load_before)


def _measure(work: Path, prompt_count: int, rounds: int, load_before: tuple[float, float, float]
             ) -> dict[str, Any]:
    import torch

    from pytest_llmdet.engines.seeding import configure_torch

    configure_torch("warn", runner.TORCH_THREADS)
    session_threads = torch.get_num_threads()
    llm, counted = counting_llm(work)
    prompts = suites.chat_prompts(prompt_count)
    calls = [llm.generate(prompt) for prompt in prompts]  # warm-up, and the recorded calls
    timings = time_factors(llm, counted, prompts, calls, rounds, session_threads)
    return summarize(timings, len(prompts), rounds, session_threads, load_before)


def counting_llm(work: Path) -> tuple[Any, dict[str, int]]:
    """An LLM on a private copy of the embedded model whose `model.generate` counts its calls."""
    from pytest_llmdet.engines.llm import LLM
    from pytest_llmdet.engines.models import ModelPool, ModelSpec
    from pytest_llmdet.engines.sources import resolve_source
    from pytest_llmdet.engines.transformers import TransformersEngine

    loaded = ModelPool().get(ModelSpec(resolve_source(str(suites.copy_embedded_model(work / "model")), [])))
    llm = LLM(TransformersEngine(loaded), seed=0, max_new_tokens=suites.MAX_NEW_TOKENS, inherit_processors=True)
    model = loaded.model
    counted = {"generate": 0}
    original_generate = model.generate

    def counting_generate(*args: Any, **kwargs: Any) -> Any:
        counted["generate"] += 1
        return original_generate(*args, **kwargs)

    model.generate = counting_generate
    return llm, counted


def time_factors(llm: Any, counted: dict[str, int], prompts: list[Any], calls: list[Any], rounds: int,
                 session_threads: int) -> Timings:
    """Per round and factor: the calls generated again, then the factor's pass over the recorded calls."""
    import torch

    from pytest_llmdet.determinism.factors import check_factors
    from pytest_llmdet.vocabulary import FACTOR_NAMES

    timings = Timings(FACTOR_NAMES)
    runner.log(f"timing {len(FACTOR_NAMES)} factors x {len(prompts)} calls x {rounds} rounds ...")
    for round_index in range(rounds):
        for name in FACTOR_NAMES:
            torch.set_num_threads(THREADS_ROW_THREADS if name == "threads" else session_threads)
            started = time.perf_counter()
            for prompt in prompts:
                llm.generate(prompt)
            timings.alone[name].append(time.perf_counter() - started)
            llm.calls.clear()
            before = counted["generate"]
            started = time.perf_counter()
            findings = check_factors(llm, calls, [name])
            timings.passes[name].append(time.perf_counter() - started)
            timings.generations[name].add(counted["generate"] - before)
            timings.cells[name] = findings.cells[name].text()
        torch.set_num_threads(session_threads)
        runner.log(f"  round {round_index + 1}/{rounds} (load {runner.load_average()[0]:.2f})")
    return timings


def summarize(timings: Timings, prompts: int, rounds: int, session_threads: int,
              load_before: tuple[float, float, float]) -> dict[str, Any]:
    """The table: per factor the extra generate calls per call and the pass's time against the calls'."""
    median, seconds = report.median, report.seconds
    rows = []
    worst = 0.0
    for name in timings.alone:
        extra = max(count / prompts for count in timings.generations[name])
        worst = max(worst, extra) if timings.cells[name] != "n/a" else worst
        own, factor = median(timings.alone[name]) / prompts, median(timings.passes[name]) / prompts
        rows.append([name, f"{extra:g}", seconds(own), seconds(factor), f"{report.ratio(factor, own):.2f}x",
                     timings.cells[name]])
    notes = [
        f"extra generate calls per recorded call, worst factor: {worst:g} (goal <= {GOAL}): "
        f"{report.verdict(worst, GOAL)}",
        f"{prompts} chat prompts x {suites.MAX_NEW_TOKENS} new tokens, {rounds} rounds, in-process, torch threads: "
        f"{session_threads} ({THREADS_ROW_THREADS} in the threads row)",
        "'per call under the factor' is the factor's whole pass (applicability, variation in and out, generate, "
        "compare) divided by the calls; batch computes 4 rows per generate, static-cache allocates its cache per "
        "call, dtype casts the weights once per pass",
    ]
    return report.make_section(
        "Factors: one regeneration per call per factor", "one extra generate call per recorded call per factor",
        ["factor", "extra generate calls per call", "call alone (median)", "per call under the factor",
         "factor / call", "matrix cell"], rows, load_before, notes,
        raw={"alone": timings.alone, "passes": timings.passes}, prompts=prompts, met=worst <= GOAL,
    )


def main() -> None:
    cli.main("factors", __doc__, lambda quick: measure(prompt_count=5 if quick else 20, rounds=2 if quick else 5))


if __name__ == "__main__":
    main()
