"""Real size: a random model shaped like Qwen2-0.5B (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate
4864) with a 32,768-token vocabulary: 387M parameters, 1.5 GB of float32 weights, built in a temporary folder
(never committed; about a minute to build and save). Two measurements on it:

- the gate: 10 snapshot tests, `pytest --llm-snapshot` (golden files recorded first, then checked), against a
  bare loop that loads the model and calls `model.generate` once per prompt; whole processes (imports and model
  load included), interleaved, medians. Goal: at most 1.05x the bare loop;
- memory: the peak RSS of one call, `LLM.generate` against a bare `model.generate` and the old
  `output_scores=True` path (bench_memory.py's measuring process, on this model). Goal: at most 1.05x.

Its random weights make its greedy output a string of arbitrary tokens; no EOS token exists, so every call
generates all of its new tokens. 16 new tokens per test keep a run to a few minutes on 2 cores.

    python benchmarks/bench_realsize.py [--quick]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from bench_memory import BARE, MMAP_THRESHOLD, OLD, PLUGIN, build_model, child_result
from common import cli, report, runner, suites

GOAL = 1.05
SHAPE = {"vocab": 32768, "hidden": 896, "layers": 24, "intermediate": 4864, "heads": 14, "kv_heads": 2}
TESTS = 10
NEW_TOKENS = 16
MEMORY_TOKENS = 128  # one call's kept scores: 128 x 32,768 x 4 bytes = 16 MiB per copy on the old path
PROMPT_SUBJECTS = ("a fox", "a crow", "a lion", "a mouse", "a hare", "a tortoise", "a wolf", "a lamb", "a king",
                   "a queen")


def prompts(count: int) -> list[list[dict[str, str]]]:
    """`count` one-message chat prompts (the model's chat template is the embedded model's ChatML)."""
    return [[{"role": "user", "content": f"Tell me a story about {PROMPT_SUBJECTS[i % 10]} ({i})."}]
            for i in range(count)]


def build(folder: Path) -> Path:
    """The Qwen2-0.5B-shaped model with its tokenizer and the embedded model's chat template."""
    build_model(folder, **SHAPE)
    shutil.copy(suites.EMBEDDED_MODEL_DIR / "chat_template.jinja", folder / "chat_template.jinja")
    return folder


def parameter_count(folder: Path) -> int:
    """The parameters in the saved weights, read from the safetensors headers (no torch needed)."""
    total = 0
    for path in folder.glob("*.safetensors"):
        with path.open("rb") as stream:
            header = json.loads(stream.read(int.from_bytes(stream.read(8), "little")))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for size in entry["shape"]:
                    count *= size
                total += count
    return total


def measure(repeats: int, tests: int = TESTS, new_tokens: int = NEW_TOKENS,
            memory_tokens: int = MEMORY_TOKENS) -> dict[str, Any]:
    load_before = runner.load_average()
    with runner.workdir("realsize") as work:
        runner.log("building a random Qwen2-0.5B-shaped model (387M parameters) ...")
        model_dir = build(work / "model")
        parameters = parameter_count(model_dir)
        weights_gb = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 1e9
        runs, same = time_gate(work, model_dir, tests, new_tokens, repeats)
        memory = measure_memory(model_dir, memory_tokens)
    described = (f"random Qwen2ForCausalLM shaped like Qwen2-0.5B: {parameters / 1e6:.0f}M parameters, "
                 f"{weights_gb:.2f} GB of float32 weights, vocabulary {SHAPE['vocab']}; the same texts from the "
                 f"gate and the loop: {same}/{tests}; torch threads: {runner.TORCH_THREADS or 'default'}")
    section = summarize(runs, memory, memory_tokens, f"{tests} tests x {new_tokens} new tokens", described,
                        load_before)
    return report.make_section(
        f"Real size: {tests} snapshot tests on a Qwen2-0.5B-shaped model",
        "the gate at most 1.05x a bare model.generate loop; one call's peak memory at most 1.05x a bare generate",
        **section, parameters=parameters, same_outputs=same,
    )


def time_gate(work: Path, model_dir: Path, tests: int, new_tokens: int, repeats: int
              ) -> tuple[dict[str, list[runner.Run]], int]:
    """Record the golden files, compare their texts with the bare loop's, then time the gate and the loop."""
    suite_prompts = prompts(tests)
    llmdet = suites.write_llmdet_suite(work / "llmdet", suite_prompts, model_dir, max_new_tokens=new_tokens)
    bare = suites.write_bare_loop(work / "bare", suite_prompts, model_dir, max_new_tokens=new_tokens)
    env = runner.child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    ours = ("-p", "pytest_llmdet.plugin")
    runner.log("recording the golden files ...")
    runner.run_command(runner.pytest_argv("-q", *ours, "--llm-snapshot-update"), llmdet, env=env)
    same = suites.same_texts_as_bare_loop(llmdet, bare, work / "bare-texts.json")
    runner.log(f"outputs: {same}/{tests} golden texts equal the bare loop's")
    cases = {
        "pytest --llm-snapshot": lambda: runner.run_command(runner.pytest_argv("-q", *ours, "--llm-snapshot"),
                                                            llmdet, env=env),
        "bare model.generate loop": lambda: runner.run_command([sys.executable, str(bare)], bare.parent),
    }
    runner.log(f"timing the gate and the bare loop x {repeats}, interleaved ...")
    return runner.interleaved(cases, repeats, warmup=1 if repeats > 1 else 0, progress=runner.log), same


def measure_memory(model_dir: Path, memory_tokens: int) -> dict[str, list[dict[str, Any]]]:
    """The peak memory of one call, in one fresh process per variant (bench_memory.py's); the variants must
    all generate the same `memory_tokens` tokens."""
    memory_env = runner.child_env(MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
    variants = {BARE: "bare", PLUGIN: "plugin", OLD: "old"}
    runner.log(f"measuring the peak memory of one {memory_tokens}-token call ({len(variants)} processes) ...")
    memory = runner.interleaved({name: (lambda variant=variant: child_result(variant, model_dir, memory_tokens,
                                                                               memory_env))
                                 for name, variant in variants.items()}, 1, warmup=0, progress=runner.log)
    values = [value for results in memory.values() for value in results]
    if len({value["token_sum"] for value in values}) != 1 or {value["tokens"] for value in values} != {memory_tokens}:
        raise RuntimeError(f"the memory variants did not all generate the same {memory_tokens} tokens: {values}")
    return memory


def summarize(runs: dict[str, list[runner.Run]], memory: dict[str, list[dict[str, Any]]], memory_tokens: int,
              sizes: str, described: str, load_before: tuple[float, float, float]) -> dict[str, Any]:
    """The table (the gate and the loop, then each variant's peak memory), its notes and figures."""
    median, ratio, seconds, verdict = report.median, report.ratio, report.seconds, report.verdict
    wall = report.medians(runs, "wall")
    gate, floor = wall["pytest --llm-snapshot"], wall["bare model.generate loop"]
    gate_ratio = ratio(gate, floor)
    peak = {name: median(v["peak_mb"] for v in values) for name, values in memory.items()}
    growth = {name: median(v["growth_mb"] for v in values) for name, values in memory.items()}
    memory_ratio = ratio(peak[PLUGIN], peak[BARE])
    rows = [[name, seconds(wall[name]), f"{ratio(wall[name], floor):.3f}x", len(runs[name])] for name in runs]
    rows += [[f"peak RSS, one {memory_tokens}-token call: {name}", f"{peak[name]:.0f} MB (+{growth[name]:.1f} MB)",
              f"{ratio(peak[name], peak[BARE]):.3f}x", 1] for name in memory]
    resolved = any(growth[name] > 0 for name in memory)
    spread = {name: f"{min(r.wall for r in values):.1f} to {max(r.wall for r in values):.1f} s"
              for name, values in runs.items()}
    notes = [
        f"gate / bare loop = {gate_ratio:.3f}x (goal <= {GOAL}): {verdict(gate_ratio, GOAL)}; runs ranged "
        f"{spread['pytest --llm-snapshot']} (gate) and {spread['bare model.generate loop']} (loop); "
        f"{sizes}; whole-process wall time, medians",
        f"peak memory: LLM.generate {memory_ratio:.3f}x a bare model.generate (goal <= {GOAL}): "
        f"{verdict(memory_ratio, GOAL) if resolved else 'not resolved'}; the old output_scores path "
        f"{ratio(peak[OLD], peak[BARE]):.3f}x ('+' = how far the call raised the peak RSS over the RSS before it)"
        + ("" if resolved else "; no variant, not even the old path, raised the peak RSS: beside 1.5 GB of weights "
           "(file-backed pages the kernel may drop and reload) the RSS does not resolve one call's scores; "
           "bench_memory.py (a small model) and gpu_check.py (torch.cuda.max_memory_allocated) measure the ratio"),
        described,
    ]
    return {"headers": ["run", "median", "vs bare", "runs"], "rows": rows, "load_before": load_before,
            "notes": notes, "raw": {"gate": report.raw_runs(runs), "memory": memory},
            "ratios": {"gate_vs_bare": gate_ratio, "memory_vs_bare": memory_ratio,
                       "old_memory_vs_bare": ratio(peak[OLD], peak[BARE])},
            "met": {"gate": gate_ratio <= GOAL, "memory": memory_ratio <= GOAL if resolved else None}}


def main() -> None:
    cli.main("realsize", __doc__, lambda quick: measure(repeats=1 if quick else 3,
                                                        memory_tokens=32 if quick else MEMORY_TOKENS))


if __name__ == "__main__":
    main()
