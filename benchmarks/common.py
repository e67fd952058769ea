"""Shared helpers of the benchmarks: running a command and measuring it, interleaved repetitions, medians,
tables, the results file, the machine's description, and the generated test suites the benchmarks time.

Nothing here imports torch or transformers: the parent process of a benchmark stays light, and each
measured process pays its own imports and model load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results.json"
QUICK_RESULTS = REPO / "benchmarks" / "results-quick.json"
EMBEDDED_MODEL_DIR = REPO / "pytest_llmdet" / "embedded_model"
MAX_NEW_TOKENS = 32
# Bytecode of every measured process goes here, not into the source tree: the sandbox sets
# PYTHONDONTWRITEBYTECODE=1, which would make each run recompile the plugin, unlike a normal install.
PYCACHE_PREFIX = Path(tempfile.gettempdir()) / "pytest-llmdet-bench-pycache"
# torch's intra-op threads in every measured process (None: torch's default, one per core). On a machine
# shared with other jobs, OpenMP's spinning barrier makes a 2-thread generate of the tiny model ~20x slower
# whenever another process holds a core, which drowns every difference; one thread keeps runs comparable.
TORCH_THREADS: int | None = 1

T = TypeVar("T")

# Measure this checkout, whatever an editable install of pytest-llmdet currently points at (another clone's
# `pip install -e` re-points it): this process imports the plugin from here, and so does every measured one.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# -- statistics and tables -------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    """The median of `values`; ValueError when there are none."""
    values = list(values)
    if not values:
        raise ValueError("median of no values")
    return statistics.median(values)


def ratio(numerator: float, denominator: float) -> float:
    """`numerator / denominator`, or infinity when the denominator is not positive."""
    return numerator / denominator if denominator > 0 else float("inf")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table with aligned columns (what docs/benchmarks.md shows, pasted as printed)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    if any(len(row) != len(headers) for row in cells):
        raise ValueError("every row needs one cell per header")
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def seconds(value: float) -> str:
    """A duration for a table: ms below one second, s above."""
    return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.2f} s"


def verdict(value: float, goal: float) -> str:
    """`met` or `MISSED` for a value that must stay at or below `goal`."""
    return "met" if value <= goal else "MISSED"


# -- running and timing ------------------------------------------------------------------------------------


@dataclass
class Run:
    """One finished process: wall time, CPU time (user + system), peak RSS, exit status and output."""

    wall: float
    cpu: float
    max_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


class CommandFailed(RuntimeError):
    """A measured command exited with an error; the message holds the end of its output."""


def child_env(**extra: str) -> dict[str, str]:
    """The environment of measured processes: this one's, with bytecode caching on (in PYCACHE_PREFIX), this
    checkout first on the import path, and torch's threads as TORCH_THREADS says."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_PREFIX)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("CI", None)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if TORCH_THREADS is None:
            env.pop(name, None)
        else:
            env[name] = str(TORCH_THREADS)
    env.update(extra)
    return env


def run_command(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> Run:
    """Run `argv` to completion and measure it; `os.wait4` gives the CPU time and peak RSS of this child
    alone (RUSAGE_CHILDREN would report the largest of all children so far)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), cwd=cwd, env=env if env is not None else child_env(),
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        run = Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, process.returncode,
                  out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"))
    if check and run.returncode != 0:
        tail = (run.stdout + run.stderr)[-3000:]
        raise CommandFailed(f"{' '.join(argv)} (in {cwd}) exited with {run.returncode}:\n{tail}")
    return run


def pytest_argv(*args: str) -> list[str]:
    """`python -m pytest` with this interpreter."""
    return [sys.executable, "-m", "pytest", *args]


def interleaved(cases: dict[str, Callable[[], T]], repeats: int, warmup: int = 1,
                progress: Callable[[str], None] | None = None) -> dict[str, list[T]]:
    """Run the cases in turn (A B C A B C ...) `warmup + repeats` times; keep the last `repeats` of each.

    Interleaving spreads a change in the machine's load over every case instead of biasing one.
    """
    results: dict[str, list[T]] = {name: [] for name in cases}
    for round_index in range(warmup + repeats):
        for name, case in cases.items():
            value = case()
            if round_index >= warmup:
                results[name].append(value)
            if progress is not None:
                label = "warmup" if round_index < warmup else f"{round_index - warmup + 1}/{repeats}"
                shown = f"{value.wall:.2f} s" if isinstance(value, Run) else str(value)
                progress(f"  [{label}] {name}: {shown}  (load {load_average()[0]:.2f})")
    return results


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds only the tables."""
    print(message, file=sys.stderr, flush=True)


# -- the machine and the results file ------------------------------------------------------------------------


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """The machine, versions and date that a set of figures belongs to."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "pytest": _version("pytest"),
        "syrupy": _version("syrupy"),
        "pytest-llmdet": _version("pytest-llmdet"),
        "torch_threads": TORCH_THREADS if TORCH_THREADS is not None else "default",
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line describing the machine and versions."""
    return (f"{info['date']}; {info['nproc']} CPUs ({info['cpu']}); Python {info['python']}, "
            f"torch {info['torch']}, transformers {info['transformers']}, pytest {info['pytest']}, "
            f"syrupy {info['syrupy']}; torch threads: {info.get('torch_threads', 'default')}")


def results_path(quick: bool) -> Path:
    """Where results go: quick smoke runs never overwrite the real figures."""
    return QUICK_RESULTS if quick else RESULTS


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object at `path`, or an empty dict when there is none."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def save_section(name: str, section: dict[str, Any], quick: bool) -> Path:
    """Store one benchmark's result under `name` in the results file, with the machine description."""
    path = results_path(quick)
    data = read_json(path)
    data["machine"] = machine_info()
    data.setdefault("benchmarks", {})[name] = section
    write_json(path, data)
    return path


def make_section(title: str, goal: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
                 load_before: tuple[float, float, float], notes: Sequence[str] = (), **extra: Any
                 ) -> dict[str, Any]:
    """A benchmark's result: its table, goal, the load around it, notes and raw figures."""
    return {
        "title": title,
        "goal": goal,
        "date": machine_info()["date"],
        "load_before": list(load_before),
        "load_after": list(load_average()),
        "headers": list(headers),
        "rows": [[_cell(v) for v in row] for row in rows],
        "notes": list(notes),
        **extra,
    }


def render_section(section: dict[str, Any]) -> str:
    """A section as printed: title, goal, load, the table and its notes."""
    lines = [f"### {section['title']}", "", f"Goal: {section['goal']}  ",
             f"Load average (1/5/15 min) before: {'/'.join(map(str, section['load_before']))}, "
             f"after: {'/'.join(map(str, section['load_after']))}", "",
             format_table(section["headers"], section["rows"])]
    if section.get("notes"):
        lines += [""] + [f"- {note}" for note in section["notes"]]
    return "\n".join(lines)


def print_section(section: dict[str, Any]) -> None:
    """Print a section to stdout."""
    print(render_section(section) + "\n", flush=True)


def standard_arguments(description: str) -> argparse.Namespace:
    """The command line every benchmark script takes: `--quick` for a fast smoke run, `--threads`."""
    global TORCH_THREADS
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke run with fewer repetitions (results go to results-quick.json)")
    parser.add_argument("--threads", default="1",
                        help="torch intra-op threads of every measured process, or 'default' (default 1)")
    args = parser.parse_args()
    TORCH_THREADS = None if args.threads == "default" else int(args.threads)
    return args


# -- the old margin path -----------------------------------------------------------------------------------


def token_statistics(scores: tuple[Any, ...], new_ids: Any, top_k: int, row: int = 0
                     ) -> tuple[list[float], list[float], list[list[int]] | None, list[list[float]] | None]:
    """The old path's figures of one row of a batch, over the scores `generate(output_scores=True)` kept
    (LLM.generate no longer asks for them: engines/step_stats.py records the same figures step by step): the
    margin (top-1 minus top-2 log-probability of the processed scores) and the chosen token's log-prob per
    step and, with `top_k` > 0, the top-k candidate IDs and log-probs from the same topk call. What the
    benchmarks time the old path by, and tests/test_step_stats.py's reference. Imports torch."""
    import torch

    if not scores:
        return [], [], ([] if top_k else None), ([] if top_k else None)
    logprobs = torch.log_softmax(torch.stack(scores)[:, row, :].float(), dim=-1)
    top = torch.topk(logprobs, k=min(max(2, top_k), logprobs.shape[-1]), dim=-1)
    best = top.values
    margins = (best[:, 0] - best[:, 1]) if best.shape[-1] >= 2 else torch.full_like(best[:, 0], float("inf"))
    chosen = logprobs.gather(1, new_ids[: logprobs.shape[0]].unsqueeze(1)).squeeze(1)
    if not top_k:
        return margins.tolist(), chosen.tolist(), None, None
    return margins.tolist(), chosen.tolist(), top.indices[:, :top_k].tolist(), best[:, :top_k].tolist()


# -- generated suites ---------------------------------------------------------------------------------------

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


def new_workdir(prefix: str) -> Path:
    """A fresh temporary folder for one benchmark's suites (the caller removes it)."""
    return Path(tempfile.mkdtemp(prefix=f"llmdet-bench-{prefix}-"))


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


def write_llmdet_suite(folder: Path, prompts: list[list[dict[str, str]]], model_dir: Path,
                       max_new_tokens: int = MAX_NEW_TOKENS, marker: str = "") -> Path:
    """The snapshot suite written with pytest-llmdet: one test per prompt, `llm.generate(prompt) ==
    llm_snapshot`. The model and the token count are set in the ini file, as a user would."""
    _write_rootdir(folder)
    (folder / "pytest.ini").write_text(f"[pytest]\nllm_model = {model_dir}\nllm_max_new_tokens = {max_new_tokens}\n",
                                       encoding="utf-8")
    (folder / "test_llmdet_suite.py").write_text(
        f'"""Generated: the snapshot suite with pytest-llmdet."""\nimport pytest\n\n'
        f"{_prompt_module_header(prompts)}\n\n{marker}"
        '@pytest.mark.parametrize("prompt", PROMPTS, ids=IDS)\n'
        "def test_prompt(llm, llm_snapshot, prompt):\n"
        "    assert llm.generate(prompt) == llm_snapshot\n",
        encoding="utf-8",
    )
    return folder


def write_handrolled_suite(folder: Path, prompts: list[list[dict[str, str]]], model_dir: Path,
                           max_new_tokens: int = MAX_NEW_TOKENS) -> Path:
    """The same checks as a competent user writes them without pytest-llmdet: a session fixture loading
    model and tokenizer, `model.generate(do_sample=False)`, and syrupy's `snapshot` on the text."""
    _write_rootdir(folder)
    (folder / "test_handrolled_suite.py").write_text(
        f'"""Generated: the snapshot suite with transformers and syrupy."""\n'
        "import pytest\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"MODEL_DIR = {str(model_dir)!r}\n{_prompt_module_header(prompts)}\n\n"
        '@pytest.fixture(scope="session")\n'
        "def model_and_tokenizer():\n"
        "    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)\n"
        "    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)\n"
        "    model.eval()\n"
        "    return model, tokenizer\n\n\n"
        '@pytest.mark.parametrize("prompt", PROMPTS, ids=IDS)\n'
        "def test_prompt(model_and_tokenizer, snapshot, prompt):\n"
        "    model, tokenizer = model_and_tokenizer\n"
        "    inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors=\"pt\",\n"
        "                                           return_dict=True)\n"
        f"    output = model.generate(**inputs, do_sample=False, max_new_tokens={max_new_tokens})\n"
        "    text = tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True)\n"
        "    assert text == snapshot\n",
        encoding="utf-8",
    )
    return folder


def write_bare_loop(folder: Path, prompts: list[list[dict[str, str]]], model_dir: Path,
                    max_new_tokens: int = MAX_NEW_TOKENS) -> Path:
    """The floor: a plain script that loads the model and calls `model.generate` once per prompt. With a
    file name as its argument it also writes the texts there as JSON (used to check the outputs agree)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "bare_loop.py"
    script.write_text(
        '"""Generated: the bare generate loop."""\n'
        "import json\nimport sys\n\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"MODEL_DIR = {str(model_dir)!r}\n{_prompt_module_header(prompts)}\n"
        "tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)\n"
        "model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)\n"
        "model.eval()\n"
        "texts = []\n"
        "for prompt in PROMPTS:\n"
        "    inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors=\"pt\",\n"
        "                                           return_dict=True)\n"
        f"    output = model.generate(**inputs, do_sample=False, max_new_tokens={max_new_tokens})\n"
        "    texts.append(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n"
        "if len(sys.argv) > 1:\n"
        "    with open(sys.argv[1], \"w\", encoding=\"utf-8\") as stream:\n"
        "        json.dump(texts, stream)\n",
        encoding="utf-8",
    )
    return script


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
