"""What every benchmark shares; a benchmark script holds only what it measures.

A benchmark is `benchmarks/bench_<name>.py`, run as a script (its folder is then on the import path):

    from common import cli, report, runner, suites


    def measure(tests: int, repeats: int) -> dict[str, Any]:
        load_before = runner.load_average()
        with runner.workdir("name") as work:             # a temporary folder, removed afterwards
            suite = suites.write_llmdet_suite(work / "suite", suites.chat_prompts(tests),
                                              suites.copy_embedded_model(work / "model"))
            argv = runner.pytest_argv("-q", "-p", "pytest_llmdet.plugin", "--llm-snapshot")
            env = runner.child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
            runs = runner.interleaved({"check": lambda: runner.run_command(argv, suite, env=env)}, repeats,
                                      progress=runner.log)
        wall = report.medians(runs, "wall")
        rows = [[name, report.seconds(wall[name]), len(values)] for name, values in runs.items()]
        return report.make_section("Title", "the goal", ["case", "wall (median)", "runs"], rows, load_before,
                                   ["a note"], raw=report.raw_runs(runs))


    def main() -> None:
        cli.main("name", __doc__, lambda quick: measure(tests=5 if quick else 50, repeats=1 if quick else 5))


    if __name__ == "__main__":
        main()

`cli.main` parses `--quick` and `--threads`, calls `measure(quick)`, stores the section under its name in
benchmarks/results.json (results-quick.json with `--quick`) and prints it; run_all.py runs every script so.

The modules, each one job (none imports torch or transformers at import time):

- `runner`: running and timing. `child_env(**extra)` (the measured processes' environment: this checkout
  first, bytecode cached in PYCACHE_PREFIX, `TORCH_THREADS` torch threads), `run_command(argv, cwd, env,
  check)` -> `Run` (wall, cpu, max_rss_mb, returncode, stdout, stderr; `CommandFailed` on an error exit),
  `pytest_argv(*args)`, `interleaved(cases, repeats, warmup, progress)` (A B C A B C ..., warm-up rounds
  dropped), `workdir(prefix)` (a context manager; `new_workdir` where the caller removes it), `load_average()`,
  `log(message)` (stderr), `REPO`, `TORCH_THREADS` (read it as `runner.TORCH_THREADS`: `--threads` sets it).
- `report`: figures and the results file. `median`, `medians(runs, "wall")`, `ratio`, `seconds`, `verdict`,
  `raw_runs(runs)` (the `raw` figures: wall, cpu, max_rss_mb per run), `format_table`, `make_section(title,
  goal, headers, rows, load_before, notes, **extra)`, `render_section`, `print_section`, `save_section(name,
  section, quick)`, `machine_info`, `machine_line`, `results_path`, `read_json`, `write_json`.
- `cli`: `arguments(description)` (`--quick`, `--threads`) and `main(name, doc, measure)`.
- `suites`: the generated suites and what is read back from them. `chat_prompts(count)` (up to 500 distinct),
  `copy_embedded_model(folder)`, `write_trivial_suite`, `write_llmdet_suite`, `write_handrolled_suite`,
  `write_bare_loop`, `write_rerun_suite`, `add_hash_counter`, `collected_count(output)`,
  `llmdet_golden_texts(folder)`, `EMBEDDED_MODEL_DIR`, `MAX_NEW_TOKENS`.
- `checks`: the rows of gpu_check.py's table. `Check(name, result, detail, must_pass)` (`.failed`: a row that
  must pass and did not), `tail(run)` (the end of a run's output, on one line), `line_with(run, pattern)`.
- `old_margins`: `token_statistics(scores, new_ids, top_k)`, the old path's figures over kept scores (imports
  torch when called).

Scripts written before this split imported the names flat (`from common import run_command`); those still
resolve, to the same objects, so that branches in flight merge; new code imports the modules.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_MODULES = ("runner", "report", "cli", "suites", "old_margins")
_RENAMED = {"standard_arguments": ("cli", "arguments")}


def __getattr__(name: str) -> Any:
    """A module of the kit, or a flat name of the old single module `common` (`common.run_command`, ...)."""
    if name in _MODULES:
        return import_module(f"{__name__}.{name}")
    module_name, attribute = _RENAMED.get(name, (None, name))
    for candidate in (module_name,) if module_name else _MODULES:
        module = import_module(f"{__name__}.{candidate}")
        if not attribute.startswith("_") and hasattr(module, attribute):
            return getattr(module, attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
