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
Variants:

- bare `model.generate`: the plugin's forced-greedy config, `model.generate` without scores;
- `LLM.generate`: the plugin's call as shipped (and once more with capture_top_k=5);
- old path: `output_scores=True, return_dict_in_generate=True`, then the old runner's statistics
  (`common/old_margins.py`).

Memory: each variant in fresh processes, interleaved. Each loads the model, runs its variant once for 8 tokens
(warm-up), resets its peak RSS to the current RSS (Linux's /proc/self/clear_refs; loading the model peaks
higher than a call of this small model), then measures how far one 512-token call raises it
(`getrusage(RUSAGE_SELF).ru_maxrss`). torch has no CPU allocator statistics; glibc's malloc runs there with a
fixed mmap threshold (MALLOC_MMAP_THRESHOLD_), so that freed large blocks go back to the system and the
resident set follows what is alive.

Time: that setting makes every large allocation an mmap and its page faults, which no user's process pays, so
the wall times come from one process per vocabulary with glibc's default malloc, which runs every variant in
turn, round after round, in a shuffled order: on a shared machine a load that drifts then meets every variant
alike, and each round's ratio to its own bare call is what counts (the fixed-threshold processes' wall ratios
are printed beside them).

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
from common import cli  # noqa: E402
from common.report import make_section, median, ratio, seconds, verdict  # noqa: E402
from common.runner import child_env, interleaved, load_average, log, new_workdir, run_command  # noqa: E402

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


def callers(model_dir: str, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Load the model: (the loaded model, {variant: a function generating that many tokens of PROMPT the
    variant's way, returning the token IDs})."""
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
    llm = runner.LLM(hf.TransformersEngine(loaded), seed=0, max_new_tokens=NEW_TOKENS, inherit_processors=True)
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

    def plugin(count: int, top_k: int) -> list[int]:
        llm.capture_top_k = top_k
        return llm.generate(PROMPT, max_new_tokens=count).token_ids

    return loaded, {"bare": lambda count: direct(count, scores=False), "plugin": lambda count: plugin(count, 0),
                    "plugin-topk": lambda count: plugin(count, 5), "old": lambda count: direct(count, scores=True)}


def child(variant: str, model_dir: str, new_tokens: int, device: str = "cpu") -> None:
    """Load the model, warm the variant up, then print the peak-memory growth of one `new_tokens` call as JSON:
    the process's RSS on the CPU, torch's allocated GPU memory (torch.cuda.max_memory_allocated) on CUDA."""
    import gc
    import resource
    import time

    import torch

    loaded, calls = callers(model_dir, device)
    call, cuda = calls[variant], loaded.device.startswith("cuda")
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


def timing_child(model_dir: str, new_tokens: int, rounds: int) -> None:
    """Load the model, warm every variant up, then time `rounds` rounds of one `new_tokens` call per variant,
    in a shuffled order each round (wall and CPU time); print {variant: {"wall": [...], "cpu": [...],
    "token_sums": [...]}} as JSON. Variants side by side in one process: a load that drifts meets them all,
    and no variant always follows the same one (what the one before leaves in malloc's heap differs)."""
    import gc
    import random
    import time

    _, calls = callers(model_dir)
    names = list(calls)
    for call in calls.values():
        call(8)
    found: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": [], "token_sums": []} for name in names}
    order = random.Random(0)
    for _ in range(rounds):
        for name in order.sample(names, len(names)):
            gc.collect()
            started, cpu_started = time.perf_counter(), time.process_time()
            tokens = calls[name](new_tokens)
            found[name]["wall"].append(time.perf_counter() - started)
            found[name]["cpu"].append(time.process_time() - cpu_started)
            found[name]["token_sums"].append(sum(tokens) if len(tokens) == new_tokens else -1)
    found["recorder_cpu"] = recorder_cpu(calls, new_tokens)
    print(json.dumps(found))


def recorder_cpu(calls: dict[str, Any], new_tokens: int, repeats: int = 3) -> dict[str, list[float]]:
    """The CPU time spent inside the recorder's steps (StepRecorder.__call__, timed by a wrapper) of
    `repeats` more calls of each plugin variant: what the recording itself costs, without the difference of two
    noisy walls."""
    import time

    from pytest_llmdet.engines import step_stats

    spent = [0.0]
    plain = step_stats.StepRecorder.__call__

    def timed(self: Any, input_ids: Any, scores: Any) -> Any:
        started = time.thread_time()
        try:
            return plain(self, input_ids, scores)
        finally:
            spent[0] += time.thread_time() - started

    step_stats.StepRecorder.__call__ = timed
    found: dict[str, list[float]] = {}
    try:
        for name in ("plugin", "plugin-topk"):
            for _ in range(repeats):
                spent[0] = 0.0
                calls[name](new_tokens)
                found.setdefault(name, []).append(spent[0])
    finally:
        step_stats.StepRecorder.__call__ = plain
    return found


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


def measure(repeats: int, rounds: int, new_tokens: int = NEW_TOKENS) -> dict[str, Any]:
    load_before = load_average()
    rows: list[list[str]] = []
    raw: dict[str, Any] = {}
    ratios: dict[str, float] = {}
    notes: list[str] = []
    work = new_workdir("memory")
    try:
        for vocab in VOCABS:
            log(f"building a random Qwen2 model with a {vocab}-token vocabulary ...")
            model_dir = build_model(work / f"model-{vocab}", vocab=vocab)
            memory = measure_memory(model_dir, repeats, new_tokens)
            log(f"timing {len(VARIANTS)} variants x {rounds} rounds in one process ...")
            run = run_command([sys.executable, __file__, "--timing", str(model_dir), str(new_tokens), str(rounds),
                               "--threads", str(common.runner.TORCH_THREADS or "default")], common.runner.REPO,
                              env=child_env())
            timing = json.loads(run.stdout.strip().splitlines()[-1])
            raw[str(vocab)] = {"memory": memory, "time": timing}
            vocab_rows, vocab_ratios, note = summarise(vocab, memory, timing, new_tokens)
            rows += vocab_rows
            ratios.update(vocab_ratios)
            notes.append(note)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    met = all(value <= GOAL for name, value in ratios.items() if not name.startswith("old"))
    notes += [
        f"random Qwen2ForCausalLM, hidden {HIDDEN}, {LAYERS} layers; {new_tokens} new tokens (checked), the same "
        f"tokens in every variant and call (checked); torch threads: {common.runner.TORCH_THREADS or 'default'}",
        f"memory: {repeats} fresh process(es) per variant, interleaved, medians, MALLOC_MMAP_THRESHOLD_="
        f"{MMAP_THRESHOLD}; 'growth' = the peak RSS during the call minus the RSS before it (model loaded, variant "
        "warmed up, peak reset), 'peak RSS' the whole process's; 'fixed mmap' = the median wall ratio in those "
        "processes, where every vocabulary-sized allocation is an mmap and its page faults",
        f"time: one process per vocabulary with glibc's default malloc, {rounds} rounds of one call per variant "
        "(order shuffled each round); 'call wall' the median, 'wall vs bare' and 'CPU vs bare' the medians of "
        "each round's ratio to that round's bare call; 'recorder CPU' = the CPU time inside the recorder's steps "
        "(3 more calls, timed by a wrapper) as a share of a bare call's CPU time",
    ]
    return make_section(
        "Memory and time: one 512-token call on 65,536 and 151,936-token vocabularies",
        "LLM.generate's peak memory and wall time at most 5% above a bare model.generate, with and without "
        "top-k", ["vocabulary", "variant", "growth vs bare", "peak RSS", "peak vs bare", "call wall",
                  "wall vs bare", "CPU vs bare", "recorder CPU", "fixed mmap"], rows,
        load_before, notes, raw=raw, ratios=ratios, met=met,
    )


def measure_memory(model_dir: Path, repeats: int, new_tokens: int) -> dict[str, list[dict[str, Any]]]:
    """Every variant in `repeats` fresh processes, interleaved: {variant name: [results]}."""
    env = child_env(MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
    cases = {name: (lambda variant=variant: child_result(variant, model_dir, new_tokens, env))
             for name, variant in VARIANTS.items()}
    log(f"measuring the memory of {len(cases)} variants x {repeats} processes, interleaved ...")
    results = interleaved(cases, repeats, warmup=0, progress=log)
    values = [value for found in results.values() for value in found]
    if any(value["tokens"] != new_tokens for value in values):
        raise RuntimeError(f"a variant generated other than {new_tokens} tokens")
    if len({value["token_sum"] for value in values}) != 1:
        raise RuntimeError("the variants generated different tokens")
    if not all(value["peak_reset"] for value in values):
        log("warning: the peak RSS could not be reset; growth figures start from the peak of loading the model")
    return results


def summarise(vocab: int, memory: dict[str, list[dict[str, Any]]], timing: dict[str, dict[str, list[float]]],
              new_tokens: int) -> tuple[list[list[str]], dict[str, float], str]:
    """The table rows of one vocabulary, its ratios to the bare call, and a note on it."""
    if len({value for name in VARIANTS.values() for value in timing[name]["token_sums"]} |
           {value["token_sum"] for found in memory.values() for value in found}) != 1:
        raise RuntimeError(f"the timed calls did not all generate the same {new_tokens} tokens")
    growth, peak, fixed = ({name: median(value[field] for value in memory[name]) for name in VARIANTS}
                           for field in ("growth_mb", "peak_mb", "wall"))

    def per_round(name: str, field: str) -> float:
        return median(ratio(value, bare) for value, bare in
                      zip(timing[VARIANTS[name]][field], timing["bare"][field], strict=True))

    bare_cpu = median(timing["bare"]["cpu"])
    inside = {name: f"+{ratio(median(timing['recorder_cpu'][VARIANTS[name]]), bare_cpu):.1%}"
              for name in (PLUGIN, PLUGIN_TOP_K)}
    rows, ratios = [], {}
    for name in VARIANTS:
        wall = per_round(name, "wall")
        rows.append([f"{vocab:,}", name, f"{growth[name] - growth[BARE]:+.1f} MB", f"{peak[name]:.0f} MB",
                     f"{ratio(peak[name], peak[BARE]):.3f}x", seconds(median(timing[VARIANTS[name]]["wall"])),
                     f"{wall:.3f}x", f"{per_round(name, 'cpu'):.3f}x", inside.get(name, "—"),
                     f"{ratio(fixed[name], fixed[BARE]):.3f}x"])
        label = {PLUGIN: "shipped", PLUGIN_TOP_K: "top_k", OLD: "old"}.get(name)
        if label:
            ratios[f"{label}_peak_{vocab}"], ratios[f"{label}_wall_{vocab}"] = ratio(peak[name], peak[BARE]), wall
    shown = [f"{label} {value:.3f}x: {verdict(value, GOAL)}" for label, value in ratios.items()
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
                       "--threads", str(common.runner.TORCH_THREADS or "default"), "--device", device],
                      common.runner.REPO, env=env)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--child", "--timing"):
        threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
        common.runner.TORCH_THREADS = None if threads == "default" else int(threads)
        if sys.argv[1] == "--timing":
            timing_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
            return
        variant, model_dir, new_tokens = sys.argv[2], sys.argv[3], int(sys.argv[4])
        device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
        child(variant, model_dir, new_tokens, device)
        return
    cli.main("memory", __doc__, lambda quick: measure(repeats=1 if quick else 3, rounds=2 if quick else 11))


if __name__ == "__main__":
    main()
