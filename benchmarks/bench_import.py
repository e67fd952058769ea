"""Import cost: `pytest --co -q` on a generated suite of 500 trivial tests, with pytest-llmdet enabled and with
`-p no:llmdet`, run in pairs (the order alternating), medians. Goal: at most 10 ms difference.

Whole-process times on a shared machine scatter by more than the goal, so two steadier figures come with them:
the instructions each run executes, counted by valgrind when it is installed (independent of the load), and
inside one `pytest --co -q` process, the time to import the plugin, the time pytest takes to register it, and
the time spent in its hooks (and whether the import pulled in torch, transformers or filelock).

    python benchmarks/bench_import.py [--quick]
"""

from __future__ import annotations

import random
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import cli, report, runner, suites

TESTS = 500
GOAL_SECONDS = 0.010
SMALL_GOAL_SECONDS = 0.005  # issue 24, item 6: with and without PYTHONDONTWRITEBYTECODE=1
# Run in-process in the suite's folder, `python -c PROBE`: imports pytest, then the plugin (timed), wraps the
# plugin's plain hook functions with a timer and pytest's plugin registration with another, and runs
# `pytest --co -q`, which registers the already imported (wrapped) modules. Prints the import time, the time
# pytest spends registering the plugin (pluggy checks each hook; pytest reads its fixtures), the time spent in
# its hooks, and the heavy modules the import pulled in. Small intervals inside one process: far less exposed
# to other jobs than whole-process times. Their sum is what the plugin costs a run.
PROBE = """
import contextlib, functools, inspect, io, sys, time
import pytest
from _pytest.config import PytestPluginManager
started = time.perf_counter()
import pytest_llmdet.plugin
import pytest_llmdet.hooks.determinism
imported = time.perf_counter() - started
heavy = [m for m in ('torch', 'transformers', 'filelock') if m in sys.modules]
spent = [0.0, 0.0, 0]  # hooks, registration, inside a registration

def timed(function, slot):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            if slot == 1 or not spent[2]:  # a hook pytest calls while registering counts as registration
                spent[slot] += time.perf_counter() - began
    return wrapper

for module in (pytest_llmdet.plugin, pytest_llmdet.hooks.determinism):
    for name, value in list(vars(module).items()):
        if name.startswith('pytest_') and inspect.isfunction(value) and not inspect.isgeneratorfunction(value):
            setattr(module, name, timed(value, 0))
register = PytestPluginManager.register
outermost = timed(register, 1)

def register_timed(self, plugin, name=None):  # the plugin registers hooks.determinism: count that once
    ours = getattr(plugin, '__name__', '').startswith('pytest_llmdet') and not spent[2]
    if not ours:
        return register(self, plugin, name)
    spent[2] = 1
    try:
        return outermost(self, plugin, name)
    finally:
        spent[2] = 0

PytestPluginManager.register = register_timed
with contextlib.redirect_stdout(io.StringIO()):
    pytest.main(['--co', '-q'])
print(imported, spent[0], ','.join(heavy) or '-', spent[1])
"""


def paired_runs(commands: dict[str, list[str]], cwd: Path, repeats: int, warmup: int,
                env: dict[str, str] | None = None) -> dict[str, list[runner.Run]]:
    """Run two commands back to back `warmup + repeats` times, swapping which goes first each round (so neither
    always gets the warmer caches); keep the last `repeats` of each, pair i of one matching pair i of the other."""
    names = list(commands)
    runs: dict[str, list[runner.Run]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            run = runner.run_command(commands[name], cwd, env=env)
            if round_index >= warmup:
                runs[name].append(run)
    return runs


def bootstrap_interval(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of the median of `values` (fixed seed: the same data give the same
    interval)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def instruction_counts(commands: dict[str, list[str]], cwd: Path, **env: str) -> dict[str, int] | None:
    """The instructions each command executes, counted by valgrind's callgrind (None without valgrind).

    Unlike a time, the count does not depend on what else the machine is doing: two runs of the same command
    differ by a few thousand instructions in billions (PYTHONHASHSEED is fixed for that). A process forked by
    the command starts with its parent's count, so the largest count is the command's own."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    counts = {}
    for name, argv in commands.items():
        done = subprocess.run([valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv], cwd=cwd,
                              env=runner.child_env(PYTHONHASHSEED="0", **env), capture_output=True, text=True,
                              check=True)
        counts[name] = callgrind_total(done.stderr)
    return counts


def callgrind_total(stderr: str) -> int:
    """The instruction count in callgrind's output: the largest `Collected` line (a process the command forked
    reports too, starting from its parent's count at the fork)."""
    totals = [int(n.replace(",", "")) for n in re.findall(r"==\d+== Collected : ([\d,]+)", stderr)]
    if not totals:
        raise RuntimeError(f"no instruction count in valgrind's output: {stderr[-500:]}")
    return max(totals)


ENABLED, DISABLED = "plugin enabled", "-p no:llmdet"


@dataclass
class WholeProcess:
    """`pytest --co -q` with and without the plugin, in pairs, and their instruction counts (None without
    valgrind); the same under PYTHONDONTWRITEBYTECODE=1."""

    runs: dict[str, list[runner.Run]]
    counts: dict[str, int] | None
    runs_no_bytecode: dict[str, list[runner.Run]]
    counts_no_bytecode: dict[str, int] | None
    counts_header: dict[str, int] | None  # `pytest --co` (the report header, as a run without -q prints it)


@dataclass
class InProcess:
    """The probe's medians: importing the plugin, pytest registering it, its hooks; the heavy modules the
    import pulled in; the import with no bytecode cache."""

    runs: int
    import_seconds: float
    hook_seconds: float
    heavy: list[str]
    register_seconds: float
    cold_runs: int
    cold_import_seconds: float

    @classmethod
    def of(cls, probes: list[runner.Run], cold: list[runner.Run]) -> InProcess:
        def figure(runs: list[runner.Run], index: int) -> float:
            return report.median(float(p.stdout.split()[index]) for p in runs)

        return cls(len(probes), figure(probes, 0), figure(probes, 1), sorted({p.stdout.split()[2] for p in probes}),
                   figure(probes, 3), len(cold), figure(cold, 0))

    @property
    def total(self) -> float:
        return self.import_seconds + self.register_seconds + self.hook_seconds


def measure(tests: int, repeats: int) -> dict[str, Any]:
    """Time collection with and without the plugin, and the plugin's import alone."""
    load_before = runner.load_average()
    with runner.workdir("import") as work:
        suite = suites.write_trivial_suite(work / "suite", tests)
        commands = {ENABLED: runner.pytest_argv("--co", "-q"),
                    DISABLED: runner.pytest_argv("--co", "-q", "-p", "no:llmdet")}
        for argv in commands.values():
            count = suites.collected_count(runner.run_command(argv, suite).stdout)
            if count != tests:
                raise RuntimeError(f"expected {tests} tests collected, got {count}: {' '.join(argv)}")
        whole = time_whole_processes(commands, suite, tests, repeats)
        in_process = time_in_process(suite, work, repeats)
    return summarize(tests, whole, in_process, load_before)


def time_whole_processes(commands: dict[str, list[str]], suite: Path, tests: int, repeats: int) -> WholeProcess:
    """The pairs and the instruction counts, then the same under PYTHONDONTWRITEBYTECODE=1."""
    runner.log(f"timing `pytest --co -q` on {tests} tests, {repeats} runs each, in pairs, the order alternating ...")
    runs = paired_runs(commands, suite, repeats, warmup=2)
    runner.log("counting instructions with valgrind (about a minute) ...")
    counts = instruction_counts(commands, suite)
    # PYTHONDONTWRITEBYTECODE=1, as in many CI images: the bytecode the runs above wrote stays readable (as
    # pip's is for an installed wheel), but pytest cannot cache what it rewrites, so it compiles the modules it
    # loads itself (the entry module, the package's __init__) from source on every run
    runner.log("the same pairs and counts under PYTHONDONTWRITEBYTECODE=1 ...")
    for rewritten in runner.PYCACHE_PREFIX.rglob("*-pytest-*.pyc"):  # keep the bytecode pip would have compiled
        rewritten.unlink()
    no_bytecode = runner.child_env(PYTHONDONTWRITEBYTECODE="1")
    runs_no_bytecode = paired_runs(commands, suite, max(repeats // 2, 3), warmup=1, env=no_bytecode)
    counts_no_bytecode = instruction_counts(commands, suite, PYTHONDONTWRITEBYTECODE="1")
    # Without -q pytest prints the report header, and the plugin's header imports modules of its own (issue 24)
    header = {name: [arg for arg in argv if arg != "-q"] for name, argv in commands.items()}
    counts_header = instruction_counts(header, suite, PYTHONDONTWRITEBYTECODE="1")
    return WholeProcess(runs, counts, runs_no_bytecode, counts_no_bytecode, counts_header)


def time_in_process(suite: Path, work: Path, repeats: int) -> InProcess:
    """The probe in the suite's folder, with this checkout's bytecode and with none."""
    probe = [sys.executable, "-c", PROBE]
    probes = runner.interleaved({"probe": lambda: runner.run_command(probe, suite)}, max(repeats // 2, 3),
                                warmup=1)["probe"]
    # No bytecode cache: an empty cache folder that is never written to, so every startup module is compiled
    # from its source (the probe imports them before pytest starts, without its rewriting hook). An upper
    # bound for a run under PYTHONDONTWRITEBYTECODE=1 (set in many CI images) with the plugin installed from
    # a wheel: there pytest, which cannot cache what it rewrites, compiles plugin.py and the package's
    # __init__ on every run, and the other startup modules load from pip's bytecode past its rewriting.
    uncached = runner.child_env(PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=str(work / "empty-pycache"))
    cold = runner.interleaved({"probe": lambda: runner.run_command(probe, suite, env=uncached)},
                              max(repeats // 2, 3), warmup=0)["probe"]
    return InProcess.of(probes, cold)


def counted_seconds(counts: dict[str, int] | None, baseline: dict[str, int] | None, fastest: float) -> float | None:
    """The extra instructions with the plugin, at the speed of the fastest run without it (the run least slowed
    down by other jobs); None without counts."""
    if counts is None or baseline is None:
        return None
    return (counts[ENABLED] - counts[DISABLED]) * fastest / baseline[DISABLED]


def paired_median(runs: dict[str, list[runner.Run]]) -> float:
    """The median of the paired differences, enabled minus disabled."""
    return report.median([a.wall - b.wall for a, b in zip(runs[ENABLED], runs[DISABLED], strict=True)])


def summarize(tests: int, whole: WholeProcess, probe: InProcess, load_before: tuple[float, float, float]
              ) -> dict[str, Any]:
    """The table, the two goals' verdicts and the figures of the results file."""
    runs, counts = whole.runs, whole.counts
    wall, cpu = report.medians(runs, "wall"), report.medians(runs, "cpu")
    fastest = {name: min(r.wall for r in values) for name, values in runs.items()}
    paired = paired_median(runs)
    low, high = bootstrap_interval([a.wall - b.wall for a, b in zip(runs[ENABLED], runs[DISABLED], strict=True)])
    counted = counted_seconds(counts, counts, fastest[DISABLED])
    counted_no_bytecode = counted_seconds(whole.counts_no_bytecode, counts, fastest[DISABLED])
    paired_no_bytecode = paired_median(whole.runs_no_bytecode)
    figures = {
        "wall": wall, "cpu": cpu, "fastest": fastest, "difference": wall[ENABLED] - wall[DISABLED],
        "cpu_difference": cpu[ENABLED] - cpu[DISABLED], "paired": paired, "low": low, "high": high,
        "counted": counted, "paired_no_bytecode": paired_no_bytecode, "counted_no_bytecode": counted_no_bytecode,
        "counted_header": counted_seconds(whole.counts_header, counts, fastest[DISABLED]),
        "whole": counted if counted is not None else paired,
        "whole_no_bytecode": counted_no_bytecode if counted_no_bytecode is not None else paired_no_bytecode,
    }
    met = figures["whole"] <= GOAL_SECONDS and probe.total <= GOAL_SECONDS
    met_small = figures["whole"] <= SMALL_GOAL_SECONDS and figures["whole_no_bytecode"] <= SMALL_GOAL_SECONDS
    return report.make_section(
        f"Import cost: `pytest --co -q`, {tests} trivial tests", "at most 10 ms slower with the plugin enabled",
        ["run", "wall (median)", "CPU (median)", "fastest", "runs"], table(whole, probe, figures), load_before,
        notes(tests, whole, probe, figures, met, met_small),
        raw={name: [{"wall": r.wall, "cpu": r.cpu} for r in values] for name, values in runs.items()},
        difference_seconds=figures["difference"], paired_difference_seconds=paired,
        paired_difference_interval_seconds=[low, high], instructions=counts,
        instructions_seconds=counted, plugin_import_seconds=probe.import_seconds,
        plugin_hook_seconds=probe.hook_seconds, plugin_register_seconds=probe.register_seconds,
        plugin_import_seconds_no_bytecode_cache=probe.cold_import_seconds, met=met,
        instructions_no_bytecode=whole.counts_no_bytecode, instructions_seconds_no_bytecode=counted_no_bytecode,
        paired_difference_seconds_no_bytecode=paired_no_bytecode, met_5_ms=met_small,
        instructions_header_no_bytecode=whole.counts_header,
        instructions_seconds_header_no_bytecode=figures["counted_header"],
    )


def table(whole: WholeProcess, probe: InProcess, f: dict[str, Any]) -> list[list[Any]]:
    """The rows: both runs, their difference, the in-process figures, the instruction-count estimates."""
    seconds, runs = report.seconds, whole.runs
    rows = [[name, seconds(f["wall"][name]), seconds(f["cpu"][name]), seconds(f["fastest"][name]), len(runs[name])]
            for name in runs]
    rows.append(["difference", seconds(f["difference"]), seconds(f["cpu_difference"]),
                 seconds(f["fastest"][ENABLED] - f["fastest"][DISABLED]), ""])
    rows.append(["in-process: importing the plugin", seconds(probe.import_seconds), "", "", probe.runs])
    rows.append(["in-process: pytest registering it", seconds(probe.register_seconds), "", "", probe.runs])
    rows.append(["in-process: the plugin's hooks (500 tests)", seconds(probe.hook_seconds), "", "", probe.runs])
    rows.append(["in-process: importing it with no bytecode cache", seconds(probe.cold_import_seconds), "", "",
                 probe.cold_runs])
    if f["counted"] is not None:
        rows.append(["difference from instruction counts (valgrind)", seconds(f["counted"]), "", "", 1])
    rows.append(["PYTHONDONTWRITEBYTECODE=1: median of the paired differences", seconds(f["paired_no_bytecode"]),
                 "", "", len(whole.runs_no_bytecode[ENABLED])])
    if f["counted_no_bytecode"] is not None:
        rows.append(["PYTHONDONTWRITEBYTECODE=1: difference from instruction counts",
                     seconds(f["counted_no_bytecode"]), "", "", 1])
    if f["counted_header"] is not None:
        rows.append(["PYTHONDONTWRITEBYTECODE=1, `--co` with the header: from instruction counts",
                     seconds(f["counted_header"]), "", "", 1])
    return rows


def notes(tests: int, whole: WholeProcess, probe: InProcess, f: dict[str, Any], met: bool, met_small: bool
          ) -> list[str]:
    """The notes: the goals' verdicts and how each figure was taken."""
    seconds, counts = report.seconds, whole.counts
    return [
        f"goal <= 10 ms: {'met' if met else 'MISSED'} (the whole-process estimate, "
        f"{'from the instruction count' if counts is not None else 'the median of the paired differences'}, "
        "and the in-process estimate must both stay within it)",
        instructions_note(counts, f["counted"]),
        f"median of the paired differences {seconds(f['paired'])} (95% bootstrap interval {seconds(f['low'])} to "
        f"{seconds(f['high'])}); difference of the medians {seconds(f['difference'])}; difference of the fastest "
        f"runs {seconds(f['fastest'][ENABLED] - f['fastest'][DISABLED])}. Each pair runs back to back, so a "
        "change in the machine's load hits both; whole-process times on a shared machine still scatter by more "
        "than the goal, which is why the in-process figures are measured too",
        f"in-process: import {seconds(probe.import_seconds)} + registration {seconds(probe.register_seconds)} + "
        f"hooks {seconds(probe.hook_seconds)} = "
        f"{seconds(probe.total)}; heavy modules the import pulled in: {', '.join(probe.heavy)}",
        f"no bytecode cache (every startup module compiled from source: an upper bound for "
        f"PYTHONDONTWRITEBYTECODE=1, where pytest compiles two of them on every run): import "
        f"{seconds(probe.cold_import_seconds)}, and so "
        f"{seconds(probe.total - probe.import_seconds + probe.cold_import_seconds)} in all",
        f"goal <= 5 ms whole-process, with and without PYTHONDONTWRITEBYTECODE=1: "
        f"{'met' if met_small else 'MISSED'} ({seconds(f['whole'])} and {seconds(f['whole_no_bytecode'])})",
        f"{tests} trivial tests in {(tests + 49) // 50} modules; whole-process wall time of `pytest --co -q`; "
        "every other installed plugin loads in both",
    ]


def instructions_note(counts: dict[str, int] | None, counted: float | None) -> str:
    """What the instruction counts say, or that valgrind is not installed."""
    if counts is None or counted is None:
        return "instructions: not counted (valgrind is not installed)"
    extra = counts[ENABLED] - counts[DISABLED]
    return (f"instructions: {counts[ENABLED]:,} with the plugin, {counts[DISABLED]:,} without: "
            f"it adds {extra:,} ({extra / counts[DISABLED]:.2%}) to a whole "
            f"`pytest --co -q` process, {report.seconds(counted)} at the speed of the fastest run "
            "without it; the count does not depend on the machine's load")


def main() -> None:
    cli.main("import", __doc__, lambda quick: measure(tests=TESTS, repeats=5 if quick else 60))


if __name__ == "__main__":
    main()
