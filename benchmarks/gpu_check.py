"""The GPU check: what only a CUDA machine can show, in one command and a few minutes, printed as a table.

1. identical re-runs under `llm_deterministic_algorithms = strict`: 5 prompts x 64 new tokens in float32 on
   cuda, each test run 3 times (`llm_determinism(runs=3)`) while recording golden files, then checked by a fresh
   process (`--llm-snapshot`, 3 runs again): no op may raise, and every run must give the same tokens;
2. bf16 batch variance found by the batch probe: 20 prompts in bfloat16 on cuda, each also generated inside a
   left-padded batch of 4 (`llm_determinism(runs=1, batch=4)`), on the embedded model and on a random Qwen2
   (hidden 512, 4 layers): how many prompts changed in a batch;
3. the compute-capability variant key: golden files recorded on the CPU in float32, then on cuda in bfloat16
   with `--llm-snapshot-variant` (a variant is recorded where the output differs), then checked on cuda in
   bfloat16; and a fingerprint recorded on cuda holds `compute_capability`;
4. per-worker devices with `-n 2` and `llm_device = auto`: worker gwK on cuda:(K mod the device count), and the
   load summary saying so (needs pytest-xdist);
5. peak GPU memory of one 512-token call on a 65,536-token vocabulary (bench_memory.py's model and measuring
   process, on cuda): `LLM.generate` against a bare `model.generate` and the old `output_scores=True` path,
   from `torch.cuda.max_memory_allocated`. Goal: at most 1.05x;
6. the prefetch gate on a batch-invariant engine: a vLLM server of the engine tests' tiny Qwen2 started with
   `VLLM_BATCH_INVARIANT=1` (bfloat16, the FLASH_ATTN attention backend, which supports that mode), a gate of
   64 snapshot tests recorded on the openai engine with lone requests, 4 goldens hand-changed, then checked
   sequentially and with `--llm-prefetch`: the same verdicts (the 4 changed tests fail), and the prefetch's
   summary line saying that no call beyond the 4 differed from the golden and was generated again alone (every
   unchanged call answered from the batch: batched == lone, bitwise); the speed-up of the wall and of the calls.
   Needs vLLM in this interpreter (without it the step is skipped). With --cpu: 16 tests, and the server runs
   without the variable (vLLM's batch-invariant mode is CUDA >= 8.0, XPU or ROCm only), so the verdicts are
   confirmed by lone requests rather than bitwise. The step is benchmarks/gpu_prefetch.py.

    python benchmarks/gpu_check.py           # needs CUDA: without it, says so and exits 0
    python benchmarks/gpu_check.py --cpu     # the same steps on the CPU: checks the script, not a GPU
    python benchmarks/gpu_check.py --only 6  # only these steps (comma-separated); the table is not saved then

Exit status 1 when a check that must pass failed (1, 3, 4, 5, 6); finding no batch variance (2) is a result, not
a failure, and a step skipped for want of pytest-xdist (4) or vLLM (6) is no failure either. The figures also go
to benchmarks/results.json (section "gpu").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench_memory import BARE, MMAP_THRESHOLD, OLD, PLUGIN, build_model, child_result
from common import report, runner, suites
from common.checks import Check, line_with, tail
from common.runner import Run
from gpu_prefetch import prefetch_gate

GOAL = 1.05
PROMPTS = ["Once upon a time", "The fox and the crow", "Alice was beginning to get very tired",
           "The king said to the queen", "In a hole in the ground there lived"]
PROBE_PROMPTS = [f"{start} {subject}" for start in ("Tell me about", "Once there was", "Why did", "Where is")
                 for subject in ("a fox", "the queen", "a little mermaid", "the giant", "an old woman")]


def pytest_run(folder: Path, *args: str) -> Run:
    """`pytest -q` in `folder` with the plugin, other plugins too (xdist), no cache; never raises on failure."""
    argv = runner.pytest_argv("-q", "-p", "no:cacheprovider", *args)
    return runner.run_command(argv, folder, env=runner.child_env(), check=False)


def suite(folder: Path, body: str) -> Path:
    """A rootdir of its own with one test module."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (folder / "test_gpu.py").write_text(body, encoding="utf-8")
    return folder


# -- the checks ---------------------------------------------------------------------------------------------


def strict_reruns(work: Path, device: str, model: Path) -> Check:
    folder = suite(work / "strict", (
        "import pytest\n\n"
        f"PROMPTS = {PROMPTS!r}\n\n\n"
        "@pytest.mark.llm_determinism(runs=3)\n"
        "@pytest.mark.parametrize('prompt', PROMPTS)\n"
        "def test_rerun(llm, llm_snapshot, prompt):\n"
        "    assert llm.generate(prompt, max_new_tokens=64) == llm_snapshot\n"))
    options = ("--llm-model", str(model), "--llm-device", device, "--llm-deterministic-algorithms", "strict")
    record = pytest_run(folder, "--llm-snapshot-update", *options)
    check = pytest_run(folder, "--llm-snapshot", *options)
    name = "identical re-runs, llm_deterministic_algorithms=strict"
    verdicts = [line_with(run, r"\d+ checked, \d+ deterministic") for run in (record, check)]
    expected = f"{len(PROMPTS)} checked, {len(PROMPTS)} deterministic, 0 nondeterministic"
    if record.returncode or check.returncode or any(v != expected for v in verdicts):
        failed = record if record.returncode else check
        return Check(name, "FAILED", f"exit {record.returncode}/{check.returncode}: {tail(failed)}")
    return Check(name, "passed", f"{len(PROMPTS)} prompts x 64 tokens, float32: 3 runs each while recording, 3 "
                 "more in a second process checking the golden files: the same tokens, no op refused")


def batch_variance(work: Path, device: str, models: dict[str, Path]) -> Check:
    body = ("import pytest\n\n"
            f"PROMPTS = {PROBE_PROMPTS!r}\n\n\n"
            "@pytest.mark.llm_determinism(runs=1, batch=4)\n"
            "@pytest.mark.parametrize('prompt', PROMPTS)\n"
            "def test_probe(llm, prompt):\n"
            "    llm.generate(prompt, max_new_tokens=32)\n")
    found, parts = 0, []
    for label, model in models.items():
        run = pytest_run(suite(work / f"probe-{label}", body), "--llm-model", str(model), "--llm-device", device,
                         "--llm-dtype", "bfloat16")
        verdict = line_with(run, r"\d+ checked, \d+ deterministic")
        match = re.search(r"(\d+) nondeterministic", verdict or "")
        if match is None:
            return Check("bf16 batch variance found by the probe", "FAILED", f"{label}: {tail(run)}")
        found += int(match.group(1))
        positions = sorted({int(p) for p in re.findall(r"diverges at token (\d+) in a left-padded", run.stdout)})
        parts.append(f"{label}: {match.group(1)} of {len(PROBE_PROMPTS)} prompts changed in a batch of 4"
                     + (f" (first divergences at token {', '.join(map(str, positions))}, of the 10 worst listed)"
                        if positions else ""))
    return Check("bf16 batch variance found by the probe", "found" if found else "none found",
                 "; ".join(parts) + "; 32 new tokens", must_pass=False)


def variant_key(work: Path, device: str, model: Path) -> Check:
    import torch

    name = "compute-capability variant key recorded"
    cuda = device.startswith("cuda")
    from pytest_llmdet.engines.fingerprint import cpu_capability

    # --cpu: the same steps; the key then names the CPU's instruction set
    capability = "{}.{}".format(*torch.cuda.get_device_capability(0)) if cuda else cpu_capability()
    key = f"{'cuda' if cuda else 'cpu'}:bfloat16:{capability}"
    body = ("import pytest\n\n"
            f"PROMPTS = {PROBE_PROMPTS[:6]!r}\n\n\n"
            "@pytest.mark.parametrize('prompt', PROMPTS)\n"
            "def test_story(llm, llm_snapshot, prompt):\n"
            "    assert llm.generate(prompt, max_new_tokens=32) == llm_snapshot\n")
    folder = suite(work / "variants", body)
    runs = [pytest_run(folder, "--llm-snapshot-update", "--llm-model", str(model), "--llm-device", "cpu"),
            pytest_run(folder, "--llm-snapshot-update", "--llm-snapshot-variant", "--llm-model", str(model),
                       "--llm-device", device, "--llm-dtype", "bfloat16"),
            pytest_run(folder, "--llm-snapshot", "--llm-model", str(model), "--llm-device", device,
                       "--llm-dtype", "bfloat16")]
    on_cuda = suite(work / "fingerprint", body)
    if cuda:
        runs.append(pytest_run(on_cuda, "--llm-snapshot-update", "--llm-model", str(model), "--llm-device", device))
    failed = next((run for run in runs if run.returncode), None)
    if failed is not None:
        return Check(name, "FAILED", tail(failed))
    keys = [k for path in (folder / "__llm_snapshots__").rglob("*.json")
            for entry in json.loads(path.read_text(encoding="utf-8"))["snapshots"].values()
            for k in entry.get("variants", {})]
    capabilities = {json.loads(p.read_text(encoding="utf-8"))["fingerprint"].get("compute_capability")
                    for p in (on_cuda / "__llm_snapshots__").rglob("*.json")} if cuda else {capability}
    if set(keys) - {key} or capabilities != {capability}:
        return Check(name, "FAILED", f"variant keys {sorted(set(keys))}, fingerprint compute_capability "
                     f"{sorted(map(str, capabilities))}; expected {key} and {capability}")
    recorded = (f"{key} recorded for {len(keys)} of 6 snapshots (the others equal the CPU float32 default)"
                if keys else f"no variant needed: all 6 outputs in bfloat16 on {device} equal the CPU float32 ones")
    fingerprint = (f"a fingerprint recorded on cuda holds compute_capability {capability}" if cuda
                   else "no compute capability on the CPU")
    return Check(name, "passed", f"{recorded}; the bf16 check on {device} passes against them; {fingerprint}")


def worker_devices(work: Path, device: str, model: Path) -> Check:
    import torch

    name = "per-worker device, -n 2, llm_device=auto"
    try:
        import xdist  # noqa: F401
    except ImportError:
        return Check(name, "skipped", "pytest-xdist is not installed (pip install pytest-xdist)", must_pass=False)
    count = torch.cuda.device_count() if device.startswith("cuda") else 0
    out = work / "workers"
    out.mkdir()
    folder = suite(work / "xdist", (
        "import json, os, pathlib\nimport pytest\n\n\n"
        "@pytest.mark.parametrize('n', range(4))\n"
        "def test_where(llm, n):\n"
        "    llm.generate('Once upon a time', max_new_tokens=4)\n"
        "    worker = os.environ['PYTEST_XDIST_WORKER']\n"
        f"    pathlib.Path({str(out)!r}, worker).write_text(json.dumps(llm.device))\n"))
    run = pytest_run(folder, "-n", "2", "--llm-model", str(model), "--llm-device", "auto")
    if run.returncode:
        return Check(name, "FAILED", tail(run))
    seen = {path.name: json.loads(path.read_text(encoding="utf-8")) for path in out.iterdir()}
    expected = {worker: (f"cuda:{int(worker[2:]) % count}" if count else "cpu") for worker in seen}
    summary = [line.strip() for line in run.stdout.splitlines() if re.match(r"\s+gw\d+: ", line)]
    if seen != expected or len(seen) != 2 or not all(seen[line.split(":")[0]] in line for line in summary):
        return Check(name, "FAILED", f"workers used {seen}, expected {expected}; summary {summary}")
    return Check(name, "passed", f"{', '.join(f'{w} {d}' for w, d in sorted(seen.items()))} ({count} CUDA "
                 f"device(s)); the summary: {'; '.join(summary)}")


def peak_memory(work: Path, device: str) -> Check:
    name = "peak GPU memory, one 512-token call, vocab 65,536"
    model = build_model(work / "memory-model")
    env = runner.child_env(MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
    results = {label: child_result(variant, model, 512, env, device=device)
               for label, variant in ((BARE, "bare"), (PLUGIN, "plugin"), (OLD, "old"))}
    if len({r["token_sum"] for r in results.values()}) != 1 or {r["tokens"] for r in results.values()} != {512}:
        return Check(name, "FAILED", f"the variants did not generate the same 512 tokens: {results}")
    shipped, old = (report.ratio(results[label]["peak_mb"], results[BARE]["peak_mb"]) for label in (PLUGIN, OLD))
    unit = "allocated by torch" if device.startswith("cuda") else "RSS (the CPU: not a GPU figure)"
    detail = (f"peak {unit}: bare {results[BARE]['peak_mb']:.1f} MB, LLM.generate {results[PLUGIN]['peak_mb']:.1f} "
              f"MB ({shipped:.3f}x; +{results[PLUGIN]['growth_mb']:.1f} MB during the call against "
              f"+{results[BARE]['growth_mb']:.1f}), old output_scores path {results[OLD]['peak_mb']:.1f} MB "
              f"({old:.3f}x); goal <= {GOAL}x")
    return Check(name, "passed" if shipped <= GOAL else "FAILED", detail)


# -- the run -------------------------------------------------------------------------------------------------


def describe_device(device: str) -> str:
    import torch

    if not device.startswith("cuda"):
        return "the CPU (--cpu: a check of the script, not of a GPU)"
    major, minor = torch.cuda.get_device_capability(0)
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    return (f"{torch.cuda.device_count()} x {', '.join(names)} (compute capability {major}.{minor}), CUDA "
            f"{torch.version.cuda}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}")


STEPS = ("strict re-runs", "bf16 batch probe", "variant key", "workers", "peak memory", "prefetch gate")


def step_functions(work: Path, device: str) -> list[Callable[[], Check]]:
    """Steps 1 to 6, in STEPS' order; each builds its models when it runs."""
    def embedded() -> Path:
        folder = work / "embedded"
        return folder if folder.exists() else suites.copy_embedded_model(folder)

    def probe() -> Check:
        runner.log("  building a random Qwen2 (hidden 512, 4 layers) for the batch probe ...")
        random_model = build_model(work / "random", vocab=4096, hidden=512, layers=4, heads=8, kv_heads=2)
        return batch_variance(work, device, {"embedded": embedded(), "random Qwen2": random_model})

    return [lambda: strict_reruns(work, device, embedded()), probe, lambda: variant_key(work, device, embedded()),
            lambda: worker_devices(work, device, embedded()), lambda: peak_memory(work, device),
            lambda: prefetch_gate(work, device)]


def selected_steps(only: str | None) -> list[int]:
    """The step numbers `--only` names (comma-separated, 1 to 6); every step without it."""
    if only is None:
        return list(range(1, len(STEPS) + 1))
    try:
        steps = sorted({int(part) for part in only.split(",")})
    except ValueError:
        steps = []
    if not steps or not all(1 <= step <= len(STEPS) for step in steps):
        raise SystemExit(f"gpu_check.py: --only {only!r}: give step numbers 1 to {len(STEPS)}, comma-separated "
                         f"(e.g. --only 6): {', '.join(f'{n} {label}' for n, label in enumerate(STEPS, 1))}")
    return steps


def run_steps(device: str, steps: list[int]) -> list[Check]:
    checks: list[Check] = []
    with runner.workdir("gpu-check") as work:
        functions = step_functions(work, device)
        for number in steps:
            runner.log(f"{number}. {STEPS[number - 1]} ...")
            checks.append(functions[number - 1]())
            runner.log(f"  {checks[-1].result}: {checks[-1].detail}")
    return checks


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the same steps on the CPU (checks the script)")
    parser.add_argument("--only", metavar="STEPS", help="run only these steps, comma-separated numbers (e.g. 6); "
                        "the table is then not saved to results.json")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    steps = selected_steps(args.only)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA device, and torch sees none here (torch.cuda.is_available() is False, "
              f"torch {torch.__version__}): nothing was checked. Run it on a machine with an NVIDIA GPU and a CUDA "
              "build of torch.")
        return 0
    device = "cpu" if args.cpu else "cuda"
    started = time.perf_counter()
    checks = run_steps(device, steps)
    info = report.machine_info()
    print(f"GPU check, {info['date']}: {describe_device(device)}; torch {info['torch']}, transformers "
          f"{info['transformers']}, Python {info['python']}; {time.perf_counter() - started:.0f} s\n")
    rows = [[c.name, c.result, c.detail] for c in checks]
    print(report.format_table(["check", "result", "detail"], rows))
    if args.only is None:
        report.save_section("gpu" if not args.cpu else "gpu-on-cpu", {
            "title": "GPU check", "date": info["date"], "device": describe_device(device),
            "headers": ["check", "result", "detail"], "rows": rows,
            "seconds": round(time.perf_counter() - started, 1)}, quick=args.cpu)
    return 1 if any(c.failed for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
