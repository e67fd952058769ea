"""The plugin's three markers: their help text (registered in one place, plugin.py) and the pure parsers of
their arguments. Each parser raises an error that says how the marker is used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_llmdet.settings import ComparePlan, Settings, SnapshotSettings
from pytest_llmdet.settings.values import (
    FACTOR_WORDS,
    Record,
    SettingsError,
    parse_bool,
    parse_compare,
    parse_device,
    parse_dtype,
    parse_engine,
    parse_factors,
    parse_top_k,
)

if TYPE_CHECKING:
    from pytest_llmdet.vocabulary import FactorName

DEFAULT_BATCH_SIZE = 4  # the batch probe's batch with `batch=True`

MARKERS = (
    "llm_model(name, dtype=None, device=None, trust_remote_code=None, engine=None): the `llm` fixture of this "
    "test uses another model (a hub id or a local directory) or another engine (transformers, vllm, openai; "
    "the name may then be left out); each distinct model loads once per session",
    'llm_snapshot(compare="exact" or "tolerant", top_k=N): how this test\'s golden snapshots are compared',
    "llm_determinism(runs=None, batch=False, factors=None): run this test `runs` times (default "
    "--llm-determinism-runs) and fail it if any llm.generate call gives other token IDs in another run; "
    "batch=True (or a batch size) also generates each prompt inside a left-padded batch and compares; "
    f"factors=[...] regenerates each call once under each factor ({', '.join(FACTOR_WORDS)}, or \"all\") "
    "and compares",
)

MODEL_USAGE = ('usage: @pytest.mark.llm_model("id-or-path", dtype=..., device=..., trust_remote_code=..., '
               'engine=...), or @pytest.mark.llm_model(engine="vllm") for the run\'s model on another engine')
SNAPSHOT_USAGE = 'usage: @pytest.mark.llm_snapshot(compare="exact" or "tolerant", top_k=N)'
DETERMINISM_USAGE = ("usage: @pytest.mark.llm_determinism(runs=N, batch=False), with N >= 1; "
                     "batch=True or a batch size >= 2; factors=[...]: \"all\" or a list of "
                     + ", ".join(FACTOR_WORDS))


class MarkerUsageError(ValueError):
    """`@pytest.mark.llm_determinism` was given arguments it does not take."""


class ModelChoice(Record):
    """What `@pytest.mark.llm_model` asks for: the model (as written) and its dtype, device and trust."""

    name: str | None  # None: the run's model (a marker that names only an engine)
    dtype: str
    device: str
    trust_remote_code: bool
    engine: str = "transformers"


class CheckPlan(Record):
    """How one test is checked: how many runs, the batch size of the batch probe (0: no probe), and the other
    factors each call is regenerated under once (the batch factor is `batch_size`)."""

    runs: int
    batch_size: int = 0
    factors: tuple[FactorName, ...] = ()  # never batch

    @property
    def factor_names(self) -> tuple[FactorName, ...]:
        """Every factor of the check, batch included, in the matrix's order."""
        from pytest_llmdet.vocabulary import FactorName

        return (FactorName.BATCH,) * bool(self.batch_size) + self.factors


def model_choice(args: tuple[Any, ...], kwargs: dict[str, Any], defaults: Settings) -> ModelChoice:
    """The arguments of `@pytest.mark.llm_model(...)`, the run's settings filling in what it leaves out."""
    unknown = set(kwargs) - {"dtype", "device", "trust_remote_code", "engine"}
    engine_only = not args and "engine" in kwargs
    if not engine_only and (len(args) != 1 or not isinstance(args[0], str)) or len(args) > 1 or unknown:
        raise SettingsError(MODEL_USAGE + (f"; unknown argument(s): {', '.join(sorted(unknown))}" if unknown else ""))
    try:
        dtype = parse_dtype(str(kwargs.get("dtype", defaults.dtype)))
        device = parse_device(str(kwargs.get("device", defaults.device)))
        trust = kwargs.get("trust_remote_code", defaults.trust_remote_code)
        trust = parse_bool(str(trust)) if not isinstance(trust, bool) else trust
        engine = str(kwargs.get("engine", defaults.engine))
        try:
            engine = parse_engine(engine)
        except ValueError as error:
            raise ValueError(f"engine={engine!r}: {error}") from None
    except ValueError as error:
        raise SettingsError(f"bad argument to @pytest.mark.llm_model: {error}") from None
    return ModelChoice(args[0] if args else None, dtype, device, trust, engine)


def compare_plan(default: SnapshotSettings, marker_args: tuple[Any, ...] | None,
                 marker_kwargs: dict[str, Any] | None) -> ComparePlan:
    """The comparison of one test: the run's, overridden by `@pytest.mark.llm_snapshot(compare=..., top_k=...)`."""
    kwargs = dict(marker_kwargs or {})
    unknown = set(kwargs) - {"compare", "top_k"}
    if marker_args:
        raise SettingsError(SNAPSHOT_USAGE)
    if unknown:
        raise SettingsError(f"{SNAPSHOT_USAGE}; unknown argument(s): {', '.join(sorted(unknown))}")
    try:
        mode = parse_compare(str(kwargs.get("compare", default.compare)))
        top_k = kwargs.get("top_k", default.top_k)
        top_k = parse_top_k(str(top_k)) if not isinstance(top_k, bool) else parse_top_k("")
    except ValueError as error:
        raise SettingsError(f"bad argument to @pytest.mark.llm_snapshot: {error}; {SNAPSHOT_USAGE}") from None
    return ComparePlan(mode, top_k)


def check_plan(marker_args: tuple[Any, ...] | None, marker_kwargs: dict[str, Any] | None, default_runs: int,
               check_all: bool, uses_llm: bool, default_factors: tuple[FactorName, ...] = ()) -> CheckPlan | None:
    """The check of one test, from its `llm_determinism` marker (None: unmarked) and the options; None when
    the test is not checked. `default_factors` (--llm-factors) apply to every test that uses `llm`; a test they
    alone check runs once (the re-runs are --llm-check-determinism's or the marker's)."""
    suite_factors = default_factors if uses_llm else ()
    if marker_kwargs is None:
        if not uses_llm or not (check_all or suite_factors):
            return None
        return _with_factors(CheckPlan(default_runs if check_all else 1), suite_factors, DEFAULT_BATCH_SIZE)
    unknown = set(marker_kwargs) - {"runs", "batch", "factors"}
    if marker_args or unknown:
        raise MarkerUsageError(DETERMINISM_USAGE + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
    runs = marker_kwargs.get("runs", default_runs)
    if runs is None:
        runs = default_runs
    batch = marker_kwargs.get("batch", False)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise MarkerUsageError(f"{DETERMINISM_USAGE}; got runs={runs!r}")
    if batch is True:
        batch_size = DEFAULT_BATCH_SIZE
    elif batch is False or batch is None:
        batch_size = 0
    elif isinstance(batch, int) and batch >= 2:
        batch_size = batch
    else:
        raise MarkerUsageError(f"{DETERMINISM_USAGE}; got batch={batch!r}")
    factors = marker_kwargs.get("factors") or ()
    try:
        if not isinstance(factors, (str, list, tuple)):
            raise ValueError("a list of names, or \"all\"")
        named = parse_factors(factors)
    except ValueError as error:
        raise MarkerUsageError(f"{DETERMINISM_USAGE}; got factors={factors!r}: {error}") from None
    plan = CheckPlan(runs, batch_size)
    return _with_factors(_with_factors(plan, named, DEFAULT_BATCH_SIZE), suite_factors, DEFAULT_BATCH_SIZE)


def _with_factors(plan: CheckPlan, factors: tuple[FactorName, ...], batch_size: int) -> CheckPlan:
    """`plan` with `factors` added (batch as a batch size, unless the plan has one already)."""
    from pytest_llmdet.vocabulary import FACTOR_NAMES, FactorName

    others = tuple(name for name in FACTOR_NAMES
                   if name != FactorName.BATCH and (name in factors or name in plan.factors))
    batch = plan.batch_size or (batch_size if FactorName.BATCH in factors else 0)
    return CheckPlan(plan.runs, batch, others)
