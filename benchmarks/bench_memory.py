"""Memory and time: the peak memory and the wall time of one 512-new-token greedy call on large vocabularies.
Goals: `LLM.generate` (with and without top-k) at most 5% above a bare `model.generate` in peak memory and in
wall time, on 65,536 and 151,936 (Qwen's) tokens.

`generate(output_scores=True)` keeps one vocabulary-sized float row per new token, and the old statistics
stacked and log-softmaxed them again: 512 steps x 65,536 tokens x 4 bytes = 128 MiB per copy (297 MiB on
151,936). The plugin records its figures step by step (pytest_llmdet/engines/step_stats.py), from the scores
themselves, its top-k block by block (engines/row_top.py).

The models are built here, not committed: a random Qwen2ForCausalLM with each vocabulary (hidden size 64, 2
layers, tied embeddings: 4.3M and 9.8M parameters, fast on a CPU), with a byte-level BPE `tokenizers`
tokenizer over the same IDs and no EOS token, so that every call really generates 512 tokens (checked).
Variants, each in a fresh process per repetition, all interleaved:

- bare `model.generate`: the plugin's forced-greedy config, `model.generate` without scores;
- `LLM.generate`: the plugin's call as shipped (and once more with capture_top_k=5);
- old path: `output_scores=True, return_dict_in_generate=True`, then the old runner's statistics
  (`common.token_statistics`).

Each process loads the model, runs its variant once for 8 tokens (warm-up), then measures one 512-token call.
Memory processes reset their peak RSS to the current RSS first (Linux's /proc/self/clear_refs; loading the
model peaks higher than a call of this small model) and measure how far the call raises it
(`getrusage(RUSAGE_SELF).ru_maxrss`). torch has no CPU allocator statistics; glibc's malloc runs there with a
fixed mmap threshold (MALLOC_MMAP_THRESHOLD_), so that freed large blocks go back to the system and the
resident set follows what is alive. That setting makes every large allocation an mmap and its page faults,
which no user's process pays, so the wall times come from other processes with glibc's default malloc (the
fixed-threshold processes' times are printed beside them).

    python benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import (  # noqa: E402
    child_env,
    interleaved,
    load_average,
    log,
    make_section,
    median,
    new_workdir,
    print_section,
    ratio,
    run_command,
    save_section,
    seconds,
    standard_arguments,
    verdict,
)

GOAL = 1.05
VOCAB, HIDDEN, LAYERS = 65536, 64, 2
VOCABS = (VOCAB, 151936)  # a power of two; Qwen2's
NEW_TOKENS = 512
PROMPT = "Once upon a time there was a fox."
BARE, PLUGIN, PLUGIN_TOP_K, OLD = "bare model.generate", "LLM.generate", "LLM.generate, capture_top_k=5", \
    "old path (output_scores)"
VARIANTS = {BARE: "bare", PLUGIN: "plugin", PLUGIN_TOP_K: "plugin-topk", OLD: "old"}
MMAP_THRESHOLD = str(128 * 1024)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def build_model(folder: Path, vocab: int = VOCAB, hidden: int = HIDDEN, layers: int = LAYERS,
                intermediate: int | None = None, heads: int = 4, kv_heads: int = 2) -> Path:
    """A random Qwen2-shaped causal LM with a `vocab`-token byte-level BPE tokenizer, saved to `folder` in
    float32; no EOS token anywhere, so greedy generation runs to max_new_tokens. `intermediate` defaults to 3 x
    `hidden`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    # Byte-level BPE as Qwen2Tokenizer rebuilds it on load (whatever the saved class): the 256 byte symbols
    # encode any text (no merges), and "w<ID>" words fill the vocabulary up to `vocab` so that every ID decodes.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = list(SPECIAL_TOKENS) + alphabet
    tokens += [f"w{index}" for index in range(len(tokens), vocab)]
    backend = Tokenizer(models.BPE({token: index for index, token in enumerate(tokens)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>").save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 3 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(pad_token_id=0)
    model.save_pretrained(folder)
    return folder


# -- one measured process -------------------------------------------------------------------------------------


def child(variant: str, model_dir: str, new_tokens: int, device: str = "cpu") -> None:
    """Load the model, warm the variant up, then print the peak-memory growth of one `new_tokens` call as JSON:
    the process's RSS on the CPU, torch's allocated GPU memory (torch.cuda.max_memory_allocated) on CUDA."""
    import gc
    import resource
    import time

    import torch
    from transformers import GenerationConfig

    from pytest_llmdet.engines import llm as runner
    from pytest_llmdet.engines import transformers as hf
    from pytest_llmdet.engines.greedy import plan_generation
    from pytest_llmdet.engines.models import ModelPool, ModelSpec, resolve_source
    from pytest_llmdet.engines.seeding import configure_torch

    configure_torch("warn", common.TORCH_THREADS)
    loaded = ModelPool().get(ModelSpec(resolve_source(model_dir, []), device=device))
    cuda = loaded.device.startswith("cuda")
    llm = runner.LLM(hf.TransformersEngine(loaded), seed=0, max_new_tokens=new_tokens, inherit_processors=True)
    llm.capture_top_k = 5 if variant == "plugin-topk" else 0
    model = loaded.model

    def direct(count: int, scores: bool) -> list[int]:
        plan = plan_generation(loaded.generation_config, max_new_tokens=count)
        extra = {"output_scores": True, "return_dict_in_generate": True} if scores else {}
        config = GenerationConfig(**plan.config, **extra)
        input_ids = torch.tensor([llm.encode(PROMPT)], dtype=torch.long, device=loaded.device)
        with torch.inference_mode(), hf._only_generation_config(model, config):
            output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    generation_config=config)
        if not scores:
            return output[0, input_ids.shape[1]:].tolist()
        new_ids = output.sequences[0, input_ids.shape[1]:]
        common.token_statistics(output.scores, new_ids, 0)
        return new_ids.tolist()

    def call(count: int) -> list[int]:
        if variant == "bare":
            return direct(count, scores=False)
        if variant == "old":
            return direct(count, scores=True)
        return llm.generate(PROMPT, max_new_tokens=count).token_ids

    call(8)
    gc.collect()
    if cuda:  # bytes torch's allocator handed out: exact, whatever else the GPU holds
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        reset, before = True, torch.cuda.memory_allocated() / 1024
    else:
        reset = reset_peak_rss()  # else the peak of loading the model would hide the call's
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started, cpu_started = time.perf_counter(), time.process_time()
    tokens = call(new_tokens)
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    after = torch.cuda.max_memory_allocated() / 1024 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"variant": variant, "tokens": len(tokens), "token_sum": sum(tokens), "wall": wall, "cpu": cpu,
                      "before_mb": before / 1024, "peak_mb": after / 1024, "growth_mb": (after - before) / 1024,
                      "peak_reset": reset, "device": loaded.device}))


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux: "5" to /proc/self/clear_refs), so that
    ru_maxrss afterwards is the peak of what follows; False where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as stream:
            stream.write("5")
    except OSError:
        return False
    return True


# -- the parent -------------------------------------------------------------------------------------------------


MEMORY, TIME = "memory", "time"  # the two kinds of measured process (see the module's docstring)


def measure(repeats: int, new_tokens: int = NEW_TOKENS) -> dict[str, Any]:
    load_before = load_average()
    rows: list[list[str]] = []
    raw: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    notes: list[str] = []
    work = new_workdir("memory")
    try:
        for vocab in VOCABS:
            log(f"building a random Qwen2 model with a {vocab}-token vocabulary ...")
            results = measure_vocabulary(build_model(work / f"model-{vocab}", vocab=vocab), repeats, new_tokens)
            raw[str(vocab)] = results
            vocab_rows, vocab_ratios, note = summarise(vocab, results, new_tokens)
            rows += vocab_rows
            ratios.update(vocab_ratios)
            notes.append(note)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    met = all(value <= GOAL for name, value in ratios.items() if not name.startswith("old"))
    notes += [
        f"random Qwen2ForCausalLM, hidden {HIDDEN}, {LAYERS} layers; {new_tokens} new tokens (checked), the same "
        f"tokens in every variant (checked); {repeats} fresh process(es) per variant and kind, interleaved, "
        f"medians; torch threads: {common.TORCH_THREADS or 'default'}",
        f"peak RSS and growth: processes with MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}; 'growth' = the peak RSS "
        "during the call minus the RSS before it (model loaded, variant warmed up, peak reset), 'peak RSS' the "
        "whole process's; wall and CPU: processes with glibc's default malloc; 'fixed mmap' = the wall ratio "
        "in the memory processes, where every vocabulary-sized allocation is an mmap and its page faults",
    ]
    return make_section(
        "Memory and time: one 512-token call on 65,536 and 151,936-token vocabularies",
        "LLM.generate's peak memory and wall time at most 5% above a bare model.generate, with and without "
        "top-k", ["vocabulary", "variant", "growth vs bare", "peak RSS", "peak vs bare", "call wall",
                  "wall vs bare", "CPU vs bare", "fixed mmap"], rows,
        load_before, notes, raw=raw, ratios=ratios, met=met,
    )


def measure_vocabulary(model_dir: Path, repeats: int, new_tokens: int) -> dict[str, dict[str, list[dict]]]:
    """Every variant in memory and in time processes, interleaved: {kind: {variant name: [results]}}."""
    envs = {MEMORY: child_env(MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD), TIME: child_env()}
    cases = {f"{kind}|{name}": (lambda variant=variant, env=env: child_result(variant, model_dir, new_tokens, env))
             for kind, env in envs.items() for name, variant in VARIANTS.items()}
    log(f"measuring {len(cases)} cases x {repeats} processes, interleaved ...")
    results = interleaved(cases, repeats, warmup=0, progress=log)
    values = [value for found in results.values() for value in found]
    if any(value["tokens"] != new_tokens for value in values):
        raise RuntimeError(f"a variant generated other than {new_tokens} tokens")
    if len({value["token_sum"] for value in values}) != 1:
        raise RuntimeError("the variants generated different tokens")
    if not all(value["peak_reset"] for value in values):
        log("warning: the peak RSS could not be reset; growth figures start from the peak of loading the model")
    grouped: dict[str, dict[str, list[dict]]] = {MEMORY: {}, TIME: {}}
    for key, found in results.items():
        kind, name = key.split("|")
        grouped[kind][name] = found
    return grouped


def summarise(vocab: int, results: dict[str, dict[str, list[dict]]], new_tokens: int
              ) -> tuple[list[list[str]], dict[str, float], str]:
    """The table rows of one vocabulary, its ratios to the bare call, and a note on it."""
    def of(kind: str, field: str) -> dict[str, float]:
        return {name: median(v[field] for v in found) for name, found in results[kind].items()}

    growth, peak, fixed = of(MEMORY, "growth_mb"), of(MEMORY, "peak_mb"), of(MEMORY, "wall")
    wall, cpu = of(TIME, "wall"), of(TIME, "cpu")
    rows = [[f"{vocab:,}", name, f"{growth[name] - growth[BARE]:+.1f} MB", f"{peak[name]:.0f} MB",
             f"{ratio(peak[name], peak[BARE]):.3f}x", seconds(wall[name]), f"{ratio(wall[name], wall[BARE]):.3f}x",
             f"{ratio(cpu[name], cpu[BARE]):.3f}x", f"{ratio(fixed[name], fixed[BARE]):.3f}x"] for name in VARIANTS]
    ratios = {}
    for label, name in (("shipped", PLUGIN), ("top_k", PLUGIN_TOP_K), ("old", OLD)):
        ratios[f"{label}_peak_{vocab}"] = ratio(peak[name], peak[BARE])
        ratios[f"{label}_wall_{vocab}"] = ratio(wall[name], wall[BARE])
    shown = [f"{label} {ratios[label]:.3f}x: {verdict(ratios[label], GOAL)}" for label in ratios
             if not label.startswith("old")]
    per_copy = new_tokens * vocab * 4 / 2**20
    note = (f"{vocab:,} tokens: {'; '.join(shown)} (goal <= {GOAL}); one copy of the kept scores: {new_tokens} "
            f"steps x {vocab} tokens x 4 bytes = {per_copy:.0f} MiB, which the old path holds, then a stacked "
            "copy and its log-softmax")
    return rows, ratios, note


def child_result(variant: str, model_dir: Path, new_tokens: int, env: dict[str, str],
                 device: str = "cpu") -> dict[str, Any]:
    """One fresh process measuring `variant` on the model in `model_dir` (see `child`): its JSON result."""
    run = run_command([sys.executable, __file__, "--child", variant, str(model_dir), str(new_tokens),
                       "--threads", str(common.TORCH_THREADS or "default"), "--device", device], common.REPO, env=env)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        variant, model_dir, new_tokens = sys.argv[2], sys.argv[3], int(sys.argv[4])
        threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
        common.TORCH_THREADS = None if threads == "default" else int(threads)
        device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
        child(variant, model_dir, new_tokens, device)
        return
    args = standard_arguments(__doc__.splitlines()[0])
    section = measure(repeats=1 if args.quick else 3)
    save_section("memory", section, args.quick)
    print_section(section)


if __name__ == "__main__":
    main()
