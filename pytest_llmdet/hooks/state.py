"""The run: resolved settings, the model pool, snapshot bookkeeping and the statistics the summary reports.

Creating a session imports nothing beyond the settings: the model pool, the generation statistics and the
golden-file bookkeeping are created (and their modules imported) when a test first needs them, so that a run
which uses no model pays nothing for them (the import-cost benchmark in benchmarks/bench_import.py).
"""

from __future__ import annotations

import os
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmdet.settings import (
    ComparePlan,
    Settings,
    SettingsError,
    SnapshotSettings,
)

if TYPE_CHECKING:
    from pytest_llmdet.commands import RerecordCommand
    from pytest_llmdet.determinism.runs import Verdict
    from pytest_llmdet.engines.llm import LLM, GenerationStats
    from pytest_llmdet.engines.models import LoadedModel, ModelPool, ModelSpec
    from pytest_llmdet.golden.ledger import SnapshotRun
    from pytest_llmdet.golden.snapshot import TestSnapshots


class DeterminismState:
    """The check's state for one pytest process: its defaults and the verdicts of the tests it checked."""

    def __init__(self, default_runs: int, check_all: bool, default_factors: tuple[str, ...] = ()) -> None:
        self.default_runs = default_runs
        self.check_all = check_all
        self.default_factors = default_factors  # --llm-factors: every test that uses `llm` is checked under them
        self.verdicts: list[Verdict] = []
        self.unchecked = 0  # failed or skipped before all runs completed, or a factor could not run
        self.merged_workers: set[Any] = set()  # xdist workers whose verdicts were added


class LLMDetSession:
    """One pytest run (one per xdist worker): settings, loaded models, snapshots and statistics."""

    def __init__(self, settings: Settings, rootdir: Path, invocation_dir: Path,
                 snapshot_settings: SnapshotSettings | None = None, worker: str | None = None,
                 command_inputs: tuple[dict[str, Any], list[str], str | None, str | None] | None = None) -> None:
        self.settings = settings
        # what the command line gave: each flag's value (None: not given), the -o overrides, -c and --rootdir;
        # re-record commands repeat what shaped the outputs (commands.py)
        self.command_inputs = command_inputs or ({}, [], None, None)
        self.worker = worker  # the pytest-xdist worker id (gw0, gw1, ...), None outside xdist
        self.rootdir = rootdir
        self.invocation_dir = invocation_dir
        self.snapshot_settings = snapshot_settings or SnapshotSettings()
        self.weights_cache: dict[str, str] = {}
        self._fingerprints: dict[tuple[ModelSpec, bool], dict[str, Any]] = {}
        self._torch_configured = False

    # Created on first use (a run that uses no model or golden file imports none of their code); whether one was
    # created is `name in self.__dict__`.

    @cached_property
    def pool(self) -> ModelPool:
        """The models loaded so far."""
        from pytest_llmdet.engines.models import ModelPool
        from pytest_llmdet.engines.registry import load

        return ModelPool(worker=self.worker, load=load)

    @cached_property
    def stats(self) -> GenerationStats:
        """The number of generate calls and their time."""
        from pytest_llmdet.engines.llm import GenerationStats

        return GenerationStats()

    @cached_property
    def snapshots(self) -> SnapshotRun:
        """The golden-file bookkeeping of this run."""
        from pytest_llmdet.golden.ledger import SnapshotRun

        return SnapshotRun()

    @property
    def snapshots_on(self) -> bool:
        """Whether this run compares or records golden files (--llm-snapshot or --llm-snapshot-update)."""
        return self.snapshot_settings.mode != "off"

    @property
    def snapshot_errors(self) -> list[str]:
        """Golden files the run could not change, and why; empty when no golden file was touched."""
        return self.snapshots.errors if "snapshots" in self.__dict__ else []

    # -- models ------------------------------------------------------------------------------------------

    def default_spec(self) -> ModelSpec:
        from pytest_llmdet.engines.models import ModelSpec, resolve_source

        s = self.settings
        base_dirs = [s.model_base_dir] if s.model_base_dir else []
        fields = {"device_map": s.device_map, **self._engine_fields(s.engine)}
        return ModelSpec(resolve_source(s.model, base_dirs + [self.rootdir]), s.dtype, s.device,
                         s.trust_remote_code, **fields)

    def _engine_fields(self, engine: str) -> dict[str, Any]:
        """The spec fields of `engine`: only those it uses, so that one model on one engine is one spec."""
        s = self.settings
        if engine == "vllm":
            return {"engine": engine, "engine_args": s.vllm_args, "device_map": None}
        if engine == "openai":
            if s.base_url is None:
                raise SettingsError("the openai engine needs the server's URL: set --llm-base-url or "
                                    "llm_base_url, such as http://127.0.0.1:8000/v1")
            return {"engine": engine, "base_url": s.base_url, "served_model": s.served_model,
                    "api_key_env": s.api_key_env,
                    "request_timeout": s.request_timeout, "device_map": None}
        return {}

    def spec_from_marker(self, args: tuple[Any, ...], kwargs: dict[str, Any], test_dir: Path) -> ModelSpec:
        """The spec of `@pytest.mark.llm_model("id-or-path", dtype=..., device=..., trust_remote_code=...)`."""
        from pytest_llmdet.engines.models import ModelSpec, resolve_source
        from pytest_llmdet.markers import model_choice

        choice = model_choice(args, kwargs, self.settings)
        if choice.name is None:  # @pytest.mark.llm_model(engine=...): the run's model on another engine
            base_dirs = [self.settings.model_base_dir] if self.settings.model_base_dir else []
            source = resolve_source(self.settings.model, base_dirs + [self.rootdir])
        else:
            source = resolve_source(choice.name, [test_dir, self.rootdir, Path.cwd()])
        fields = {"device_map": self.settings.device_map, **self._engine_fields(choice.engine)}
        return ModelSpec(source, choice.dtype, choice.device, choice.trust_remote_code, **fields)

    def llm_for(self, spec: ModelSpec) -> LLM:
        """A handle on the model of `spec`, loaded on first use, with every random source seeded."""
        from pytest_llmdet.engines.llm import LLM
        from pytest_llmdet.engines.registry import engine_for
        from pytest_llmdet.engines.seeding import configure_torch, seed_everything

        if not self._torch_configured:
            configure_torch(self.settings.deterministic_algorithms, self.settings.threads)
            self._torch_configured = True
        loaded = self.pool.get(spec)
        seed_everything(self.settings.seed)
        return LLM(engine_for(loaded), seed=self.settings.seed, max_new_tokens=self.settings.max_new_tokens,
                   inherit_processors=self.settings.inherit_processors, stats=self.stats)

    def fingerprint_for(self, llm: LLM, weights: bool = True) -> dict[str, Any]:
        """The environment fingerprint of the model behind `llm` (computed once per model); `weights=False`
        leaves out a local model's weights hash."""
        from pytest_llmdet.engines.fingerprint import environment_fingerprint

        engine = llm.engine
        key = (engine.spec, weights)
        if key not in self._fingerprints:
            base = engine.plan(self.settings.max_new_tokens, {}, self.settings.inherit_processors)
            self._fingerprints[key] = environment_fingerprint(
                **engine.describe(), generation=base.settings, cache=self.weights_cache, weights=weights,
                chat_template=getattr(engine.tokenizer, "chat_template", None))
        return self._fingerprints[key]

    # -- snapshots ---------------------------------------------------------------------------------------

    def display(self, path: Path) -> str:
        """A path as the user reads it: relative to where pytest was started, when it lies below."""
        try:
            return os.path.relpath(path, self.invocation_dir) if path.is_relative_to(self.invocation_dir) \
                else str(path)
        except ValueError:
            return str(path)

    def register_collected(self, nodeid: str, test_path: Path, declared: bool, test: str | None = None) -> None:
        """Record a collected test (every one: a test may reach `llm_snapshot` through getfixturevalue); `test`
        names the test whose golden file it uses (default: itself)."""
        from pytest_llmdet.golden.ledger import TestRecord
        from pytest_llmdet.golden.location import golden_path, module_folder

        folder = self.snapshot_settings.snapshot_dir
        self.snapshots.module_folders.add(str(module_folder(test_path, folder)))
        self.snapshots.tests[nodeid] = TestRecord(str(golden_path(test_path, test or nodeid, folder)),
                                                  declared=declared)

    def register_deselected(self, nodeid: str, test_path: Path, test: str | None = None) -> None:
        """A deselected test still owns its golden file: a partial run never calls it unused."""
        from pytest_llmdet.golden.location import golden_path

        self.snapshots.deselected[nodeid] = str(golden_path(test_path, test or nodeid,
                                                            self.snapshot_settings.snapshot_dir))

    def register_partly_collected(self, test_path: Path) -> None:
        """A module named by node ids on the command line: its other tests were not collected, so no golden
        file in its folder can be called unused."""
        from pytest_llmdet.golden.location import module_folder

        self.snapshots.partly_collected.add(str(module_folder(test_path, self.snapshot_settings.snapshot_dir)))

    def test_snapshots(self, nodeid: str, test_path: Path, llm: Any, passive: bool = False,
                       compare: ComparePlan | None = None, full_fingerprints: bool = False,
                       test: str | None = None, command_id: str | None = None) -> TestSnapshots:
        """The snapshot bookkeeping of one test; `llm()` gives the test's LLM handle, or None. `test` names the
        test whose golden file it uses (default `nodeid`; a pytest-repeat step uses its test's), `command_id`
        the test as a re-record command names it (relative to where pytest was started).

        A check hashes a local model's weights only where the fingerprint is shown or kept: a failure report, a
        pending file, or (with `full_fingerprints`, for the JSON report) every outcome."""
        from pytest_llmdet.golden.location import golden_path
        from pytest_llmdet.golden.snapshot import TestSnapshots

        settings = self.snapshot_settings
        test = test or nodeid
        command_id = command_id or test
        path = golden_path(test_path, test, settings.snapshot_dir)
        compare = compare or ComparePlan(settings.compare, settings.top_k)
        command = self.rerecord_command
        # the tolerant flags too (a plain update would store no top-k candidates): an update records what the
        # check compared
        extra = compare.update_flags.split()

        def decoder():
            handle = llm()
            if handle is None:
                return None
            return lambda ids: handle.engine.decode(ids, skip_special_tokens=False)

        def fingerprint(weights: bool = True):
            handle = llm()
            return None if handle is None else self.fingerprint_for(handle, weights)

        return TestSnapshots(
            nodeid=nodeid, path=path, display_path=self.display(path), mode=settings.mode,
            near_tie=settings.near_tie, update_command=command.line([command_id], extra),
            decoder=decoder, fingerprint=fingerprint, record=self.snapshots.outcomes.append, passive=passive,
            environment=None if full_fingerprints else partial(fingerprint, weights=False),
            compare=compare, update_flags=command.flags_line(extra), command_env=command.environment_line(),
            command_id=command_id, test=test, record_variant=settings.variant, review=settings.review,
            locks=self.snapshots.locks,
        )

    @cached_property
    def rerecord_command(self) -> RerecordCommand:
        """What every re-record command of this run gives: the options that shaped its outputs, as given."""
        from pytest_llmdet.commands import rerecord_command

        given, overrides, inifile, rootdir = self.command_inputs
        return rerecord_command(given, overrides, inifile, rootdir)

    def finish_snapshots(self) -> None:
        if self.snapshots_on:
            self.snapshots.finish(update=self.snapshot_settings.mode == "update", rootdir=self.rootdir,
                                  display=self.display)

    def worker_data(self, worker: str | None = None) -> dict[str, Any]:
        """What this process loaded and generated (and, as an xdist worker `worker`, sends the controller)."""
        loaded = self.pool.loaded.values() if "pool" in self.__dict__ else ()
        stats = self.stats if "stats" in self.__dict__ else None
        return {
            "loads": [{"model": describe_loaded(m), "seconds": m.load_seconds, "worker": worker} for m in loaded],
            "generations": {"count": stats.count if stats else 0, "seconds": stats.seconds if stats else 0.0},
            "snapshots": self.snapshots.to_data() if "snapshots" in self.__dict__ else None,
        }


_WORKERS = "_llmdet_workers"  # on the controller's config: what each xdist worker sent, by worker id


def add_worker_data(config: Any, node: Any, data: dict[str, Any]) -> None:
    """Keep what one xdist worker sent, keyed by worker: xdist can report a node down twice (a
    KeyboardInterrupt), which must not count twice."""
    config.__dict__.setdefault(_WORKERS, {})[getattr(getattr(node, "gateway", None), "id", id(node))] = data


def workers_data(config: Any) -> list[dict[str, Any]]:
    """What each xdist worker sent (on the controller; empty elsewhere)."""
    return list(getattr(config, _WORKERS, {}).values())


def describe_loaded(loaded: LoadedModel) -> str:
    """One line naming a loaded model: name, dtype and the device it was put on (`auto` resolved), or the
    device map that placed it."""
    spec = loaded.spec
    if spec.engine == "openai":
        return f"{spec.source.name} on the openai engine: {loaded.details.get('served_model')} served by " \
               f"{loaded.details.get('label')} at {loaded.details.get('url')}"
    if spec.engine == "vllm":
        return f"{spec.source.name} {spec.dtype} on the vllm engine ({loaded.details.get('version')}, {loaded.device})"
    where = loaded.device if spec.device_map is None else f"device_map {spec.device_map} (inputs on {loaded.device})"
    return f"{spec.source.name} {spec.dtype} {where}"


__all__ = ["LLMDetSession", "describe_loaded"]
