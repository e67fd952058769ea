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

import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import (  # noqa: E402
    MAX_NEW_TOKENS,
    chat_prompts,
    copy_embedded_model,
    load_average,
    log,
    make_section,
    median,
    new_workdir,
    print_section,
    ratio,
    save_section,
    seconds,
    standard_arguments,
    verdict,
)

GOAL = 1  # extra model.generate calls per recorded call, per factor (attention: per other implementation)
THREADS_ROW_THREADS = 2


def measure(prompt_count: int, rounds: int) -> dict[str, Any]:
    """Count and time each factor's pass over the recorded calls."""
    load_before = load_average()
    work = new_workdir("factors")
    try:
        return _measure(work, prompt_count, rounds, load_before)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(work: Path, prompt_count: int, rounds: int, load_before: tuple[float, float, float]
             ) -> dict[str, Any]:
    import torch

    from pytest_llmdet.determinism.factors import check_factors
    from pytest_llmdet.engines.llm import LLM
    from pytest_llmdet.engines.models import ModelPool, ModelSpec
    from pytest_llmdet.engines.seeding import configure_torch
    from pytest_llmdet.engines.sources import resolve_source
    from pytest_llmdet.engines.transformers import TransformersEngine
    from pytest_llmdet.settings.values import FACTOR_NAMES

    configure_torch("warn", common.TORCH_THREADS)
    session_threads = torch.get_num_threads()
    loaded = ModelPool().get(ModelSpec(resolve_source(str(copy_embedded_model(work / "model")), [])))
    llm = LLM(TransformersEngine(loaded), seed=0, max_new_tokens=MAX_NEW_TOKENS, inherit_processors=True)
    model = loaded.model
    counted = {"generate": 0}
    original_generate = model.generate

    def counting_generate(*args: Any, **kwargs: Any) -> Any:
        counted["generate"] += 1
        return original_generate(*args, **kwargs)

    model.generate = counting_generate
    prompts = chat_prompts(prompt_count)
    calls = [llm.generate(prompt) for prompt in prompts]  # warm-up, and the recorded calls
    alone: dict[str, list[float]] = {name: [] for name in FACTOR_NAMES}
    passes: dict[str, list[float]] = {name: [] for name in FACTOR_NAMES}
    generations: dict[str, set[int]] = {name: set() for name in FACTOR_NAMES}
    cells: dict[str, str] = {}
    log(f"timing {len(FACTOR_NAMES)} factors x {len(prompts)} calls x {rounds} rounds ...")
    for round_index in range(rounds):
        for name in FACTOR_NAMES:
            torch.set_num_threads(THREADS_ROW_THREADS if name == "threads" else session_threads)
            started = time.perf_counter()
            for prompt in prompts:
                llm.generate(prompt)
            alone[name].append(time.perf_counter() - started)
            llm.calls.clear()
            before = counted["generate"]
            started = time.perf_counter()
            findings = check_factors(llm, calls, [name])
            passes[name].append(time.perf_counter() - started)
            generations[name].add(counted["generate"] - before)
            cells[name] = findings.cells[name].text()
        torch.set_num_threads(session_threads)
        log(f"  round {round_index + 1}/{rounds} (load {load_average()[0]:.2f})")
    model.generate = original_generate

    rows = []
    worst = 0.0
    for name in FACTOR_NAMES:
        per_call = {count / len(prompts) for count in generations[name]}
        extra = max(per_call)
        worst = max(worst, extra) if cells[name] != "n/a" else worst
        own, factor = median(alone[name]) / len(prompts), median(passes[name]) / len(prompts)
        rows.append([name, f"{extra:g}", seconds(own), seconds(factor), f"{ratio(factor, own):.2f}x", cells[name]])
    notes = [
        f"extra generate calls per recorded call, worst factor: {worst:g} (goal <= {GOAL}): {verdict(worst, GOAL)}",
        f"{len(prompts)} chat prompts x {MAX_NEW_TOKENS} new tokens, {rounds} rounds, in-process, torch threads: "
        f"{session_threads} ({THREADS_ROW_THREADS} in the threads row)",
        "'per call under the factor' is the factor's whole pass (applicability, variation in and out, generate, "
        "compare) divided by the calls; batch computes 4 rows per generate, static-cache allocates its cache per "
        "call, dtype casts the weights once per pass",
    ]
    return make_section(
        "Factors: one regeneration per call per factor", "one extra generate call per recorded call per factor",
        ["factor", "extra generate calls per call", "call alone (median)", "per call under the factor",
         "factor / call", "matrix cell"], rows, load_before, notes,
        raw={"alone": alone, "passes": passes}, prompts=len(prompts), met=worst <= GOAL,
    )


def main() -> None:
    args = standard_arguments(__doc__.splitlines()[0])
    section = measure(prompt_count=5 if args.quick else 20, rounds=2 if args.quick else 5)
    save_section("factors", section, args.quick)
    print_section(section)


if __name__ == "__main__":
    main()
