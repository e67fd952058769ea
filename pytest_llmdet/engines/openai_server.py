"""The openai engine: an OpenAI-compatible server the user runs (vLLM's, SGLang's, llama.cpp's), reached with
the `openai` client (timeouts, retries, auth). Prompts are tokenized locally and sent as token IDs to
/completions, with every sampling field of the forced-greedy plan in the request (the server's defaults, from
the model's generation config, cannot leak in), `return_token_ids` and `return_tokens_as_token_ids` so that
tokens and top-k candidates come back as IDs. A batch (the batch probe) is concurrent requests.

The API key comes only from the environment variable `llm_api_key_env` names; it is never written anywhere."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pytest_llmdet.engines.greedy import GreedyPlan
from pytest_llmdet.engines.models import LoadedModel, ModelLoadError, ModelSpec
from pytest_llmdet.engines.remote import RemoteEngine, first_line, is_usage_error, load_local_side
from pytest_llmdet.engines.remote_sampling import eos_ids_of, sampling_fields
from pytest_llmdet.engines.rows import RowOutput, row_from_steps

INSTALL = "pip install 'pytest-llmdet[openai]'"
TOKEN_ID_PREFIX = "token_id:"  # how return_tokens_as_token_ids spells a token
START_HINT = ("start the server (for vLLM: python -m vllm.entrypoints.openai.api_server --model DIR --host "
              "127.0.0.1 --port 8000), or point --llm-base-url / llm_base_url at it")
# Request fields that are not in the OpenAI API but that vLLM's server takes (and SGLang's), sent as extra body.
_EXTRA_FIELDS = ("top_k", "min_p", "repetition_penalty", "min_tokens", "stop_token_ids", "ignore_eos")


class EngineError(RuntimeError):
    """The engine answered, but not with what pytest-llmdet needs; the message names the server and the field."""


def import_openai() -> Any:
    try:
        import openai
    except ImportError as error:
        raise ModelLoadError(f"llm_engine = openai needs the openai client, which is not installed "
                             f"({first_line(error)}): {INSTALL}") from None
    return openai


def shown_url(url: str) -> str:
    """The URL as messages show it: without a user name and password (http://user:secret@host/v1)."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}" if sep else url


def _root(url: str) -> str:
    return url[: -len("/v1")] if url.endswith("/v1") else url


def server_version(url: str, api_key: str, timeout: float) -> str | None:
    """What the server's /version says (vLLM: {"version": "0.32.0"}), or None when it has no such endpoint.
    The standard library's client: the version is one GET, and openai's own HTTP library differs by release."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(_root(url) + "/version", headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = json.loads(response.read(1 << 16))
    except (OSError, ValueError, urllib.error.URLError):
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return str(version) if version is not None else None


def choose_served_model(served: list[str], spec: ModelSpec) -> str:
    """The served model for `spec`: the only one, or the one named like the model (as written, its folder, or
    the folder's name); ModelLoadError listing them otherwise."""
    if len(served) == 1:
        return served[0]
    source = spec.source
    wanted = {source.name, source.location, os.path.basename(source.location.rstrip("/"))}
    matches = [name for name in served if name in wanted or os.path.basename(name.rstrip("/")) in wanted]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(served) if served else "none"
    raise ModelLoadError(f"the server at {shown_url(spec.base_url or '')} serves {len(served)} models ({listed}), "
                         f"and none is named like model {source.name!r}; serve one model, or name the model as "
                         "the server does (--llm-model / @pytest.mark.llm_model)")


def connect(spec: ModelSpec) -> LoadedModel:
    """Reach the server at `spec.base_url` once (bounded by the request timeout, no retry), learn what it
    serves and its version, and check with a one-token request that it returns token IDs."""
    started = time.perf_counter()
    openai = import_openai()
    tokenizer, generation_config, limit = load_local_side(spec)
    url = spec.base_url or ""
    shown = shown_url(url)
    api_key = os.environ.get(spec.api_key_env) or "EMPTY"  # a server without --api-key accepts any
    client = openai.OpenAI(base_url=url, api_key=api_key, timeout=spec.request_timeout, max_retries=2)
    once = client.with_options(max_retries=0)
    try:
        listed = once.models.list().data
    except openai.APIConnectionError as error:
        raise ModelLoadError(f"cannot reach the OpenAI-compatible server at {shown} ({first_line(error)}; a request "
                             f"waits at most {spec.request_timeout:g} s, llm_request_timeout): {START_HINT}") from None
    except openai.AuthenticationError:
        raise ModelLoadError(f"the server at {shown} refused the API key (read from ${spec.api_key_env}, "
                             f"{'set' if os.environ.get(spec.api_key_env) else 'not set'}): set it to the key "
                             "the server was started with, or name another variable with llm_api_key_env") from None
    except openai.APIError as error:
        raise ModelLoadError(f"the server at {shown} did not list its models (GET /models: {first_line(error)}); "
                             "is it an OpenAI-compatible API? The URL ends with /v1 for vLLM") from None
    served = choose_served_model([str(model.id) for model in listed], spec)
    owner = next((str(getattr(model, "owned_by", "") or "") for model in listed if model.id == served), "")
    version = server_version(url, api_key, spec.request_timeout)
    label = " ".join(part for part in (owner or "server", version) if part)
    max_model_len = next((getattr(model, "max_model_len", None) for model in listed if model.id == served), None)
    if isinstance(max_model_len, int):
        limit = max_model_len if limit is None else min(limit, max_model_len)
    loaded = LoadedModel(spec, client, tokenizer, "server", 0.0, generation_config,
                         details={"max_positions": limit, "served_model": served, "label": label,
                                  "version": version, "url": shown})
    engine = ServerEngine(loaded)
    probe = engine.encode("Hello") or [0]
    try:
        engine.complete(probe[:8], {"max_tokens": 1, "temperature": 0.0, "logprobs": 2}, top_k=0)
    except EngineError as error:
        raise ModelLoadError(str(error)) from None
    loaded.load_seconds = time.perf_counter() - started
    return loaded


class ServerEngine(RemoteEngine):
    """An OpenAI-compatible server (see engines.Engine for the verbs)."""

    kind = "openai"

    @property
    def served_model(self) -> str:
        return self.loaded.details["served_model"]

    @property
    def server(self) -> str:
        details = self.loaded.details
        return f"the {details['label']} server at {details['url']}"

    def generate_rows(self, rows: list[list[int]], plan: GreedyPlan, top_k: int = 0,
                      pad_id: int | None = None, seed: int = 0) -> list[RowOutput]:
        """Each row as its own request; several rows (the batch probe) as concurrent requests, so that the
        server batches them with each other."""
        __tracebackhide__ = is_usage_error
        requests = [(list(row), sampling_fields(plan, self.kind, len(row), max(2, top_k), self.tokenizer_eos))
                    for row in rows]
        eos = eos_ids_of(plan)
        if len(requests) == 1:
            results = [self.complete(*requests[0], top_k=top_k)]
        else:
            with ThreadPoolExecutor(max_workers=len(requests)) as pool:
                results = list(pool.map(lambda request: self.complete(*request, top_k=top_k), requests))
        return [row_from_steps(token_ids, steps, top_k, eos) for token_ids, steps in results]

    def complete(self, prompt_ids: list[int], fields: dict[str, Any], top_k: int
                 ) -> tuple[list[int], list[dict[int, float]]]:
        """One /completions request: the new token IDs and, per step, the log-probs of the top candidates."""
        import openai

        extra = {name: fields[name] for name in _EXTRA_FIELDS if name in fields}
        extra.update(return_token_ids=True, return_tokens_as_token_ids=True)
        standard = {name: fields[name] for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty",
                                                    "seed") if fields.get(name) is not None}
        try:
            response = self.model.completions.create(
                model=self.served_model, prompt=prompt_ids, max_tokens=fields["max_tokens"], n=1, echo=False,
                stream=False, logprobs=fields["logprobs"], extra_body=extra, **standard)
        except openai.APIConnectionError as error:
            raise EngineError(f"{self.server} did not answer ({first_line(error)}); is it still running?") from None
        except openai.APIError as error:
            raise EngineError(f"{self.server} refused the request: {first_line(error)}") from None
        return self._parse(response, prompt_ids)

    def _parse(self, response: Any, prompt_ids: list[int]) -> tuple[list[int], list[dict[int, float]]]:
        choice = response.choices[0]
        extra = getattr(choice, "model_extra", None) or {}
        token_ids = extra.get("token_ids", getattr(choice, "token_ids", None))
        version = self.loaded.details.get("version")
        if not isinstance(token_ids, list):
            raise EngineError(
                f"{self.server} (/version: {version or 'not served'}) returned no token IDs: its completion has no "
                "`token_ids` field, although the request asked for return_token_ids: true. pytest-llmdet compares "
                "token IDs, so it needs a server that returns them (vLLM 0.10.2 or newer), or the vllm engine")
        sent = extra.get("prompt_token_ids")
        if isinstance(sent, list) and sent and sent != prompt_ids:
            raise EngineError(f"{self.server} generated from other prompt tokens than it was sent "
                              f"({sent[:8]}... for {prompt_ids[:8]}...); it must take token IDs as they are")
        logprobs = choice.logprobs
        top = getattr(logprobs, "top_logprobs", None)
        chosen = getattr(logprobs, "token_logprobs", None)
        if not isinstance(top, list) or not isinstance(chosen, list) or len(top) != len(token_ids):
            raise EngineError(f"{self.server} returned no log-probs for every token (the request asked for "
                              "logprobs); the margins need them")
        steps = []
        for token, candidates, logprob in zip(token_ids, top, chosen, strict=True):
            step: dict[int, float] = {}
            for key, value in (candidates or {}).items():
                if not str(key).startswith(TOKEN_ID_PREFIX):
                    raise EngineError(f"{self.server} returned top-k candidates as text ({key!r}), not as "
                                      f"'{TOKEN_ID_PREFIX}N', although the request asked for "
                                      "return_tokens_as_token_ids: true; the candidates need their token IDs")
                step[int(str(key)[len(TOKEN_ID_PREFIX):])] = float(value)
            if logprob is not None:
                step.setdefault(int(token), float(logprob))
            steps.append(step)
        return [int(token) for token in token_ids], steps

    def describe(self) -> dict[str, Any]:
        source = self.spec.source
        details = self.loaded.details
        return {"model": source.name, "source_kind": source.kind, "location": source.location, "revision": None,
                "dtype": "unknown", "device": "server", "compute_capability": None, "device_map": None,
                "engine": "openai", "engine_version": details.get("label"),
                "served_model": details.get("served_model"),
                "logprobs": "as the server computes them (vLLM: its --logprobs-mode)"}
