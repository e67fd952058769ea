"""Memory: the peak memory of one 512-new-token greedy call on a large vocabulary. Goal: `LLM.generate` at most
5% above a bare `model.generate`.

`generate(output_scores=True)` keeps one vocabulary-sized float row per new token, and the old statistics
stacked and log-softmaxed them again: 512 steps x 65,536 tokens x 4 bytes = 128 MiB per copy here (311 MB on
Qwen's 151,936). The plugin now records its figures step by step (pytest_llmdet/engines/step_stats.py).

The model is built here, not committed: a random Qwen2ForCausalLM with a 65,536-token vocabulary (hidden size
64, 2 layers, tied embeddings: 4.3M parameters, fast on a CPU), with a byte-level BPE `tokenizers` tokenizer
over the same 65,536 IDs and no EOS token, so that every call really generates 512 tokens (checked). Variants,
each in a fresh process per repetition, interleaved:

- bare `model.generate`: the plugin's forced-greedy config, `model.generate` without scores;
- `LLM.generate`: the plugin's call as shipped (and once more with capture_top_k=5);
- old path: `output_scores=True, return_dict_in_generate=True`, then the old runner's statistics
  (`common.old_margins.token_statistics`).

Each process loads the model, runs its variant once for 8 tokens (warm-up), resets its peak RSS to the current
RSS (Linux's /proc/self/clear_refs; loading the model peaks higher than a call of this small model), then
measures how far the 512-token call raises it (`getrusage(RUSAGE_SELF).ru_maxrss`). torch has no CPU allocator
statistics; glibc's malloc runs with a fixed mmap threshold (MALLOC_MMAP_THRESHOLD_), so that freed large
blocks go back to the system and the resident set follows what is alive.

    python benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import common.old_margins
import common.runner
from common import cli
from common.report import make_section, median, ratio, seconds, verdict
from common.runner import REPO, child_env, interleaved, load_average, log, new_workdir, run_command

GOAL = 1.05
VOCAB, HIDDEN, LAYERS = 65536, 64, 2
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
    from pytest_llmdet.engines.models import ModelPool, ModelSpec
    from pytest_llmdet.engines.seeding import configure_torch
    from pytest_llmdet.engines.sources import resolve_source

    configure_torch("warn", common.runner.TORCH_THREADS)
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
        common.old_margins.token_statistics(output.scores, new_ids, 0)
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
    started = time.perf_counter()
    tokens = call(new_tokens)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    after = torch.cuda.max_memory_allocated() / 1024 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"variant": variant, "tokens": len(tokens), "token_sum": sum(tokens), "wall": wall,
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


def measure(repeats: int, new_tokens: int = NEW_TOKENS) -> dict[str, Any]:
    load_before = load_average()
    work = new_workdir("memory")
    try:
        log(f"building a random Qwen2 model with a {VOCAB}-token vocabulary ...")
        model_dir = build_model(work / "model")
        env = child_env(MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
        cases = {name: (lambda variant=variant: child_result(variant, model_dir, new_tokens, env))
                 for name, variant in VARIANTS.items()}
        log(f"measuring {len(cases)} variants x {repeats} processes, interleaved ...")
        results = interleaved(cases, repeats, warmup=0, progress=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for name, values in results.items():
        for value in values:
            if value["tokens"] != new_tokens:
                raise RuntimeError(f"{name} generated {value['tokens']} tokens, not {new_tokens}")
    sums = {value["token_sum"] for values in results.values() for value in values}
    if len(sums) != 1:
        raise RuntimeError(f"the variants generated different tokens (token sums {sums})")
    if not all(value["peak_reset"] for values in results.values() for value in values):
        log("warning: the peak RSS could not be reset; growth figures start from the peak of loading the model")
    growth = {name: median(v["growth_mb"] for v in values) for name, values in results.items()}
    peak = {name: median(v["peak_mb"] for v in values) for name, values in results.items()}
    wall = {name: median(v["wall"] for v in values) for name, values in results.items()}
    rows = [[name, f"{growth[name]:.1f} MB", f"{growth[name] - growth[BARE]:+.1f} MB", f"{peak[name]:.0f} MB",
             f"{ratio(peak[name], peak[BARE]):.3f}x", seconds(wall[name])] for name in VARIANTS]
    shipped = ratio(peak[PLUGIN], peak[BARE])
    old = ratio(peak[OLD], peak[BARE])
    per_copy = new_tokens * VOCAB * 4 / 2**20
    notes = [
        f"LLM.generate peak RSS: {shipped:.3f}x the bare call (goal <= {GOAL}): {verdict(shipped, GOAL)}; "
        f"{growth[PLUGIN] - growth[BARE]:+.1f} MB over it during the call (the old path: "
        f"{growth[OLD] - growth[BARE]:+.1f} MB, {old:.3f}x)",
        f"one copy of the kept scores: {new_tokens} steps x {VOCAB} tokens x 4 bytes = {per_copy:.0f} MiB; the old "
        "path holds them, then a stacked copy and its log-softmax",
        f"random Qwen2ForCausalLM, vocabulary {VOCAB}, hidden {HIDDEN}, {LAYERS} layers; {new_tokens} new tokens "
        f"(checked), the same tokens in every variant (checked); {repeats} fresh process(es) per variant, "
        f"medians; torch threads: {common.runner.TORCH_THREADS or 'default'}; MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}",
        "'growth' = the peak RSS during the call minus the RSS before it (model loaded, variant warmed up, peak "
        "reset); 'peak RSS' = the whole process's during the call (torch, transformers, the model)",
    ]
    return make_section(
        "Memory: one 512-token call on a 65,536-token vocabulary",
        "LLM.generate's peak memory at most 5% above a bare model.generate",
        ["variant", "growth during the call", "vs bare", "peak RSS", "peak vs bare", "call wall"], rows,
        load_before, notes, raw=results, ratios={"shipped": shipped, "old": old}, met=shipped <= GOAL,
    )


def child_result(variant: str, model_dir: Path, new_tokens: int, env: dict[str, str],
                 device: str = "cpu") -> dict[str, Any]:
    """One fresh process measuring `variant` on the model in `model_dir` (see `child`): its JSON result."""
    run = run_command([sys.executable, __file__, "--child", variant, str(model_dir), str(new_tokens),
                       "--threads", str(common.runner.TORCH_THREADS or "default"), "--device", device], REPO, env=env)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        variant, model_dir, new_tokens = sys.argv[2], sys.argv[3], int(sys.argv[4])
        threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
        common.runner.TORCH_THREADS = None if threads == "default" else int(threads)
        device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
        child(variant, model_dir, new_tokens, device)
        return
    cli.main("memory", __doc__, lambda quick: measure(repeats=1 if quick else 3))


if __name__ == "__main__":
    main()
