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

import sys
from pathlib import Path
from typing import Any

from common import cli, report, runner, suites

TESTS = 50
GOAL_VS_HANDROLLED = 1.05
GOAL_VS_FLOOR = 1.10
OURS, SYRUPY = ("-p", "pytest_llmdet.plugin"), ("-p", "syrupy")


def measure(tests: int, repeats: int) -> dict[str, Any]:
    """Record both suites' snapshots, check that all three produce the same texts, then time them."""
    load_before = runner.load_average()
    with runner.workdir("suite") as work:
        model_dir = suites.copy_embedded_model(work / "model")
        prompts = suites.chat_prompts(tests)
        llmdet = suites.write_llmdet_suite(work / "llmdet", prompts, model_dir)
        handrolled = suites.write_handrolled_suite(work / "handrolled", prompts, model_dir)
        bare = suites.write_bare_loop(work / "bare", prompts, model_dir)
        env = runner.child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
        same = record(work, llmdet, handrolled, bare, env)
        runner.log(f"outputs: {same}/{tests} texts of pytest-llmdet's goldens equal the bare loop's")
        cases = {
            "pytest-llmdet": lambda: runner.run_command(runner.pytest_argv("-q", *OURS, "--llm-snapshot"), llmdet,
                                                        env=env),
            "hand-rolled": lambda: runner.run_command(runner.pytest_argv("-q", *SYRUPY), handrolled, env=env),
            "bare loop": lambda: runner.run_command([sys.executable, str(bare)], bare.parent),
        }
        runner.log(f"timing {len(cases)} variants x {repeats} runs, interleaved (one warm-up round discarded) ...")
        runs = runner.interleaved(cases, repeats, warmup=1, progress=runner.log)
    return summarize(tests, runs, same, load_before)


def record(work: Path, llmdet: Path, handrolled: Path, bare: Path, env: dict[str, str]) -> int:
    """Record pytest-llmdet's golden files and syrupy's snapshots; how many golden texts equal the bare
    loop's."""
    runner.log("recording golden files (pytest-llmdet) and snapshots (syrupy) ...")
    runner.run_command(runner.pytest_argv("-q", *OURS, "--llm-snapshot-update"), llmdet, env=env)
    runner.run_command(runner.pytest_argv("-q", *SYRUPY, "--snapshot-update"), handrolled, env=env)
    return suites.same_texts_as_bare_loop(llmdet, bare, work / "bare-texts.json")


def summarize(tests: int, runs: dict[str, list[runner.Run]], same: int, load_before: tuple[float, float, float]
              ) -> dict[str, Any]:
    """The table: each variant's median wall and CPU time against the bare loop; the two goals."""
    ratio, seconds, verdict = report.ratio, report.seconds, report.verdict
    wall, cpu = report.medians(runs, "wall"), report.medians(runs, "cpu")
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
    return report.make_section(
        f"Suite cost: {tests} snapshot tests", "pytest-llmdet <= 1.05x hand-rolled and <= 1.10x the bare loop",
        ["variant", "wall (median)", "CPU (median)", "vs bare loop", "over bare loop", "runs"], rows,
        load_before, notes, raw=report.raw_runs(runs),
        ratios={"llmdet_vs_handrolled": vs_handrolled, "llmdet_vs_floor": vs_floor,
                "handrolled_vs_floor": ratio(wall["hand-rolled"], floor)},
        met={"vs_handrolled": vs_handrolled <= GOAL_VS_HANDROLLED, "vs_floor": vs_floor <= GOAL_VS_FLOOR},
        same_outputs=same,
    )


def main() -> None:
    cli.main("suite", __doc__, lambda quick: measure(tests=10 if quick else TESTS, repeats=1 if quick else 5))


if __name__ == "__main__":
    main()
