"""Suite cost: 50 snapshot tests (chat prompts, 32 new tokens, the embedded model) three ways, each a whole
process timed from start to exit (imports and model load included):

- pytest-llmdet: `assert llm.generate(prompt) == llm_snapshot`, run with `pytest --llm-snapshot`;
- hand-rolled: a session fixture with AutoModelForCausalLM/AutoTokenizer, `model.generate(do_sample=False)`
  and syrupy's `assert text == snapshot`, run with `pytest` (syrupy compares whenever it is installed);
- the floor: a plain Python loop calling `model.generate` once per prompt.

Each pytest run loads only the snapshot plugin it uses, as if only that one were installed: plugin autoloading
is off (PYTEST_DISABLE_PLUGIN_AUTOLOAD=1) and `-p pytest_llmdet.plugin` or `-p syrupy` loads it; other plugins
installed here (hypothesis, xdist, pytest-benchmark, ...) stay out of both. Goals: pytest-llmdet at most 1.05x
the hand-rolled suite and at most 1.10x the floor.

    python benchmarks/bench_suite.py [--quick]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    chat_prompts,
    child_env,
    copy_embedded_model,
    interleaved,
    llmdet_golden_texts,
    load_average,
    log,
    make_section,
    median,
    new_workdir,
    print_section,
    pytest_argv,
    ratio,
    run_command,
    save_section,
    seconds,
    standard_arguments,
    verdict,
    write_bare_loop,
    write_handrolled_suite,
    write_llmdet_suite,
)

TESTS = 50
GOAL_VS_HANDROLLED = 1.05
GOAL_VS_FLOOR = 1.10


def measure(tests: int, repeats: int) -> dict[str, Any]:
    """Record both suites' snapshots, check that all three produce the same texts, then time them."""
    load_before = load_average()
    work = new_workdir("suite")
    try:
        model_dir = copy_embedded_model(work / "model")
        prompts = chat_prompts(tests)
        llmdet = write_llmdet_suite(work / "llmdet", prompts, model_dir)
        handrolled = write_handrolled_suite(work / "handrolled", prompts, model_dir)
        bare = write_bare_loop(work / "bare", prompts, model_dir)

        env = child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
        ours, syrupy = ("-p", "pytest_llmdet.plugin"), ("-p", "syrupy")
        log("recording golden files (pytest-llmdet) and snapshots (syrupy) ...")
        run_command(pytest_argv("-q", *ours, "--llm-snapshot-update"), llmdet, env=env)
        run_command(pytest_argv("-q", *syrupy, "--snapshot-update"), handrolled, env=env)
        texts_file = work / "bare-texts.json"
        run_command([sys.executable, str(bare), str(texts_file)], bare.parent)
        bare_texts = json.loads(texts_file.read_text(encoding="utf-8"))
        same = sum(a == b for a, b in zip(llmdet_golden_texts(llmdet), bare_texts, strict=True))
        log(f"outputs: {same}/{tests} texts of pytest-llmdet's goldens equal the bare loop's")

        cases = {
            "pytest-llmdet": lambda: run_command(pytest_argv("-q", *ours, "--llm-snapshot"), llmdet, env=env),
            "hand-rolled": lambda: run_command(pytest_argv("-q", *syrupy), handrolled, env=env),
            "bare loop": lambda: run_command([sys.executable, str(bare)], bare.parent),
        }
        log(f"timing {len(cases)} variants x {repeats} runs, interleaved (one warm-up round discarded) ...")
        runs = interleaved(cases, repeats, warmup=1, progress=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    wall = {name: median(r.wall for r in values) for name, values in runs.items()}
    cpu = {name: median(r.cpu for r in values) for name, values in runs.items()}
    floor = wall["bare loop"]
    rows = [[name, seconds(wall[name]), seconds(cpu[name]), f"{ratio(wall[name], floor):.3f}x",
             seconds(wall[name] - floor), len(runs[name])] for name in runs]
    vs_handrolled = ratio(wall["pytest-llmdet"], wall["hand-rolled"])
    vs_floor = ratio(wall["pytest-llmdet"], floor)
    notes = [
        f"pytest-llmdet / hand-rolled = {vs_handrolled:.3f}x (goal <= {GOAL_VS_HANDROLLED}): "
        f"{verdict(vs_handrolled, GOAL_VS_HANDROLLED)}",
        f"pytest-llmdet / bare loop = {vs_floor:.3f}x (goal <= {GOAL_VS_FLOOR}): {verdict(vs_floor, GOAL_VS_FLOOR)}",
        f"hand-rolled / bare loop = {ratio(wall['hand-rolled'], floor):.3f}x",
        f"{tests} tests, {tests} chat prompts, 32 new tokens, the embedded model (a private copy); whole-process "
        "wall time including imports and model load; medians; CPU = user + system time of the process",
        f"same outputs: {same}/{tests} golden texts of pytest-llmdet equal the bare loop's texts",
    ]
    return make_section(
        f"Suite cost: {tests} snapshot tests", "pytest-llmdet <= 1.05x hand-rolled and <= 1.10x the bare loop",
        ["variant", "wall (median)", "CPU (median)", "vs bare loop", "over bare loop", "runs"], rows,
        load_before, notes,
        raw={name: [{"wall": r.wall, "cpu": r.cpu, "max_rss_mb": r.max_rss_mb} for r in values]
             for name, values in runs.items()},
        ratios={"llmdet_vs_handrolled": vs_handrolled, "llmdet_vs_floor": vs_floor,
                "handrolled_vs_floor": ratio(wall["hand-rolled"], floor)},
        met={"vs_handrolled": vs_handrolled <= GOAL_VS_HANDROLLED, "vs_floor": vs_floor <= GOAL_VS_FLOOR},
        same_outputs=same,
    )


def main() -> None:
    args = standard_arguments(__doc__.splitlines()[0])
    section = measure(tests=10 if args.quick else TESTS, repeats=1 if args.quick else 5)
    save_section("suite", section, args.quick)
    print_section(section)


if __name__ == "__main__":
    main()
