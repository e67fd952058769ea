"""The engine tests' model (and the engine benchmark's): a tiny Qwen2 that vLLM's CPU attention can run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EngineModels:
    original: Path
    perturbed: Path  # the same shape and tokenizer, other weights: other tokens


def build_model(folder: Path, seed: int) -> Path:
    """A random Qwen2 with hidden 128 and 2 heads (head_dim 64), fixed-seed weights large enough for varied
    greedy tokens, and the embedded model's tokenizer, chat template and generation config."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pytest_llmdet.engines.sources import EMBEDDED_MODEL_DIR

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=1400, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=0, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
                         initializer_range=0.3)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(EMBEDDED_MODEL_DIR / name, folder / name)
    return folder


SERVER_START_LIMIT = 300.0  # seconds the server may take to answer /health (about 30 to 60 s on 2 cores)


@dataclass(frozen=True)
class Server:
    url: str  # the OpenAI-compatible API, http://127.0.0.1:PORT/v1
    log: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(root: str) -> bool:
    try:
        with urllib.request.urlopen(root + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class ServerDidNotStart(RuntimeError):
    """The vLLM server exited or did not answer /health in time; the message holds its log's end."""


@contextlib.contextmanager
def vllm_server(model: Path, log: Path, dtype: str = "float32", extra_args: Sequence[str] = (),
                extra_env: Mapping[str, str] | None = None) -> Iterator[Server]:
    """A vLLM server of `model` on a free port of 127.0.0.1 (this interpreter's vLLM): started, waited for
    (bounded) at /health, and stopped by its pid on the way out. `extra_args` go on its command line and
    `extra_env` into its environment (gpu_check.py: VLLM_BATCH_INVARIANT=1 and an attention backend)."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           **(extra_env or {})}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host",
               "127.0.0.1", "--port", str(port), "--dtype", dtype, "--max-model-len", "512", "--enforce-eager",
               "--logprobs-mode", "processed_logprobs", *extra_args]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_LIMIT
        while not _healthy(root):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise ServerDidNotStart(f"the vLLM server did not come up (exit {process.poll()}); its log:\n{tail}")
            time.sleep(0.5)  # polling a starting server, not timing anything
        yield Server(root + "/v1", log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def served_models(server: Server) -> list[str]:
    with urllib.request.urlopen(server.url + "/models", timeout=10) as response:
        return [model["id"] for model in json.load(response)["data"]]
