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
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from pytest_llmdet.engines.greedy import GenerationArgumentError, GreedyPlan
from pytest_llmdet.engines.models import LoadedModel, ModelSpec
from pytest_llmdet.engines.remote import RemoteDetails, RemoteEngine, is_usage_error, load_local_side
from pytest_llmdet.engines.remote_sampling import eos_ids_of, sampling_fields
from pytest_llmdet.engines.rows import RowOutput, RowRequest, row_from_steps
from pytest_llmdet.engines.sources import ModelLoadError
from pytest_llmdet.errors import cause_line, first_line
from pytest_llmdet.settings.values import url_without_credentials

INSTALL = "pip install 'pytest-llmdet[openai]'"
TOKEN_ID_PREFIX = "token_id:"  # how return_tokens_as_token_ids spells a token
START_HINT = ("start the server (for vLLM: python -m vllm.entrypoints.openai.api_server --model DIR --host "
              "127.0.0.1 --port 8000), or point --llm-base-url / llm_base_url at it")
# Request fields that are not in the OpenAI API but that vLLM's server takes (and SGLang's), sent as extra body.
RETRIES = 1  # the openai client's retries of a failed request (of a timeout too): at most twice the timeout
_EXTRA_FIELDS = ("top_k", "min_p", "repetition_penalty", "min_tokens", "stop_token_ids", "ignore_eos")


class EngineError(RuntimeError):
    """The engine answered, but not with what pytest-llmdet needs; the message names the server and the field."""


def import_openai() -> Any:
    try:
        import openai
    except ImportError as error:
        raise ModelLoadError(f"llm_engine = openai needs the openai client, which is not installed "
                             f"({cause_line(error)}): {INSTALL}") from None
    return openai


shown_url = url_without_credentials  # the URL as messages show it (settings.url_without_credentials)


def _root(url: str) -> str:
    return url[: -len("/v1")] if url.endswith("/v1") else url


def server_version(client: Any, timeout: float) -> str | None:
    """What the server's /version says (vLLM: {"version": "0.32.0"}), or None when it has no such endpoint.
    The standard library's client: the version is one GET, and openai's own HTTP library differs by release."""
    import json
    import urllib.error
    import urllib.request

    root = _root(shown_url(str(client.base_url).rstrip("/")))
    request = urllib.request.Request(root + "/version", headers={"Authorization": "Bearer " + client.api_key})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = json.loads(response.read(1 << 16))
    except (OSError, ValueError, urllib.error.URLError):
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return str(version) if version is not None else None


def choose_served_model(served: list[str], spec: ModelSpec) -> str:
    """The served model for `spec`: the one `llm_served_model` names, else the one named like the model (as
    written, its folder, or the folder's name); ModelLoadError listing what is served otherwise. A server that
    serves another model under the only name it has is not taken for this one: its tokens would be recorded
    or compared as this model's."""
    named = spec.options.served_model
    url = shown_url(spec.options.base_url)
    listed = ", ".join(served) if served else "none"
    if named is not None:
        if named in served:
            return named
        raise ModelLoadError(f"the server at {url} does not serve llm_served_model = {named!r}; it serves: {listed}")
    source = spec.source
    wanted = {source.name, source.location, os.path.basename(source.location.rstrip("/"))}
    matches = [name for name in served if name in wanted or os.path.basename(name.rstrip("/")) in wanted]
    if len(matches) == 1:
        return matches[0]
    raise ModelLoadError(
        f"the server at {url} serves {listed}, and {'none' if not matches else 'more than one'} is named like "
        f"model {source.name!r} (its name, folder or folder name); if the server runs this model under another "
        "name, name it with --llm-served-model / llm_served_model")


def api_reason(error: Exception) -> str:
    """What the server said, in one line: its status and its error message (vLLM: "logprobs 30 > max allowed
    20"), or, without a response, the innermost cause."""
    status = getattr(error, "status_code", None)
    body = getattr(error, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message", message)
    if status is not None:
        text = str(message if message is not None else getattr(error, "message", "") or "").strip()
        return f"HTTP {status}" + (f": {first_line(text)}" if text else "")
    return cause_line(error)


def model_entry(model: Any) -> tuple[str, str | None, int | None]:
    """What one entry of GET /v1/models says of a served model: who serves it (vLLM: "vllm"), what it was loaded
    from (`root`: vLLM's --model) and its max_model_len; None for what it does not say."""
    owner = str(getattr(model, "owned_by", "") or "")
    root = getattr(model, "root", None)
    length = getattr(model, "max_model_len", None)
    return (owner, str(root) if root else None,
            length if isinstance(length, int) and not isinstance(length, bool) else None)


@dataclass(frozen=True)
class ServerDetails(RemoteDetails):
    """What the server said of itself when the engine connected."""

    served_model: str  # the name it serves the model under
    label: str  # who serves it, and the version: "vllm 0.32.0"
    version: str | None  # what its /version says (None: it has no such endpoint)
    url: str  # its URL as messages show it (no password)
    root: str | None = None  # what /v1/models says the served model was loaded from (vLLM: --model)
    max_model_len: int | None = None  # and how long a sequence it serves (vLLM: --max-model-len)


def connect(spec: ModelSpec) -> LoadedModel:
    """Reach the server at the spec's base_url once (bounded by the request timeout, no retry), learn what it
    serves and its version, and check with a one-token request that it answers with token IDs and log-probs.
    Every failure is a ModelLoadError, which the model pool remembers: the tests that need the server error
    with it, and the server is not asked again."""
    started = time.perf_counter()
    openai = import_openai()
    tokenizer, generation_config, limit = load_local_side(spec)
    server = spec.options  # its repr leaves the URL out
    shown = shown_url(server.base_url)
    # No local variable holds the key or the URL's password: a traceback with -l shows frame locals.
    client = openai.OpenAI(base_url=server.base_url, api_key=os.environ.get(server.api_key_env) or "EMPTY",
                           timeout=server.request_timeout, max_retries=RETRIES)  # no key: a server without --api-key
    listed = list_models(openai, client, server, shown)
    served = choose_served_model([str(getattr(model, "id", "")) for model in listed], spec)
    owner, root, max_model_len = model_entry(next(model for model in listed if model.id == served))
    version = server_version(client, server.request_timeout)
    label = " ".join(part for part in (owner or "server", version) if part)
    if max_model_len is not None:
        limit = max_model_len if limit is None else min(limit, max_model_len)
    loaded = LoadedModel(spec, client, tokenizer, "server", 0.0, generation_config,
                         ServerDetails(limit, served, label, version, shown, root, max_model_len))
    engine = ServerEngine(loaded)
    probe = engine.encode("Hello")[:8] or [0]
    try:
        engine.complete(probe, {"max_tokens": 1, "temperature": 0.0, "logprobs": 2}, top_k=0)
    except EngineError as error:
        raise ModelLoadError(str(error)) from None
    loaded.load_seconds = time.perf_counter() - started
    return loaded


def list_models(openai: Any, client: Any, server: Any, shown: str) -> list[Any]:
    """The models the server lists (GET /models, once, no retry); a ModelLoadError saying why not: unreachable,
    the API key refused, or not an OpenAI-compatible API. `server` is the spec's ServerOptions."""
    try:
        return list(client.with_options(max_retries=0).models.list().data)
    except openai.APIConnectionError as error:
        raise ModelLoadError(f"cannot reach the OpenAI-compatible server at {shown} ({cause_line(error)}; a "
                             f"request waits at most {server.request_timeout:g} s, llm_request_timeout): "
                             f"{START_HINT}") from None
    except openai.AuthenticationError:
        raise ModelLoadError(f"the server at {shown} refused the API key (read from ${server.api_key_env}, "
                             f"{'set' if os.environ.get(server.api_key_env) else 'not set'}): set it to the key "
                             "the server was started with, or name another variable with llm_api_key_env") from None
    except Exception as error:  # noqa: BLE001 - an API error, or an answer that is not a model list
        reason = api_reason(error) if isinstance(error, openai.APIError) else cause_line(error)
        raise ModelLoadError(f"the server at {shown} did not list its models (GET /models: {reason}); is it an "
                             "OpenAI-compatible API? The URL ends with /v1 for vLLM") from None


class ServerEngine(RemoteEngine):
    """An OpenAI-compatible server (see engines.Engine for the verbs)."""

    kind = "openai"

    details = property(attrgetter("loaded.details"))  # ServerDetails
    served_model = property(attrgetter("loaded.details.served_model"))

    @property
    def server(self) -> str:
        return f"the {self.details.label} server at {self.details.url}"

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

    def generate_each(self, requests: list[RowRequest], seed: int = 0, concurrency: int = 32
                      ) -> list[RowOutput | None]:
        """Every request as its own /completions request, `concurrency` of them in flight at once (the server
        batches them with each other); None for one that could not be sent or was not answered, which its test
        then generates alone, with the error."""
        def one(request: RowRequest) -> RowOutput | None:
            try:
                fields = sampling_fields(request.plan, self.kind, len(request.prompt_ids), max(2, request.top_k),
                                         self.tokenizer_eos)
                token_ids, steps = self.complete(list(request.prompt_ids), fields, top_k=request.top_k)
            except (GenerationArgumentError, EngineError):
                return None
            return row_from_steps(token_ids, steps, request.top_k, eos_ids_of(request.plan))

        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(requests)))) as pool:
            return list(pool.map(one, requests))

    def complete(self, prompt_ids: list[int], fields: dict[str, Any], top_k: int
                 ) -> tuple[list[int], list[dict[int, float]]]:
        """One /completions request: the new token IDs and, per step, the log-probs of at least
        `fields["logprobs"]` candidates. A server that stopped answering is remembered: later calls fail at once."""
        import openai

        if self.loaded.unavailable:
            raise EngineError(f"{self.server} stopped answering earlier in this session ({self.loaded.unavailable}); "
                              "it is not asked again")
        extra = {name: fields[name] for name in _EXTRA_FIELDS if name in fields}
        extra.update(return_token_ids=True, return_tokens_as_token_ids=True)
        standard = {name: fields[name] for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty",
                                                    "seed") if fields.get(name) is not None}
        try:
            response = self.model.completions.create(
                model=self.served_model, prompt=prompt_ids, max_tokens=fields["max_tokens"], n=1, echo=False,
                stream=False, logprobs=fields["logprobs"], extra_body=extra, **standard)
        except openai.APIConnectionError as error:  # a timeout too
            self.loaded.unavailable = cause_line(error)
            raise EngineError(f"{self.server} did not answer ({cause_line(error)}; a request waits at most "
                              f"{self.spec.options.request_timeout:g} s, llm_request_timeout, and is retried {RETRIES} "
                              "time); is it still running?") from None
        except openai.APIError as error:
            raise EngineError(f"{self.server} refused the request: {api_reason(error)}") from None
        except Exception as error:  # noqa: BLE001 - an answer the client cannot read (not JSON, say)
            raise EngineError(f"{self.server} answered with something that is not a completion: "
                              f"{cause_line(error)}") from None
        try:
            return parse_completion(response, prompt_ids, fields["logprobs"], self.server, self.details.version,
                                    self.vocabulary_size)
        except EngineError:
            raise
        except Exception as error:  # noqa: BLE001 - a completion of another shape
            raise EngineError(f"{self.server} answered with a completion pytest-llmdet cannot read "
                              f"({cause_line(error)}); it needs choices[0] with token_ids and logprobs "
                              "(tokens, token_logprobs, top_logprobs)") from None

    def described(self) -> dict[str, Any]:
        return {"dtype": "unknown", "device": "server", "engine": self.kind, "engine_version": self.details.label,
                "served_model": self.details.served_model, "served_root": self.details.root,
                "served_max_model_len": self.details.max_model_len,
                "logprobs": "as the server computes them (vLLM: its --logprobs-mode)"}


def parse_completion(response: Any, prompt_ids: list[int], wanted: int, server: str, version: str | None,
                     vocabulary_size: int) -> tuple[list[int], list[dict[int, float]]]:
    """The new token IDs of a completion and, per step, its candidates' log-probs (at least `wanted`); an
    EngineError naming `server` for a completion without token IDs or log-probs, or of another prompt."""
    choice = response.choices[0]
    extra = getattr(choice, "model_extra", None) or {}
    token_ids = extra.get("token_ids", getattr(choice, "token_ids", None))
    if not isinstance(token_ids, list):
        raise EngineError(
            f"{server} (/version: {version or 'not served'}) returned no token IDs: its completion has no "
            "`token_ids` field, although the request asked for return_token_ids: true. pytest-llmdet compares "
            "token IDs, so it needs a server that returns them (vLLM 0.10.2 or newer), or the vllm engine")
    sent = extra.get("prompt_token_ids")
    if isinstance(sent, list) and sent and sent != prompt_ids:
        raise EngineError(f"{server} generated from other prompt tokens than it was sent "
                          f"({sent[:8]}... for {prompt_ids[:8]}...); it must take token IDs as they are")
    logprobs = choice.logprobs
    top = getattr(logprobs, "top_logprobs", None)
    chosen = getattr(logprobs, "token_logprobs", None)
    if not isinstance(top, list) or not isinstance(chosen, list):
        raise EngineError(f"{server} returned no log-probs (the request asked for logprobs: {wanted}); "
                          "the margins need them")
    if not len(top) == len(chosen) == len(token_ids):
        raise EngineError(f"{server} returned {len(token_ids)} token IDs but log-probs for {len(chosen)} "
                          f"steps and top log-probs for {len(top)}; they must be one per token")
    steps = [_step(server, vocabulary_size, index, token, candidates, logprob, wanted)
             for index, (token, candidates, logprob) in enumerate(zip(token_ids, top, chosen, strict=True))]
    return [int(token) for token in token_ids], steps


def _step(server: str, vocabulary_size: int, index: int, token: Any, candidates: dict[str, Any] | None,
          logprob: Any, wanted: int) -> dict[int, float]:
    # One step's candidates by token ID, the chosen token's among them: all of them numbers, as many as asked.
    step: dict[int, float] = {}
    for key, value in (candidates or {}).items():
        if not str(key).startswith(TOKEN_ID_PREFIX):
            raise EngineError(f"{server} returned top-k candidates as text ({key!r}), not as "
                              f"'{TOKEN_ID_PREFIX}N', although the request asked for "
                              "return_tokens_as_token_ids: true; the candidates need their token IDs")
        step[int(str(key)[len(TOKEN_ID_PREFIX):])] = float(value)
    if logprob is not None:
        step.setdefault(int(token), float(logprob))
    if any(value != value for value in step.values()):  # NaN
        raise EngineError(f"{server} returned a log-prob that is not a number (NaN) at step {index}")
    if len(step) < min(wanted, vocabulary_size):
        raise EngineError(f"{server} returned {len(step)} log-prob(s) at step {index}, and "
                          f"pytest-llmdet asked for {wanted}: the margins (and a tolerant comparison's "
                          "top-k) need them all")
    return step
