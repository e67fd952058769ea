"""Margin capture: what recording per-token margins costs a generate call. Goal: at most 5% extra.

Three ways to generate the same 50 chat prompts (32 new tokens, the embedded model), in one process, the
same forced-greedy GenerationConfig and the same `generate` call path as `LLM.generate` (inference mode,
the config standing in for the model's own):

- without margins: the prompt encoded as `LLM.encode` does, then `model.generate(...)` with that config, no
  scores kept;
- with margins: the same with `output_scores=True, return_dict_in_generate=True`, then the runner's own
  margin and log-prob computation (`common.token_statistics`): this minus the first is the margin capture;
- `LLM.generate`: the plugin's call as shipped, which adds planning the config, checking the length,
  seeding, decoding the text and recording the Generation to the second.

Calls are interleaved per prompt (order rotated each round); per-round totals, medians over rounds.

    python benchmarks/bench_margins.py [--quick]
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

GOAL = 1.05
WITHOUT, WITH, SHIPPED = "generate, no margins", "generate + margins", "LLM.generate (as shipped)"


def measure(prompt_count: int, rounds: int) -> dict[str, Any]:
    """Time the three ways per prompt, interleaved, and check that they choose the same tokens."""
    load_before = load_average()
    work = new_workdir("margins")
    try:
        return _measure(work, prompt_count, rounds, load_before)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(work: Path, prompt_count: int, rounds: int, load_before: tuple[float, float, float]
             ) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig

    from pytest_llmdet.engines import llm as runner
    from pytest_llmdet.engines import transformers as hf
    from pytest_llmdet.engines.greedy import plan_generation
    from pytest_llmdet.engines.models import ModelPool, ModelSpec
    from pytest_llmdet.engines.seeding import configure_torch
    from pytest_llmdet.engines.sources import resolve_source

    configure_torch("warn", common.TORCH_THREADS)  # as the plugin does on first use of a model
    loaded = ModelPool().get(ModelSpec(resolve_source(str(copy_embedded_model(work / "model")), [])))
    llm = runner.LLM(hf.TransformersEngine(loaded), seed=0, max_new_tokens=MAX_NEW_TOKENS, inherit_processors=True)
    model = loaded.model
    plan = plan_generation(loaded.generation_config, max_new_tokens=MAX_NEW_TOKENS, inherit_processors=True)
    prompts = chat_prompts(prompt_count)

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
        common.token_statistics(output.scores, new_ids, 0)
        return new_ids.tolist()

    ways = {
        WITHOUT: lambda i: direct(prompts[i], margins=False),
        WITH: lambda i: direct(prompts[i], margins=True),
        SHIPPED: lambda i: llm.generate(prompts[i]).token_ids,
    }
    for i in range(len(prompts)):  # warm-up, and the check that all three choose the same tokens
        outputs = [way(i) for way in ways.values()]
        if any(output != outputs[0] for output in outputs):
            raise RuntimeError(f"prompt {i}: the three ways generated different tokens: {outputs}")
    log(f"timing {len(ways)} ways x {len(prompts)} prompts x {rounds} rounds, interleaved per prompt ...")
    totals: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for round_index in range(rounds):
        spent = dict.fromkeys(names, 0.0)
        for i in range(len(prompts)):
            shift = (round_index + i) % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                ways[name](i)
                spent[name] += time.perf_counter() - started
        for name in names:
            totals[name].append(spent[name])
        log(f"  round {round_index + 1}/{rounds}: " + ", ".join(f"{n} {spent[n]:.2f} s" for n in names)
            + f"  (load {load_average()[0]:.2f})")

    per_call = {name: median(values) / len(prompts) for name, values in totals.items()}
    base = per_call[WITHOUT]
    rows = [[name, seconds(per_call[name]), f"{ratio(per_call[name], base):.3f}x",
             seconds(per_call[name] - base)] for name in names]
    capture = ratio(median(totals[WITH]), median(totals[WITHOUT]))
    shipped = ratio(median(totals[SHIPPED]), median(totals[WITHOUT]))
    notes = [
        f"margin capture: {capture:.3f}x (goal <= {GOAL}): {verdict(capture, GOAL)}",
        f"LLM.generate as shipped: {shipped:.3f}x the call without margins",
        f"{len(prompts)} chat prompts x {MAX_NEW_TOKENS} new tokens, {rounds} rounds, in-process, torch threads: "
        f"{common.TORCH_THREADS or 'default'}; the same tokens from all three ways (checked)",
        "'generate + margins' minus 'generate, no margins' = transformers keeping the scores of every step plus "
        "the runner's log_softmax/topk over them; nothing else differs between the two",
    ]
    return make_section(
        "Margin capture: one generate call", "recording margins costs at most 5% extra",
        ["way", "per call (median)", "vs no margins", "extra per call"], rows, load_before, notes,
        raw={name: values for name, values in totals.items()}, prompts=len(prompts),
        ratios={"margins": capture, "shipped": shipped}, met=capture <= GOAL,
    )


def main() -> None:
    args = standard_arguments(__doc__.splitlines()[0])
    section = measure(prompt_count=10 if args.quick else 50, rounds=2 if args.quick else 7)
    save_section("margins", section, args.quick)
    print_section(section)


if __name__ == "__main__":
    main()
