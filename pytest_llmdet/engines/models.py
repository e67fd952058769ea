"""Which model a test uses, where it comes from, and loading it once per session with clear errors."""

from __future__ import annotations

import gc
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pytest_llmdet.engines.devices import resolve_device
from pytest_llmdet.engines.sources import WHAT_TO_SET, ModelLoadError, ModelSource
from pytest_llmdet.errors import first_line

# What each engine takes of the settings (engines/kinds.py builds them): only what it uses, so that one model on
# one engine is one spec.

@dataclass(frozen=True)
class TransformersOptions:
    """The transformers engine's own settings."""

    engine: ClassVar[str] = "transformers"
    device_map: str | None = None  # accelerate's device map (auto, balanced, ...): the spec's device is then unused


@dataclass(frozen=True)
class VLLMOptions:
    """The vllm engine's own settings."""

    engine: ClassVar[str] = "vllm"
    arguments: tuple[tuple[str, Any], ...] = ()  # of vllm.LLM, sorted by key (llm_vllm_args)
    threads: int | None = None  # torch's intra-op threads on the CPU (llm_threads; None: engines/vllm.py chooses)


@dataclass(frozen=True)
class ServerOptions:
    """The openai engine's own settings: the server and how it is asked."""

    engine: ClassVar[str] = "openai"
    base_url: str = field(repr=False)  # the server's API (it may hold a password)
    served_model: str | None = None  # the served model's name, when the server does not name it like ours
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable of the key (never the key itself)
    request_timeout: float = 60.0  # seconds a request may take


EngineOptions = TransformersOptions | VLLMOptions | ServerOptions


@dataclass(frozen=True)
class ModelSpec:
    """Everything that makes two loaded models different: each distinct spec is loaded once per session."""

    source: ModelSource
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    options: EngineOptions = TransformersOptions()  # the engine that generates, with its own settings

    @property
    def engine(self) -> str:
        """The name of the engine that generates: transformers, vllm or openai (engines/kinds.py)."""
        return self.options.engine

    @property
    def device_map(self) -> str | None:
        """accelerate's device map that places the model (the transformers engine's; None on the others)."""
        return self.options.device_map if isinstance(self.options, TransformersOptions) else None


@dataclass
class LoadedModel:
    """A model and its tokenizer, loaded once and shared by every test that asks for the same spec. On the vllm
    engine `model` is the vllm.LLM, on the openai engine the client of the server; `details` are what the
    engine learned of itself as it loaded, frozen (engines/vllm.VLLMDetails, engines/openai_server.ServerDetails;
    None on transformers)."""

    spec: ModelSpec
    model: Any
    tokenizer: Any
    device: str
    load_seconds: float
    generation_config: dict[str, Any] = field(default_factory=dict)
    details: Any = None
    unavailable: str | None = None  # why the engine stopped answering (a server gone): later calls fail at once


def accelerate_installed() -> bool:
    """Whether accelerate, which transformers needs for a device map, can be imported."""
    return importlib.util.find_spec("accelerate") is not None


def load_model(spec: ModelSpec, worker: str | None = None) -> LoadedModel:
    """Load a model and tokenizer through `from_pretrained`, in eval mode, on the requested device (`auto`:
    see `auto_device`; `worker` is the pytest-xdist worker id), or spread by accelerate's device map."""
    started = time.perf_counter()
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    source = spec.source
    device = resolve_device(spec.device, worker) if spec.device_map is None else None
    if spec.device_map is not None and not accelerate_installed():
        raise ModelLoadError(
            f"llm_device_map = {spec.device_map} loads model {source.name!r} through accelerate's device map, "
            "but accelerate is not installed. Install it (pip install accelerate), or leave llm_device_map "
            "unset to put the whole model on llm_device."
        )
    dtype = "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)
    kwargs = {"trust_remote_code": spec.trust_remote_code}
    placement = {} if spec.device_map is None else {"device_map": spec.device_map}
    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # loading chatter and progress bars are not the test log's concern
    hf_logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source.location, **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(source.location, dtype=dtype, **placement,
                                                                  **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure here becomes one clear message
        raise ModelLoadError(_explain_load_failure(source, error)) from error
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()
    if device is None:  # placed by the device map: inputs go where the first layers are
        device = str(model.device)
    else:
        model.to(device)
    model.eval()
    generation_config = model.generation_config.to_diff_dict() if model.generation_config is not None else {}
    generation_config.pop("transformers_version", None)
    return LoadedModel(spec, model, tokenizer, device, time.perf_counter() - started, generation_config)


def _explain_load_failure(source: ModelSource, error: Exception) -> str:
    """One line: what was tried, why it failed (the first line of the error), what to do."""
    first = first_line(error, type(error).__name__)
    if source.kind == "hub":
        if _hub_offline() and not _in_hub_cache(source.location):
            return (f"model {source.name!r} is not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 is set, so "
                    f"the hub was not asked; download it once where there is network (hf download {source.location})"
                    f", or point {WHAT_TO_SET} at a local model directory")
        if _hub_offline():
            return (f"could not load model {source.name!r} from the local Hugging Face cache (HF_HUB_OFFLINE=1 is "
                    f"set): {type(error).__name__}: {first}; download it again where there is network "
                    f"(hf download {source.location}), or point {WHAT_TO_SET} at a local model directory")
        return (f"could not load model {source.name!r} from the Hugging Face hub: {type(error).__name__}: "
                f"{first}; if the machine is offline, download the model once and point {WHAT_TO_SET} at "
                "its directory, or set HF_HUB_OFFLINE=1 with the model in the local cache")
    return (f"could not load model {source.name!r} from {source.location}: {type(error).__name__}: {first}; "
            "the directory must hold what save_pretrained writes (config.json, weights, tokenizer files)")


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: its constant is what the load obeyed.
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the cache cannot even look up is not in it
        return False


@dataclass
class ModelPool:
    """Loads each distinct model spec once per session, and remembers a failed load so it is not retried."""

    loaded: dict[ModelSpec, LoadedModel] = field(default_factory=dict)
    failed: dict[ModelSpec, ModelLoadError] = field(default_factory=dict)
    worker: str | None = None  # the pytest-xdist worker id of this process: `auto` picks its device by it
    load: Callable[[ModelSpec, str | None], LoadedModel] | None = None  # every engine's (registry.load); None:
    # transformers' load_model

    def get(self, spec: ModelSpec) -> LoadedModel:
        if spec in self.failed:
            raise self.failed[spec]
        if spec not in self.loaded:
            try:
                self.loaded[spec] = (self.load or load_model)(spec, self.worker)
            except ModelLoadError as error:
                self.failed[spec] = error
                raise
            _freeze_long_lived_objects()
        return self.loaded[spec]


_frozen = False


def _freeze_long_lived_objects() -> None:
    """Once per process, after the first model load: move every object alive now (torch, transformers, the
    model: some 400,000 of them, alive until the process ends) out of the garbage collector's sight.

    Otherwise every full collection walks them all again: pytest runs five at the end of each session (about
    0.9 s of CPU with torch loaded) and Python one at exit. Garbage is collected first, so nothing collectable
    is frozen; a later load is not frozen again, so in-process pytester sessions freeze at most one session's
    objects.
    """
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()
