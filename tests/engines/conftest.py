"""Fixtures of the engine tests, which need vLLM (the engine venv of .ci/run): two tiny Qwen2 models that vLLM's
CPU attention can run (head_dim 64), the second with perturbed weights, and a real vLLM server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from engine_models import EngineModels, Server, ServerDidNotStart, build_model
from engine_models import vllm_server as start_server


@pytest.fixture(scope="session")
def engine_models(tmp_path_factory: pytest.TempPathFactory) -> EngineModels:
    root = tmp_path_factory.mktemp("engine-models")
    return EngineModels(build_model(root / "tiny-qwen2-h128", seed=0), build_model(root / "perturbed", seed=1))


@pytest.fixture(scope="session")
def vllm_server(engine_models: EngineModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A vLLM server of the original model, for the whole session (engine_models.vllm_server)."""
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    try:
        with start_server(engine_models.original, log) as server:
            yield server
    except ServerDidNotStart as error:
        pytest.fail(str(error))
