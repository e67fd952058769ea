"""Running and timing what a benchmark measures: the environment of measured processes, one process run to
completion and measured, interleaved repetitions, the benchmark's scratch folder, progress on stderr.

Nothing here imports torch or transformers: the parent process of a benchmark stays light, and each measured
process pays its own imports and model load.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent.parent
# Bytecode of every measured process goes here, not into the source tree: the sandbox sets
# PYTHONDONTWRITEBYTECODE=1, which would make each run recompile the plugin, unlike a normal install.
PYCACHE_PREFIX = Path(tempfile.gettempdir()) / "pytest-llmdet-bench-pycache"
# torch's intra-op threads in every measured process (None: torch's default, one per core). On a machine
# shared with other jobs, OpenMP's spinning barrier makes a 2-thread generate of the tiny model ~20x slower
# whenever another process holds a core, which drowns every difference; one thread keeps runs comparable.
# Set from the command line (cli.arguments); read it as `runner.TORCH_THREADS`, never copy it at import.
TORCH_THREADS: int | None = 1

T = TypeVar("T")

# Measure this checkout, whatever an editable install of pytest-llmdet currently points at (another clone's
# `pip install -e` re-points it): this process imports the plugin from here, and so does every measured one.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass
class Run:
    """One finished process: wall time, CPU time (user + system), peak RSS, exit status and output."""

    wall: float
    cpu: float
    max_rss_mb: float
    returncode: int
    stdout: str
    stderr: str

    def figures(self) -> dict[str, float]:
        """What the results file keeps of a run: wall, CPU and peak RSS."""
        return {"wall": self.wall, "cpu": self.cpu, "max_rss_mb": self.max_rss_mb}


class CommandFailed(RuntimeError):
    """A measured command exited with an error; the message holds the end of its output."""


def child_env(**extra: str) -> dict[str, str]:
    """The environment of measured processes: this one's, with bytecode caching on (in PYCACHE_PREFIX), this
    checkout first on the import path, and torch's threads as TORCH_THREADS says."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_PREFIX)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("CI", None)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if TORCH_THREADS is None:
            env.pop(name, None)
        else:
            env[name] = str(TORCH_THREADS)
    env.update(extra)
    return env


def run_command(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> Run:
    """Run `argv` to completion and measure it; `os.wait4` gives the CPU time and peak RSS of this child
    alone (RUSAGE_CHILDREN would report the largest of all children so far)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), cwd=cwd, env=env if env is not None else child_env(),
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        run = Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, process.returncode,
                  out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"))
    if check and run.returncode != 0:
        tail = (run.stdout + run.stderr)[-3000:]
        raise CommandFailed(f"{' '.join(argv)} (in {cwd}) exited with {run.returncode}:\n{tail}")
    return run


def pytest_argv(*args: str) -> list[str]:
    """`python -m pytest` with this interpreter."""
    return [sys.executable, "-m", "pytest", *args]


def interleaved(cases: dict[str, Callable[[], T]], repeats: int, warmup: int = 1,
                progress: Callable[[str], None] | None = None) -> dict[str, list[T]]:
    """Run the cases in turn (A B C A B C ...) `warmup + repeats` times; keep the last `repeats` of each.

    Interleaving spreads a change in the machine's load over every case instead of biasing one.
    """
    results: dict[str, list[T]] = {name: [] for name in cases}
    for round_index in range(warmup + repeats):
        for name, case in cases.items():
            value = case()
            if round_index >= warmup:
                results[name].append(value)
            if progress is not None:
                label = "warmup" if round_index < warmup else f"{round_index - warmup + 1}/{repeats}"
                shown = f"{value.wall:.2f} s" if isinstance(value, Run) else str(value)
                progress(f"  [{label}] {name}: {shown}  (load {load_average()[0]:.2f})")
    return results


def new_workdir(prefix: str) -> Path:
    """A fresh temporary folder for one benchmark's suites (the caller removes it; see `workdir`)."""
    return Path(tempfile.mkdtemp(prefix=f"llmdet-bench-{prefix}-"))


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A fresh temporary folder for one benchmark's suites and models, removed afterwards, also on failure."""
    folder = new_workdir(prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds only the tables."""
    print(message, file=sys.stderr, flush=True)


def threads_label() -> Any:
    """TORCH_THREADS as the notes and the results file show it: the number, or `default`."""
    return TORCH_THREADS if TORCH_THREADS is not None else "default"
