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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PYCACHE_PREFIX,
    Run,
    child_env,
    collected_count,
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
    write_trivial_suite,
)

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
                env: dict[str, str] | None = None) -> dict[str, list[Run]]:
    """Run two commands back to back `warmup + repeats` times, swapping which goes first each round (so neither
    always gets the warmer caches); keep the last `repeats` of each, pair i of one matching pair i of the other."""
    names = list(commands)
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            run = run_command(commands[name], cwd, env=env)
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
                              env=child_env(PYTHONHASHSEED="0", **env), capture_output=True, text=True, check=True)
        counts[name] = callgrind_total(done.stderr)
    return counts


def callgrind_total(stderr: str) -> int:
    """The instruction count in callgrind's output: the largest `Collected` line (a process the command forked
    reports too, starting from its parent's count at the fork)."""
    totals = [int(n.replace(",", "")) for n in re.findall(r"==\d+== Collected : ([\d,]+)", stderr)]
    if not totals:
        raise RuntimeError(f"no instruction count in valgrind's output: {stderr[-500:]}")
    return max(totals)


def measure(tests: int, repeats: int) -> dict[str, Any]:
    """Time collection with and without the plugin, and the plugin's import alone."""
    load_before = load_average()
    work = new_workdir("import")
    try:
        suite = write_trivial_suite(work / "suite", tests)
        enabled = pytest_argv("--co", "-q")
        disabled = pytest_argv("--co", "-q", "-p", "no:llmdet")
        for argv in (enabled, disabled):
            count = collected_count(run_command(argv, suite).stdout)
            if count != tests:
                raise RuntimeError(f"expected {tests} tests collected, got {count}: {' '.join(argv)}")
        log(f"timing `pytest --co -q` on {tests} tests, {repeats} runs each, in pairs, the order alternating ...")
        runs = paired_runs({"plugin enabled": enabled, "-p no:llmdet": disabled}, suite, repeats, warmup=2)
        log("counting instructions with valgrind (about a minute) ...")
        counts = instruction_counts({"plugin enabled": enabled, "-p no:llmdet": disabled}, suite)
        # PYTHONDONTWRITEBYTECODE=1, as in many CI images: the bytecode the runs above wrote stays readable (as
        # pip's is for an installed wheel), but pytest cannot cache what it rewrites, so it compiles the modules it
        # loads itself (the entry module, the package's __init__) from source on every run
        log("the same pairs and counts under PYTHONDONTWRITEBYTECODE=1 ...")
        for rewritten in PYCACHE_PREFIX.rglob("*-pytest-*.pyc"):  # keep the bytecode pip would have compiled
            rewritten.unlink()
        no_bytecode = child_env(PYTHONDONTWRITEBYTECODE="1")
        runs_no_bytecode = paired_runs({"plugin enabled": enabled, "-p no:llmdet": disabled}, suite,
                                       max(repeats // 2, 3), warmup=1, env=no_bytecode)
        counts_no_bytecode = instruction_counts({"plugin enabled": enabled, "-p no:llmdet": disabled}, suite,
                                                PYTHONDONTWRITEBYTECODE="1")
        probes = interleaved({"probe": lambda: run_command([sys.executable, "-c", PROBE], suite)},
                             max(repeats // 2, 3), warmup=1)["probe"]
        # No bytecode cache: an empty cache folder that is never written to, so every startup module is compiled
        # from its source (the probe imports them before pytest starts, without its rewriting hook). An upper
        # bound for a run under PYTHONDONTWRITEBYTECODE=1 (set in many CI images) with the plugin installed from
        # a wheel: there pytest, which cannot cache what it rewrites, compiles plugin.py and the package's
        # __init__ on every run, and the other startup modules load from pip's bytecode past its rewriting.
        uncached = child_env(PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=str(work / "empty-pycache"))
        cold = interleaved({"probe": lambda: run_command([sys.executable, "-c", PROBE], suite, env=uncached)},
                           max(repeats // 2, 3), warmup=0)["probe"]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    wall = {name: median(r.wall for r in values) for name, values in runs.items()}
    cpu = {name: median(r.cpu for r in values) for name, values in runs.items()}
    difference = wall["plugin enabled"] - wall["-p no:llmdet"]
    cpu_difference = cpu["plugin enabled"] - cpu["-p no:llmdet"]
    differences = [a.wall - b.wall for a, b in zip(runs["plugin enabled"], runs["-p no:llmdet"], strict=True)]
    paired = median(differences)
    low, high = bootstrap_interval(differences)
    fastest = {name: min(r.wall for r in values) for name, values in runs.items()}
    import_seconds = median(float(p.stdout.split()[0]) for p in probes)
    hook_seconds = median(float(p.stdout.split()[1]) for p in probes)
    heavy = sorted({p.stdout.split()[2] for p in probes})
    register_seconds = median(float(p.stdout.split()[3]) for p in probes)
    cold_import_seconds = median(float(p.stdout.split()[0]) for p in cold)
    rows = [[name, seconds(wall[name]), seconds(cpu[name]), seconds(fastest[name]), len(runs[name])]
            for name in runs]
    rows.append(["difference", seconds(difference), seconds(cpu_difference),
                 seconds(fastest["plugin enabled"] - fastest["-p no:llmdet"]), ""])
    rows.append(["in-process: importing the plugin", seconds(import_seconds), "", "", len(probes)])
    rows.append(["in-process: pytest registering it", seconds(register_seconds), "", "", len(probes)])
    rows.append(["in-process: the plugin's hooks (500 tests)", seconds(hook_seconds), "", "", len(probes)])
    rows.append(["in-process: importing it with no bytecode cache", seconds(cold_import_seconds), "", "",
                 len(cold)])
    in_process = import_seconds + register_seconds + hook_seconds
    if counts is not None:
        extra = counts["plugin enabled"] - counts["-p no:llmdet"]
        # at the speed of the fastest run without the plugin: the run least slowed down by other jobs
        counted = extra * fastest["-p no:llmdet"] / counts["-p no:llmdet"]
        rows.append(["difference from instruction counts (valgrind)", seconds(counted), "", "", 1])
    whole = counted if counts is not None else paired
    met = whole <= GOAL_SECONDS and in_process <= GOAL_SECONDS
    paired_no_bytecode = median([a.wall - b.wall for a, b in zip(runs_no_bytecode["plugin enabled"],
                                                                   runs_no_bytecode["-p no:llmdet"], strict=True)])
    rows.append(["PYTHONDONTWRITEBYTECODE=1: median of the paired differences", seconds(paired_no_bytecode), "", "",
                 len(runs_no_bytecode["plugin enabled"])])
    counted_no_bytecode = None
    if counts_no_bytecode is not None:
        extra_no_bytecode = counts_no_bytecode["plugin enabled"] - counts_no_bytecode["-p no:llmdet"]
        counted_no_bytecode = extra_no_bytecode * fastest["-p no:llmdet"] / counts["-p no:llmdet"]
        rows.append(["PYTHONDONTWRITEBYTECODE=1: difference from instruction counts", seconds(counted_no_bytecode),
                     "", "", 1])
    whole_no_bytecode = counted_no_bytecode if counted_no_bytecode is not None else paired_no_bytecode
    met_small = whole <= SMALL_GOAL_SECONDS and whole_no_bytecode <= SMALL_GOAL_SECONDS
    notes = [
        f"goal <= 10 ms: {'met' if met else 'MISSED'} (the whole-process estimate, "
        f"{'from the instruction count' if counts is not None else 'the median of the paired differences'}, "
        "and the in-process estimate must both stay within it)",
        "instructions: " + (f"{counts['plugin enabled']:,} with the plugin, {counts['-p no:llmdet']:,} without: "
                            f"it adds {extra:,} ({extra / counts['-p no:llmdet']:.2%}) to a whole "
                            f"`pytest --co -q` process, {seconds(counted)} at the speed of the fastest run "
                            "without it; the count does not depend on the machine's load"
                            if counts is not None else "not counted (valgrind is not installed)"),
        f"median of the paired differences {seconds(paired)} (95% bootstrap interval {seconds(low)} to "
        f"{seconds(high)}); difference of the medians {seconds(difference)}; difference of the fastest runs "
        f"{seconds(fastest['plugin enabled'] - fastest['-p no:llmdet'])}. Each pair runs back to back, so a "
        "change in the machine's load hits both; whole-process times on a shared machine still scatter by more "
        "than the goal, which is why the in-process figures are measured too",
        f"in-process: import {seconds(import_seconds)} + registration {seconds(register_seconds)} + hooks "
        f"{seconds(hook_seconds)} = "
        f"{seconds(in_process)}; heavy modules the import pulled in: {', '.join(heavy)}",
        f"no bytecode cache (every startup module compiled from source: an upper bound for "
        f"PYTHONDONTWRITEBYTECODE=1, where pytest compiles two of them on every run): import "
        f"{seconds(cold_import_seconds)}, and so "
        f"{seconds(in_process - import_seconds + cold_import_seconds)} in all",
        f"goal <= 5 ms whole-process, with and without PYTHONDONTWRITEBYTECODE=1: "
        f"{'met' if met_small else 'MISSED'} ({seconds(whole)} and {seconds(whole_no_bytecode)})",
        f"{tests} trivial tests in {(tests + 49) // 50} modules; whole-process wall time of `pytest --co -q`; "
        "every other installed plugin loads in both",
    ]
    return make_section(
        f"Import cost: `pytest --co -q`, {tests} trivial tests", "at most 10 ms slower with the plugin enabled",
        ["run", "wall (median)", "CPU (median)", "fastest", "runs"], rows, load_before, notes,
        raw={name: [{"wall": r.wall, "cpu": r.cpu} for r in values] for name, values in runs.items()},
        difference_seconds=difference, paired_difference_seconds=paired,
        paired_difference_interval_seconds=[low, high], instructions=counts,
        instructions_seconds=counted if counts is not None else None, plugin_import_seconds=import_seconds,
        plugin_hook_seconds=hook_seconds, plugin_register_seconds=register_seconds,
        plugin_import_seconds_no_bytecode_cache=cold_import_seconds, met=met,
        instructions_no_bytecode=counts_no_bytecode, instructions_seconds_no_bytecode=counted_no_bytecode,
        paired_difference_seconds_no_bytecode=paired_no_bytecode, met_5_ms=met_small,
    )


def main() -> None:
    args = standard_arguments(__doc__.splitlines()[0])
    section = measure(tests=TESTS, repeats=5 if args.quick else 60)
    save_section("import", section, args.quick)
    print_section(section)


if __name__ == "__main__":
    main()
