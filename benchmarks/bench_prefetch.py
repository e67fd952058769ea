"""Gate throughput against one vLLM server: a gate of N snapshot tests (chat prompts, 16 new tokens) recorded
on the openai engine (lone requests), a few goldens then hand-changed so that the gate has failures to find,
and checked three ways: sequential (one request per call, as today), `--llm-prefetch` (every recorded call
sent at once, 32 in flight), and `-n 2` (two xdist workers against the same server). Each check is a whole
process, imports and connection included. Reported: wall time, the /v1/completions requests the server
logged, the prefetch's own line, and whether every mode gave the same verdicts. Needs vLLM: run it in the
engine venv of .ci/run (`.venv-engines/bin/python`).

    .venv-engines/bin/python benchmarks/bench_prefetch.py [--quick]

The full run measures the gate of 100 tests (the goal's), then one of 500 (2 runs a mode): each process's
start-up (imports, the tokenizer, the connection) is a fixed cost that the prefetch does not shorten.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "engines"))

from bench_engines import NEW_TOKENS, gate_suite  # noqa: E402
from common import (  # noqa: E402
    interleaved,
    load_average,
    log,
    make_section,
    median,
    new_workdir,
    print_section,
    pytest_argv,
    ratio,
    run_command,
    save_section,
    seconds,
    standard_arguments,
)
from engine_models import vllm_server  # noqa: E402

TESTS = 100
LARGER = 500  # a second gate, measured after the first: the process's start-up weighs less
CHANGED = 5  # goldens whose first token is hand-changed: the failures every mode must find
GOAL = 3.0  # prefetch at least this many times faster than sequential
OURS = ("-q", "-p", "pytest_llmdet.plugin", "-p", "xdist.plugin", "-p", "no:cacheprovider",
        "-W", "ignore::DeprecationWarning")


def change_goldens(suite: Path, count: int) -> list[str]:
    """Change the first recorded token of `count` golden files (sorted by name); their test ids."""
    changed = []
    for path in sorted(suite.rglob("__llm_snapshots__/**/*.json"))[:count]:
        golden = json.loads(path.read_text(encoding="utf-8"))
        entry = golden["snapshots"]["0"]
        entry["token_ids"][0] = (entry["token_ids"][0] + 1) % 1000 + 3
        path.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        changed.append(golden["test"])
    return changed


def verdicts(report: Path) -> dict[tuple[str, str], str]:
    """Each snapshot's status in a --llm-report file."""
    data = json.loads(report.read_text(encoding="utf-8"))
    return {(entry["test"], entry["name"]): entry["status"] for entry in data["snapshots"]}


class ServerDied(RuntimeError):
    """The vLLM server stopped answering during the benchmark; the message holds its log's end."""


def check_alive(url: str, log_file: Path) -> None:
    """Raise ServerDied, with the end of the server's log, when it no longer answers /health."""
    import urllib.request

    try:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as response:
            if response.status == 200:
                return
    except OSError:
        pass
    tail = log_file.read_text(errors="replace")[-4000:]
    raise ServerDied(f"the vLLM server stopped answering; its log ends:\n{tail}")


def requests_logged(log_file: Path) -> int:
    """The /v1/completions requests the vLLM server's access log holds so far."""
    return log_file.read_text(errors="replace").count("POST /v1/completions")


def calls_seconds(output: str) -> float | None:
    """The time the run spent answering its calls: the `generations` line of the llm summary, plus the
    prefetch's own time (the summary's prefetch line); None without a generations line. Under xdist it is the
    workers' sum."""
    generations = re.search(r"^generations: \d+ \(([\d.]+) s\)", output, re.MULTILINE)
    batch = re.search(r"^prefetch: .* generated at once \(\d+ batch\(es\), ([\d.]+) s\)", output, re.MULTILINE)
    if generations is None:
        return None
    return float(generations.group(1)) + (float(batch.group(1)) if batch else 0.0)


def measure(tests: int, repeats: int) -> dict[str, Any]:
    load_before = load_average()
    work = new_workdir("prefetch")
    try:
        model, suite, env = gate_suite(work, tests)
        server_log = work / "server.log"
        with vllm_server(model, server_log) as server:
            on_server = ("--llm-engine", "openai", "--llm-base-url", server.url)
            log("recording the golden files on the server, one request per call ...")
            run_command(pytest_argv(*OURS, "--llm-snapshot-update", *on_server), suite, env=env)
            changed = change_goldens(suite, CHANGED)
            modes = {"sequential": (), "--llm-prefetch": ("--llm-prefetch",), "-n 2": ("-n", "2")}
            found: dict[str, list[dict[str, Any]]] = {name: [] for name in modes}

            def case(name: str, flags: tuple[str, ...]):
                def run():
                    before = requests_logged(server_log)
                    report = suite / "report.json"  # inside the suite: pytest takes an existing path outside for
                    # a test path, and would move the rootdir (and lose the suite's ini file) from the second run on
                    result = run_command(pytest_argv(*OURS, "--llm-snapshot", *on_server, *flags, "--llm-report",
                                                     str(report)), suite, env=env, check=False)
                    check_alive(server.url, server_log)
                    if calls_seconds(result.stdout) is None:  # no test reached the model: say why, do not time it
                        raise RuntimeError(f"{name}: no generations line; the run's output ends:\n"
                                           f"{(result.stdout + result.stderr)[-3000:]}")
                    line = re.search(r"^prefetch: .*$", result.stdout, re.MULTILINE)
                    found[name].append({"requests": requests_logged(server_log) - before, "exit": result.returncode,
                                        "verdicts": verdicts(report), "prefetch": line.group(0) if line else None,
                                        "calls_seconds": calls_seconds(result.stdout)})
                    return result
                return run

            log(f"timing {len(modes)} modes x {repeats} runs, interleaved (one warm-up round discarded) ...")
            runs = interleaved({name: case(name, flags) for name, flags in modes.items()}, repeats, warmup=1,
                               progress=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _section(tests, changed, runs, found, load_before)


def _section(tests: int, changed: list[str], runs: dict[str, list[Any]], found: dict[str, list[dict[str, Any]]],
             load_before: tuple[float, float, float]) -> dict[str, Any]:
    reference = found["sequential"][-1]["verdicts"]
    failed = sorted(test for (test, _), status in reference.items() if status == "failed")
    sequential = median(r.wall for r in runs["sequential"])
    calls = {name: median(entry["calls_seconds"] or 0.0 for entry in found[name][-len(values):])
             for name, values in runs.items()}
    rows = []
    for name, values in runs.items():
        wall = median(r.wall for r in values)
        same = all(entry["verdicts"] == reference for entry in found[name])
        rows.append([name, seconds(wall), f"{ratio(sequential, wall):.2f}x", seconds(calls[name]),
                     f"{ratio(calls['sequential'], calls[name]):.2f}x", found[name][-1]["requests"],
                     "yes" if same else "NO", len(values)])
    speedup = ratio(sequential, median(r.wall for r in runs["--llm-prefetch"]))
    calls_speedup = ratio(calls["sequential"], calls["--llm-prefetch"])
    notes = [
        f"{tests} snapshot tests, {tests} chat prompts, {NEW_TOKENS} new tokens, fp32, the engine tests' tiny Qwen2 "
        "served by `vllm.entrypoints.openai.api_server` on this CPU (started once, beforehand; its start-up is not "
        "in the walls); goldens recorded on the openai engine, one request per call",
        f"{CHANGED} goldens hand-changed (first token): every mode failed exactly {len(failed)} tests "
        f"({'as expected' if failed == sorted(changed) else 'NOT the changed ones'}); same verdicts = every "
        "snapshot's status equal to the sequential run's, in every run",
        "calls = the time spent answering the calls: the llm summary's `generations` time plus the prefetch's "
        "(under -n 2 the two workers' sum, so not comparable to a wall); the process's start-up, imports and "
        "connection are the rest of the wall",
        "requests = the POST /v1/completions lines of the server's access log during the last run (the connection "
        "probe included; with -n 2 each worker probes)",
        f"the prefetch's line (last run): {found['--llm-prefetch'][-1]['prefetch']}",
    ]
    return make_section(f"Gate throughput: {tests} snapshot tests against one vLLM server",
                        f"--llm-prefetch >= {GOAL:g}x faster than sequential: {speedup:.2f}x the whole "
                        f"process, {calls_speedup:.2f}x the calls",
                        ["mode", "wall (median)", "vs sequential", "calls", "calls vs sequential", "requests",
                         "same verdicts", "runs"],
                        rows, load_before, notes,
                        raw={name: [{"wall": r.wall, "cpu": r.cpu, **{k: v for k, v in entry.items()
                                                                      if k != "verdicts"}}
                                    for r, entry in zip(values, found[name][-len(values):], strict=True)]
                             for name, values in runs.items()})


def main() -> None:
    args = standard_arguments(__doc__.splitlines()[0])
    section = measure(tests=20 if args.quick else TESTS, repeats=1 if args.quick else 3)
    save_section("prefetch", section, args.quick)
    print_section(section)
    if not args.quick:  # the start-up is a fixed cost: where the whole process reaches the goal
        larger = measure(tests=LARGER, repeats=2)
        save_section(f"prefetch-{LARGER}", larger, args.quick)
        print_section(larger)


if __name__ == "__main__":
    main()
