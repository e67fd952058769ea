"""Reporting what a benchmark measured: medians and ratios, the cells of a table, a benchmark's section (its
table, goal, load and notes), the section as printed, and the results file with the machine's description.

The results file (benchmarks/results.json, or results-quick.json for `--quick`) holds `machine` and one
section per benchmark under `benchmarks`; docs/benchmarks.md shows the tables as printed.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from . import runner

RESULTS = runner.REPO / "benchmarks" / "results.json"
QUICK_RESULTS = runner.REPO / "benchmarks" / "results-quick.json"


# -- figures ------------------------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    """The median of `values`; ValueError when there are none."""
    values = list(values)
    if not values:
        raise ValueError("median of no values")
    return statistics.median(values)


def medians(runs: dict[str, list[runner.Run]], figure: str) -> dict[str, float]:
    """Per case, the median of one figure of its runs (`wall`, `cpu` or `max_rss_mb`)."""
    return {name: median(getattr(run, figure) for run in values) for name, values in runs.items()}


def raw_runs(runs: dict[str, list[runner.Run]]) -> dict[str, list[dict[str, float]]]:
    """Per case, each run's wall, CPU and peak RSS: a section's `raw` figures."""
    return {name: [run.figures() for run in values] for name, values in runs.items()}


def ratio(numerator: float, denominator: float) -> float:
    """`numerator / denominator`, or infinity when the denominator is not positive."""
    return numerator / denominator if denominator > 0 else float("inf")


def seconds(value: float) -> str:
    """A duration for a table: ms below one second, s above."""
    return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.2f} s"


def verdict(value: float, goal: float) -> str:
    """`met` or `MISSED` for a value that must stay at or below `goal`."""
    return "met" if value <= goal else "MISSED"


# -- tables and sections --------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table with aligned columns (what docs/benchmarks.md shows, pasted as printed)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    if any(len(row) != len(headers) for row in cells):
        raise ValueError("every row needs one cell per header")
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def make_section(title: str, goal: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
                 load_before: tuple[float, float, float], notes: Sequence[str] = (), **extra: Any
                 ) -> dict[str, Any]:
    """A benchmark's result: its table, goal, the load around it, notes and raw figures."""
    return {
        "title": title,
        "goal": goal,
        "date": machine_info()["date"],
        "load_before": list(load_before),
        "load_after": list(runner.load_average()),
        "headers": list(headers),
        "rows": [[_cell(v) for v in row] for row in rows],
        "notes": list(notes),
        **extra,
    }


def render_section(section: dict[str, Any]) -> str:
    """A section as printed: title, goal, load, the table and its notes."""
    lines = [f"### {section['title']}", "", f"Goal: {section['goal']}  ",
             f"Load average (1/5/15 min) before: {'/'.join(map(str, section['load_before']))}, "
             f"after: {'/'.join(map(str, section['load_after']))}", "",
             format_table(section["headers"], section["rows"])]
    if section.get("notes"):
        lines += [""] + [f"- {note}" for note in section["notes"]]
    return "\n".join(lines)


def print_section(section: dict[str, Any]) -> None:
    """Print a section to stdout."""
    print(render_section(section) + "\n", flush=True)


# -- the machine and the results file ------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """The machine, versions and date that a set of figures belongs to."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "pytest": _version("pytest"),
        "syrupy": _version("syrupy"),
        "pytest-llmdet": _version("pytest-llmdet"),
        "torch_threads": runner.threads_label(),
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line describing the machine and versions."""
    return (f"{info['date']}; {info['nproc']} CPUs ({info['cpu']}); Python {info['python']}, "
            f"torch {info['torch']}, transformers {info['transformers']}, pytest {info['pytest']}, "
            f"syrupy {info['syrupy']}; torch threads: {info.get('torch_threads', 'default')}")


def results_path(quick: bool) -> Path:
    """Where results go: quick smoke runs never overwrite the real figures."""
    return QUICK_RESULTS if quick else RESULTS


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object at `path`, or an empty dict when there is none."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def save_section(name: str, section: dict[str, Any], quick: bool) -> Path:
    """Store one benchmark's result under `name` in the results file, with the machine description."""
    path = results_path(quick)
    data = read_json(path)
    data["machine"] = machine_info()
    data.setdefault("benchmarks", {})[name] = section
    write_json(path, data)
    return path
