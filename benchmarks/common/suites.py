"""The generated test suites and scripts the benchmarks time, and what they read back from them: distinct chat
prompts, a private copy of the embedded model, the trivial suite (collection), the snapshot suite written with
pytest-llmdet, the same checks hand-rolled with transformers and syrupy, the bare generate loop, the
determinism re-run suite and the conftest that counts hashed weight files.

Each suite is its own rootdir (a pytest.ini of its own), untouched by this repository's pyproject.toml.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from . import runner
from .runner import REPO

EMBEDDED_MODEL_DIR = REPO / "pytest_llmdet" / "embedded_model"
MAX_NEW_TOKENS = 32


SUBJECTS = (
    "a fox", "a crow", "a lion", "a mouse", "a hare", "a tortoise", "a wolf", "a lamb", "a king", "a queen",
    "a princess", "a miller", "a shepherd boy", "a goose that laid golden eggs", "an ant", "a grasshopper",
    "a dog", "a cat", "a town mouse", "a country mouse", "a frog", "an ox", "an eagle", "a stag", "a farmer",
    "a woodcutter", "a little mermaid", "a tin soldier", "the Snow Queen", "an ugly duckling", "Alice",
    "the White Rabbit", "the Cheshire Cat", "the Queen of Hearts", "Jack", "a giant", "three bears",
    "a little red hen", "an old woman", "a fisherman", "a golden fish", "a nightingale", "an emperor",
    "a swineherd", "a soldier with a tinder box", "a fir tree", "a little match girl", "two elves",
    "a shoemaker", "a wise owl",
)
TEMPLATES = (
    "Tell me a story about {}.", "Who is {}?", "Write a short fable about {}.", "What did {} say to the king?",
    "Describe {} in one sentence.", "Continue the story: once upon a time there was {}.", "Why was {} sad?",
    "What is the moral of the story of {}?", "Where did {} live?", "What happened to {} in the end?",
)


def chat_prompts(count: int) -> list[list[dict[str, str]]]:
    """`count` distinct one-message chat prompts (at most 500): each subject with each template once."""
    if not 0 <= count <= len(SUBJECTS) * len(TEMPLATES):
        raise ValueError(f"between 0 and {len(SUBJECTS) * len(TEMPLATES)} prompts, not {count}")
    prompts = []
    for i in range(count):
        subject = SUBJECTS[i % len(SUBJECTS)]
        template = TEMPLATES[(i + i // len(SUBJECTS)) % len(TEMPLATES)]
        prompts.append([{"role": "user", "content": template.format(subject)}])
    return prompts


def copy_embedded_model(destination: Path) -> Path:
    """A private copy of the embedded model, so that a benchmark does not notice it being rebuilt."""
    shutil.copytree(EMBEDDED_MODEL_DIR, destination)
    return destination


def _write_rootdir(folder: Path) -> None:
    # An ini file of its own: the suite is its own rootdir, untouched by this repository's pyproject.toml.
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")


def write_trivial_suite(folder: Path, tests: int, per_module: int = 50) -> Path:
    """A suite of `tests` trivial tests in modules of `per_module` each (the collection benchmark's)."""
    _write_rootdir(folder)
    for module_index, start in enumerate(range(0, tests, per_module)):
        body = "".join(f"\n\ndef test_trivial_{i}():\n    assert {i} + 1 == {i + 1}\n"
                       for i in range(start, min(start + per_module, tests)))
        (folder / f"test_trivial_{module_index:03d}.py").write_text(f'"""Generated."""{body}', encoding="utf-8")
    return folder


def _prompt_module_header(prompts: list[list[dict[str, str]]]) -> str:
    return f"PROMPTS = {prompts!r}\nIDS = [f\"p{{i:03d}}\" for i in range(len(PROMPTS))]\n"


def _write(path: Path, template: str, prompts: list[list[dict[str, str]]], **fields: object) -> Path:
    path.write_text(template.format(header=_prompt_module_header(prompts), **fields), encoding="utf-8")
    return path


LLMDET_SUITE = '''"""Generated: the snapshot suite with pytest-llmdet."""
import pytest

{header}

{marker}@pytest.mark.parametrize("prompt", PROMPTS, ids=IDS)
def test_prompt(llm, llm_snapshot, prompt):
    assert llm.generate(prompt) == llm_snapshot
'''

HANDROLLED_SUITE = '''"""Generated: the snapshot suite with transformers and syrupy."""
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL_DIR = {model_dir!r}
{header}

@pytest.fixture(scope="session")
def model_and_tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    model.eval()
    return model, tokenizer


@pytest.mark.parametrize("prompt", PROMPTS, ids=IDS)
def test_prompt(model_and_tokenizer, snapshot, prompt):
    model, tokenizer = model_and_tokenizer
{generate}    assert text == snapshot
'''

BARE_LOOP = '''"""Generated: the bare generate loop."""
import json
import sys

from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL_DIR = {model_dir!r}
{header}
tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
model.eval()
texts = []
for prompt in PROMPTS:
{generate}if len(sys.argv) > 1:
    with open(sys.argv[1], "w", encoding="utf-8") as stream:
        json.dump(texts, stream)
'''

# One prompt's greedy generate, as the hand-rolled test and the bare loop both write it; `{keep}` is how the
# decoded text is kept (`text = ` or `texts.append(`, closed by `{close}`).
GENERATE = '''    inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    output = model.generate(**inputs, do_sample=False, max_new_tokens={max_new_tokens})
    {keep}tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True){close}
'''


def write_llmdet_suite(folder: Path, prompts: list[list[dict[str, str]]], model_dir: Path,
                       max_new_tokens: int = MAX_NEW_TOKENS, marker: str = "") -> Path:
    """The snapshot suite written with pytest-llmdet: one test per prompt, `llm.generate(prompt) ==
    llm_snapshot`. The model and the token count are set in the ini file, as a user would."""
    _write_rootdir(folder)
    (folder / "pytest.ini").write_text(f"[pytest]\nllm_model = {model_dir}\nllm_max_new_tokens = {max_new_tokens}\n",
                                       encoding="utf-8")
    _write(folder / "test_llmdet_suite.py", LLMDET_SUITE, prompts, marker=marker)
    return folder


def write_handrolled_suite(folder: Path, prompts: list[list[dict[str, str]]], model_dir: Path,
                           max_new_tokens: int = MAX_NEW_TOKENS) -> Path:
    """The same checks as a competent user writes them without pytest-llmdet: a session fixture loading
    model and tokenizer, `model.generate(do_sample=False)`, and syrupy's `snapshot` on the text."""
    _write_rootdir(folder)
    generate = GENERATE.format(max_new_tokens=max_new_tokens, keep="text = ", close="")
    _write(folder / "test_handrolled_suite.py", HANDROLLED_SUITE, prompts, model_dir=str(model_dir),
           generate=generate)
    return folder


def write_bare_loop(folder: Path, prompts: list[list[dict[str, str]]], model_dir: Path,
                    max_new_tokens: int = MAX_NEW_TOKENS) -> Path:
    """The floor: a plain script that loads the model and calls `model.generate` once per prompt. With a
    file name as its argument it also writes the texts there as JSON (used to check the outputs agree)."""
    folder.mkdir(parents=True, exist_ok=True)
    generate = GENERATE.format(max_new_tokens=max_new_tokens, keep="texts.append(", close=")")
    return _write(folder / "bare_loop.py", BARE_LOOP, prompts, model_dir=str(model_dir), generate=generate)


def collected_count(output: str) -> int:
    """The number of tests in `pytest --co -q` output ("N tests collected"); -1 when absent."""
    for line in reversed(output.splitlines()):
        words = line.split()
        if len(words) >= 3 and words[1] in ("test", "tests") and words[2] == "collected" and words[0].isdigit():
            return int(words[0])
    return -1


def llmdet_golden_texts(folder: Path) -> list[str]:
    """The texts recorded in a generated pytest-llmdet suite's golden files, in test order."""
    texts = []
    for path in sorted((folder / "__llm_snapshots__").rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        texts.append("".join(data["snapshots"]["0"]["text_lines"]))
    return texts


def same_texts_as_bare_loop(llmdet: Path, bare: Path, texts_file: Path) -> int:
    """Run the bare loop once, writing its texts to `texts_file`: how many of them equal the texts recorded in
    the golden files of the pytest-llmdet suite `llmdet` (recorded first), prompt by prompt."""
    runner.run_command([sys.executable, str(bare), str(texts_file)], bare.parent)
    bare_texts = json.loads(texts_file.read_text(encoding="utf-8"))
    return sum(a == b for a, b in zip(llmdet_golden_texts(llmdet), bare_texts, strict=True))


# -- the determinism re-run suite (bench_reruns.py) -------------------------------------------------------------

RERUN_CONFTEST = '''"""Generated: times each test's whole protocol and counts how often its body ran."""
import json
import os
import time

import pytest

DURATIONS = {}
EXECUTIONS = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    started = time.perf_counter()
    yield
    DURATIONS[item.nodeid] = time.perf_counter() - started


@pytest.fixture
def count_execution(request):
    EXECUTIONS[request.node.nodeid] = EXECUTIONS.get(request.node.nodeid, 0) + 1


def pytest_sessionfinish(session):
    with open(os.environ["LLMDET_BENCH_OUT"], "w", encoding="utf-8") as stream:
        json.dump({"durations": DURATIONS, "executions": EXECUTIONS}, stream)
'''


def write_rerun_suite(folder: Path, model_dir: Path, repeats: int, runs: tuple[int, ...],
                      prompts_per_test: int) -> Path:
    """The re-run suite: a warm-up test, then per repeat one unmarked test `test_plain_K` and one test
    `test_runsN_K` marked `llm_determinism(runs=N)` per N in `runs`, all generating the same
    `prompts_per_test` chat prompts. Its conftest writes each test's protocol time and how often its body ran
    to the JSON file named by $LLMDET_BENCH_OUT."""
    folder.mkdir(parents=True)
    (folder / "pytest.ini").write_text(
        f"[pytest]\nllm_model = {model_dir}\nllm_max_new_tokens = {MAX_NEW_TOKENS}\n", encoding="utf-8")
    (folder / "conftest.py").write_text(RERUN_CONFTEST, encoding="utf-8")
    lines = ['"""Generated: the determinism re-run suite."""', "import pytest", "",
             f"PROMPTS = {chat_prompts(prompts_per_test)!r}", "", "",
             "def body(llm):", "    for prompt in PROMPTS:", "        llm.generate(prompt)", "", "",
             "def test_000_warmup(llm):", "    body(llm)", ""]
    for k in range(repeats):
        lines += ["", f"def test_plain_{k}(llm, count_execution):", "    body(llm)", ""]
        for count in runs:
            lines += ["", f"@pytest.mark.llm_determinism(runs={count})",
                      f"def test_runs{count}_{k}(llm, count_execution):", "    body(llm)", ""]
    (folder / "test_reruns.py").write_text("\n".join(lines), encoding="utf-8")
    return folder


# -- counting hashed weight files (bench_fingerprint.py) ----------------------------------------------------------

# Counts the weight files a run hashes (benchmark instrumentation of a private function): the timing alone
# cannot tell a cached run from a fast disk.
HASH_COUNTER = '''"""Generated: records every weight file pytest-llmdet hashes in this run."""
import os

from pytest_llmdet.engines import fingerprint

_hash_file = fingerprint._hash_file


def _counting(path):
    with open(os.environ["LLMDET_BENCH_HASHED"], "a", encoding="utf-8") as stream:
        stream.write(path.name + "\\n")
    return _hash_file(path)


fingerprint._hash_file = _counting
'''


def add_hash_counter(suite: Path) -> Path:
    """A conftest in `suite` that appends the name of every weight file the run hashes to the file named by
    $LLMDET_BENCH_HASHED."""
    (suite / "conftest.py").write_text(HASH_COUNTER, encoding="utf-8")
    return suite
