"""Import cost: `pytest --co -q` on a generated suite of 500 trivial tests, with pytest-llmdet enabled and with
`-p no:llmdet`, interleaved, medians. Goal: at most 15 ms difference.

Also measured, to explain the difference and because whole-process times on a shared machine scatter by more
than the goal: inside one `pytest --co -q` process, the time to import the plugin and the time spent in its
hooks (and whether the import pulled in torch, transformers or filelock).

    python benchmarks/bench_import.py [--quick]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
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
GOAL_SECONDS = 0.015
# Run in-process in the suite's folder, `python -c PROBE`: imports pytest, then the plugin (timed), wraps the
# plugin's plain hook functions with a timer, and runs `pytest --co -q`, which registers the already imported
# (wrapped) modules. Prints the import time, the time spent in the plugin's hooks, and the heavy modules the
# import pulled in. Both are small intervals inside one process, so far less exposed to other jobs than the
# whole-process times. Together they are what the plugin's own code costs; pytest registering it comes on top.
PROBE = """
import contextlib, functools, inspect, io, sys, time
import pytest
started = time.perf_counter()
import pytest_llmdet.plugin
import pytest_llmdet.determinism_hooks
imported = time.perf_counter() - started
heavy = [m for m in ('torch', 'transformers', 'filelock') if m in sys.modules]
spent = [0.0]

def timed(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - began
    return wrapper

for module in (pytest_llmdet.plugin, pytest_llmdet.determinism_hooks):
    for name, value in list(vars(module).items()):
        if name.startswith('pytest_') and inspect.isfunction(value) and not inspect.isgeneratorfunction(value):
            setattr(module, name, timed(value))
with contextlib.redirect_stdout(io.StringIO()):
    pytest.main(['--co', '-q'])
print(imported, spent[0], ','.join(heavy) or '-')
"""


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
        cases = {
            "plugin enabled": lambda: run_command(enabled, suite),
            "-p no:llmdet": lambda: run_command(disabled, suite),
        }
        log(f"timing `pytest --co -q` on {tests} tests, {repeats} runs each, interleaved ...")
        runs = interleaved(cases, repeats, warmup=2)
        probes = interleaved({"probe": lambda: run_command([sys.executable, "-c", PROBE], suite)},
                             max(repeats // 2, 3), warmup=1)["probe"]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    wall = {name: median(r.wall for r in values) for name, values in runs.items()}
    cpu = {name: median(r.cpu for r in values) for name, values in runs.items()}
    difference = wall["plugin enabled"] - wall["-p no:llmdet"]
    cpu_difference = cpu["plugin enabled"] - cpu["-p no:llmdet"]
    paired = median(a.wall - b.wall for a, b in zip(runs["plugin enabled"], runs["-p no:llmdet"], strict=True))
    fastest = {name: min(r.wall for r in values) for name, values in runs.items()}
    import_seconds = median(float(p.stdout.split()[0]) for p in probes)
    hook_seconds = median(float(p.stdout.split()[1]) for p in probes)
    heavy = sorted({p.stdout.split()[2] for p in probes})
    rows = [[name, seconds(wall[name]), seconds(cpu[name]), seconds(fastest[name]), len(runs[name])]
            for name in runs]
    rows.append(["difference", seconds(difference), seconds(cpu_difference),
                 seconds(fastest["plugin enabled"] - fastest["-p no:llmdet"]), ""])
    rows.append(["in-process: importing the plugin", seconds(import_seconds), "", "", len(probes)])
    rows.append(["in-process: the plugin's hooks (500 tests)", seconds(hook_seconds), "", "", len(probes)])
    in_process = import_seconds + hook_seconds
    met = difference <= GOAL_SECONDS and in_process <= GOAL_SECONDS
    notes = [
        f"goal <= 15 ms: {'met' if met else 'MISSED'} (both the difference of the medians and the in-process "
        "estimate must stay within it; whole-process times on a shared machine scatter by more than 15 ms)",
        f"difference of the medians {seconds(difference)}; median of the paired differences {seconds(paired)}; "
        "difference of the fastest runs "
        f"{seconds(fastest['plugin enabled'] - fastest['-p no:llmdet'])}",
        f"in-process: import {seconds(import_seconds)} + hooks {seconds(hook_seconds)} = "
        f"{seconds(in_process)}; heavy modules the import pulled in: {', '.join(heavy)}",
        f"{tests} trivial tests in {(tests + 49) // 50} modules; whole-process wall time of `pytest --co -q`; "
        "every other installed plugin loads in both",
    ]
    return make_section(
        f"Import cost: `pytest --co -q`, {tests} trivial tests", "at most 15 ms slower with the plugin enabled",
        ["run", "wall (median)", "CPU (median)", "fastest", "runs"], rows, load_before, notes,
        raw={name: [{"wall": r.wall, "cpu": r.cpu} for r in values] for name, values in runs.items()},
        difference_seconds=difference, paired_difference_seconds=paired, plugin_import_seconds=import_seconds,
        plugin_hook_seconds=hook_seconds, met=met,
    )


def main() -> None:
    args = standard_arguments(__doc__.splitlines()[0])
    section = measure(tests=TESTS, repeats=5 if args.quick else 30)
    save_section("import", section, args.quick)
    print_section(section)


if __name__ == "__main__":
    main()
