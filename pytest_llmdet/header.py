"""Text for the report header and the terminal summary."""

from __future__ import annotations

from typing import Any

from pytest_llmdet.engines.greedy import split_model_config
from pytest_llmdet.engines.models import ModelSource, read_local_generation_config
from pytest_llmdet.settings import Settings
from pytest_llmdet.versions import package_version


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in sorted(values.items()))


def generation_config_line(model_config: dict[str, Any] | None, inherit_processors: bool) -> str:
    """What forced greedy decoding overrode or kept of a model's generation config."""
    if model_config is None:
        return "generation: greedy forced (the model's generation config is read when it loads)"
    processors, ignored, _ = split_model_config(model_config)
    parts = ["generation: greedy forced"]
    parts.append(f"overridden from the model's config: {_pairs(ignored)}" if ignored else "nothing to override")
    if processors:
        verb = "inherited" if inherit_processors else "dropped (llm_inherit_processors=false)"
        parts.append(f"{verb}: {_pairs(processors)}")
    return "; ".join(parts)


def header_lines(settings: Settings, source: ModelSource | None) -> list[str]:
    """The report header: model and where it came from, dtype, device, seed, versions, generation config."""
    model = source.describe() if source else f"{settings.model} (not found: see the test errors)"
    config = read_local_generation_config(source) if source else None
    return [
        f"llmdet: model {model}",
        f"llmdet: dtype {settings.dtype}, device {settings.device}, seed {settings.seed}, "
        f"max_new_tokens {settings.max_new_tokens}, deterministic algorithms {settings.deterministic_algorithms}"
        + (f", threads {settings.threads}" if settings.threads else ""),
        f"llmdet: torch {package_version('torch', 'not installed')}, "
        f"transformers {package_version('transformers', 'not installed')}",
        "llmdet: " + generation_config_line(config, settings.inherit_processors),
    ]


def summary_lines(loads: list[list[Any]], generations: list[float]) -> list[str]:
    """The terminal summary: model loads with their time, generations with their time."""
    if not loads and not generations[0]:
        return []
    total = sum(seconds for _, seconds in loads)
    lines = [f"model loads: {len(loads)} ({total:.2f} s)"]
    lines += [f"  {name}: {seconds:.2f} s" for name, seconds in loads]
    lines.append(f"generations: {int(generations[0])} ({generations[1]:.2f} s)")
    return lines


def snapshot_header_line(mode: str, snapshot_dir: str, near_tie: float, compare: str = "exact",
                         top_k: int = 5) -> str:
    """How this run uses golden files."""
    flag = {"check": "--llm-snapshot", "update": "--llm-snapshot-update"}.get(mode)
    if flag is None:
        return "llmdet: snapshots: off (tests using llm_snapshot are skipped; --llm-snapshot checks them)"
    tolerant = f", llm_compare tolerant (top-{top_k})" if compare == "tolerant" else ""
    return f"llmdet: snapshots: {mode} ({flag}), folder {snapshot_dir}, llm_near_tie {near_tie}{tolerant}"


def _listed(paths: list[str], limit: int = 20) -> list[str]:
    return [f"  {p}" for p in paths[:limit]] + ([f"  ... {len(paths) - limit} more"] if len(paths) > limit else [])


def snapshot_summary_lines(counts: dict[str, int], failed_tests: list[str], partial_reasons: list[str],
                           unused: list[str], deleted: list[str], update: bool,
                           details: list[tuple[str, str, str, str]] | None, foreign: list[str] = (),
                           errored_tests: list[str] = ()) -> list[str]:
    """The `llm snapshots` section: counts, what to run to fix failures, unused and foreign files, and (with
    details) each snapshot. The error count is shown only when a write failed."""
    lines = [", ".join(f"{counts[k]} {k}" for k in counts if k != "error" or counts[k])]
    if failed_tests:
        nodeids = " ".join(f'"{t}"' for t in failed_tests[:5]) + (" ..." if len(failed_tests) > 5 else "")
        lines.append(f"{len(failed_tests)} test(s) with changed or missing snapshots. If the change is intended, "
                     f"re-record with: pytest --llm-snapshot-update {nodeids}")
    if errored_tests:
        lines.append(f"{len(errored_tests)} test(s) whose golden file could not be written (see their errors): "
                     + " ".join(f'"{t}"' for t in errored_tests[:5]) + (" ..." if len(errored_tests) > 5 else ""))
    if unused:
        lines.append(f"{len(unused)} unused golden file(s) or snapshot(s) no test asked for:")
        lines += _listed(unused)
        if update and partial_reasons:
            lines.append(f"not deleted: this run is partial ({'; '.join(sorted(partial_reasons))})")
        elif not update:
            lines.append("a full run with --llm-snapshot-update deletes them")
    if deleted:
        lines.append(f"deleted {len(deleted)} unused golden file(s) or snapshot(s):")
        lines += [f"  {d}" for d in deleted]
    if foreign:
        lines.append(f"{len(foreign)} file(s) in snapshot folders that are not golden files of this suite "
                     "(never deleted):")
        lines += _listed(foreign)
    for status, nodeid, name, file in details or []:
        lines.append(f"{status:>8}  {nodeid} [{name}]  {file}")
    return lines


def fragile_lines(fragile: list[tuple[str, str, int, float, str]], near_tie: float, limit: int = 20) -> list[str]:
    """Snapshots recorded with a margin below llm_near_tie: (node id, name, position, margin, file) each."""
    if not fragile:
        return []
    lines = [f"{len(fragile)} fragile snapshot(s): a margin below llm_near_tie {near_tie} may flip on other "
             "hardware, kernels or dtypes:"]
    lines += [f"  {nodeid} [{name}]  token {position} margin {margin:.4f}  {file}"
              for nodeid, name, position, margin, file in fragile[:limit]]
    if len(fragile) > limit:
        lines.append(f"  ... {len(fragile) - limit} more")
    return lines
