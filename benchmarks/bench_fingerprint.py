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
import sys
import time
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


# Counts the weight files a run hashes (benchmark instrumentation of a private function): the timing alone
# cannot tell a cached run from a fast disk.
HASH_COUNTER = '''"""Generated: records every weight file pytest-llmdet hashes in this run."""
import os

from pytest_llmdet.engines import fingerprint

_hash_file = fingerprint._hash_file


def _counting(path):
    with open(os.environ["LLMDET_BENCH_HASHED"], "a", encoding="utf-8") as stream:
        stream.write(path.name + "\\n")
    return _hash_file(path)


fingerprint._hash_file = _counting
'''


def measure(size: int, repeats: int) -> dict[str, Any]:
    """Time the hashing directly and end to end, count what each run hashed, then delete the big file."""
    from pytest_llmdet.engines.fingerprint import hash_weights

    load_before = load_average()
    work = new_workdir("fingerprint")
    try:
        model_dir = copy_embedded_model(work / "model")
        log(f"writing a {size / GIB:.2f} GiB weight file in {model_dir} ...")
        write_random_safetensors(model_dir / "padding.safetensors", size)

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

        suite = write_llmdet_suite(work / "suite", chat_prompts(1), model_dir)
        (suite / "conftest.py").write_text(HASH_COUNTER, encoding="utf-8")
        golden_dir = suite / "__llm_snapshots__"
        hashed_log = work / "hashed.txt"
        env = child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", LLMDET_BENCH_HASHED=str(hashed_log))
        primed = work / "cache-primed"
        counter = iter(range(1_000_000))
        hashed: dict[str, list[int]] = {}

        def pytest_run(name: str, mode: str, cache_dir: Path) -> Any:
            if mode == "--llm-snapshot-update":
                shutil.rmtree(golden_dir, ignore_errors=True)  # a missing golden file makes the run record it
            hashed_log.unlink(missing_ok=True)
            run = run_command(pytest_argv("-q", *PLUGIN, mode, "-o", f"cache_dir={cache_dir}"), suite, env=env)
            files = hashed_log.read_text(encoding="utf-8").split() if hashed_log.exists() else []
            hashed.setdefault(name, []).append(len(files))
            return run

        pytest_run("priming", "--llm-snapshot-update", primed)
        if not list(primed.rglob("weights-sha256")):
            raise RuntimeError(f"the first run left no weights hash in pytest's cache under {primed}")
        cases = {
            "record, empty cache": lambda: pytest_run("record, empty cache", "--llm-snapshot-update",
                                                      work / f"cache-{next(counter)}"),
            "record, cache of an earlier run": lambda: pytest_run("record, cache of an earlier run",
                                                                  "--llm-snapshot-update", primed),
            "check, empty cache": lambda: pytest_run("check, empty cache", "--llm-snapshot",
                                                     work / f"cache-{next(counter)}"),
            "check, cache of an earlier run": lambda: pytest_run("check, cache of an earlier run", "--llm-snapshot",
                                                                 primed),
        }
        log(f"timing {len(cases)} ways x {repeats} runs, interleaved ...")
        runs = interleaved(cases, repeats, warmup=0, progress=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the 1 GiB file goes with it
    if work.exists():
        raise RuntimeError(f"could not delete {work}: remove it by hand")

    wall = {name: median(r.wall for r in values) for name, values in runs.items()}
    weight_files = max(max(counts) for counts in hashed.values())
    cached = [name for name in runs if "earlier run" in name]
    cache_works = all(count == 0 for name in cached for count in hashed[name])
    checks = [name for name in runs if name.startswith("check")]
    gate_reads_nothing = all(count == 0 for name in checks for count in hashed[name])  # passing checks
    met = cache_works and gate_reads_nothing
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
    return make_section(
        f"Fingerprint cost: a {size / GIB:.2f} GiB local model",
        "hashing the weights does not add seconds to every run",
        ["what", "time (median)", "note", "files hashed", "runs"], rows, load_before, notes,
        raw={"hash_cold": cold, "hash_cached": warm, "files_hashed": hashed,
             **{name: [r.wall for r in values] for name, values in runs.items()}},
        met=met,
    )


def main() -> None:
    args = standard_arguments(__doc__.splitlines()[0])
    section = measure(size=GIB // 8 if args.quick else GIB, repeats=1 if args.quick else 3)
    save_section("fingerprint", section, args.quick)
    print_section(section)


if __name__ == "__main__":
    main()
