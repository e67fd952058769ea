"""Settings: each one an ini option and a command-line flag (the flag wins), validated at startup.

    settings/options.py  the table of every option (OPTIONS)
    settings/values.py   what each one may be, and its parser
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_llmdet.vocabulary import FactorName

from pytest_llmdet.settings.options import MODEL_SETTINGS, OPTIONS
from pytest_llmdet.settings.values import (
    API_KEY_ENV_DEFAULT,
    CONCURRENCY_DEFAULT,
    NEAR_TIE_DEFAULT,
    REQUEST_TIMEOUT_DEFAULT,
    RUNS_DEFAULT,
    SNAPSHOT_DIR_DEFAULT,
    TOP_K_DEFAULT,
    Record,
    SettingsError,
    parse_bool,
)


class Settings(Record):
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
    prefetch: bool = False  # --llm-prefetch / llm_prefetch: a check sends the goldens' recorded calls at once
    concurrency: int = CONCURRENCY_DEFAULT  # --llm-concurrency: the prefetch's requests in flight to a server


class SnapshotSettings(Record):
    """How golden files are used in this run: mode off, check or update; folder; near-tie threshold."""

    mode: str = "off"
    snapshot_dir: str = SNAPSHOT_DIR_DEFAULT
    near_tie: float = NEAR_TIE_DEFAULT
    details: bool = False
    compare: str = "exact"  # exact, or tolerant (the vLLM top-k rule at the first divergence)
    top_k: int = TOP_K_DEFAULT
    variant: bool = False  # --llm-snapshot-variant: an update records a variant for this environment
    review: bool = False  # --llm-snapshot-review: a check that compares every snapshot and keeps each change pending


class ComparePlan(Record):
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


def resolve_values(flags: dict[str, Any], ini: dict[str, str], inipath: Path | None) -> dict[str, Any]:
    """Every option's value from its flag, else its ini option, else its default, each validated; a bad value
    is a SettingsError naming where it came from (the flag, or the ini option and its file). `flags` hold
    None for a flag not given (a switch: False)."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = flags.get(option.name) if option.has_flag else None
        source = option.flag
        if option.switch and not raw and option.has_ini and ini.get(option.name, "").strip():
            raw, source = ini[option.name].strip(), f"{option.ini} in {inipath}" if inipath else option.ini
        elif option.switch:
            values[option.name] = bool(raw)
            continue
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


def _accept(settings: Settings) -> None:
    """The engine check of a resolve that has none."""


def resolve(flags: dict[str, Any], ini: dict[str, str], inipath: Path | None, invocation_dir: Path,
            check_engine: Callable[[Settings], None] = _accept) -> tuple[Settings, SnapshotSettings]:
    """The run's settings and snapshot settings from the one option table; `check_engine` refuses settings
    the run's engine cannot run with (engines/kinds.check_settings: the engines own what they need)."""
    values = resolve_values(flags, ini, inipath)
    model_from_ini = flags.get("model") is None and ini.get("model", "").strip() and inipath is not None
    base_dir = inipath.parent if model_from_ini else invocation_dir
    settings = Settings(**{name: values[name] for name in MODEL_SETTINGS}, model_base_dir=base_dir,
                        determinism_runs=values["determinism_runs"],
                        check_determinism=values["check_determinism"], factors=values["factors"],
                        prefetch=values["prefetch"], concurrency=values["concurrency"])
    check_engine(settings)
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


def in_ci() -> bool:
    """Whether the CI environment variable says this run is in CI (any value but a false one: CI=github too)."""
    value = os.environ.get("CI", "")
    if not value:
        return False
    try:
        return parse_bool(value)
    except ValueError:
        return True


__all__ = ["OPTIONS", "ComparePlan", "Settings", "SettingsError", "SnapshotSettings", "in_ci", "resolve",
           "resolve_values"]
