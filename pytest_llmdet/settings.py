"""Settings: each one an ini option and a command-line flag (the flag wins), validated at startup."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from enum import Enum
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NamedTuple

SNAPSHOT_DIR_DEFAULT = "__llm_snapshots__"
NEAR_TIE_DEFAULT = 0.01
COMPARE_MODES = ("exact", "tolerant")
TOP_K_DEFAULT = 5
RUNS_DEFAULT = 3
DTYPES = ("float32", "bfloat16", "float16", "auto")
DETERMINISTIC_ALGORITHMS = ("warn", "strict", "off")


class Word(str, Enum):
    """A word of pytest-llmdet's vocabulary (a status, a kind, a factor): a str whose members print, format and
    go into JSON as their value, so that no report changes (enum.StrEnum, which Python 3.10 lacks)."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


class FactorName(Word):
    """The factors of the determinism check (determinism/factors.py), in the order the matrix shows them."""

    BATCH = "batch"
    CACHE = "cache"
    STATIC_CACHE = "static-cache"
    ATTENTION = "attention"
    THREADS = "threads"
    DTYPE = "dtype"


FACTOR_NAMES: tuple[FactorName, ...] = tuple(FactorName)
# Factors of an engine pytest-llmdet does not have yet: named, so that asking for one says why it is refused.
FUTURE_FACTORS = {"prefix-cache": "a factor of the vLLM engine (a prefix cache warmed by a shared prefix "
                                  "first) that is not built yet (with --llm-engine vllm, re-runs read vLLM's prefix "
                                  "cache as it is configured)"}
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's strategies
ENGINES = ("transformers", "vllm", "openai")  # what generates: engines/transformers.py, vllm.py, openai_server.py
API_KEY_ENV_DEFAULT = "OPENAI_API_KEY"
REQUEST_TIMEOUT_DEFAULT = 60.0  # seconds a request to an OpenAI-compatible server may take
# Arguments of vllm.LLM that other settings own: pytest-llmdet sets them, so that the forced-greedy plan holds.
VLLM_OWNED_ARGS = {
    "model": "--llm-model / llm_model", "tokenizer": "--llm-model / llm_model (prompts are tokenized locally)",
    "dtype": "--llm-dtype / llm_dtype", "trust_remote_code": "--llm-trust-remote-code / llm_trust_remote_code",
    "seed": "pytest-llmdet (greedy needs none; a sampling call sends its own seed=)",
    "generation_config": "pytest-llmdet (\"vllm\": the model's defaults stay out)",
    "logprobs_mode": "pytest-llmdet (processed_logprobs: margins as the transformers engine computes them)",
}
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ARG_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
_DEVICE_RE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _choice(values: tuple[str, ...]) -> Callable[[str], str]:
    """A parser that accepts one of `values` and names them all otherwise."""
    def parse(value: str) -> str:
        if value not in values:
            raise ValueError(f"allowed values: {', '.join(values)}")
        return value

    return parse


parse_dtype = _choice(DTYPES)


def parse_device(value: str) -> str:
    """Accept cpu, auto, cuda, cuda:N or mps."""
    if not _DEVICE_RE.match(value):
        raise ValueError("allowed values: cpu, auto, cuda, cuda:N, mps")
    return value


def parse_bool(value: str) -> bool:
    """Accept the usual spellings of true and false."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("allowed values: true, false")


# numpy.random.seed takes 0 ... 2**32 - 1 only; a larger seed would pass startup and fail every test.
SEED_MAX = 2**32 - 1
# torch.set_num_threads with far more threads than CPUs can crash the process (100000 segfaults); allow up
# to this many threads per CPU, or THREADS_MAX_UNKNOWN_CPUS in all where os.cpu_count() cannot tell.
THREADS_PER_CPU = 4
THREADS_MAX_UNKNOWN_CPUS = 256


def threads_max() -> int:
    """The most threads `llm_threads` allows: 4 x os.cpu_count(), or 256 where the CPU count is unknown."""
    cpus = os.cpu_count()
    return THREADS_PER_CPU * cpus if cpus else THREADS_MAX_UNKNOWN_CPUS


def _threads_bound() -> str:
    cpus = os.cpu_count()
    if not cpus:
        return "the CPU count of this machine is unknown"
    return f"{THREADS_PER_CPU} x the {cpus} CPUs of this machine"


def _parse_int(minimum: int, maximum: Callable[[], int] | None = None,
               why: Callable[[], str] | None = None) -> Callable[[str], int]:
    """A parser of integers >= `minimum` and, with `maximum` (called at parse time), <= `maximum()`;
    `why` says where the maximum comes from."""
    def parse(value: str) -> int:
        allowed = f"allowed values: an integer >= {minimum}"
        if maximum is not None:
            allowed += f" and <= {maximum()}" + (f" ({why()})" if why is not None else "")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(allowed) from None
        if number < minimum or (maximum is not None and number > maximum()):
            raise ValueError(allowed)
        return number

    return parse


parse_deterministic_algorithms = _choice(DETERMINISTIC_ALGORITHMS)


parse_device_map = _choice(DEVICE_MAPS)


parse_compare = _choice(COMPARE_MODES)


def parse_factors(value: str | list[str] | tuple[str, ...]) -> tuple[FactorName, ...]:
    """Accept `all` or a comma list of factor names (a list of names too); they come back in the matrix's
    order, each once. An empty value is no factor."""
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"factors are names; allowed values: all, or a comma list of {', '.join(FACTOR_NAMES)}")
    names = [n for n in names if n]
    if names == ["all"]:
        return FACTOR_NAMES
    future = [n for n in names if n in FUTURE_FACTORS]
    if future:
        raise ValueError(f"{future[0]} is {FUTURE_FACTORS[future[0]]}; allowed values: all, or a comma list of "
                         f"{', '.join(FACTOR_NAMES)}")
    unknown = [n for n in names if n not in FACTOR_NAMES]
    if unknown:
        raise ValueError(f"unknown factor(s) {', '.join(unknown)}; allowed values: all, or a comma list of "
                         f"{', '.join(FACTOR_NAMES)}")
    return tuple(n for n in FACTOR_NAMES if n in names)


parse_engine = _choice(ENGINES)


def parse_base_url(value: str) -> str:
    """Accept an http(s) URL of an OpenAI-compatible API, such as http://127.0.0.1:8000/v1."""
    url = value.strip()
    if not re.match(r"^https?://[^/\s]+", url) or any(ch.isspace() for ch in url):
        raise ValueError("allowed values: the http:// or https:// URL of an OpenAI-compatible API, such as "
                         "http://127.0.0.1:8000/v1")
    return url.rstrip("/")


def url_without_credentials(url: str) -> str:
    """The URL as messages and commands show it: without a user name and password (http://user:secret@host/v1)."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}" if sep else url


def parse_env_name(value: str) -> str:
    """Accept the name of an environment variable (the value is read from the environment, never from here)."""
    name = value.strip()
    if not _ENV_NAME_RE.match(name):
        raise ValueError("allowed values: the name of an environment variable such as OPENAI_API_KEY (the key "
                         "itself never goes in a setting)")
    return name


def parse_timeout(value: str) -> float:
    """Accept a number of seconds > 0."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0 or number == float("inf"):
        raise ValueError("allowed values: a number of seconds > 0")
    return number


def parse_engine_args(value: str) -> tuple[tuple[str, Any], ...]:
    """Accept space-separated key=value pairs for vllm.LLM, such as `tensor_parallel_size=2 enforce_eager=true`;
    a value is an integer, a number, true/false/none, JSON in brackets or braces, or else a string. They come
    back sorted by key, each key once."""
    import json
    import shlex

    try:
        words = shlex.split(value)
    except ValueError as error:
        raise ValueError(f"{error}; write key=value pairs separated by spaces") from None
    pairs: dict[str, Any] = {}
    for word in words:
        key, equals, raw = word.partition("=")
        if not equals or not _ARG_NAME_RE.match(key):
            raise ValueError(f"{word!r} is not key=value with a lower-case key (an argument of vllm.LLM); write "
                             "pairs such as tensor_parallel_size=2 max_model_len=2048 enforce_eager=true")
        if key in VLLM_OWNED_ARGS:
            raise ValueError(f"{key} is set by {VLLM_OWNED_ARGS[key]}, not by the engine arguments")
        if key in pairs:
            raise ValueError(f"{key} is given twice")
        pairs[key] = _engine_arg_value(raw, json)
    return tuple(sorted(pairs.items()))


def _engine_arg_value(raw: str, json: Any) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not valid JSON") from None
    return raw


def parse_top_k(value: str) -> int:
    """Accept an integer >= 1."""
    return _parse_int(1)(value)


def parse_near_tie(value: str) -> float:
    """Accept a number >= 0."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0:  # NaN too
        raise ValueError("allowed values: a number >= 0")
    return number


def parse_snapshot_dir(folder: str) -> str:
    """Accept a relative folder name below each test module's folder; refuse anything that could put golden
    files outside the project (absolute, `~`, `..`, a drive), on POSIX and Windows alike, or that is the test
    folder itself (every `*.json` in the snapshot folder belongs to pytest-llmdet)."""
    posix, windows = PurePosixPath(folder), PureWindowsPath(folder)
    if posix.is_absolute() or windows.anchor or folder.startswith("~") or ".." in posix.parts \
            or ".." in windows.parts:
        raise SettingsError(
            f"pytest-llmdet: llm_snapshot_dir = {folder!r} would put golden files outside the project root; "
            "use a relative folder name such as __llm_snapshots__ (it is created beside each test module)"
        )
    if not windows.parts:
        raise SettingsError(
            f"pytest-llmdet: llm_snapshot_dir = {folder!r} is the test folder itself; name a folder that "
            "holds only golden files, such as __llm_snapshots__"
        )
    return folder


class Option(NamedTuple):
    """One option of the plugin: its name, help, default and parser, and whether it is a flag (`--llm-...`),
    an ini option (`llm_...`) or both (the flag wins). A switch is a flag without a value.

    The value types that pytest needs at startup are named tuples, not dataclasses: a dataclass costs about
    0.5 ms to define, and every pytest run in a project with the plugin installed pays it."""

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
    Option("seed", "seed for python, numpy and torch before each test and each generate: 0 to 2**32-1 "
           "(default 0)", 0, _parse_int(0, lambda: SEED_MAX, lambda: "2**32 - 1, numpy's largest seed")),
    Option("max_new_tokens", "new tokens per generate call (default 32)", 32, _parse_int(1)),
    Option("trust_remote_code", "allow model repositories to run their own code (default false)", False,
           parse_bool),
    Option("threads", "torch intra-op thread count: 1 to 4 x the CPU count (default: torch's own)", None,
           _parse_int(1, threads_max, _threads_bound)),
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
           _parse_int(1), metavar="N"),
    Option("check_determinism", "run every test that uses `llm` N times and fail it when the token IDs differ "
           "(as if marked @pytest.mark.llm_determinism)", False, parse_bool, has_ini=False, switch=True),
    Option("factors", "regenerate every call of every test that uses `llm` once under each factor and fail it "
           f"when the tokens change: all, or a comma list of {', '.join(FACTOR_NAMES)} (default none)", (),
           parse_factors, metavar="LIST"),
)
MODEL_SETTINGS = ("model", "engine", "base_url", "served_model", "api_key_env", "request_timeout", "vllm_args",
                  "dtype", "device", "device_map", "seed", "max_new_tokens", "trust_remote_code", "threads",
                  "inherit_processors", "deterministic_algorithms")
# What shapes the recorded outputs (and how a snapshot is compared): a re-record command repeats each of these
# that the check was given on the command line (commands.py).
RERECORD_OPTIONS = (*MODEL_SETTINGS, "compare", "top_k")


class Settings(NamedTuple):
    """The resolved model and determinism settings of one pytest run."""

    model: str | None = None
    engine: str = "transformers"  # transformers, vllm or openai
    base_url: str | None = None  # the openai engine's server
    served_model: str | None = None  # the openai engine: the served model's name, when not the model's
    api_key_env: str = API_KEY_ENV_DEFAULT
    request_timeout: float = REQUEST_TIMEOUT_DEFAULT
    vllm_args: tuple[tuple[str, Any], ...] = ()  # the vllm engine's arguments of vllm.LLM, sorted by key
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str | None = None  # accelerate's device map (llm_device is then not used)
    seed: int = 0
    max_new_tokens: int = 32
    trust_remote_code: bool = False
    threads: int | None = None
    inherit_processors: bool = True
    deterministic_algorithms: str = "warn"
    model_base_dir: Path | None = None  # where a relative llm_model path is resolved from
    determinism_runs: int = RUNS_DEFAULT
    check_determinism: bool = False
    factors: tuple[FactorName, ...] = ()  # --llm-factors / llm_factors: every test using `llm` is checked under them


class SnapshotSettings(NamedTuple):
    """How golden files are used in this run: mode off, check or update; folder; near-tie threshold."""

    mode: str = "off"
    snapshot_dir: str = SNAPSHOT_DIR_DEFAULT
    near_tie: float = NEAR_TIE_DEFAULT
    details: bool = False
    compare: str = "exact"  # exact, or tolerant (the vLLM top-k rule at the first divergence)
    top_k: int = TOP_K_DEFAULT
    variant: bool = False  # --llm-snapshot-variant: an update records a variant for this environment
    review: bool = False  # --llm-snapshot-review: a check that compares every snapshot and keeps each change pending


class ComparePlan(NamedTuple):
    """How one test's snapshots are compared: exact, or tolerant with top-k candidates per step."""

    mode: str = "exact"
    top_k: int = TOP_K_DEFAULT

    @property
    def capture_top_k(self) -> int:
        """How many candidates per step generate must record (0: none, the exact mode's cost)."""
        return self.top_k if self.mode == "tolerant" else 0

    @property
    def update_flags(self) -> str:
        """The flags an update of this test needs to record what this comparison uses (a tolerant check needs
        the top-k candidates, which only a tolerant update stores); empty for exact."""
        if self.mode != "tolerant":
            return ""
        return "--llm-compare tolerant" + (f" --llm-top-k {self.top_k}" if self.top_k != TOP_K_DEFAULT else "")


class SettingsError(ValueError):
    """A setting has a value outside what it allows."""


def resolve_values(flags: dict[str, Any], ini: dict[str, str], inipath: Path | None) -> dict[str, Any]:
    """Every option's value from its flag, else its ini option, else its default, each validated; a bad value
    is a SettingsError naming where it came from (the flag, or the ini option and its file). `flags` hold
    None for a flag not given (a switch: False)."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = flags.get(option.name) if option.has_flag else None
        if option.switch:
            values[option.name] = bool(raw)
            continue
        source = option.flag
        if raw is None and option.has_ini and ini.get(option.name, "").strip():
            raw = ini[option.name].strip()
            source = f"{option.ini} in {inipath}" if inipath else option.ini
        if raw is None:
            values[option.name] = option.default
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as error:
            if isinstance(error, SettingsError):
                raise
            raise SettingsError(f"pytest-llmdet: bad value {raw!r} for {source}; {error}") from None
    return values


def resolve(flags: dict[str, Any], ini: dict[str, str], inipath: Path | None,
            invocation_dir: Path) -> tuple[Settings, SnapshotSettings]:
    """The run's settings and snapshot settings from the one option table."""
    values = resolve_values(flags, ini, inipath)
    model_from_ini = flags.get("model") is None and ini.get("model", "").strip() and inipath is not None
    base_dir = inipath.parent if model_from_ini else invocation_dir
    settings = Settings(**{name: values[name] for name in MODEL_SETTINGS}, model_base_dir=base_dir,
                        determinism_runs=values["determinism_runs"],
                        check_determinism=values["check_determinism"], factors=values["factors"])
    if settings.engine == "openai" and settings.base_url is None:
        raise SettingsError("pytest-llmdet: --llm-engine openai needs the server's URL: set --llm-base-url or "
                            "llm_base_url, such as http://127.0.0.1:8000/v1")
    if values["snapshot_update"] and (values["snapshot"] or values["snapshot_review"]):
        other = "--llm-snapshot-review" if values["snapshot_review"] else "--llm-snapshot"
        raise SettingsError(f"pytest-llmdet: --llm-snapshot-update and {other} ask for opposite things: "
                            f"{other} checks the golden files and writes none, --llm-snapshot-update records them; "
                            "give one of the two")
    review = values["snapshot_review"]
    mode = "update" if values["snapshot_update"] else "check" if values["snapshot"] or review else "off"
    if values["snapshot_variant"] and mode != "update":
        raise SettingsError("pytest-llmdet: --llm-snapshot-variant records a variant, so it needs "
                            "--llm-snapshot-update (a check run picks the best variant by itself)")
    snapshots = SnapshotSettings(mode, values["snapshot_dir"], values["near_tie"], values["snapshot_details"],
                                 values["compare"], values["top_k"], values["snapshot_variant"], review)
    return settings, snapshots


def resolve_settings(flags: dict[str, Any], ini: dict[str, str], inipath: Path | None,
                     invocation_dir: Path) -> Settings:
    """The model and determinism settings alone (see `resolve`)."""
    return resolve(flags, ini, inipath, invocation_dir)[0]


def in_ci() -> bool:
    """Whether the CI environment variable says this run is in CI (any value but a false one: CI=github too)."""
    import os

    value = os.environ.get("CI", "")
    if not value:
        return False
    try:
        return parse_bool(value)
    except ValueError:
        return True
