"""Text for the report header (model, settings, versions, generation config, snapshot mode) and the `llm`
section of the terminal summary (model loads by worker, generations)."""

from __future__ import annotations

import os
from typing import Any

from pytest_llmdet.engines.devices import auto_device, cuda_device_count
from pytest_llmdet.engines.greedy import model_config_use
from pytest_llmdet.engines.kinds import engine_kind
from pytest_llmdet.engines.sources import ModelSource, read_local_generation_config
from pytest_llmdet.settings import Settings
from pytest_llmdet.versions import package_version


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in sorted(values.items()))


def generation_config_line(model_config: dict[str, Any] | None, inherit_processors: bool) -> str:
    """What forced greedy decoding does with every field of a model's generation config: overridden, inherited,
    or dropped with the reason."""
    if model_config is None:
        return "generation: greedy forced (the model's generation config is read when it loads)"
    use = model_config_use(model_config, inherit_processors)
    parts = ["generation: greedy forced"]
    parts.append(f"overridden from the model's config: {_pairs(use.overridden)}" if use.overridden
                 else "nothing to override")
    if use.inherited:
        parts.append(f"inherited: {_pairs(use.inherited)}")
    if use.dropped:
        by_reason: dict[str, dict[str, Any]] = {}
        for name, (value, reason) in use.dropped.items():
            by_reason.setdefault(reason, {})[name] = value
        parts.append("dropped: " + ", ".join(f"{_pairs(fields)} ({reason})" for reason, fields in by_reason.items()))
    return "; ".join(parts)


def header_lines(settings: Settings, source: ModelSource | None, workers: int | None = None) -> list[str]:
    """The report header: model and where it came from, dtype, device, seed, versions, generation config;
    under pytest-xdist (`workers` of them) with `llm_device = auto`, the device of each worker."""
    model = source.describe() if source else f"{settings.model} (not found: see the test errors)"
    config = read_local_generation_config(source) if source else None
    device = f"device_map {settings.device_map}" if settings.device_map else f"device {settings.device}"
    lines = [
        f"llmdet: model {model}",
        f"llmdet: dtype {settings.dtype}, {device}, seed {settings.seed}, "
        f"max_new_tokens {settings.max_new_tokens}, deterministic algorithms {settings.deterministic_algorithms}"
        + (f", threads {settings.threads}" if settings.threads else ""),
        f"llmdet: torch {package_version('torch', 'not installed')}, "
        f"transformers {package_version('transformers', 'not installed')}",
        "llmdet: " + generation_config_line(config, settings.inherit_processors),
    ]
    engine = engine_kind(settings.engine).header_line(settings)
    if engine:
        lines.insert(1, engine)
    if workers and settings.device == "auto" and not settings.device_map:
        # Counting CUDA devices imports torch: only in this case (the workers import it anyway to load).
        lines.insert(2, worker_devices_line(workers, cuda_device_count(), os.environ.get("CUDA_VISIBLE_DEVICES")))
    return lines


def worker_devices_line(workers: int, cuda_devices: int, visible: str | None) -> str:
    """Which pytest-xdist worker puts its models where under `llm_device = auto` (engines.devices.auto_device)."""
    if cuda_devices < 1:
        return f"llmdet: device auto, {workers} xdist workers: no CUDA device, every worker on cpu"
    shown = 8  # a line, not a wall: the rule is in docs/llm-fixture.md (xdist workers)
    pairs = ", ".join(f"gw{k} {auto_device(f'gw{k}', cuda_devices)}" for k in range(min(workers, shown)))
    more = f", ... (gwK on cuda:(K mod {cuda_devices}))" if workers > shown else ""
    where = f" of CUDA_VISIBLE_DEVICES={visible}" if visible is not None else ""
    return (f"llmdet: device auto, {workers} xdist workers on {cuda_devices} CUDA device(s){where}: "
            f"{pairs}{more}")


def summary_lines(loads: list[dict[str, Any]], generations: dict[str, Any]) -> list[str]:
    """The terminal summary: each model load (which worker loaded what, under xdist) with its time, and the
    generations with their time. `loads` hold model, seconds and worker (None without xdist)."""
    if not loads and not generations["count"]:
        return []
    total = sum(load["seconds"] for load in loads)
    lines = [f"model loads: {len(loads)} ({total:.2f} s)"]
    lines += [f"  {load['worker'] + ': ' if load.get('worker') else ''}{load['model']}: {load['seconds']:.2f} s"
              for load in sorted(loads, key=lambda load: (load.get("worker") or "", load["model"]))]
    lines.append(f"generations: {int(generations['count'])} ({generations['seconds']:.2f} s)")
    return lines


def prefetch_header_line(settings: Settings, mode: str) -> list[str]:
    """What --llm-prefetch (llm_prefetch) does in this run (no line without it)."""
    if not settings.prefetch:
        return []
    if mode == "update":
        return ["llmdet: prefetch: off in an update (--llm-snapshot-update records every golden from a lone call)"]
    if mode != "check":
        return ["llmdet: prefetch: off (it answers the calls of a check, --llm-snapshot, from their golden files)"]
    return [engine_kind(settings.engine).prefetch_line(settings)]


def snapshot_header_line(mode: str, snapshot_dir: str, near_tie: float, compare: str = "exact",
                         top_k: int = 5) -> str:
    """How this run uses golden files."""
    flag = {"check": "--llm-snapshot", "update": "--llm-snapshot-update"}.get(mode)
    if flag is None:
        return "llmdet: snapshots: off (tests using llm_snapshot are skipped; --llm-snapshot checks them)"
    tolerant = f", llm_compare tolerant (top-{top_k})" if compare == "tolerant" else ""
    return f"llmdet: snapshots: {mode} ({flag}), folder {snapshot_dir}, llm_near_tie {near_tie}{tolerant}"


def reruns_header_line(reruns: int | None) -> list[str]:
    """What pytest-rerunfailures' `--reruns N` does to snapshot and determinism-checked tests (no line without)."""
    if not reruns:
        return []
    return [f"llmdet: --reruns {reruns}: a re-run snapshot test counts each snapshot once (its last attempt); tests "
            "checked by llm_determinism are not re-run (their runs are the check: a re-run would hide "
            "nondeterminism)"]
