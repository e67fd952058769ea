"""Margin capture: what recording per-token margins costs a generate call. Goal: at most 5% extra.

Three ways to generate the same 50 chat prompts (32 new tokens, the embedded model), in one process, the
same forced-greedy GenerationConfig and the same `generate` call path as `LLM.generate` (inference mode,
the config standing in for the model's own):

- without margins: the prompt encoded as `LLM.encode` does, then `model.generate(...)` with that config, no
  scores kept;
- with margins: the same with `output_scores=True, return_dict_in_generate=True`, then the runner's own
  margin and log-prob computation (`common.old_margins.token_statistics`): this minus the first is the margin capture;
- `LLM.generate`: the plugin's call as shipped, which adds planning the config, checking the length,
  seeding, decoding the text and recording the Generation to the second.

Calls are interleaved per prompt (order rotated each round); per-round totals, medians over rounds.

    python benchmarks/bench_margins.py [--quick]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import cli, old_margins, report, runner, suites

GOAL = 1.05
WITHOUT, WITH, SHIPPED = "generate, no margins", "generate + margins", "LLM.generate (as shipped)"


def measure(prompt_count: int, rounds: int) -> dict[str, Any]:
    """Time the three ways per prompt, interleaved, and check that they choose the same tokens."""
    load_before = runner.load_average()
    with runner.workdir("margins") as work:
        ways = three_ways(work, suites.chat_prompts(prompt_count))
        for i in range(prompt_count):  # warm-up, and the check that all three choose the same tokens
            outputs = [way(i) for way in ways.values()]
            if any(output != outputs[0] for output in outputs):
                raise RuntimeError(f"prompt {i}: the three ways generated different tokens: {outputs}")
        totals = time_ways(ways, prompt_count, rounds)
    return summarize(totals, prompt_count, rounds, load_before)


def three_ways(work: Path, prompts: list[Any]) -> dict[str, Callable[[int], list[int]]]:
    """The three ways to generate prompt i, each returning the new token IDs."""
    import torch
    from transformers import GenerationConfig

    from pytest_llmdet.engines import transformers as hf
    from pytest_llmdet.engines.greedy import plan_generation
    from pytest_llmdet.engines.llm import LLM
    from pytest_llmdet.engines.models import ModelPool, ModelSpec
    from pytest_llmdet.engines.seeding import configure_torch
    from pytest_llmdet.engines.sources import resolve_source

    configure_torch("warn", runner.TORCH_THREADS)  # as the plugin does on first use of a model
    loaded = ModelPool().get(ModelSpec(resolve_source(str(suites.copy_embedded_model(work / "model")), [])))
    llm = LLM(hf.TransformersEngine(loaded), seed=0, max_new_tokens=suites.MAX_NEW_TOKENS, inherit_processors=True)
    model = loaded.model
    plan = plan_generation(loaded.generation_config, max_new_tokens=suites.MAX_NEW_TOKENS, inherit_processors=True)

    def direct(prompt: Any, margins: bool) -> list[int]:
        prompt_ids = llm.encode(prompt)  # the same chat-template encoding LLM.generate does
        scores = {"output_scores": True, "return_dict_in_generate": True} if margins else {}
        config = GenerationConfig(**plan.config, **scores)
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=loaded.device)
        with torch.inference_mode(), hf._only_generation_config(model, config):
            output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    generation_config=config)
        if not margins:
            return output[0, len(prompt_ids):].tolist()
        new_ids = output.sequences[0, len(prompt_ids):]
        old_margins.token_statistics(output.scores, new_ids, 0)
        return new_ids.tolist()

    return {
        WITHOUT: lambda i: direct(prompts[i], margins=False),
        WITH: lambda i: direct(prompts[i], margins=True),
        SHIPPED: lambda i: llm.generate(prompts[i]).token_ids,
    }


def time_ways(ways: dict[str, Callable[[int], Any]], prompts: int, rounds: int) -> dict[str, list[float]]:
    """Per round, each way's total over the prompts; the ways interleaved per prompt, the order rotated."""
    runner.log(f"timing {len(ways)} ways x {prompts} prompts x {rounds} rounds, interleaved per prompt ...")
    totals: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for round_index in range(rounds):
        spent = dict.fromkeys(names, 0.0)
        for i in range(prompts):
            shift = (round_index + i) % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                ways[name](i)
                spent[name] += time.perf_counter() - started
        for name in names:
            totals[name].append(spent[name])
        runner.log(f"  round {round_index + 1}/{rounds}: " + ", ".join(f"{n} {spent[n]:.2f} s" for n in names)
                   + f"  (load {runner.load_average()[0]:.2f})")
    return totals


def summarize(totals: dict[str, list[float]], prompts: int, rounds: int, load_before: tuple[float, float, float]
              ) -> dict[str, Any]:
    """The table: each way's median time per call against the call without margins; the goal."""
    median, ratio, seconds = report.median, report.ratio, report.seconds
    per_call = {name: median(values) / prompts for name, values in totals.items()}
    base = per_call[WITHOUT]
    rows = [[name, seconds(per_call[name]), f"{ratio(per_call[name], base):.3f}x",
             seconds(per_call[name] - base)] for name in totals]
    capture = ratio(median(totals[WITH]), median(totals[WITHOUT]))
    shipped = ratio(median(totals[SHIPPED]), median(totals[WITHOUT]))
    notes = [
        f"margin capture: {capture:.3f}x (goal <= {GOAL}): {report.verdict(capture, GOAL)}",
        f"LLM.generate as shipped: {shipped:.3f}x the call without margins",
        f"{prompts} chat prompts x {suites.MAX_NEW_TOKENS} new tokens, {rounds} rounds, in-process, torch threads: "
        f"{runner.TORCH_THREADS or 'default'}; the same tokens from all three ways (checked)",
        "'generate + margins' minus 'generate, no margins' = transformers keeping the scores of every step plus "
        "the runner's log_softmax/topk over them; nothing else differs between the two",
    ]
    return report.make_section(
        "Margin capture: one generate call", "recording margins costs at most 5% extra",
        ["way", "per call (median)", "vs no margins", "extra per call"], rows, load_before, notes,
        raw=dict(totals), prompts=prompts, ratios={"margins": capture, "shipped": shipped}, met=capture <= GOAL,
    )


def main() -> None:
    cli.main("margins", __doc__, lambda quick: measure(prompt_count=10 if quick else 50, rounds=2 if quick else 7))


if __name__ == "__main__":
    main()
