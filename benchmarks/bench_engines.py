"""Engine cost: the golden gate of N snapshot tests (chat prompts, 16 new tokens) recorded once with the
transformers engine, then checked with `pytest --llm-snapshot` on each engine: transformers, vllm (vllm.LLM
in the pytest process, on the threads it chooses on the CPU, and on every core as before that choice) and openai
(a vLLM server started once, beforehand; its start-up is reported apart).
Each check is a whole process, imports and loads included; the `llm` summary's load and generation times are
reported beside it. The model is the engine tests' tiny Qwen2 (hidden 128, head_dim 64), which vLLM's CPU
attention runs. Needs vLLM: run it in the engine venv of .ci/run (`.venv-engines/bin/python`).

    .venv-engines/bin/python benchmarks/bench_engines.py [--quick]
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from common import cli
from common.report import make_section, median, seconds
from common.runner import child_env, interleaved, load_average, log, new_workdir, pytest_argv, run_command
from common.suites import chat_prompts, write_llmdet_suite

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "engines"))

from engine_models import build_model, vllm_server  # noqa: E402

TESTS = 20
NEW_TOKENS = 16
VLLM_ARGS = "max_model_len=512 enforce_eager=true"


def _summary_seconds(output: str, label: str) -> float | None:
    match = re.search(rf"^{label}: \d+ \(([\d.]+) s\)", output, re.MULTILINE)
    return float(match.group(1)) if match else None


def gate_suite(work: Path, tests: int) -> tuple[Path, Path, dict[str, str]]:
    """The engine tests' tiny Qwen2 (head_dim 64: vLLM's CPU attention takes it) in `work`, a suite of `tests`
    chat-prompt snapshot tests on it, and the environment of the pytest runs (bench_prefetch.py uses it too)."""
    model = build_model(work / "model", seed=0)
    suite = write_llmdet_suite(work / "suite", chat_prompts(tests), model, max_new_tokens=NEW_TOKENS)
    return model, suite, child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", VLLM_CPU_KVCACHE_SPACE="1")


def _torch_threads() -> int:
    """torch's default intra-op thread count here (the vllm engine's count on the CPU before it chose one)."""
    import torch

    return torch.get_num_threads()


def measure(tests: int, repeats: int) -> dict[str, Any]:
    load_before = load_average()
    work = new_workdir("engines")
    try:
        model, suite, env = gate_suite(work, tests)
        ours = ("-q", "-p", "pytest_llmdet.plugin", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
        log("recording the golden files with the transformers engine ...")
        run_command(pytest_argv(*ours, "--llm-snapshot-update"), suite, env=env)
        cores = _torch_threads()
        started = time.perf_counter()
        with vllm_server(model, work / "server.log") as server:
            server_start = time.perf_counter() - started
            log(f"vLLM server up after {server_start:.1f} s")
            cases = {
                "transformers": lambda: run_command(pytest_argv(*ours, "--llm-snapshot"), suite, env=env),
                "vllm": lambda: run_command(pytest_argv(*ours, "--llm-snapshot", "--llm-engine", "vllm",
                                                        "--llm-vllm-args", VLLM_ARGS), suite, env=env),
                f"vllm --llm-threads {cores} (every core: before the fix)": lambda: run_command(
                    pytest_argv(*ours, "--llm-snapshot", "--llm-engine", "vllm", "--llm-vllm-args", VLLM_ARGS,
                                "--llm-threads", str(cores)), suite, env=env),
                "openai (vLLM server)": lambda: run_command(pytest_argv(*ours, "--llm-snapshot", "--llm-engine",
                                                                        "openai", "--llm-base-url", server.url),
                                                            suite, env=env),
            }
            log(f"timing {len(cases)} engines x {repeats} runs, interleaved (one warm-up round discarded) ...")
            runs = interleaved(cases, repeats, warmup=1, progress=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name, values in runs.items():
        loads = [_summary_seconds(r.stdout, "model loads") for r in values]
        generations = [_summary_seconds(r.stdout, "generations") for r in values]
        rows.append([name, seconds(median(r.wall for r in values)),
                     seconds(median(x for x in loads if x is not None)),
                     seconds(median(x for x in generations if x is not None)),
                     f"{median(x for x in generations if x is not None) / tests * 1000:.0f} ms",
                     f"{median(r.max_rss_mb for r in values):.0f} MB", len(values)])
    notes = [
        f"{tests} snapshot tests, {tests} chat prompts, {NEW_TOKENS} new tokens, fp32, the engine tests' tiny Qwen2; "
        "golden files recorded with transformers, every check passed (each run exits 0)",
        f"the vLLM server (openai engine) took {server_start:.1f} s to answer /health, once, before the runs",
        f"vllm runs its CPU kernels on {max(1, cores - 1)} of torch's {cores} threads (every core but one, as "
        "vLLM's server gives its worker); the row with --llm-threads shows every core, the default before",
        "load = the `model loads` line of the llm summary (vllm: vllm.LLM and its first generate, the warm-up); "
        "generations = the `generations` line; RSS = the pytest process (the server's is apart)",
    ]
    return make_section(f"Engine cost: a gate of {tests} snapshots on each engine", "a measurement, no goal",
                        ["engine", "wall (median)", "load", "generations", "per snapshot", "peak RSS", "runs"],
                        rows, load_before, notes, server_start=server_start,
                        raw={name: [{"wall": r.wall, "cpu": r.cpu, "max_rss_mb": r.max_rss_mb} for r in values]
                             for name, values in runs.items()})


def main() -> None:
    cli.main("engines", __doc__, lambda quick: measure(tests=5 if quick else TESTS, repeats=1 if quick else 3))


if __name__ == "__main__":
    main()
