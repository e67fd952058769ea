"""The benchmarks' pure helpers work (never their timings: a test must not assert a timing)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import common  # noqa: E402


def test_median_of_odd_and_even_counts_and_of_nothing():
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    with pytest.raises(ValueError):
        common.median([])


def test_table_is_markdown_with_aligned_columns():
    table = common.format_table(["run", "wall"], [["plugin enabled", 0.5], ["off", "12.0 ms"]])
    lines = table.splitlines()
    assert lines[0] == "| run            | wall    |"
    assert lines[1] == "|----------------|---------|"
    assert lines[2] == "| plugin enabled | 0.500   |"
    assert len({len(line) for line in lines}) == 1
    with pytest.raises(ValueError):
        common.format_table(["a", "b"], [["only one cell"]])


def test_interleaved_runs_cases_in_turn_and_drops_the_warmup():
    order = []
    counter = iter(range(100))

    def case(name):
        def run():
            order.append(name)
            return next(counter)
        return run

    results = common.interleaved({"a": case("a"), "b": case("b")}, repeats=2, warmup=1)
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert results == {"a": [2, 4], "b": [3, 5]}


def test_chat_prompts_are_distinct_up_to_500():
    prompts = common.chat_prompts(500)
    assert len({p[0]["content"] for p in prompts}) == 500
    assert common.chat_prompts(50) == prompts[:50]
    with pytest.raises(ValueError):
        common.chat_prompts(501)


def test_collected_count_reads_pytest_output():
    assert common.collected_count("a\nb\n\n7 tests collected in 0.01s\n") == 7
    assert common.collected_count("1 test collected in 0.01s") == 1
    assert common.collected_count("no tests ran") == -1


def test_generated_trivial_suite_has_the_requested_number_of_tests(tmp_path):
    suite = common.write_trivial_suite(tmp_path / "suite", 7, per_module=3)
    assert len(list(suite.glob("test_*.py"))) == 3
    result = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:llmdet", "-p", "no:cacheprovider"],
                            cwd=suite, capture_output=True, text=True, env=common.child_env())
    assert common.collected_count(result.stdout) == 7, result.stdout + result.stderr


def test_generated_snapshot_suites_use_the_same_prompts(tmp_path):
    prompts = common.chat_prompts(3)
    llmdet = common.write_llmdet_suite(tmp_path / "llmdet", prompts, tmp_path / "model")
    handrolled = common.write_handrolled_suite(tmp_path / "handrolled", prompts, tmp_path / "model")
    bare = common.write_bare_loop(tmp_path / "bare", prompts, tmp_path / "model")
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
    monkeypatch.setattr(bench_import, "run_command", lambda argv, cwd, env=None: order.append(argv[0]) or argv[0])
    runs = bench_import.paired_runs({"on": ["on"], "off": ["off"]}, Path("."), repeats=3, warmup=1)
    assert order == ["on", "off", "off", "on", "on", "off", "off", "on"]
    assert runs == {"on": ["on"] * 3, "off": ["off"] * 3}


def test_bootstrap_interval_brackets_the_median_and_is_reproducible():
    import bench_import

    values = [0.001 * i for i in range(-20, 41)]
    low, high = bench_import.bootstrap_interval(values)
    assert low < common.median(values) < high
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
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=common.child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("gpu_check.py needs a CUDA device, and torch sees none here")


def test_gpu_check_fails_only_on_a_check_that_must_pass():
    import gpu_check

    assert gpu_check.Check("strict", "FAILED", "exit 1").failed
    assert not gpu_check.Check("strict", "passed", "").failed
    assert not gpu_check.Check("bf16 probe", "none found", "", must_pass=False).failed
    assert not gpu_check.Check("workers", "skipped", "no xdist", must_pass=False).failed


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
