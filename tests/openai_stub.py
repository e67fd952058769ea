"""A tiny OpenAI-compatible server for the openai engine's tests: GET /version, GET /v1/models and
POST /v1/completions answered as vLLM's server answers them (the format measured on vLLM 0.32.0), generating
greedily with a real transformers model (the embedded one by default).

    with OpenAIStub() as stub:          # or stub.start() ... stub.stop()
        stub.url                        # http://127.0.0.1:PORT/v1
        stub.requests                   # [(method, path, json body or None), ...]
        stub.authorizations             # the Authorization header of each request, in the same order

Misbehaviours: `token_ids=False` leaves `token_ids` and `prompt_token_ids` out of each choice (an older
server); `perturb=True` adds a large bias to one token's logits, so the tokens differ from the transformers
engine's on any hardware; `version=None` serves no /version (404); `served_name` serves the model under another
name; `hang=True` never answers a completion after the first (the connection probe) until the stub stops;
`few_candidates=True` returns only the chosen token's log-prob at each step, whatever `logprobs` asks for;
`batch_variant=N` perturbs (as `perturb`) the N completions after the connection probe and no later one: a
server that is not batch-invariant, whose answers to a prefetch's batch differ from its answers to lone requests;
`root` and `max_model_len` are what /v1/models says of the served model (another deployment)."""

from __future__ import annotations

import functools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pytest_llmdet.engines.sources import EMBEDDED_MODEL_DIR

VERSION = "0.32.0"
MAX_MODEL_LEN = 512
PERTURB_TOKEN = 700  # the token the perturbed stub favours (not an EOS or special token of the embedded model)
PERTURB_BIAS = 100.0
PREFIX = "token_id:"


@functools.cache
def load(model_dir: str) -> tuple[Any, Any]:
    """The model (float32, eval, with a neutral generation config: every setting comes from the request) and
    its tokenizer, loaded once per process and shared by every stub (generation is serialized by a lock)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the test log
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    finally:
        if progress:
            hf_logging.enable_progress_bar()
    model.eval()
    model.generation_config = GenerationConfig()
    return model, tokenizer


class _Bias:
    """A logits processor that adds PERTURB_BIAS to PERTURB_TOKEN's logit."""

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        scores[:, PERTURB_TOKEN] += PERTURB_BIAS
        return scores


class OpenAIStub:
    """The server; see the module docstring."""

    def __init__(self, model_dir: Path | str = EMBEDDED_MODEL_DIR, *, token_ids: bool = True, perturb: bool = False,
                 version: str | None = VERSION, served_name: str | None = None, hang: bool = False,
                 few_candidates: bool = False, batch_variant: int = 0, root: str | None = None,
                 max_model_len: int = MAX_MODEL_LEN) -> None:
        self.model_dir = str(model_dir)
        self.batch_variant = batch_variant
        self.root = root or self.model_dir
        self.max_model_len = max_model_len
        self._local = threading.local()  # the number of the completion a handler thread answers (0: the probe)
        self.served_name = served_name or self.model_dir
        self.hang = hang
        self.few_candidates = few_candidates
        self._stopped = threading.Event()
        self.token_ids = token_ids
        self.perturb = perturb
        self.version = version
        self.requests: list[tuple[str, str, Any]] = []
        self.authorizations: list[str | None] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "the stub is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> OpenAIStub:
        self.model, self.tokenizer = load(self.model_dir)
        stub = self

        class Handler(_Handler):
            server_stub = stub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="openai-stub", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()  # a hanging request ends
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def completions(self) -> list[dict[str, Any]]:
        """The bodies of the POST /v1/completions requests so far."""
        return [body for method, path, body in self.requests if method == "POST" and path == "/v1/completions"]

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.requests if (m, p) == (method, path))

    # -- the API -----------------------------------------------------------------------------------------

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """(status, JSON) for one request."""
        if (method, path) == ("GET", "/version") and self.version is not None:
            return 200, {"version": self.version}
        if (method, path) == ("GET", "/v1/models"):
            return 200, {"object": "list", "data": [{
                "id": self.served_name, "object": "model", "created": 1796165919, "owned_by": "vllm",
                "root": self.root, "parent": None, "max_model_len": self.max_model_len}]}
        if (method, path) == ("POST", "/v1/completions"):
            return self.complete(body)
        return 404, _error(f"{method} {path} is not served", "NotFoundError")

    def complete(self, body: dict[str, Any]) -> tuple[int, Any]:
        import torch
        from transformers import LogitsProcessorList

        if self.hang and len(self.completions()) > 1:
            self._stopped.wait()  # never answers while the stub runs: the client's timeout ends the request
        if body.get("model") != self.served_name:
            return 404, _error(f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        prompt = body.get("prompt")
        if not isinstance(prompt, list) or not all(isinstance(token, int) for token in prompt):
            return 400, _error("the stub takes one prompt of token IDs", "BadRequestError")
        if body.get("temperature", 1.0) != 0:
            return 400, _error("the stub generates greedily only (temperature 0)", "BadRequestError")
        stop = list(body.get("stop_token_ids") or [])
        if not body.get("ignore_eos") and self.tokenizer.eos_token_id is not None:
            stop.append(self.tokenizer.eos_token_id)
        k = body.get("logprobs")
        extra = {"min_new_tokens": body["min_tokens"]} if body.get("min_tokens") else {}
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=body.get("max_tokens", 16), do_sample=False,
                repetition_penalty=body.get("repetition_penalty", 1.0), eos_token_id=stop or None,
                pad_token_id=self.tokenizer.pad_token_id or 0, output_scores=True, return_dict_in_generate=True,
                logits_processor=LogitsProcessorList([_Bias()] if self._perturbed() else []), **extra)
        new = out.sequences[0, len(prompt):].tolist()
        logprobs = None
        if k is not None:
            steps = [torch.log_softmax(scores[0].float(), dim=-1) for scores in out.scores]
            top = []
            for token, step in zip(new, steps, strict=True):
                values, ids = torch.topk(step, k=max(k, 1))
                candidates = {f"{PREFIX}{i}": v for i, v in zip(ids.tolist(), values.tolist(), strict=True)}
                candidates.setdefault(f"{PREFIX}{token}", step[token].item())
                top.append(candidates if k and not self.few_candidates else {f"{PREFIX}{token}": step[token].item()})
            pieces = [self.tokenizer.decode([token]) for token in new]
            logprobs = {"text_offset": [sum(len(p) for p in pieces[:i]) for i in range(len(new))],
                        "token_logprobs": [step[token].item() for token, step in zip(new, steps, strict=True)],
                        "tokens": [f"{PREFIX}{token}" for token in new], "top_logprobs": top}
        stopped = bool(new) and new[-1] in stop
        choice: dict[str, Any] = {
            "index": 0, "text": self.tokenizer.decode(new), "logprobs": logprobs,
            "finish_reason": "stop" if stopped else "length", "stop_reason": new[-1] if stopped else None,
            "token_ids": new, "prompt_logprobs": None, "prompt_token_ids": prompt}
        if not self.token_ids:
            del choice["token_ids"], choice["prompt_token_ids"]
        return 200, {"id": f"cmpl-{len(self.requests)}", "object": "text_completion", "created": 1796165920,
                     "model": self.model_dir, "choices": [choice],
                     "usage": {"prompt_tokens": len(prompt), "total_tokens": len(prompt) + len(new),
                               "completion_tokens": len(new)}}


    def _perturbed(self) -> bool:
        number = getattr(self._local, "number", 0)
        return self.perturb or 1 <= number <= self.batch_variant


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server: the client's connection pool is exercised
    server_stub: OpenAIStub

    def do_GET(self) -> None:
        self._serve(None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self._serve(body)

    def _serve(self, body: Any) -> None:
        stub = self.server_stub
        path = self.path.split("?")[0]
        with stub._lock:
            stub.requests.append((self.command, path, body))
            stub.authorizations.append(self.headers.get("Authorization"))
            stub._local.number = len(stub.completions()) - 1  # in the order the requests arrived
        try:
            status, answer = stub.answer(self.command, path, body)
        except Exception as error:  # noqa: BLE001 - a bug in the stub: a 500 that names it, not a dropped connection
            status, answer = 500, _error(f"stub: {type(error).__name__}: {error}", "InternalServerError")
        data = json.dumps(answer).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # no access log on stderr
