"""Fingerprint cost: the golden header identifies a local model by a hash of its weight files, cached in
pytest's cache by path, size and modification time. With a 1 GiB local model, the first run hashes it
(cold) and later runs must not (cached); a passing check (the CI gate, often on a fresh machine with no cache)
does not need the hash at all. Goal: fingerprinting does not add seconds to every run.

The model is a copy of the embedded one plus `padding.safetensors`, a valid safetensors file holding one
1 GiB tensor of random bytes (transformers loads `model.safetensors` only; the fingerprint hashes every
weight file). It lives in a temporary folder and is deleted at the end, also on failure. Measured:

- `fingerprint.hash_weights` directly: with an empty cache (hashes every byte) and with a filled one;
- one snapshot test end to end, interleaved: recording its golden file and checking it, each with an empty
  pytest cache (a first run, or a fresh CI machine) and with the cache an earlier run left. A generated
  conftest counts the weight files each run hashes, so a cached run is told apart by more than its time.

The file was just written, so "cold" reads it from the page cache: the figure is the hashing, not the disk.

    python benchmarks/bench_fingerprint.py [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path
from typing import Any

from common import cli, report, runner, suites

GIB = 1 << 30
CHUNK = 64 << 20
PLUGIN = ("-p", "pytest_llmdet.plugin")


def write_random_safetensors(path: Path, size: int) -> Path:
    """A valid safetensors file with one uint8 tensor of `size` random bytes, written in chunks."""
    header = json.dumps({"padding": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as stream:
        stream.write(struct.pack("<Q", len(header)))
        stream.write(header)
        for written in range(0, size, CHUNK):
            stream.write(os.urandom(min(CHUNK, size - written)))
    return path


def measure(size: int, repeats: int) -> dict[str, Any]:
    """Time the hashing directly and end to end, count what each run hashed, then delete the big file."""
    load_before = runner.load_average()
    with runner.workdir("fingerprint") as work:  # the 1 GiB file goes with it
        model_dir = suites.copy_embedded_model(work / "model")
        runner.log(f"writing a {size / GIB:.2f} GiB weight file in {model_dir} ...")
        write_random_safetensors(model_dir / "padding.safetensors", size)
        cold, warm = hash_directly(model_dir, repeats)
        runs = CountingRuns(work, model_dir)
        timed = runner.interleaved(runs.cases(), repeats, warmup=0, progress=runner.log)
    if work.exists():
        raise RuntimeError(f"could not delete {work}: remove it by hand")
    return summarize(size, cold, warm, timed, runs.hashed, load_before)


def hash_directly(model_dir: Path, repeats: int) -> tuple[list[float], list[float]]:
    """`fingerprint.hash_weights` timed with an empty cache and again with the cache it filled."""
    from pytest_llmdet.engines.fingerprint import hash_weights

    cold, warm = [], []
    for _ in range(repeats):
        cache: dict[str, str] = {}
        started = time.perf_counter()
        digest = hash_weights(model_dir, cache)
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        if hash_weights(model_dir, cache) != digest:
            raise RuntimeError("the cached hash differs from the computed one")
        warm.append(time.perf_counter() - started)
    return cold, warm


class CountingRuns:
    """One snapshot test run end to end by pytest, recording or checking, with an empty pytest cache or the
    one a first run left; the conftest counts the weight files each run hashed (`hashed`, per case)."""

    def __init__(self, work: Path, model_dir: Path) -> None:
        self.work = work
        self.suite = suites.add_hash_counter(suites.write_llmdet_suite(work / "suite", suites.chat_prompts(1),
                                                                       model_dir))
        self.hashed_log = work / "hashed.txt"
        self.env = runner.child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", LLMDET_BENCH_HASHED=str(self.hashed_log))
        self.primed = work / "cache-primed"
        self.counter = iter(range(1_000_000))
        self.hashed: dict[str, list[int]] = {}
        self.run("priming", "--llm-snapshot-update", self.primed)
        if not list(self.primed.rglob("weights-sha256")):
            raise RuntimeError(f"the first run left no weights hash in pytest's cache under {self.primed}")

    def run(self, name: str, mode: str, cache_dir: Path) -> runner.Run:
        if mode == "--llm-snapshot-update":  # a missing golden file makes the run record it
            shutil.rmtree(self.suite / "__llm_snapshots__", ignore_errors=True)
        self.hashed_log.unlink(missing_ok=True)
        run = runner.run_command(runner.pytest_argv("-q", *PLUGIN, mode, "-o", f"cache_dir={cache_dir}"),
                                 self.suite, env=self.env)
        files = self.hashed_log.read_text(encoding="utf-8").split() if self.hashed_log.exists() else []
        self.hashed.setdefault(name, []).append(len(files))
        return run

    def cases(self) -> dict[str, Any]:
        """The four timed cases: record and check, each with an empty cache and with the primed one."""
        def case(name: str, mode: str, primed: bool) -> Any:
            return lambda: self.run(name, mode, self.primed if primed else self.work / f"cache-{next(self.counter)}")

        return {name: case(name, mode, primed) for name, mode, primed in (
            ("record, empty cache", "--llm-snapshot-update", False),
            ("record, cache of an earlier run", "--llm-snapshot-update", True),
            ("check, empty cache", "--llm-snapshot", False),
            ("check, cache of an earlier run", "--llm-snapshot", True))}


def summarize(size: int, cold: list[float], warm: list[float], runs: dict[str, list[runner.Run]],
              hashed: dict[str, list[int]], load_before: tuple[float, float, float]) -> dict[str, Any]:
    """The table: the direct hashing and each pytest run's time and hashed files; the goal."""
    median, seconds = report.median, report.seconds
    wall = report.medians(runs, "wall")
    weight_files = max(max(counts) for counts in hashed.values())
    cached = [name for name in runs if "earlier run" in name]
    checks = [name for name in runs if name.startswith("check")]
    met = all(count == 0 for name in cached + checks for count in hashed[name])  # cached runs, passing checks
    rows = [
        ["hash_weights, empty cache", seconds(median(cold)), f"{size / GIB / median(cold):.2f} GiB/s", "", len(cold)],
        ["hash_weights, filled cache", seconds(median(warm)), "a stat per file", "", len(warm)],
    ] + [[f"pytest run: {name}", seconds(wall[name]), "", "/".join(map(str, sorted(set(hashed[name])))),
          len(runs[name])] for name in runs]
    first = [name for name in runs if "empty" in name and max(hashed[name]) > 0]
    notes = [
        f"goal (no seconds on every run): {'met' if met else 'MISSED'}: runs with the cache of an earlier "
        f"run hashed {sorted({c for name in cached for c in hashed[name]})} files, passing checks "
        f"{sorted({c for name in checks for c in hashed[name]})} even with an empty cache; a run that needs the "
        f"hash and has no cache hashes all {weight_files} weight files ({seconds(median(cold))} here for "
        f"{size / GIB:.2f} GiB)",
        "with an empty cache, hashed by: " + (", ".join(first) if first else "none") + " (recording writes the "
        "fingerprint into the golden file; a check needs it only for a failure report, a pending file or "
        "--llm-report)",
        "so the CI gate (a fresh machine, or `-p no:cacheprovider`: no pytest cache) reads no weights when it "
        "passes",
        f"weight file {size / GIB:.2f} GiB of random bytes (page-cached, so the hash time is CPU, not disk); "
        "deleted afterwards",
    ]
    return report.make_section(
        f"Fingerprint cost: a {size / GIB:.2f} GiB local model",
        "hashing the weights does not add seconds to every run",
        ["what", "time (median)", "note", "files hashed", "runs"], rows, load_before, notes,
        raw={"hash_cold": cold, "hash_cached": warm, "files_hashed": hashed,
             **{name: [r.wall for r in values] for name, values in runs.items()}},
        met=met,
    )


def main() -> None:
    cli.main("fingerprint", __doc__, lambda quick: measure(size=GIB // 8 if quick else GIB, repeats=1 if quick else 3))


if __name__ == "__main__":
    main()
