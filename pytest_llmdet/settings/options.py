"""The one table of the plugin's options: each a flag (`--llm-...`), an ini option (`llm_...`) or both, with its
help, default and parser (settings/values.py). plugin.py registers them, settings.resolve reads them, the
re-record command repeats those that shape outputs, and docs/llm-fixture.md shows them as a table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_llmdet.settings.values import (
    API_KEY_ENV_DEFAULT,
    CONCURRENCY_DEFAULT,
    DEVICE_MAPS,
    DTYPES,
    ENGINES,
    FACTOR_WORDS,
    NEAR_TIE_DEFAULT,
    REQUEST_TIMEOUT_DEFAULT,
    RUNS_DEFAULT,
    SNAPSHOT_DIR_DEFAULT,
    TOP_K_DEFAULT,
    Record,
    parse_base_url,
    parse_bool,
    parse_compare,
    parse_concurrency,
    parse_count,
    parse_deterministic_algorithms,
    parse_device,
    parse_device_map,
    parse_dtype,
    parse_engine,
    parse_engine_args,
    parse_env_name,
    parse_factors,
    parse_near_tie,
    parse_seed,
    parse_snapshot_dir,
    parse_threads,
    parse_timeout,
    parse_top_k,
)


class Option(Record):
    """One option of the plugin: its name, help, default and parser, and whether it is a flag (`--llm-...`),
    an ini option (`llm_...`) or both (the flag wins). A switch is a flag without a value.

    The value types that pytest needs at startup are Records (settings/values.py), not dataclasses or
    typing.NamedTuples: those cost about 0.5 and 0.3 ms to define, and every pytest run in a project with the
    plugin installed pays it."""

    name: str
    help: str
    default: Any
    parse: Callable[[str], Any]
    has_flag: bool = True
    has_ini: bool = True
    switch: bool = False
    metavar: str = "VALUE"

    @property
    def ini(self) -> str:
        return f"llm_{self.name}"

    @property
    def flag(self) -> str:
        return "--llm-" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return f"llmdet_{self.name}"


OPTIONS: tuple[Option, ...] = (
    Option("model", "model to test: a hub id or a local directory (default: the embedded tiny model)",
           None, str),
    Option("dtype", f"model dtype: {', '.join(DTYPES)} (default float32)", "float32", parse_dtype),
    Option("device", "device: cpu, auto (CUDA when available), cuda, cuda:N, mps (default cpu)", "cpu",
           parse_device),
    Option("device_map", "load through accelerate's device map, spread over the visible devices: "
           f"{', '.join(DEVICE_MAPS)} (default: off, the whole model on llm_device; needs accelerate)", None,
           parse_device_map),
    Option("engine", f"what generates: {', '.join(ENGINES)} (default transformers; vllm needs "
           "pytest-llmdet[vllm], openai a running server and pytest-llmdet[openai])", "transformers", parse_engine,
           metavar="ENGINE"),
    Option("base_url", "with --llm-engine openai: the server's OpenAI-compatible API, such as "
           "http://127.0.0.1:8000/v1", None, parse_base_url, metavar="URL"),
    Option("served_model", "with --llm-engine openai: the name the server serves the model under (default: the "
           "served model named like llm_model)", None, str, metavar="NAME"),
    Option("api_key_env", f"with --llm-engine openai: the environment variable that holds the API key (default "
           f"{API_KEY_ENV_DEFAULT}; the key is never written anywhere)", API_KEY_ENV_DEFAULT, parse_env_name,
           metavar="NAME"),
    Option("request_timeout", f"with --llm-engine openai: seconds a request to the server may take (default "
           f"{REQUEST_TIMEOUT_DEFAULT:g})", REQUEST_TIMEOUT_DEFAULT, parse_timeout, metavar="SECONDS"),
    Option("vllm_args", "with --llm-engine vllm: arguments of vllm.LLM as key=value pairs, such as "
           "\"tensor_parallel_size=2 max_model_len=2048 enforce_eager=true\"", (), parse_engine_args,
           metavar="PAIRS"),
    Option("prefetch", "with --llm-snapshot on the vllm or openai engine: send every recorded call of the selected "
           "tests' golden files at once when the model is first needed, and answer each call that matches one "
           "from that batch (a result that differs from its golden is confirmed by a lone request; docs: Engines, "
           "Prefetch)", False, parse_bool, switch=True),
    Option("concurrency", f"with --llm-prefetch on the openai engine: requests in flight to the server at once "
           f"(default {CONCURRENCY_DEFAULT})", CONCURRENCY_DEFAULT, parse_concurrency, metavar="N"),
    Option("seed", "seed for python, numpy and torch before each test and each generate: 0 to 2**32-1 "
           "(default 0)", 0, parse_seed),
    Option("max_new_tokens", "new tokens per generate call (default 32)", 32, parse_count),
    Option("trust_remote_code", "allow model repositories to run their own code (default false)", False,
           parse_bool),
    Option("threads", "torch intra-op thread count: 1 to 4 x the CPU count (default: torch's own)", None,
           parse_threads),
    Option("inherit_processors",
           "keep the model's deterministic logits processors such as repetition_penalty (default true)",
           True, parse_bool),
    Option("deterministic_algorithms",
           "torch.use_deterministic_algorithms: warn, strict or off (default warn)", "warn",
           parse_deterministic_algorithms),
    # golden files
    Option("snapshot", "compare outputs with the golden files (the CI gate)", False, parse_bool,
           has_ini=False, switch=True),
    Option("snapshot_update", "record missing and changed golden snapshots, delete unused ones (instead of "
           "--llm-snapshot)", False, parse_bool, has_ini=False, switch=True),
    Option("snapshot_details", "list every snapshot and its outcome in the summary", False, parse_bool,
           has_ini=False, switch=True),
    Option("snapshot_review", "a review run: compare every snapshot of every test without stopping at the first "
           "difference, keep each changed one as a pending file (also in CI) and fail the test at its end listing "
           "them (implies --llm-snapshot); then: python -m pytest_llmdet review", False, parse_bool, has_ini=False,
           switch=True),
    Option("snapshot_variant", "with --llm-snapshot-update: record changed outputs as a variant for this "
           "environment (device type, dtype, GPU compute capability or CPU instruction set) instead of overwriting "
           "the default", False, parse_bool, has_ini=False, switch=True),
    Option("snapshot_dir", f"folder beside each test module for golden files (default {SNAPSHOT_DIR_DEFAULT})",
           SNAPSHOT_DIR_DEFAULT, parse_snapshot_dir, has_flag=False),
    Option("near_tie", f"a margin (golden or current) below this labels a flip near-tie, not regression (default "
           f"{NEAR_TIE_DEFAULT})", NEAR_TIE_DEFAULT, parse_near_tie, has_flag=False),
    Option("compare", "how snapshots are compared: exact (default) or tolerant (each side's token among the "
           "other's top-k at the first divergence)", "exact", parse_compare, metavar="MODE"),
    Option("top_k", f"candidates per step for --llm-compare tolerant (default {TOP_K_DEFAULT})", TOP_K_DEFAULT,
           parse_top_k, metavar="K"),
    Option("report", "write every snapshot and determinism result as JSON to PATH (schema: "
           "docs/llm-report.schema.json)", None, str, has_ini=False, metavar="PATH"),
    Option("report_html", "write a self-contained HTML report to PATH: each failed or tolerated snapshot token by "
           "token with margins and candidates, the factor matrix, pending and unused files", None, str,
           has_ini=False, metavar="PATH"),
    Option("summary_md", "append the run's Markdown summary to PATH (default: the file GITHUB_STEP_SUMMARY names, "
           "the GitHub Actions job summary)", None, str, has_ini=False, metavar="PATH"),
    # nondeterminism detection
    Option("determinism_runs", f"runs of each determinism-checked test (default {RUNS_DEFAULT})", RUNS_DEFAULT,
           parse_count, metavar="N"),
    Option("check_determinism", "run every test that uses `llm` N times and fail it when the token IDs differ "
           "(as if marked @pytest.mark.llm_determinism)", False, parse_bool, has_ini=False, switch=True),
    Option("factors", "regenerate every call of every test that uses `llm` once under each factor and fail it "
           f"when the tokens change: all, or a comma list of {', '.join(FACTOR_WORDS)} (default none)", (),
           parse_factors, metavar="LIST"),
)
MODEL_SETTINGS = ("model", "engine", "base_url", "served_model", "api_key_env", "request_timeout", "vllm_args",
                  "dtype", "device", "device_map", "seed", "max_new_tokens", "trust_remote_code", "threads",
                  "inherit_processors", "deterministic_algorithms")
# What shapes the recorded outputs (and how a snapshot is compared): a re-record command repeats each of these
# that the check was given on the command line (commands.py).
RERECORD_OPTIONS = (*MODEL_SETTINGS, "compare", "top_k")
