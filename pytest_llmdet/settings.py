"""Settings: each one an ini option and a command-line flag (the flag wins), validated at startup."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NamedTuple

DTYPES = ("float32", "bfloat16", "float16", "auto")
DETERMINISTIC_ALGORITHMS = ("warn", "strict", "off")
_DEVICE_RE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_dtype(value: str) -> str:
    """Accept one of DTYPES."""
    if value not in DTYPES:
        raise ValueError(f"allowed values: {', '.join(DTYPES)}")
    return value


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


def parse_deterministic_algorithms(value: str) -> str:
    """Accept warn, strict or off."""
    if value not in DETERMINISTIC_ALGORITHMS:
        raise ValueError(f"allowed values: {', '.join(DETERMINISTIC_ALGORITHMS)}")
    return value


class Option(NamedTuple):
    """One setting: its ini name, its flag, its default and how its text is parsed.

    The value types that pytest needs at startup are named tuples, not dataclasses: a dataclass costs about
    0.5 ms to define, and every pytest run in a project with the plugin installed pays it."""

    name: str
    help: str
    default: Any
    parse: Callable[[str], Any]

    @property
    def ini(self) -> str:
        return f"llm_{self.name}"

    @property
    def flag(self) -> str:
        return "--llm-" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("model", "model to test: a hub id or a local directory (default: the embedded tiny model)",
           None, str),
    Option("dtype", f"model dtype: {', '.join(DTYPES)} (default float32)", "float32", parse_dtype),
    Option("device", "device: cpu, auto (CUDA when available), cuda, cuda:N, mps (default cpu)", "cpu",
           parse_device),
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
)


class Settings(NamedTuple):
    """The resolved settings of one pytest run."""

    model: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    max_new_tokens: int = 32
    trust_remote_code: bool = False
    threads: int | None = None
    inherit_processors: bool = True
    deterministic_algorithms: str = "warn"
    model_base_dir: Path | None = None  # where a relative llm_model path is resolved from


class SettingsError(ValueError):
    """A setting has a value outside what it allows."""


def resolve_settings(
    flags: dict[str, str | None], ini: dict[str, str], inipath: Path | None, invocation_dir: Path
) -> Settings:
    """Resolve each setting from its flag, else its ini option, else its default; validate each."""
    values: dict[str, Any] = {}
    base_dir = invocation_dir
    for option in OPTIONS:
        raw = flags.get(option.name)
        source = option.flag
        if raw is None and ini.get(option.name, "").strip():
            raw = ini[option.name].strip()
            source = f"{option.ini} in {inipath}" if inipath else option.ini
            if option.name == "model" and inipath is not None:
                base_dir = inipath.parent
        if raw is None:
            values[option.name] = option.default
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as error:
            raise SettingsError(f"pytest-llmdet: bad value {raw!r} for {source}; {error}") from None
    return Settings(**values, model_base_dir=base_dir)


SNAPSHOT_DIR_DEFAULT = "__llm_snapshots__"
NEAR_TIE_DEFAULT = 0.01
COMPARE_MODES = ("exact", "tolerant")
TOP_K_DEFAULT = 5


class SnapshotSettings(NamedTuple):
    """How golden files are used in this run: mode off, check or update; folder; near-tie threshold."""

    mode: str = "off"
    snapshot_dir: str = SNAPSHOT_DIR_DEFAULT
    near_tie: float = NEAR_TIE_DEFAULT
    details: bool = False
    compare: str = "exact"  # exact, or tolerant (the vLLM top-k rule at the first divergence)
    top_k: int = TOP_K_DEFAULT
    variant: bool = False  # --llm-snapshot-variant: an update records a variant for this environment


class ComparePlan(NamedTuple):
    """How one test's snapshots are compared: exact, or tolerant with top-k candidates per step."""

    mode: str = "exact"
    top_k: int = TOP_K_DEFAULT

    @property
    def capture_top_k(self) -> int:
        """How many candidates per step generate must record (0: none, the exact mode's cost)."""
        return self.top_k if self.mode == "tolerant" else 0


def parse_compare(value: str) -> str:
    """Accept exact or tolerant."""
    if value not in COMPARE_MODES:
        raise ValueError(f"allowed values: {', '.join(COMPARE_MODES)}")
    return value


def parse_top_k(value: str) -> int:
    """Accept an integer >= 1."""
    return _parse_int(1)(value)


def compare_plan(default: SnapshotSettings, marker_kwargs: dict[str, Any] | None) -> ComparePlan:
    """The comparison of one test: the run's, overridden by `@pytest.mark.llm_snapshot(compare=..., top_k=...)`."""
    kwargs = dict(marker_kwargs or {})
    unknown = set(kwargs) - {"compare", "top_k"}
    usage = 'usage: @pytest.mark.llm_snapshot(compare="exact" or "tolerant", top_k=N)'
    if unknown:
        raise SettingsError(f"{usage}; unknown argument(s): {', '.join(sorted(unknown))}")
    try:
        mode = parse_compare(str(kwargs.get("compare", default.compare)))
        top_k = kwargs.get("top_k", default.top_k)
        top_k = parse_top_k(str(top_k)) if not isinstance(top_k, bool) else parse_top_k("")
    except ValueError as error:
        raise SettingsError(f"bad argument to @pytest.mark.llm_snapshot: {error}; {usage}") from None
    return ComparePlan(mode, top_k)


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


def resolve_snapshot_settings(check: bool, update: bool, details: bool,
                              ini: dict[str, str], flags: dict[str, str | None] | None = None) -> SnapshotSettings:
    """The snapshot mode from the flags, the folder and near-tie threshold from the ini file, and the comparison
    (`compare`, `top_k`) from its flag, else its ini option."""
    folder = parse_snapshot_dir(ini.get("snapshot_dir", "").strip() or SNAPSHOT_DIR_DEFAULT)
    raw = ini.get("near_tie", "").strip()
    try:
        near_tie = float(raw) if raw else NEAR_TIE_DEFAULT
        if not near_tie >= 0:
            raise ValueError
    except ValueError:
        raise SettingsError(f"pytest-llmdet: bad value {raw!r} for llm_near_tie; "
                            "allowed values: a number >= 0") from None
    mode = "update" if update else "check" if check else "off"
    variant = bool((flags or {}).get("variant"))
    if variant and mode != "update":
        raise SettingsError("pytest-llmdet: --llm-snapshot-variant records a variant, so it needs "
                            "--llm-snapshot-update (a check run picks the best variant by itself)")
    chosen: dict[str, Any] = {}
    for name, parse, default in (("compare", parse_compare, "exact"), ("top_k", parse_top_k, TOP_K_DEFAULT)):
        raw, source = (flags or {}).get(name), "--llm-" + name.replace("_", "-")
        if raw is None and ini.get(name, "").strip():
            raw, source = ini[name].strip(), f"llm_{name}"
        try:
            chosen[name] = default if raw is None else parse(raw)
        except ValueError as error:
            raise SettingsError(f"pytest-llmdet: bad value {raw!r} for {source}; {error}") from None
    return SnapshotSettings(mode, folder, near_tie, details, chosen["compare"], chosen["top_k"], variant)


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
