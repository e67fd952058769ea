"""Which engine generates for a model spec: loading it (once per session, through engines.models.ModelPool) and
wrapping what was loaded in the engine's verbs (engines.Engine). Each engine's module is imported only when a
spec asks for it: vLLM and the openai client are optional."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_llmdet.engines import Engine
    from pytest_llmdet.engines.models import LoadedModel, ModelSpec


def load(spec: ModelSpec, worker: str | None = None) -> LoadedModel:
    """Load the model of `spec` on its engine (ModelLoadError says why not and what to do)."""
    if spec.engine == "vllm":
        from pytest_llmdet.engines.vllm import load_vllm

        return load_vllm(spec)
    if spec.engine == "openai":
        from pytest_llmdet.engines.openai_server import connect

        return connect(spec)
    from pytest_llmdet.engines import models

    return models.load_model(spec, worker)


def engine_for(loaded: LoadedModel) -> Engine:
    """The engine verbs over what `load` gave."""
    if loaded.spec.engine == "vllm":
        from pytest_llmdet.engines.vllm import VLLMEngine

        return VLLMEngine(loaded)
    if loaded.spec.engine == "openai":
        from pytest_llmdet.engines.openai_server import ServerEngine

        return ServerEngine(loaded)
    from pytest_llmdet.engines.transformers import TransformersEngine

    return TransformersEngine(loaded)
