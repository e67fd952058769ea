"""The engines by name: what the rest of the plugin needs of an engine without importing it. Each kind says
what it checks of the run's settings at startup, which of them are its own (its spec options), its report
header line, the summary's line for a model it loaded, and how it loads a model and wraps it in the engine
verbs (engines.Engine). `engine_kind(name)` is the one place a name becomes an engine: no module outside
engines/ compares engine names (tests/test_layout.py checks it).

Imported at startup (pytest_configure checks the settings through it), so it imports nothing itself: an
engine's module is imported when a spec asks for it (vLLM and the openai client are optional)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_llmdet.settings.values import SettingsError, url_without_credentials

if TYPE_CHECKING:
    from pytest_llmdet.engines import Engine
    from pytest_llmdet.engines.models import EngineOptions, LoadedModel, ModelSpec
    from pytest_llmdet.settings import Settings

_SERVER_URL = "set --llm-base-url or llm_base_url, such as http://127.0.0.1:8000/v1"


class EngineKind:
    """One engine, by name: what every engine answers (each kind below is one engine)."""

    name: str
    prefetches = False  # whether --llm-prefetch generates ahead on it (its engine has the generate_each verb)
    # Whether its model runs in this process. Only then are torch's deterministic settings made: they change nothing
    # a server computes, and torch.use_deterministic_algorithms imports torch's compiler (1.5 s here), which the
    # openai engine's local side (a tokenizer and two configs) does not.
    in_process = True

    def check(self, settings: Settings) -> None:
        """Refuse, at startup, settings this engine cannot run with when it is the run's engine (SettingsError)."""

    def options(self, settings: Settings) -> EngineOptions:
        """The settings that are this engine's own, as its model specs hold them; SettingsError when one it
        needs is not set (an engine a marker chose)."""
        raise NotImplementedError

    def header_line(self, settings: Settings) -> str | None:
        """The report header's line for this engine as the run's: what generates, and what does not apply."""
        return None

    def prefetch_line(self, settings: Settings) -> str:
        """The header's line for --llm-prefetch in a check on this engine as the run's."""
        return ("llmdet: prefetch: nothing to prefetch on the transformers engine (each call is generated alone, "
                "as in a run without --llm-prefetch); tests an llm_model marker puts on the vllm or openai engine "
                "are prefetched")

    def loaded_line(self, loaded: LoadedModel) -> str:
        """The summary's line for a model this engine loaded."""
        raise NotImplementedError

    def load(self, spec: ModelSpec, worker: str | None) -> LoadedModel:
        """Load the model of `spec` (ModelLoadError says why not and what to do); `worker` is the xdist worker."""
        raise NotImplementedError

    def engine_for(self, loaded: LoadedModel) -> Engine:
        """The engine verbs over what `load` gave."""
        raise NotImplementedError


class TransformersKind(EngineKind):
    """from_pretrained and generate in this process (engines/transformers.py), the default."""

    name = "transformers"

    def options(self, settings: Settings) -> EngineOptions:
        from pytest_llmdet.engines.models import TransformersOptions

        return TransformersOptions(settings.device_map)

    def loaded_line(self, loaded: LoadedModel) -> str:
        spec = loaded.spec
        where = loaded.device if spec.device_map is None else \
            f"device_map {spec.device_map} (inputs on {loaded.device})"
        return f"{spec.source.name} {spec.dtype} {where}"

    def load(self, spec: ModelSpec, worker: str | None) -> LoadedModel:
        from pytest_llmdet.engines.models import load_model

        return load_model(spec, worker)

    def engine_for(self, loaded: LoadedModel) -> Engine:
        from pytest_llmdet.engines.transformers import TransformersEngine

        return TransformersEngine(loaded)


class VLLMKind(EngineKind):
    """vLLM's offline LLM in this process (engines/vllm.py)."""

    name = "vllm"
    prefetches = True

    def prefetch_line(self, settings: Settings) -> str:
        return ("llmdet: prefetch: the recorded calls of the selected tests in one vllm.LLM.generate call when the "
                "model loads; a result that differs from its golden is confirmed by a lone call")

    def options(self, settings: Settings) -> EngineOptions:
        from pytest_llmdet.engines.models import VLLMOptions

        return VLLMOptions(settings.vllm_args, settings.threads)

    def header_line(self, settings: Settings) -> str | None:
        arguments = " ".join(f"{key}={value}" for key, value in settings.vllm_args)
        return ("llmdet: engine vllm (vLLM's offline LLM in this process"
                + (f"; llm_vllm_args {arguments}" if arguments else "") + "; llm_device does not apply)")

    def loaded_line(self, loaded: LoadedModel) -> str:
        spec = loaded.spec
        threads = loaded.details.threads
        where = loaded.device if threads is None else f"{loaded.device}, {threads} thread{'s' * (threads != 1)}"
        share = loaded.details.memory_share
        split = f", gpu_memory_utilization {share:g} per xdist worker" if share is not None else ""
        return f"{spec.source.name} {spec.dtype} on the vllm engine ({loaded.details.version}, {where}{split})"

    def load(self, spec: ModelSpec, worker: str | None) -> LoadedModel:
        from pytest_llmdet.engines.vllm import load_vllm

        return load_vllm(spec)

    def engine_for(self, loaded: LoadedModel) -> Engine:
        from pytest_llmdet.engines.vllm import VLLMEngine

        return VLLMEngine(loaded)


class ServerKind(EngineKind):
    """An OpenAI-compatible server the user runs (engines/openai_server.py)."""

    name = "openai"
    prefetches = True
    in_process = False

    def prefetch_line(self, settings: Settings) -> str:
        return (f"llmdet: prefetch: the recorded calls of the selected tests sent at once when the server is first "
                f"needed, {settings.concurrency} in flight (llm_concurrency); a result that differs from its golden "
                "is confirmed by a lone request")

    def check(self, settings: Settings) -> None:
        if settings.base_url is None:
            raise SettingsError(f"pytest-llmdet: --llm-engine openai needs the server's URL: {_SERVER_URL}")

    def options(self, settings: Settings) -> EngineOptions:
        from pytest_llmdet.engines.models import ServerOptions

        if settings.base_url is None:
            raise SettingsError(f"the openai engine needs the server's URL: {_SERVER_URL}")
        return ServerOptions(settings.base_url, settings.served_model, settings.api_key_env, settings.request_timeout)

    def header_line(self, settings: Settings) -> str | None:
        shown = url_without_credentials(settings.base_url or "")
        served = f", served model {settings.served_model}" if settings.served_model else ""
        return (f"llmdet: engine openai, the server at {shown}{served} (its dtype, device and deterministic "
                f"algorithms are the server's; API key from ${settings.api_key_env})")

    def loaded_line(self, loaded: LoadedModel) -> str:
        details = loaded.details
        return (f"{loaded.spec.source.name} on the openai engine: {details.served_model} served by {details.label} "
                f"at {details.url}")

    def load(self, spec: ModelSpec, worker: str | None) -> LoadedModel:
        from pytest_llmdet.engines.openai_server import connect

        return connect(spec)

    def engine_for(self, loaded: LoadedModel) -> Engine:
        from pytest_llmdet.engines.openai_server import ServerEngine

        return ServerEngine(loaded)


KINDS: dict[str, EngineKind] = {kind.name: kind for kind in (TransformersKind(), VLLMKind(), ServerKind())}


def engine_kind(name: str) -> EngineKind:
    """The kind of the engine named `name` (one of settings.values.ENGINES, which the settings have checked)."""
    return KINDS[name]


def check_settings(settings: Settings) -> None:
    """Refuse at startup the settings the run's engine cannot run with (settings.resolve calls it)."""
    engine_kind(settings.engine).check(settings)


def load(spec: ModelSpec, worker: str | None = None) -> LoadedModel:
    """Load the model of `spec` on its engine (the model pool's loader)."""
    return engine_kind(spec.engine).load(spec, worker)


__all__ = ["KINDS", "EngineKind", "check_settings", "engine_kind", "load"]
