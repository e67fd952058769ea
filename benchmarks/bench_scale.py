"""Scale: snapshot suites of 100, 250 and 500 tests (distinct chat prompts, 32 new tokens, the embedded
model) checked with `pytest --llm-snapshot`: wall time and peak RSS per size, to show that the cost per
test stays constant (time grows linearly) and memory stays flat.

Golden files are recorded first; the check runs are interleaved across sizes. Peak RSS is the process's
own maximum resident set (`os.wait4`, i.e. getrusage of that one child).

    python benchmarks/bench_scale.py [--quick]
"""

from __future__ import annotations

from typing import Any

from common import cli, report, runner, suites

SIZES = (100, 250, 500)
PLUGIN = ("-p", "pytest_llmdet.plugin")


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares line through (xs, ys): slope, intercept and R²."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx if sxx else 0.0
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    return slope, intercept, 1 - residual / total if total else 1.0


def measure(sizes: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """Record each size's golden files, then time the check runs, interleaved."""
    load_before = runner.load_average()
    env = runner.child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    with runner.workdir("scale") as work:
        model_dir = suites.copy_embedded_model(work / "model")
        prompts = suites.chat_prompts(max(sizes))
        suites_by_size = {size: suites.write_llmdet_suite(work / f"suite-{size}", prompts[:size], model_dir)
                          for size in sizes}
        for size, suite in suites_by_size.items():
            runner.log(f"recording {size} golden files ...")
            runner.run_command(runner.pytest_argv("-q", *PLUGIN, "--llm-snapshot-update"), suite, env=env)
        cases = {f"{size} tests": (lambda suite=suite: runner.run_command(
                     runner.pytest_argv("-q", *PLUGIN, "--llm-snapshot"), suite, env=env))
                 for size, suite in suites_by_size.items()}
        runner.log(f"timing {len(sizes)} sizes x {repeats} runs, interleaved ...")
        runs = runner.interleaved(cases, repeats, warmup=0, progress=runner.log)
    return summarize(sizes, runs, load_before)


def summarize(sizes: tuple[int, ...], runs: dict[str, list[runner.Run]], load_before: tuple[float, float, float]
              ) -> dict[str, Any]:
    """The table: per size the median wall time, per test, marginal per test and peak RSS; the linear fit."""
    seconds = report.seconds
    wall = {size: report.median(r.wall for r in runs[f"{size} tests"]) for size in sizes}
    rss = {size: report.median(r.max_rss_mb for r in runs[f"{size} tests"]) for size in sizes}
    slope, intercept, r_squared = linear_fit([float(s) for s in sizes], [wall[s] for s in sizes])
    rows = []
    previous = None
    for size in sizes:
        marginal = "" if previous is None else seconds((wall[size] - wall[previous]) / (size - previous))
        rows.append([size, seconds(wall[size]), seconds(wall[size] / size), marginal, f"{rss[size]:.0f} MB",
                     len(runs[f"{size} tests"])])
        previous = size
    growth = rss[sizes[-1]] - rss[sizes[0]]
    notes = [
        f"linear fit: {seconds(slope)} per test + {seconds(intercept)} fixed (imports, model load, startup); "
        f"R² = {r_squared:.4f}",
        f"peak RSS from {sizes[0]} to {sizes[-1]} tests: {growth:+.0f} MB "
        f"({growth / (sizes[-1] - sizes[0]) * 1024:+.0f} KB per extra test)",
        "whole-process wall time of `pytest --llm-snapshot` (golden files recorded first); medians; "
        "'marginal per test' = the time added per test from the previous size",
    ]
    return report.make_section(
        "Scale: snapshot suites of growing size", "time grows linearly, memory stays flat",
        ["tests", "wall (median)", "per test", "marginal per test", "peak RSS", "runs"], rows, load_before, notes,
        raw=report.raw_runs(runs), fit={"seconds_per_test": slope, "fixed_seconds": intercept, "r_squared": r_squared},
        rss_growth_mb=growth,
    )


def main() -> None:
    cli.main("scale", __doc__, lambda quick: measure(sizes=(10, 25, 50) if quick else SIZES, repeats=1 if quick else 3))


if __name__ == "__main__":
    main()
