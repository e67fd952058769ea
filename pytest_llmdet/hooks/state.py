"""The run's models and the determinism check's state: the resolved settings, the model pool, the fingerprints,
the statistics the summary reports, and the verdicts. The golden files' state is the snapshot plugin's
(hooks/snapshots.py, registered only when golden files are used).

Creating a session imports nothing beyond the settings: the model pool and the generation statistics are
created (and their modules imported) when a test first needs them, so that a run which uses no model pays
nothing for them (the import-cost benchmark in benchmarks/bench_import.py).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmdet.settings import Settings, SnapshotSettings

if TYPE_CHECKING:
    from pytest_llmdet.determinism.runs import Verdict
    from pytest_llmdet.engines.llm import LLM, GenerationStats
    from pytest_llmdet.engines.models import LoadedModel, ModelPool, ModelSpec
    from pytest_llmdet.engines.sources import ModelSource


class DeterminismState:
    """The check's state for one pytest process: its defaults and the verdicts of the tests it checked."""

    def __init__(self, default_runs: int, check_all: bool, default_factors: tuple[str, ...] = ()) -> None:
        self.default_runs = default_runs
        self.check_all = check_all
        self.default_factors = default_factors  # --llm-factors: every test that uses `llm` is checked under them
        self.verdicts: list[Verdict] = []
        self.unchecked = 0  # failed or skipped before all runs completed, or a factor could not run

    def worker_data(self) -> dict[str, Any]:
        """The verdicts' share, which an xdist worker sends the controller (hooks/workers.py)."""
        from pytest_llmdet.determinism.runs import verdicts_to_data

        return {"verdicts": verdicts_to_data(self.verdicts), "unchecked": self.unchecked}

    def merge_worker(self, data: dict[str, Any]) -> None:
        """On the controller: add one xdist worker's verdicts."""
        from pytest_llmdet.determinism.runs import verdicts_from_data

        self.verdicts += verdicts_from_data(data["verdicts"])
        self.unchecked += data["unchecked"]


class LLMDetSession:
    """One pytest run (one per xdist worker): settings, loaded models, fingerprints and statistics."""

    def __init__(self, settings: Settings, rootdir: Path, invocation_dir: Path,
                 snapshot_settings: SnapshotSettings | None = None, worker: str | None = None) -> None:
        self.settings = settings
        self.worker = worker  # the pytest-xdist worker id (gw0, gw1, ...), None outside xdist
        self.rootdir = rootdir
        self.invocation_dir = invocation_dir
        self.snapshot_settings = snapshot_settings or SnapshotSettings()
        self.weights_cache: dict[str, str] = {}
        self._fingerprints: dict[tuple[ModelSpec, bool], dict[str, Any]] = {}
        self._torch_configured = False
        self.worker_loads: list[dict[str, Any]] = []  # on the controller: what the xdist workers loaded
        self.worker_generations: dict[str, float] = {"count": 0, "seconds": 0.0}  # and generated

    # Created on first use (a run that uses no model or golden file imports none of their code); whether one was
    # created is `name in self.__dict__`.

    @cached_property
    def pool(self) -> ModelPool:
        """The models loaded so far."""
        from pytest_llmdet.engines.kinds import load
        from pytest_llmdet.engines.models import ModelPool

        return ModelPool(worker=self.worker, load=load)

    @cached_property
    def stats(self) -> GenerationStats:
        """The number of generate calls and their time."""
        from pytest_llmdet.engines.llm import GenerationStats

        return GenerationStats()

    @property
    def snapshots_on(self) -> bool:
        """Whether this run compares or records golden files (hooks/snapshots.py's plugin is then registered)."""
        return self.snapshot_settings.mode != "off"

    # -- models ------------------------------------------------------------------------------------------

    def default_spec(self) -> ModelSpec:
        """The spec of the run's model (llm_model) on the run's engine."""
        from pytest_llmdet.engines.kinds import engine_kind
        from pytest_llmdet.engines.models import ModelSpec

        s = self.settings
        return ModelSpec(self.run_model(), s.dtype, s.device, s.trust_remote_code, engine_kind(s.engine).options(s))

    def spec_from_marker(self, args: tuple[Any, ...], kwargs: dict[str, Any], test_dir: Path) -> ModelSpec:
        """The spec of `@pytest.mark.llm_model("id-or-path", dtype=..., device=..., trust_remote_code=...)`."""
        from pytest_llmdet.engines.kinds import engine_kind
        from pytest_llmdet.engines.models import ModelSpec
        from pytest_llmdet.engines.sources import resolve_source
        from pytest_llmdet.markers import model_choice

        choice = model_choice(args, kwargs, self.settings)  # no name (engine=... alone): the run's model
        source = self.run_model() if choice.name is None else \
            resolve_source(choice.name, [test_dir, self.rootdir, Path.cwd()])
        return ModelSpec(source, choice.dtype, choice.device, choice.trust_remote_code,
                         engine_kind(choice.engine).options(self.settings))

    def run_model(self) -> ModelSource:
        """Where the run's model (llm_model) comes from: all the report header needs (no spec, no engine)."""
        from pytest_llmdet.engines.sources import resolve_source

        base_dirs = [self.settings.model_base_dir] if self.settings.model_base_dir else []
        return resolve_source(self.settings.model, base_dirs + [self.rootdir])

    def llm_for(self, spec: ModelSpec) -> LLM:
        """A handle on the model of `spec`, loaded on first use, with every random source seeded."""
        from pytest_llmdet.engines.kinds import engine_kind
        from pytest_llmdet.engines.llm import LLM
        from pytest_llmdet.engines.seeding import configure_torch, seed_everything

        kind = engine_kind(spec.engine)
        if kind.in_process and not self._torch_configured:
            configure_torch(self.settings.deterministic_algorithms, self.settings.threads)
            self._torch_configured = True
        engine = kind.engine_for(self.pool.get(spec))
        s = self.settings
        seed_everything(s.seed)
        return LLM(engine, seed=s.seed, max_new_tokens=s.max_new_tokens, inherit_processors=s.inherit_processors,
                   stats=self.stats)

    def fingerprint_for(self, llm: LLM, weights: bool = True) -> dict[str, Any]:
        """The environment fingerprint of the model behind `llm` (computed once per model); `weights=False`
        leaves out a local model's weights hash."""
        from pytest_llmdet.engines.fingerprint import environment_fingerprint

        engine = llm.engine
        key = (engine.spec, weights)
        if key not in self._fingerprints:
            base = engine.plan(self.settings.max_new_tokens, {}, self.settings.inherit_processors)
            eos = base.config.get("eos_token_id")  # the tokens that end an output: not among the settings recorded
            self._fingerprints[key] = environment_fingerprint(
                **engine.describe(), generation=base.settings, cache=self.weights_cache, weights=weights,
                chat_template=getattr(engine.tokenizer, "chat_template", None),
                eos_token_ids=sorted(eos if isinstance(eos, list) else [] if eos is None else [eos]))
        return self._fingerprints[key]

    def worker_data(self) -> dict[str, Any]:
        """What this process loaded and generated: the session's share, which an xdist worker sends the controller
        (hooks/workers.py)."""
        loaded = self.pool.loaded.values() if "pool" in self.__dict__ else ()
        stats = self.stats if "stats" in self.__dict__ else None
        return {"loads": [{"model": loaded_line(m), "seconds": m.load_seconds, "worker": self.worker} for m in loaded],
                "generations": {"count": stats.count if stats else 0, "seconds": stats.seconds if stats else 0.0}}

    def merge_worker(self, data: dict[str, Any]) -> None:
        """On the controller: add what one xdist worker loaded and generated."""
        self.worker_loads += data["loads"]
        for key in ("count", "seconds"):
            self.worker_generations[key] += data["generations"][key]

    def cost(self) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """The model loads and generations of the whole run (this process's and its workers')."""
        own = self.worker_data()
        generations = {key: own["generations"][key] + self.worker_generations[key] for key in ("count", "seconds")}
        return own["loads"] + self.worker_loads, generations


def loaded_line(loaded: LoadedModel) -> str:
    """One line naming a loaded model, as its engine writes it: name, dtype and where it runs."""
    from pytest_llmdet.engines.kinds import engine_kind

    return engine_kind(loaded.spec.engine).loaded_line(loaded)


__all__ = ["DeterminismState", "LLMDetSession", "loaded_line"]
