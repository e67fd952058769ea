"""The forced-greedy generation config: what is kept from a model's generation_config.json and what is not.

transformers fills every unset field of a `GenerationConfig` from the model's own config, so a plain
`generate(do_sample=False)` still carries the model's temperature/top_p/top_k and logs about them. We build
the complete effective config ourselves instead, and let generate see only that (see engines/transformers.py).

The report header imports this module on every run (what the model's config becomes): its types are named
tuples, since defining a dataclass costs about 0.5 ms.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pytest_llmdet.settings.values import SEED_MAX

# Fields that only matter when sampling: never inherited on the greedy path.
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "typical_p", "min_p", "top_h", "epsilon_cutoff", "eta_cutoff")

# Deterministic logits processors: they change greedy output, so by default they are kept as the model ships
# them (Qwen1.5-Chat's repetition_penalty=1.05 is one), with the neutral value each has when absent.
PROCESSOR_FIELDS: dict[str, Any] = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "min_length": 0,
    "min_new_tokens": None,
    "exponential_decay_length_penalty": None,
    "sequence_bias": None,
    "renormalize_logits": False,
    "remove_invalid_values": False,
}

TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")

# Fields that change the search itself (beams, several sequences, contrastive or guided search).
SEARCH_FIELDS = ("num_beams", "num_beam_groups", "num_return_sequences", "penalty_alpha", "diversity_penalty",
                 "guidance_scale", "watermarking_config", "constraints", "force_words_ids")

# Fields that a caller may not override: the plugin owns them.
RESERVED_FIELDS = ("output_scores", "return_dict_in_generate", "generation_config", "input_ids",
                   "attention_mask", "streamer")

# Keys of a generation_config.json that describe the file, not the generation.
METADATA_FIELDS = ("transformers_version", "_from_model_config", "_commit_hash")

# Every other field of a model's generation config is not applied; the header says why, by group.
_DROPPED_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("llm_max_new_tokens sets the length", ("max_length", "max_new_tokens")),
    ("a time limit would make the length depend on the machine's speed", ("max_time",)),
    ("generate's default cache is used", ("cache_implementation", "cache_config", "use_cache", "max_cache_len",
                                           "prefill_chunk_size")),
    ("generate's default compilation is used", ("compile_config", "disable_compile")),
    ("set by pytest-llmdet", ("output_scores", "output_logits", "output_attentions", "output_hidden_states",
                              "return_dict_in_generate")),
    ("beam search only", ("length_penalty", "early_stopping")),
    ("encoder-decoder models only", ("encoder_no_repeat_ngram_size", "encoder_repetition_penalty")),
    ("another decoding mode: one plain greedy sequence is generated",
     ("assistant_confidence_threshold", "assistant_early_exit", "assistant_lookbehind", "assistant_ensemble_weight",
      "num_assistant_tokens", "num_assistant_tokens_schedule", "prompt_lookup_num_tokens",
      "max_matching_ngram_size", "is_assistant", "target_lookbehind", "speculation_type", "use_mtp",
      "dola_layers", "low_memory", "token_healing", "continuous_batching_config")),
    ("not supported: generation stops at EOS or after max_new_tokens", ("stop_strings",)),
)
_DROP_REASON = {name: reason for reason, names in _DROPPED_GROUPS for name in names}
NEUTRAL_REASON = "its neutral value: no effect"
NOT_INHERITED_REASON = "llm_inherit_processors=false"
UNKNOWN_REASON = "not a setting pytest-llmdet applies"


class GenerationArgumentError(ValueError):
    """`llm.generate` was called with settings that contradict each other or are unknown."""


def check_max_new_tokens(value: Any) -> int:
    """Accept an int >= 1 (not a bool, not a float) as max_new_tokens; refuse anything else."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GenerationArgumentError(
            f"max_new_tokens must be an integer >= 1 (or None for the llm_max_new_tokens setting), not {value!r}"
        )
    return value


def check_seed(value: Any) -> int:
    """Accept an int (not a bool) from 0 to 2**32 - 1, the seeds numpy takes, as the seed of a sampling call."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise GenerationArgumentError(f"seed must be an integer from 0 to 2**32 - 1 ({SEED_MAX}), not {value!r}")
    return value


class GreedyPlan(NamedTuple):
    """The effective generation settings of one call, and how they relate to the model's own config."""

    config: dict[str, Any]  # keyword arguments for transformers.GenerationConfig
    inherited: dict[str, Any]  # deterministic processors kept from the model's config
    ignored: dict[str, Any]  # sampling and search fields of the model's config that were not used
    seed: int | None = None  # the explicit seed of a sampling call

    @property
    def settings(self) -> dict[str, Any]:
        """The effective settings worth recording: everything that can change the output tokens."""
        recorded = {k: v for k, v in self.config.items() if k not in TOKEN_FIELDS and v is not None}
        if self.seed is not None:
            recorded["seed"] = self.seed
        return dict(sorted(recorded.items()))


def _non_neutral(name: str, value: Any) -> bool:
    return value is not None and value != PROCESSOR_FIELDS.get(name)


def split_model_config(model_config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split a model's generation config into (deterministic processors, sampling/search fields, token ids)."""
    processors = {k: v for k, v in model_config.items() if k in PROCESSOR_FIELDS and _non_neutral(k, v)}
    ignored = {
        k: v for k, v in model_config.items()
        if (k in SAMPLING_FIELDS or k in SEARCH_FIELDS or k == "do_sample") and v is not None
    }
    tokens = {k: v for k, v in model_config.items() if k in TOKEN_FIELDS and v is not None}
    return processors, ignored, tokens


class ConfigUse(NamedTuple):
    """What forced greedy decoding does with each field of a model's generation config."""

    overridden: dict[str, Any]  # sampling and search fields: greedy decoding replaces them
    inherited: dict[str, Any]  # applied as the model ships them: token ids and deterministic processors
    dropped: dict[str, tuple[Any, str]]  # not applied: the value and why


def model_config_use(model_config: dict[str, Any], inherit_processors: bool = True) -> ConfigUse:
    """Sort every field of a model's generation config into overridden, inherited or dropped (with the reason);
    only metadata (METADATA_FIELDS) and fields set to null, which mean "unset", appear nowhere."""
    processors, overridden, tokens = split_model_config(model_config)
    inherited = dict(tokens)
    dropped: dict[str, tuple[Any, str]] = {}
    for name, value in model_config.items():
        if value is None or name in METADATA_FIELDS or name in overridden or name in tokens:
            continue
        if name in processors:
            if inherit_processors:
                inherited[name] = value
            else:
                dropped[name] = (value, NOT_INHERITED_REASON)
        elif name in PROCESSOR_FIELDS:
            dropped[name] = (value, NEUTRAL_REASON)
        else:
            dropped[name] = (value, _DROP_REASON.get(name, UNKNOWN_REASON))
    return ConfigUse(dict(sorted(overridden.items())), dict(sorted(inherited.items())),
                     dict(sorted(dropped.items())))


def plan_generation(
    model_config: dict[str, Any],
    *,
    max_new_tokens: int,
    inherit_processors: bool = True,
    overrides: dict[str, Any] | None = None,
    known_fields: frozenset[str] | None = None,
) -> GreedyPlan:
    """Build the effective generation settings: greedy, unless the caller opts into seeded sampling.

    `model_config` is the model's generation config as a dict; `overrides` are the caller's keyword
    arguments; `known_fields` (the attributes of GenerationConfig) lets unknown names be rejected.
    """
    processors, ignored, tokens = split_model_config(model_config)
    overrides, seed = checked_overrides(overrides, max_new_tokens, known_fields)
    sampling = overrides.pop("do_sample", False) is True
    check_decoding(overrides, sampling, seed)
    config: dict[str, Any] = {"do_sample": sampling, "num_beams": 1, "max_new_tokens": max_new_tokens}
    config.update(tokens)
    if inherit_processors:
        config.update(processors)
    if sampling:
        config.update({k: v for k, v in ignored.items() if k in SAMPLING_FIELDS})
    config.update(overrides)
    if not inherit_processors:
        ignored = {**ignored, **processors}
        processors = {}
    return GreedyPlan(config=config, inherited=processors, ignored=dict(sorted(ignored.items())),
                      seed=seed if sampling else None)


def checked_overrides(overrides: dict[str, Any] | None, max_new_tokens: int,
                      known_fields: frozenset[str] | None) -> tuple[dict[str, Any], int | None]:
    """The caller's keyword arguments checked one by one: (what is left to apply, the seed). A length, a seed,
    names the plugin owns or GenerationConfig does not know, and temperature=0 (the usual spelling of greedy,
    dropped)."""
    overrides = dict(overrides or {})
    check_max_new_tokens(max_new_tokens)
    if overrides.get("max_new_tokens") is None:
        overrides.pop("max_new_tokens", None)
    else:
        check_max_new_tokens(overrides["max_new_tokens"])
    seed = overrides.pop("seed", None)
    if seed is not None:
        check_seed(seed)
    for name in overrides:
        if name in RESERVED_FIELDS:
            raise GenerationArgumentError(f"{name} is set by pytest-llmdet and cannot be passed to llm.generate")
        if known_fields is not None and name not in known_fields:
            raise GenerationArgumentError(
                f"unknown generation setting {name!r}: pass fields of transformers.GenerationConfig"
            )
    if overrides.get("temperature") == 0:
        if overrides.get("do_sample") is True:
            raise GenerationArgumentError("temperature=0 means greedy decoding; it contradicts do_sample=True")
        del overrides["temperature"]  # temperature=0 is the usual spelling of greedy
    return overrides, seed


def check_decoding(overrides: dict[str, Any], sampling: bool, seed: int | None) -> None:
    """Refuse what contradicts the decoding asked for: sampling without a seed, sampling fields or a seed on
    the greedy path, and fields that change the search itself."""
    if sampling:
        if seed is None:
            raise GenerationArgumentError(
                "do_sample=True needs an explicit seed, e.g. llm.generate(prompt, do_sample=True, seed=1234), "
                "so that the sampled output is reproducible"
            )
    else:
        misplaced = sorted(k for k in overrides if k in SAMPLING_FIELDS)
        if misplaced:
            raise GenerationArgumentError(
                f"{', '.join(misplaced)}: only used when sampling, and greedy decoding would ignore it. "
                "Drop them, or opt into sampling with do_sample=True and seed=..."
            )
        if seed is not None:
            raise GenerationArgumentError("seed= only applies together with do_sample=True")
    search = sorted(k for k in overrides if k in SEARCH_FIELDS)
    if search:
        raise GenerationArgumentError(
            f"{', '.join(search)} change the search itself; pytest-llmdet generates one greedy sequence per call"
        )
