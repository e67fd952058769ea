"""Scale: snapshot suites of 100, 250 and 500 tests (distinct chat prompts, 32 new tokens, the embedded
model) checked with `pytest --llm-snapshot`: wall time and peak RSS per size, to show that the cost per
test stays constant (time grows linearly) and memory stays flat.

Golden files are recorded first; the check runs are interleaved across sizes. Peak RSS is the process's
own maximum resident set (`os.wait4`, i.e. getrusage of that one child).

    python benchmarks/bench_scale.py [--quick]
"""

from __future__ import annotations

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
    load_average,
    log,
    make_section,
    median,
    new_workdir,
    print_section,
    pytest_argv,
    run_command,
    save_section,
    seconds,
    standard_arguments,
    write_llmdet_suite,
)

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
    load_before = load_average()
    work = new_workdir("scale")
    env = child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    try:
        model_dir = copy_embedded_model(work / "model")
        prompts = chat_prompts(max(sizes))
        suites = {size: write_llmdet_suite(work / f"suite-{size}", prompts[:size], model_dir) for size in sizes}
        for size, suite in suites.items():
            log(f"recording {size} golden files ...")
            run_command(pytest_argv("-q", *PLUGIN, "--llm-snapshot-update"), suite, env=env)
        cases = {f"{size} tests": (lambda suite=suite: run_command(pytest_argv("-q", *PLUGIN, "--llm-snapshot"),
                                                                     suite, env=env))
                 for size, suite in suites.items()}
        log(f"timing {len(sizes)} sizes x {repeats} runs, interleaved ...")
        runs = interleaved(cases, repeats, warmup=0, progress=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    wall = {size: median(r.wall for r in runs[f"{size} tests"]) for size in sizes}
    rss = {size: median(r.max_rss_mb for r in runs[f"{size} tests"]) for size in sizes}
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
    return make_section(
        "Scale: snapshot suites of growing size", "time grows linearly, memory stays flat",
        ["tests", "wall (median)", "per test", "marginal per test", "peak RSS", "runs"], rows, load_before, notes,
        raw={name: [{"wall": r.wall, "cpu": r.cpu, "max_rss_mb": r.max_rss_mb} for r in values]
             for name, values in runs.items()},
        fit={"seconds_per_test": slope, "fixed_seconds": intercept, "r_squared": r_squared},
        rss_growth_mb=growth,
    )


def main() -> None:
    args = standard_arguments(__doc__.splitlines()[0])
    section = measure(sizes=(10, 25, 50) if args.quick else SIZES, repeats=1 if args.quick else 3)
    save_section("scale", section, args.quick)
    print_section(section)


if __name__ == "__main__":
    main()
