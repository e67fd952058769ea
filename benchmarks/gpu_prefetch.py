"""Step 6 of the GPU check (benchmarks/gpu_check.py): the prefetch gate on a batch-invariant engine. A vLLM
server of the engine tests' tiny Qwen2 (with VLLM_BATCH_INVARIANT=1 on CUDA), a gate of snapshot tests recorded
on the openai engine with lone requests, a few goldens hand-changed, then checked sequentially and with
`--llm-prefetch`: the same verdicts, and on CUDA every unchanged call answered from the batch (batched == lone,
bitwise). The helpers are bench_prefetch.py's, which benchmarks the same gate on the CPU.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from bench_engines import NEW_TOKENS, gate_suite
from bench_prefetch import ServerDied, calls_seconds, change_goldens, check_alive, requests_logged, verdicts
from common import report, runner
from common.checks import Check, line_with, tail
from common.runner import CommandFailed, Run
from engine_models import Server, ServerDidNotStart, vllm_server  # tests/engines: bench_engines puts it on the path

GATE_TESTS = {"cuda": 64, "cpu": 16}  # the snapshot tests of the gate
GATE_CHANGED = 4  # goldens whose first token is hand-changed: the failures both modes must find
GATE_FLAGS = ("-q", "-p", "pytest_llmdet.plugin", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning")
# vLLM's batch-invariant mode on CUDA (compute capability 8.0 or newer): the variable, in bfloat16 (where batch
# variance is real), on FlashAttention, which supports it (FlashInfer does not) and with it uses one split only
BATCH_INVARIANT = {"dtype": "bfloat16", "extra_args": ("--attention-backend", "FLASH_ATTN"),
                   "extra_env": {"VLLM_BATCH_INVARIANT": "1"}}


@dataclass
class GateRun:
    """One check of the prefetch gate: the process, each snapshot's verdict, the requests the server logged,
    the time spent answering the calls and the prefetch's summary line."""

    run: Run
    verdicts: dict[tuple[str, str], str]
    requests: int
    calls: float | None
    prefetch: str | None


def gate_check(suite: Path, env: dict[str, str], server: Server, *flags: str) -> GateRun:
    """`pytest --llm-snapshot` of the gate on the server's openai engine with `flags`, its --llm-report read."""
    before = requests_logged(server.log)
    report_file = suite / "report.json"  # inside the suite, as in bench_prefetch.py (the rootdir stays put)
    report_file.unlink(missing_ok=True)
    run = runner.run_command(runner.pytest_argv(*GATE_FLAGS, "--llm-snapshot", "--llm-engine", "openai",
                                                "--llm-base-url", server.url, "--llm-report", str(report_file),
                                                *flags), suite, env=env, check=False)
    check_alive(server.url, server.log)
    line = line_with(run, r"^prefetch: .* generated at once")
    return GateRun(run, verdicts(report_file) if report_file.exists() else {},
                   requests_logged(server.log) - before, calls_seconds(run.stdout), line)


def gate_runs(suite: Path, env: dict[str, str], server: Server) -> tuple[list[str], GateRun, GateRun]:
    """Goldens recorded with lone requests, GATE_CHANGED of them hand-changed, then the gate checked
    sequentially and with --llm-prefetch: the changed tests and the two checks."""
    runner.log("  recording the goldens on the server, one request per call ...")
    runner.run_command(runner.pytest_argv(*GATE_FLAGS, "--llm-snapshot-update", "--llm-engine", "openai",
                                          "--llm-base-url", server.url), suite, env=env)
    changed = change_goldens(suite, GATE_CHANGED)
    runner.log("  checking sequentially, then with --llm-prefetch ...")
    return changed, gate_check(suite, env, server), gate_check(suite, env, server, "--llm-prefetch")


def prefetch_gate(work: Path, device: str) -> Check:
    cuda = device.startswith("cuda")
    name = "prefetch gate, " + ("VLLM_BATCH_INVARIANT=1" if cuda else "no batch invariance on the CPU")
    if importlib.util.find_spec("vllm") is None:
        return Check(name, "skipped", "vLLM is not installed in this interpreter (pip install vllm)", must_pass=False)
    tests = GATE_TESTS["cuda" if cuda else "cpu"]
    model, suite, env = gate_suite(work / "prefetch", tests)
    try:
        with vllm_server(model, work / "prefetch" / "server.log", **(BATCH_INVARIANT if cuda else {})) as server:
            changed, sequential, prefetched = gate_runs(suite, env, server)
    except (ServerDidNotStart, ServerDied, CommandFailed) as error:
        return Check(name, "FAILED", " / ".join(str(error).strip().splitlines()[-6:]))
    return judge_gate(name, tests, changed, sequential, prefetched, cuda)


def judge_gate(name: str, tests: int, changed: list[str], sequential: GateRun, prefetched: GateRun,
               cuda: bool) -> Check:
    """Passed when both checks answered their calls with the same verdicts (the hand-changed tests failed)
    and, on CUDA, every unchanged call was answered from the batch: batched bitwise equal to lone."""
    failed = sorted({test for (test, _), status in sequential.verdicts.items() if status == "failed"})
    answered = re.search(r"(\d+) answered from the batch, (\d+) differed from the golden", prefetched.prefetch or "")
    if None in (sequential.calls, prefetched.calls, answered) or not sequential.verdicts:
        broken = sequential if sequential.calls is None or not sequential.verdicts else prefetched
        return Check(name, "FAILED", f"no verdicts, or no generations or prefetch line: {tail(broken.run)}")
    batched, lone = int(answered.group(1)), int(answered.group(2))
    disagreed = line_with(prefetched.run, r"^prefetch: in \d+ call\(s\) a lone request gave other tokens")
    same = sequential.verdicts == prefetched.verdicts and failed == sorted(changed)
    bitwise = lone == len(changed) and batched == tests - len(changed) and disagreed is None
    found = (f"same verdicts ({len(failed)} failed: the hand-changed)" if same else
             f"verdicts DIFFER (sequential failed {failed}; --llm-prefetch "
             f"{sorted({t for (t, _), s in prefetched.verdicts.items() if s == 'failed'})}; hand-changed "
             f"{sorted(changed)})")
    detail = f"{found}; {gate_detail(tests, changed, sequential, prefetched, batched, lone, cuda)}"
    return Check(name, "passed" if same and (bitwise or not cuda) else "FAILED", detail)


def gate_detail(tests: int, changed: list[str], sequential: GateRun, prefetched: GateRun, batched: int, lone: int,
                cuda: bool) -> str:
    """The speed-up (wall and calls), the requests, and how the unchanged calls were answered."""
    walls = sequential.run.wall, prefetched.run.wall
    calls = sequential.calls or 0.0, prefetched.calls or 0.0
    beyond = lone - len(changed)
    how = (f"VLLM_BATCH_INVARIANT=1, bfloat16, FLASH_ATTN: {beyond} beyond the hand-changed differed from the "
           "golden in the batch (0: batched == lone, bitwise)" if cuda else
           "without VLLM_BATCH_INVARIANT (vLLM's batch-invariant mode is CUDA >= 8.0 / XPU / ROCm only), so the "
           f"verdicts were confirmed by lone requests rather than bitwise: {beyond} unchanged call(s) differed in "
           "the batch and were judged by their lone request")
    return (f"{tests} snapshot tests x {NEW_TOKENS} new tokens on one vLLM server (the engine tests' tiny Qwen2), "
            f"goldens recorded with lone requests, {len(changed)} hand-changed; sequential {walls[0]:.1f} s "
            f"(calls {calls[0]:.2f} s, {sequential.requests} requests), --llm-prefetch {walls[1]:.1f} s (calls "
            f"{calls[1]:.2f} s, {prefetched.requests} requests): {report.ratio(*walls):.2f}x the wall, "
            f"{report.ratio(*calls):.2f}x the calls; {batched} answered from the batch, {lone} generated again "
            f"alone; {how}")
