"""The transformers engine: a model and tokenizer loaded through `from_pretrained`, generating with the
forced-greedy plan and recording per-step statistics. The `llm` fixture's `LLM` talks to it only through the
verbs of `engines.Engine`; a vLLM or server engine is another module with the same verbs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pytest_llmdet.engines.greedy import GreedyPlan
from pytest_llmdet.engines.loaded import LoadedEngine, position_limit
from pytest_llmdet.engines.models import LoadedModel
from pytest_llmdet.engines.rows import RowOutput
from pytest_llmdet.engines.seeding import seed_everything
from pytest_llmdet.engines.step_stats import generate_with_stats
from pytest_llmdet.engines.variation import Variation, VariationError
from pytest_llmdet.errors import first_line

# The attention implementations a variation may switch to, where the model and device support them (flex
# attention is left out: on first use it compiles with torch.compile, minutes on a CPU).
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")

@contextlib.contextmanager
def _only_generation_config(model: Any, config: Any) -> Iterator[None]:
    # generate() fills every unset field from model.generation_config; while our complete config stands in
    # for it, nothing of the model's own sampling settings can leak in.
    original = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = original


class TransformersEngine(LoadedEngine):
    """A transformers model and tokenizer (see engines.Engine for the verbs)."""

    kind = "transformers"

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__(loaded)
        self._config_changes: dict[str, Any] = {}  # GenerationConfig fields a variation sets, while it lasts

    @property
    def max_positions(self) -> int | None:
        """How many positions (prompt and new tokens) the model supports, when its config says."""
        return position_limit(self.model.config)

    def generate_rows(self, rows: list[list[int]], plan: GreedyPlan, top_k: int = 0,
                      pad_id: int | None = None, seed: int = 0) -> list[RowOutput]:
        """Generate every row of prompt token IDs in one `generate` call with `plan` (left-padded with `pad_id`
        when the rows differ in length, the padding masked; a sampled plan seeds with its own seed, a
        greedy one with `seed`) and return each row's new tokens, margins,
        chosen-token log-probs and, with `top_k`, its top-k candidates. The one place that calls generate:
        a single call and the batch probe share it."""
        import torch
        from transformers import GenerationConfig

        ids, mask = left_pad(rows, rows[0][0] if pad_id is None else pad_id)
        config = GenerationConfig(**plan.config)  # no output_scores: the statistics are recorded per step
        eos_ids = _eos_ids(config.eos_token_id)
        if config.pad_token_id is None and len(rows) > 1:
            eos = config.eos_token_id
            config.pad_token_id = eos[0] if isinstance(eos, list) else eos
        for name, value in self._config_changes.items():
            setattr(config, name, value)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        attention_mask = torch.tensor(mask, dtype=torch.long, device=self.device)
        seed_everything(plan.seed if plan.seed is not None else seed)
        with torch.inference_mode(), _only_generation_config(self.model, config):
            new_ids, stats = generate_with_stats(self.model, input_ids, attention_mask, config, top_k)
        outputs = []
        for row_ids, row in zip(new_ids.tolist(), stats, strict=True):
            outputs.append(RowOutput(row_ids, row.margins, row.logprobs, row.top_k_ids, row.top_k_logprobs, eos_ids))
        return outputs

    # -- variations (the factors of the determinism check) ----------------------------------------------

    def baseline(self) -> Variation:
        """How this engine generates now, in the terms of a variation: every field set."""
        import torch

        return Variation(use_cache=True, cache_implementation="dynamic",
                         attn_implementation=str(getattr(self.model.config, "_attn_implementation", None)),
                         threads=torch.get_num_threads(), dtype=str(self.model.dtype).removeprefix("torch."))

    def attention_implementations(self) -> tuple[str, ...]:
        """The attention implementations a variation may switch to (whether this model takes each: cannot_vary)."""
        return ATTENTION_IMPLEMENTATIONS

    def cannot_vary(self, variation: Variation) -> str | None:
        """Why this engine cannot generate under `variation` (None: it can)."""
        if variation.prefix_cache is not None:
            return ("the transformers engine has no prefix cache (each generate computes its whole prompt): a "
                    "factor of the vllm engine")
        base = self.baseline()
        if variation.threads is not None:
            if not self.device.startswith("cpu"):
                return (f"the model runs on {self.device}: torch's CPU thread count does not change the kernels "
                        "that compute its outputs")
            if base.threads == variation.threads:
                return (f"this session already runs {base.threads} torch thread{'s' * (base.threads != 1)} "
                        f"(llm_threads or torch's default), so there is nothing to compare {variation.threads} "
                        "with; set --llm-threads to the count the other machine uses")
            if not _thread_count_settable(variation.threads):
                return (f"torch's thread count cannot be changed in this process (it stays {base.threads}: vLLM, "
                        "loaded in this session, pins it), so the variation would change nothing")
        if variation.dtype is not None and base.dtype == variation.dtype:
            return f"the model is loaded in {base.dtype} already; load it in float32 to measure this sensitivity"
        if variation.cache_implementation is not None and not _supports_cache_objects(self.model):
            return (f"{type(self.model).__name__} keeps its own cache (transformers ignores "
                    f"cache_implementation={variation.cache_implementation!r} for it)")
        if variation.attn_implementation is not None:
            return _cannot_use_attention(self.model, variation.attn_implementation, base.attn_implementation)
        return None

    @contextlib.contextmanager
    def varied(self, variation: Variation) -> Iterator[None]:
        """While inside, `generate_rows` generates under `variation`; everything is restored on the way out
        (the weights exactly: a dtype variation keeps the original tensors and puts them back)."""
        reason = self.cannot_vary(variation)
        if reason is not None:
            raise VariationError(reason)
        import torch

        with contextlib.ExitStack() as stack:
            changes: dict[str, Any] = {}
            if variation.use_cache is not None:
                changes["use_cache"] = variation.use_cache
            if variation.cache_implementation is not None:
                # disable_compile: on CUDA transformers would also compile the model for a static cache, which
                # is another change; the factor is the cache's layout alone.
                changes.update(cache_implementation=variation.cache_implementation, disable_compile=True)
            if variation.attn_implementation is not None:
                loaded = self.model.config._attn_implementation
                self.model.set_attn_implementation(variation.attn_implementation)
                stack.callback(self.model.set_attn_implementation, loaded)
            if variation.threads is not None:
                stack.callback(torch.set_num_threads, torch.get_num_threads())
                torch.set_num_threads(variation.threads)
            if variation.dtype is not None:
                stack.enter_context(_weights_cast(self.model, getattr(torch, variation.dtype)))
            self._config_changes = changes
            stack.callback(self._config_changes.clear)
            yield

    def described(self) -> dict[str, Any]:
        """The revision, the dtype and device as loaded, the GPU's capability and the device map."""
        return {"revision": getattr(self.model.config, "_commit_hash", None),
                "dtype": str(self.model.dtype).removeprefix("torch."), "device": self.device,
                "compute_capability": _compute_capability(self.device), "device_map": self.spec.device_map}


@contextlib.contextmanager
def _weights_cast(model: Any, dtype: Any) -> Iterator[None]:
    # The floating-point parameters cast, as from_pretrained(dtype=...) loads them (buffers such as the rotary
    # inv_freq stay float32 there too), except the modules the model keeps in float32. The original tensors are
    # kept and put back, so the model is bit-for-bit what it was; the cast copy costs its size in memory.
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    originals = []
    for name, parameter in model.named_parameters():
        if parameter.is_floating_point() and not any(part in name.split(".") for part in keep):
            originals.append((parameter, parameter.data))
            parameter.data = parameter.data.to(dtype)
    try:
        yield
    finally:
        for parameter, data in originals:
            parameter.data = data


def _supports_cache_objects(model: Any) -> bool:
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    return bool(supports()) if callable(supports) else False


def _cannot_use_attention(model: Any, wanted: str, loaded: str | None) -> str | None:
    # Why `model` cannot switch to attention `wanted` (None: it can); tried, then switched back to `loaded`.
    if wanted == loaded:
        return f"the model uses {wanted} attention already"
    setter = getattr(model, "set_attn_implementation", None)
    if not callable(setter):
        return f"{type(model).__name__} cannot switch its attention implementation"
    try:
        setter(wanted)
    except Exception as error:  # noqa: BLE001 - transformers says why in many ways (ImportError, ValueError)
        return f"{wanted}: {first_line(error, type(error).__name__)}"
    finally:
        with contextlib.suppress(Exception):
            setter(loaded)
    return None


def _thread_count_settable(threads: int) -> bool:
    # vLLM's CPU worker replaces torch.set_num_threads with a no-op in the process that loads it
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def _compute_capability(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Pad token-ID rows on the left to the longest one: (input_ids, attention_mask)."""
    width = max(len(row) for row in rows)
    ids = [[pad_id] * (width - len(row)) + list(row) for row in rows]
    mask = [[0] * (width - len(row)) + [1] * len(row) for row in rows]
    return ids, mask


def _eos_ids(eos: int | list[int] | None) -> frozenset[int]:
    return frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
