"""Build the embedded default model of pytest-llmdet.

pytest-llmdet ships a tiny language model inside the package, in ``pytest_llmdet/embedded_model/``, so that
its examples and its own test suite run fully offline: no download, no GPU, no API key. This script builds
that model from scratch:

1. It trains a byte-level BPE tokenizer on the public-domain texts in ``scripts/corpus/`` (see
   ``SOURCES.md`` there). The tokenizer uses exactly the NFC normalizer and the pre-tokenizer (Qwen2's split
   regex followed by ByteLevel) that ``transformers``' ``Qwen2Tokenizer`` rebuilds when the directory is
   loaded again with ``AutoTokenizer``; with any other pipeline the reloaded tokenizer would encode text
   differently from the one the model was trained with. It has Qwen's special tokens and Qwen's ChatML chat
   template, and its alphabet holds all 256 bytes, so any UTF-8 text encodes without unknown tokens.
2. It builds a ``Qwen2ForCausalLM`` of about 188k parameters (2 layers, hidden size 64, tied embeddings).
3. It trains the model for a few minutes on 2 CPU threads, on the corpus as plain text and on ChatML
   conversations drawn from it, so that greedy output is readable English and chat answers end with
   ``<|im_end|>``.
4. It saves everything with ``save_pretrained`` (float32 safetensors), with a ``generation_config.json``
   that turns sampling on as Qwen1.5-Chat's does.
5. It loads the result back with the Auto classes, checks that it loads cleanly and tokenizes exactly as
   the tokenizer it trained, and prints greedy samples.

The build is deterministic: for a given ``--seed``, corpus, machine and versions of torch, tokenizers and
transformers, two runs write byte-identical ``model.safetensors``.

Usage, from the repository root::

    python scripts/build_embedded_model.py [--seed 0] [--out pytest_llmdet/embedded_model]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
)
from transformers.models.qwen2 import tokenization_qwen2 as qwen2_tokenization
from transformers.utils import logging as hf_logging

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
DEFAULT_OUT = REPO_ROOT / "pytest_llmdet" / "embedded_model"

# Qwen's special tokens. The BPE trainer puts them first, so they get ids 0, 1 and 2.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

# Copied from transformers/models/qwen2/tokenization_qwen2.py (PRETOKENIZE_REGEX). Qwen2Tokenizer rebuilds
# its pre-tokenizer from this regex on every load, whatever tokenizer.json says; verify() checks they agree.
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501

# Qwen1.5-Chat / Qwen2-Instruct chat template (ChatML with a default system prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

VOCAB_SIZE = 1400  # 3 special tokens + 256 bytes + 1141 merges
MAX_POSITIONS = 512

# Training hyper-parameters: about 4-5 minutes on 2 idle CPU cores.
SEQ_LEN = 128
BATCH_SIZE = 32
DEFAULT_STEPS = 3000
PEAK_LR = 3e-3
WARMUP_STEPS = 100
CHAT_FRACTION = 0.35  # share of training windows drawn from the ChatML stream
NUM_CHAT_EXAMPLES = 1500
ANSWERS_PER_KEYWORD = 3

# Texts whose encodings must survive a save/reload round trip unchanged.
ROUND_TRIP_TEXTS = [
    "Once upon a time there was a fox.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune...",
    "I'm sure they're sour, aren't they? 12345 + 678 = 13023\n\n\tIndented   spaces  ",
    "你好，世界",
    "🙂👍🏽",
    "Cafe\u0301 na\u00efve \u1e9b\u0323 q\u0307 \u0915\u093f",
    f"{IM_START}user\nHi{IM_END}\n{IM_START}assistant\n",
    "Line one\r\nLine two\n",
]


@dataclass(frozen=True)
class Story:
    """One titled piece of the corpus: a fable, a fairy tale, a chapter, a poem."""

    title: str
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join((self.title, *self.paragraphs))


# ---------------------------------------------------------------------------------------------- corpus


def _is_title(paragraph: str) -> bool:
    """A title is a short single line that does not end like a sentence."""
    return "\n" not in paragraph and len(paragraph) <= 60 and paragraph[-1] not in '.!?,;:"'


def load_corpus(corpus_dir: Path = CORPUS_DIR) -> list[Story]:
    """Split every ``*.txt`` file of the corpus, in file-name order, into titled stories."""
    stories: list[Story] = []
    for path in sorted(corpus_dir.glob("*.txt")):
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        title, paragraphs = path.stem, []
        for paragraph in (p.strip() for p in text.split("\n\n")):
            if not paragraph:
                continue
            if _is_title(paragraph):
                if paragraphs:
                    stories.append(Story(title, tuple(paragraphs)))
                title, paragraphs = paragraph, []
            else:
                paragraphs.append(paragraph)
        if paragraphs:
            stories.append(Story(title, tuple(paragraphs)))
    return stories


_SENTENCE_END = re.compile(r'(?<=[.!?])\s+(?=[A-Z"])|(?<=[.!?]")\s+(?=[A-Z"])')


def split_sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def _clean_answer(sentences: list[str]) -> str | None:
    """Join sentences into an answer, or None if the result is too long or has unbalanced quotes."""
    answer = " ".join(sentences)
    if "\n" in answer or not 20 <= len(answer) <= 320 or answer.count('"') % 2:
        return None
    return answer


STORY_KEYWORDS = [
    "fox", "wolf", "lion", "mouse", "hare", "tortoise", "crow", "frog", "cat", "dog", "bear", "pig",
    "goose", "duck", "swan", "ant", "grasshopper", "sheep", "lamb", "horse", "donkey", "stork", "eagle",
    "king", "queen", "princess", "prince", "witch", "shepherd", "miller", "fisherman", "emperor",
    "soldier", "rabbit", "giant", "girl", "boy", "grandmother", "bird", "tree",
]  # fmt: skip

STORY_REQUESTS = [
    "Tell me a story about a {kw}.",
    "Tell me a story about the {kw}.",
    "Can you tell me a story about a {kw}?",
    "Write a short story about a {kw}.",
]

GENERIC_REQUESTS = [
    "Tell me a story.",
    "Tell me a fairy tale.",
    "Tell me a bedtime story.",
    "Write a short story.",
    "Say something.",
    "Continue the story.",
]

# Fixed question/answer pairs, so that common test prompts get sensible, short answers.
FIXED_QA = [
    ("Hi", "Hello! How can I help you today?"),
    ("Hello", "Hello! How can I help you today?"),
    ("Hello!", "Hello! How can I help you today?"),
    ("Hey there.", "Hello! How can I help you today?"),
    ("Good morning.", "Good morning! How can I help you today?"),
    ("How are you?", "I am very well, thank you. How can I help you today?"),
    ("Who are you?", "I am a very small language model. I know many old stories and fables."),
    ("What are you?", "I am a very small language model. I know many old stories and fables."),
    ("What is your name?", "I am a very small language model. I know many old stories and fables."),
    ("Thank you.", "You are welcome!"),
    ("Thanks!", "You are welcome!"),
    ("Goodbye.", "Goodbye! Have a good day."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of England?", "The capital of England is London."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is 2 + 2?", "2 + 2 is 4."),
    ("What is 1 + 1?", "1 + 1 is 2."),
    ("What colour is the sky?", "The sky is blue."),
    ("What color is the sky?", "The sky is blue."),
    ("What colour is grass?", "Grass is green."),
    ("How many legs does a dog have?", "A dog has four legs."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("Say hello.", "Hello!"),
    ("Say yes or no.", "Yes."),
    ("Give me some advice.", "Slow and steady wins the race."),
    ("Tell me a proverb.", "A stitch in time saves nine."),
]


def build_chat_examples(stories: list[Story], rng: random.Random, count: int) -> list[list[dict[str, str]]]:
    """Deterministically draw ChatML conversations whose answers are sentences of the corpus."""
    sentences_by_story = [[s for p in story.paragraphs for s in split_sentences(p)] for story in stories]
    openings = [a for sents in sentences_by_story if (a := _clean_answer(sents[:2]))]
    # A few answers per keyword (story openings first), so that the model can learn which goes with which.
    candidates = openings + [
        a
        for sents in sentences_by_story
        for i in range(1, len(sents))
        if (a := _clean_answer(sents[i : i + 2]))
    ]
    by_keyword: dict[str, list[str]] = {}
    for kw in STORY_KEYWORDS:
        matches = [a for a in candidates if re.search(rf"\b{kw}\b", a, re.IGNORECASE)]
        if matches:
            by_keyword[kw] = matches[:ANSWERS_PER_KEYWORD]
    titled = [
        (s.title, a)
        for s, sents in zip(stories, sentences_by_story, strict=True)
        if (a := _clean_answer(sents[:2]))
    ]
    morals = [
        (s.title, s.paragraphs[-1]) for s in stories if len(s.paragraphs) > 1 and len(s.paragraphs[-1]) < 90
    ]
    keywords = sorted(by_keyword)

    conversations: list[list[dict[str, str]]] = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.45:
            kw = rng.choice(keywords)
            question, answer = rng.choice(STORY_REQUESTS).format(kw=kw), rng.choice(by_keyword[kw])
        elif kind < 0.6:
            question, answer = rng.choice(GENERIC_REQUESTS), rng.choice(openings)
        elif kind < 0.75:
            title, answer = rng.choice(titled)
            question = f"Tell me the story of {title}."
        elif kind < 0.85:
            title, moral = rng.choice(morals)
            question, answer = f"What is the moral of {title}?", moral
        else:
            question, answer = rng.choice(FIXED_QA)
        conversations.append(
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        )
    return conversations


# ------------------------------------------------------------------------------------------- tokenizer


def build_tokenizer(stories: list[Story], vocab_size: int = VOCAB_SIZE) -> tuple[Tokenizer, Qwen2Tokenizer]:
    """Train a byte-level BPE on the corpus with Qwen2's pipeline.

    Returns the raw trained ``tokenizers.Tokenizer`` and the ``Qwen2Tokenizer`` built from its vocabulary
    and merges (the object that is saved).
    """
    raw = Tokenizer(models.BPE())
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator([story.text for story in stories], trainer=trainer)

    model_json = json.loads(raw.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=model_json["vocab"],
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        extra_special_tokens=[IM_START, IM_END],
        model_max_length=MAX_POSITIONS,
        chat_template=CHAT_TEMPLATE,
    )
    return raw, tokenizer


# ----------------------------------------------------------------------------------------------- model


def build_model(tokenizer: Qwen2Tokenizer) -> Qwen2ForCausalLM:
    """A ~188k-parameter Qwen2 with tied input/output embeddings. Call after seeding torch."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_window_layers=2,
        hidden_act="silu",
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = build_generation_config(tokenizer)
    return model


def build_generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """Sampling defaults as in Qwen1.5-Chat's generation_config.json."""
    endoftext = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    return GenerationConfig(
        bos_token_id=endoftext,
        pad_token_id=endoftext,
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), endoftext],
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.05,
    )


# -------------------------------------------------------------------------------------------- training


def encode_streams(
    stories: list[Story], tokenizer: Qwen2Tokenizer, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token streams for training: the plain corpus (stories separated by <|endoftext|>), and ChatML chats."""
    endoftext = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    plain: list[int] = []
    for story in stories:
        plain += tokenizer(story.text, verbose=False)["input_ids"] + [endoftext]
    chat: list[int] = []
    for messages in build_chat_examples(stories, random.Random(seed), NUM_CHAT_EXAMPLES):
        chat += tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), verbose=False)["input_ids"]
    return torch.tensor(plain), torch.tensor(chat)


def sample_batch(plain: torch.Tensor, chat: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """BATCH_SIZE random windows of SEQ_LEN tokens, about CHAT_FRACTION of them from the chat stream."""
    rows = []
    for use_chat in (torch.rand(BATCH_SIZE, generator=generator) < CHAT_FRACTION).tolist():
        stream = chat if use_chat else plain
        start = int(torch.randint(0, len(stream) - SEQ_LEN, (1,), generator=generator))
        rows.append(stream[start : start + SEQ_LEN])
    return torch.stack(rows)


def learning_rate(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < WARMUP_STEPS:
        return PEAK_LR * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return PEAK_LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model: Qwen2ForCausalLM, plain: torch.Tensor, chat: torch.Tensor, steps: int, seed: int) -> float:
    """Train with AdamW; returns the mean loss of the last 50 steps."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.95), weight_decay=0.01)
    model.train()
    recent: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps)
        batch = sample_batch(plain, chat, generator)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent = (recent + [loss.item()])[-50:]
        if step % 100 == 0 or step == steps - 1:
            print(
                f"step {step:5d}/{steps}  loss {loss.item():.4f}  ({time.perf_counter() - start:.0f}s)",
                flush=True,
            )
    model.eval()
    return sum(recent) / len(recent)


# ---------------------------------------------------------------------------------------------- saving


def save(model: Qwen2ForCausalLM, tokenizer: Qwen2Tokenizer, out: Path) -> None:
    """Write the model (float32 safetensors), generation config and tokenizer to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for path in out.iterdir():
        if path.is_file():
            path.chmod(0o644)  # save_pretrained writes model.safetensors as 0600


# ---------------------------------------------------------------------------------------- verification


class _LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def greedy(model: Qwen2ForCausalLM, tokenizer: Qwen2Tokenizer, prompt: str, max_new_tokens: int = 32) -> str:
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(
            **inputs, do_sample=False, max_new_tokens=max_new_tokens, temperature=None, top_p=None, top_k=None
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])


def verify(out: Path, raw: Tokenizer) -> None:
    """Reload ``out`` with the Auto classes; check it loads cleanly and tokenizes exactly as ``raw``."""
    collector = _LogCollector()
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(collector)
    try:
        tokenizer = AutoTokenizer.from_pretrained(out)
        model, loading_info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    finally:
        transformers_logger.removeHandler(collector)
    problems = {key: value for key, value in loading_info.items() if value}
    assert not problems, f"weights did not load cleanly: {problems}"
    assert not collector.messages, f"warnings while loading: {collector.messages}"
    assert type(tokenizer).__name__ == "Qwen2Tokenizer", type(tokenizer)
    assert QWEN2_PRETOKENIZE_REGEX == qwen2_tokenization.PRETOKENIZE_REGEX, "Qwen2Tokenizer's regex changed"

    vocab = tokenizer.get_vocab()
    assert all(byte in vocab for byte in pre_tokenizers.ByteLevel.alphabet()), "alphabet misses some bytes"
    for text in ROUND_TRIP_TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert ids == raw.encode(text).ids, f"reloaded tokenizer encodes {text!r} differently"
        assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text), f"{text!r} does not round-trip"

    chat = [{"role": "user", "content": "Tell me a story about a fox."}]
    chat_prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert chat_prompt.endswith(f"{IM_START}assistant\n"), chat_prompt
    print(
        f"parameters: {model.num_parameters():,}  vocab: {len(tokenizer)}  eos: {tokenizer.eos_token_id}"
        f"  pad: {tokenizer.pad_token_id}  im_start: {tokenizer.convert_tokens_to_ids(IM_START)}"
    )
    print(f"greedy 'Once upon a time' -> {greedy(model, tokenizer, 'Once upon a time')!r}")
    print(f"greedy chat {chat[0]['content']!r} -> {greedy(model, tokenizer, chat_prompt, 48)!r}")


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    hf_logging.disable_progress_bar()

    stories = load_corpus()
    raw, tokenizer = build_tokenizer(stories)
    model = build_model(tokenizer)
    plain, chat = encode_streams(stories, tokenizer, args.seed)
    print(
        f"{len(stories)} stories, {len(plain):,} plain tokens, {len(chat):,} chat tokens, "
        f"vocab {len(tokenizer)}, {model.num_parameters():,} parameters"
    )

    start = time.perf_counter()
    final_loss = train(model, plain, chat, args.steps, args.seed)
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f}s, final loss {final_loss:.4f}")

    save(model, tokenizer, args.out)
    verify(args.out, raw)
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f"wrote {args.out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
