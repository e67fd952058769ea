"""Determinism re-runs: what `@pytest.mark.llm_determinism(runs=N)` costs per run, N = 1, 3, 5, against the
same test unmarked (one run, no check). Goal: a test with N runs takes at most 1.05 x N x one run.

One generated module holds an unmarked test and one marked test per N, all with the same body (4 chat
prompts, 32 new tokens each), repeated and interleaved in file order, after a warm-up test that loads the
model. A conftest hookwrapper around `pytest_runtest_protocol` times each test's whole protocol (all its
runs, the comparison and the report); pytest runs several times. A row whose marked test did not run N
times (the marker is not there or not working) reads "not available" instead of failing the benchmark.

    python benchmarks/bench_reruns.py [--quick]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import cli, report, runner, suites
from common.suites import MAX_NEW_TOKENS

RUNS = (1, 3, 5)
GOAL = 1.05
PROMPTS_PER_TEST = 4
PLUGIN = ("-p", "pytest_llmdet.plugin")


def variant_of(nodeid: str) -> str | None:
    """`plain` or `runsN` for a timed test's node id; None for the warm-up test."""
    name = nodeid.split("::")[-1]
    if name.startswith("test_plain_"):
        return "plain"
    if name.startswith("test_runs"):
        return name.removeprefix("test_").rsplit("_", 1)[0]
    return None


def measure(repeats: int, sessions: int) -> dict[str, Any]:
    """Run the suite `sessions` times and collect every test's duration and execution count."""
    load_before = runner.load_average()
    durations: dict[str, list[float]] = {}
    executions: dict[str, set[int]] = {}
    errors: list[str] = []
    with runner.workdir("reruns") as work:
        suite = suites.write_rerun_suite(work / "suite", suites.copy_embedded_model(work / "model"), repeats,
                                         RUNS, PROMPTS_PER_TEST)
        out = work / "timings.json"
        env = runner.child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", LLMDET_BENCH_OUT=str(out))
        runner.log(f"running the re-run suite {sessions} times ({repeats} tests per variant each) ...")
        for session in range(sessions):
            run = runner.run_command(runner.pytest_argv("-q", "-p", "no:cacheprovider", *PLUGIN), suite, env=env,
                                     check=False)
            if run.returncode != 0:
                errors.append(f"pytest exited with {run.returncode}: {(run.stdout + run.stderr)[-600:]}")
            if out.exists():
                collect(out, durations, executions)
            runner.log(f"  session {session + 1}/{sessions}: wall {run.wall:.2f} s "
                       f"(load {runner.load_average()[0]:.2f})")
    return summarize(durations, executions, errors, load_before)


def collect(out: Path, durations: dict[str, list[float]], executions: dict[str, set[int]]) -> None:
    """Add one session's test durations and execution counts (the conftest's JSON file, then removed)."""
    data = json.loads(out.read_text(encoding="utf-8"))
    for nodeid, seconds_taken in data["durations"].items():
        variant = variant_of(nodeid)
        if variant is not None:
            durations.setdefault(variant, []).append(seconds_taken)
            executions.setdefault(variant, set()).add(data["executions"].get(nodeid, 0))
    out.unlink()


def summarize(durations: dict[str, list[float]], executions: dict[str, set[int]], errors: list[str],
              load_before: tuple[float, float, float]) -> dict[str, Any]:
    """The table: per N the test's median time, per run, and against N x one unmarked run."""
    median, ratio, seconds, verdict = report.median, report.ratio, report.seconds, report.verdict
    one = median(durations["plain"]) if durations.get("plain") else float("nan")
    rows: list[list[Any]] = [["unmarked (one run)", seconds(one), seconds(one), "1.000", len(durations["plain"])]]
    ratios: dict[str, float | None] = {}
    unavailable = []
    for runs in RUNS:
        name = f"runs{runs}"
        if executions.get(name) != {runs}:
            seen = sorted(executions.get(name, set()))
            unavailable.append(f"runs={runs}: the test body ran {seen or 'no'} times per test, not {runs}")
            rows.append([f"runs={runs}", "not available", "not available", "not available", 0])
            ratios[name] = None
            continue
        total = median(durations[name])
        ratios[name] = ratio(total, runs * one)
        rows.append([f"runs={runs}", seconds(total), seconds(total / runs), f"{ratios[name]:.3f}",
                     len(durations[name])])
    measured = [value for value in ratios.values() if value is not None]
    worst = max(measured) if measured else None
    notes = [f"worst ratio {worst:.3f} (goal <= {GOAL}): {verdict(worst, GOAL)}" if worst is not None
             else "the llm_determinism marker is not available: nothing to compare"]
    notes += unavailable + errors[:1]
    notes.append(f"each test generates {PROMPTS_PER_TEST} chat prompts x {MAX_NEW_TOKENS} new tokens; time = the "
                 "test's whole protocol (setup, call, teardown of every run, the comparison); medians")
    return report.make_section(
        "Determinism re-runs: `@pytest.mark.llm_determinism(runs=N)`", "a test with N runs <= 1.05 x N x one run",
        ["test", "time (median)", "per run", "time / (N x one run)", "samples"], rows, load_before, notes,
        raw=durations, ratios=ratios, met=(worst <= GOAL) if worst is not None else None,
        available=not unavailable,
    )


def main() -> None:
    cli.main("reruns", __doc__, lambda quick: measure(repeats=1 if quick else 3, sessions=1 if quick else 3))


if __name__ == "__main__":
    main()
