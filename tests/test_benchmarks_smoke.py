"""The benchmarks' pure helpers work (never their timings: a test must not assert a timing)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from common import cli, report, runner, suites  # noqa: E402


def test_median_of_odd_and_even_counts_and_of_nothing():
    assert report.median([3.0, 1.0, 2.0]) == 2.0
    assert report.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    with pytest.raises(ValueError):
        report.median([])


def test_table_is_markdown_with_aligned_columns():
    table = report.format_table(["run", "wall"], [["plugin enabled", 0.5], ["off", "12.0 ms"]])
    lines = table.splitlines()
    assert lines[0] == "| run            | wall    |"
    assert lines[1] == "|----------------|---------|"
    assert lines[2] == "| plugin enabled | 0.500   |"
    assert len({len(line) for line in lines}) == 1
    with pytest.raises(ValueError):
        report.format_table(["a", "b"], [["only one cell"]])


def test_interleaved_runs_cases_in_turn_and_drops_the_warmup():
    order = []
    counter = iter(range(100))

    def case(name):
        def run():
            order.append(name)
            return next(counter)
        return run

    results = runner.interleaved({"a": case("a"), "b": case("b")}, repeats=2, warmup=1)
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert results == {"a": [2, 4], "b": [3, 5]}


def test_chat_prompts_are_distinct_up_to_500():
    prompts = suites.chat_prompts(500)
    assert len({p[0]["content"] for p in prompts}) == 500
    assert suites.chat_prompts(50) == prompts[:50]
    with pytest.raises(ValueError):
        suites.chat_prompts(501)


def test_collected_count_reads_pytest_output():
    assert suites.collected_count("a\nb\n\n7 tests collected in 0.01s\n") == 7
    assert suites.collected_count("1 test collected in 0.01s") == 1
    assert suites.collected_count("no tests ran") == -1


def test_generated_trivial_suite_has_the_requested_number_of_tests(tmp_path):
    suite = suites.write_trivial_suite(tmp_path / "suite", 7, per_module=3)
    assert len(list(suite.glob("test_*.py"))) == 3
    result = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:llmdet", "-p", "no:cacheprovider"],
                            cwd=suite, capture_output=True, text=True, env=runner.child_env())
    assert suites.collected_count(result.stdout) == 7, result.stdout + result.stderr


def test_generated_snapshot_suites_use_the_same_prompts(tmp_path):
    prompts = suites.chat_prompts(3)
    llmdet = suites.write_llmdet_suite(tmp_path / "llmdet", prompts, tmp_path / "model")
    handrolled = suites.write_handrolled_suite(tmp_path / "handrolled", prompts, tmp_path / "model")
    bare = suites.write_bare_loop(tmp_path / "bare", prompts, tmp_path / "model")
    for module in (llmdet / "test_llmdet_suite.py", handrolled / "test_handrolled_suite.py", bare):
        assert _prompts_of(module) == prompts
    assert "llm_max_new_tokens = 32" in (llmdet / "pytest.ini").read_text(encoding="utf-8")


def _prompts_of(module: Path) -> list:
    tree = ast.parse(module.read_text(encoding="utf-8"))
    value = next(node.value for node in tree.body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PROMPTS")
    return ast.literal_eval(value)


def test_import_benchmark_alternates_the_order_of_each_pair_and_drops_the_warmup(monkeypatch):
    import bench_import

    order = []
    monkeypatch.setattr(runner, "run_command", lambda argv, cwd, env=None: order.append(argv[0]) or argv[0])
    runs = bench_import.paired_runs({"on": ["on"], "off": ["off"]}, Path("."), repeats=3, warmup=1)
    assert order == ["on", "off", "off", "on", "on", "off", "off", "on"]
    assert runs == {"on": ["on"] * 3, "off": ["off"] * 3}


def test_bootstrap_interval_brackets_the_median_and_is_reproducible():
    import bench_import

    values = [0.001 * i for i in range(-20, 41)]
    low, high = bench_import.bootstrap_interval(values)
    assert low < report.median(values) < high
    assert (low, high) == bench_import.bootstrap_interval(values)
    assert bench_import.bootstrap_interval([0.004] * 9) == (0.004, 0.004)


def test_callgrind_total_takes_the_largest_count_and_refuses_output_without_one():
    import bench_import

    stderr = "==12== Collected : 846,074,127\n==10== Events    : Ir\n==10== Collected : 2638335582\n"
    assert bench_import.callgrind_total(stderr) == 2_638_335_582
    with pytest.raises(RuntimeError, match="no instruction count"):
        bench_import.callgrind_total("valgrind: command not found")


def test_realsize_counts_parameters_from_the_safetensors_headers(tmp_path):
    import bench_realsize
    import torch
    from safetensors.torch import save_file

    save_file({"embed": torch.zeros(32, 8), "norm": torch.zeros(8)}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    assert bench_realsize.parameter_count(tmp_path) == 32 * 8 + 8
    prompts = bench_realsize.prompts(10)
    assert len({p[0]["content"] for p in prompts}) == 10 and prompts[0][0]["role"] == "user"


def test_gpu_check_without_cuda_says_so_and_exits_0():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is here: the check itself would run (python benchmarks/gpu_check.py)")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=runner.child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("gpu_check.py needs a CUDA device, and torch sees none here")


def test_gpu_check_fails_only_on_a_check_that_must_pass():
    import gpu_check

    assert gpu_check.Check("strict", "FAILED", "exit 1").failed
    assert not gpu_check.Check("strict", "passed", "").failed
    assert not gpu_check.Check("bf16 probe", "none found", "", must_pass=False).failed
    assert not gpu_check.Check("workers", "skipped", "no xdist", must_pass=False).failed


def _gate_run(failed: list[str], tests: int, batched: int, lone: int, disagreed: int = 0):
    import gpu_prefetch

    statuses = {(f"test_gate.py::test_{n}", "0"): "failed" if f"test_gate.py::test_{n}" in failed else "passed"
                for n in range(tests)}
    output = ("generations: 16 (1.50 s)\n"
              f"prefetch: {tests} recorded call(s) generated at once (1 batch(es), 0.40 s); {batched} answered from "
              f"the batch, {lone} differed from the golden and were generated again alone, 0 unused\n"
              + (f"prefetch: in {disagreed} call(s) a lone request gave other tokens than the batch (x): y\n"
                 if disagreed else ""))
    run = runner.Run(5.0, 1.0, 100.0, 1, output, "")
    line = gpu_prefetch.line_with(run, r"^prefetch: .* generated at once")
    return gpu_prefetch.GateRun(run, statuses, tests + 1, gpu_prefetch.calls_seconds(output), line)


def test_gpu_check_prefetch_gate_passes_on_cuda_only_when_every_unchanged_call_came_from_the_batch():
    import gpu_prefetch

    changed = ["test_gate.py::test_0", "test_gate.py::test_1"]
    sequential = _gate_run(changed, 8, 0, 0)
    exact, variant = _gate_run(changed, 8, 6, 2), _gate_run(changed, 8, 5, 3, disagreed=1)
    assert gpu_prefetch.judge_gate("gate", 8, changed, sequential, exact, cuda=True).result == "passed"
    failed = gpu_prefetch.judge_gate("gate", 8, changed, sequential, variant, cuda=True)
    assert failed.failed and "1 beyond the hand-changed differed" in failed.detail
    on_cpu = gpu_prefetch.judge_gate("gate", 8, changed, sequential, variant, cuda=False)
    assert on_cpu.result == "passed" and "confirmed by lone requests rather than bitwise" in on_cpu.detail


def test_gpu_check_prefetch_gate_fails_on_other_verdicts_or_no_prefetch_line():
    import gpu_prefetch

    changed = ["test_gate.py::test_0"]
    sequential = _gate_run(changed, 4, 0, 0)
    other = _gate_run(["test_gate.py::test_2"], 4, 3, 1)
    assert "verdicts DIFFER" in gpu_prefetch.judge_gate("gate", 4, changed, sequential, other, cuda=False).detail
    silent = gpu_prefetch.GateRun(sequential.run, sequential.verdicts, 5, 1.5, None)
    assert gpu_prefetch.judge_gate("gate", 4, changed, sequential, silent, cuda=True).failed


def test_gpu_check_skips_the_prefetch_gate_without_vllm(tmp_path, monkeypatch):
    import gpu_prefetch

    monkeypatch.setattr(gpu_prefetch.importlib.util, "find_spec", lambda name: None)
    check = gpu_prefetch.prefetch_gate(tmp_path, "cuda")
    assert check.result == "skipped" and not check.failed and "pip install vllm" in check.detail


def test_gpu_check_only_names_step_numbers():
    import gpu_check

    assert gpu_check.selected_steps(None) == [1, 2, 3, 4, 5, 6]
    assert gpu_check.selected_steps("6,1") == [1, 6]
    for wrong in ("7", "gate", ""):
        with pytest.raises(SystemExit, match="give step numbers 1 to 6"):
            gpu_check.selected_steps(wrong)


def test_workdir_is_removed_afterwards_also_on_failure():
    with runner.workdir("smoke") as work:
        (work / "file").write_text("x", encoding="utf-8")
    assert not work.exists()
    with pytest.raises(RuntimeError), runner.workdir("smoke") as failing:
        raise RuntimeError("a benchmark failed")
    assert not failing.exists()


def test_raw_figures_and_medians_of_runs():
    runs = {"a": [runner.Run(1.0, 0.5, 100.0, 0, "", ""), runner.Run(3.0, 1.5, 300.0, 0, "", "")]}
    assert report.raw_runs(runs) == {"a": [{"wall": 1.0, "cpu": 0.5, "max_rss_mb": 100.0},
                                           {"wall": 3.0, "cpu": 1.5, "max_rss_mb": 300.0}]}
    assert report.medians(runs, "wall") == {"a": 2.0}
    assert report.medians(runs, "max_rss_mb") == {"a": 200.0}


def test_cli_main_stores_the_section_under_its_name_and_prints_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "QUICK_RESULTS", tmp_path / "results-quick.json")
    monkeypatch.setattr(sys, "argv", ["bench_smoke.py", "--quick", "--threads", "3"])
    monkeypatch.setattr(runner, "TORCH_THREADS", runner.TORCH_THREADS)
    seen = []

    def measure(quick):
        seen.append((quick, runner.TORCH_THREADS))
        return report.make_section("Smoke", "none", ["case", "wall"], [["a", 0.5]], (0.0, 0.0, 0.0))

    cli.main("smoke", "A smoke benchmark.\n\nMore.", measure)
    assert seen == [(True, 3)]
    data = json.loads((tmp_path / "results-quick.json").read_text(encoding="utf-8"))
    assert data["benchmarks"]["smoke"]["rows"] == [["a", "0.500"]]
    assert data["machine"]["torch_threads"] == 3
    assert capsys.readouterr().out.startswith("### Smoke\n\nGoal: none")


def test_the_old_flat_names_of_common_still_resolve_to_the_split_modules():
    import common

    assert common.run_command is runner.run_command
    assert common.save_section is report.save_section
    assert common.write_llmdet_suite is suites.write_llmdet_suite
    assert common.standard_arguments is cli.arguments
    assert common.TORCH_THREADS == runner.TORCH_THREADS
    with pytest.raises(AttributeError):
        common.no_such_name  # noqa: B018


def test_generated_rerun_suite_holds_a_warmup_and_one_test_per_variant_and_repeat(tmp_path):
    suite = suites.write_rerun_suite(tmp_path / "suite", tmp_path / "model", repeats=2, runs=(1, 3),
                                     prompts_per_test=2)
    result = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "pytest_llmdet.plugin",
                             "-p", "no:cacheprovider"], cwd=suite, capture_output=True, text=True,
                            env=runner.child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
                                                 LLMDET_BENCH_OUT=str(tmp_path / "out.json")))
    assert suites.collected_count(result.stdout) == 1 + 2 * 3, result.stdout + result.stderr
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8")) == {"durations": {}, "executions": {}}
    assert "test_reruns.py::test_runs3_1" in result.stdout
    assert "llm_max_new_tokens = 32" in (suite / "pytest.ini").read_text(encoding="utf-8")


def test_the_prefetch_benchmark_reads_the_time_spent_on_calls_and_changes_goldens(tmp_path):
    import json

    import bench_prefetch

    out = ("generations: 100 (0.52 s)\nprefetch: 100 recorded call(s) generated at once (1 batch(es), 2.10 s); "
           "100 answered from the batch\n")
    assert bench_prefetch.calls_seconds(out) == 2.62
    assert bench_prefetch.calls_seconds("generations: 5 (1.00 s)\n") == 1.0  # sequential: no prefetch line
    assert bench_prefetch.calls_seconds("no summary") is None
    folder = tmp_path / "__llm_snapshots__" / "test_s"
    folder.mkdir(parents=True)
    for name, first in (("a", 5), ("b", 999), ("c", 7)):
        (folder / f"{name}.json").write_text(json.dumps({"test": f"t::{name}", "snapshots": {"0": {
            "token_ids": [first, 1]}}}))
    assert bench_prefetch.change_goldens(tmp_path, 2) == ["t::a", "t::b"]
    changed = [json.loads((folder / f"{n}.json").read_text())["snapshots"]["0"]["token_ids"][0] for n in "abc"]
    assert changed[0] != 5 and changed[1] != 999 and changed[2] == 7


def test_memory_benchmark_takes_each_rounds_ratio_to_its_own_bare_call():
    import bench_memory

    memory = {name: [{"growth_mb": 1.0, "peak_mb": 100.0 + (name == bench_memory.OLD) * 50, "wall": 2.0,
                      "token_sum": 7}] for name in bench_memory.VARIANTS}
    walls = {"bare": [1.0, 2.0, 4.0], "plugin": [1.04, 2.08, 4.16], "plugin-topk": [1.2, 2.4, 4.8],
             "old": [3.0, 6.0, 12.0]}
    timing = {variant: {"wall": values, "cpu": values, "token_sums": [7, 7, 7]} for variant, values in walls.items()}
    timing["recorder_cpu"] = {"plugin": [0.03, 0.02, 0.5], "plugin-topk": [0.04, 0.04, 0.04]}
    rows, ratios, note = bench_memory.summarise(65536, memory, timing, 512)
    assert ratios["shipped_wall_65536"] == pytest.approx(1.04) and ratios["top_k_wall_65536"] == pytest.approx(1.2)
    assert ratios["old_peak_65536"] == 1.5 and ratios["shipped_peak_65536"] == 1.0
    assert "shipped_wall_65536 1.040x: met" in note and "top_k_wall_65536 1.200x: MISSED" in note
    assert [row[1] for row in rows] == list(bench_memory.VARIANTS) and rows[1][6] == "1.040x"
    assert [row[8] for row in rows] == ["—", "+1.5%", "+2.0%", "—"]  # the median against the bare call's 2.0 s
    timing["plugin"]["token_sums"] = [7, 8, 7]  # a call that generated other tokens
    with pytest.raises(RuntimeError, match="same 512 tokens"):
        bench_memory.summarise(65536, memory, timing, 512)
