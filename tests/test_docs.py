"""The documentation runs as written: README.md's first test and docs/getting-started.md are executed in a scratch
folder, and every output line they show must come out of the real run; the settings table is the one the code
generates; the site's pages and the README's links exist.

A page runs as a script. A fenced block with a title (```python title="test_model.py"```) is written to that
file; in a ```console``` block every `$ ` line is a command (bash, in the scratch folder; `pytest` and `python`
are this interpreter), and the lines below it are output that must appear in that order. `...` skips lines;
a duration such as `2.62 s`, an absolute path, an object address and the length of a rule (`=====`) match
anything. A line that ends in `? a` is a prompt answered with `a`. Fenced blocks of other kinds (```bash```:
installs) are not run.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(?P<kind>[\w-]*)(?P<info>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
TITLE = re.compile(r'title="(?P<name>[^"]+)"')
PROMPT = re.compile(r"^(?P<prompt>.*\? )(?P<answer>[a-z])$")
DURATION = re.compile(r"\d+\.\d+ ?s\b")
ABSOLUTE_PATH = re.compile(r"(?<![\w.\]\[])/[^\s)'\"]+")
ADDRESS = re.compile(r"0x[0-9a-f]+")
# The header's "torch 2.13.0+cpu, transformers 5.25.0": a page shows the versions of its day, the run must print
# the installed ones (the registry releases new ones under a fixed page)
SHOWN_VERSION = re.compile(r"\b(?P<package>torch|transformers) (?P<version>\d[\w.+]*)")
RULE = re.compile(r"([=_-])\1{2,}")  # pytest's section rules: their length follows the text inside
SHELL_PRELUDE = 'pytest() { "$LLMDET_DOCS_PYTHON" -m pytest "$@"; }\npython() { "$LLMDET_DOCS_PYTHON" "$@"; }\n'


def blocks(page: Path) -> list[tuple[str, str, str]]:
    """The fenced blocks of a page, in order: (kind, info string, body)."""
    return [(m["kind"], m["info"], m["body"]) for m in FENCE.finditer(page.read_text(encoding="utf-8"))]


def pattern(shown: str) -> str:
    """An fnmatch pattern for one shown output line."""
    shown = SHOWN_VERSION.sub(lambda m: f"{m['package']} {importlib.metadata.version(m['package'])}", shown)
    escaped = re.sub(r"[\[\]*?]", lambda m: f"[{m.group()}]", shown.rstrip())
    for volatile in (DURATION, ADDRESS):
        escaped = volatile.sub("*", escaped)
    escaped = RULE.sub(lambda m: m[1] + "*", escaped)
    return ABSOLUTE_PATH.sub("*", escaped)


def sessions(body: str) -> list[tuple[str, list[str]]]:
    """A console block's commands, each with the output lines shown below it."""
    found: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            found.append((line[2:], []))
        elif found:
            found[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"output before the first command of a console block: {line!r}")
    return found


def environment() -> dict[str, str]:
    """This interpreter and this checkout, outside CI (a check run writes pending files only there), and none of
    the outer pytest's (or pytest-xdist's) variables."""
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith(("PYTEST_", "LLMDET_"))}
    path = env.get("PYTHONPATH")
    env.update(PYTHONPATH=str(ROOT) + (os.pathsep + path if path else ""), LLMDET_DOCS_PYTHON=sys.executable,
               COLUMNS="80", HF_HUB_OFFLINE="1")
    return env


def run_page(page: Path, folder: Path) -> int:
    """Run `page` in `folder`; returns how many commands ran. A shown line missing from the output fails."""
    commands = 0
    for kind, info, body in blocks(page):
        title = TITLE.search(info)
        if title:
            (folder / title["name"]).write_text(body, encoding="utf-8")
            continue
        if kind != "console":
            continue
        for command, shown in sessions(body):
            answers = [m["answer"] for m in map(PROMPT.match, shown) if m]
            expected = [pattern(PROMPT.sub(r"\g<prompt>", line)) for line in shown
                        if line.strip() and line.strip() != "..."]
            result = subprocess.run(["bash", "-c", SHELL_PRELUDE + command], cwd=folder, env=environment(),
                                    input="".join(f"{a}\n" for a in answers), capture_output=True, text=True,
                                    timeout=600)
            output = [line.rstrip() for line in (result.stdout + result.stderr).splitlines()]
            assert result.returncode in (0, 1), f"$ {command}\nexit status {result.returncode}\n" + "\n".join(output)
            try:
                pytest.LineMatcher(output).fnmatch_lines(expected, consecutive=False)
            except pytest.fail.Exception as error:
                raise AssertionError(f"{page.name}: `$ {command}` did not print what the page shows:\n"
                                     f"{error}") from None
            commands += 1
    return commands


def test_the_readme_runs_as_written(tmp_path):
    assert run_page(ROOT / "README.md", tmp_path) >= 4


def test_getting_started_runs_as_written(tmp_path):
    assert run_page(ROOT / "docs" / "getting-started.md", tmp_path) >= 6


def test_a_shown_line_that_the_run_does_not_print_fails(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```console\n$ echo hello\nhello\n...\nnot printed\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="not printed"):
        run_page(page, tmp_path)
    page.write_text("```console\n$ echo took 2.62 s at /tmp/x\ntook 9.99 s at /somewhere/else\n```\n",
                    encoding="utf-8")
    assert run_page(page, tmp_path) == 1


def test_the_settings_table_is_generated_from_the_options():
    spec = importlib.util.spec_from_file_location("docs_settings", ROOT / "scripts" / "docs_settings.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    page = (ROOT / "docs" / "llm-fixture.md").read_text(encoding="utf-8")
    assert generator.committed(page) == generator.table(), "run python scripts/docs_settings.py"
    from pytest_llmdet.settings import OPTIONS

    for option in OPTIONS:  # every option has its row
        assert (option.flag if option.has_flag else option.ini) in generator.table()


def nav_pages() -> list[str]:
    return re.findall(r"^\s+- [^:]+: (\S+\.md)$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M)


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    # mkdocs build --strict checks this too (.ci/run); this is the check without mkdocs installed
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert sorted(nav_pages()) == pages


@pytest.mark.parametrize("document", ["README.md", "CONTRIBUTING.md", "CHANGELOG.md"])
def test_the_relative_links_of_the_top_level_documents_exist(document):
    text = (ROOT / document).read_text(encoding="utf-8")
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", text)
             if not link.startswith(("http://", "https://", "#", "mailto:"))]
    assert links or document == "CHANGELOG.md"
    assert [link for link in links if not (ROOT / link).exists()] == []


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def _step(command: str) -> tuple[str, frozenset[str]]:
    """A set-up step as .ci/run and the README write it alike: no quotes, no pip verbosity flags, `python -m`
    implied, no `-p no:cacheprovider`; an editable install as (".", its extras)."""
    command = command.split("  #")[0].replace('"', "").replace("--quiet --disable-pip-version-check ", "")
    command = command.removeprefix("python -m ").removesuffix(" -p no:cacheprovider").strip()
    editable = re.fullmatch(r"pip install -e \.(?:\[([\w,]+)\])?", command)
    if editable:
        return "pip install -e .", frozenset((editable[1] or "").split(",")) - {""}
    return command, frozenset()


def test_the_readme_set_up_commands_are_the_ones_ci_runs():
    ci = [_step(line) for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.startswith("python -m ")]
    set_up = [line for kind, _, body in blocks(ROOT / "README.md") if kind == "bash" for line in body.splitlines()
              if line.startswith("pip install torch==")]
    assert len(set_up) == 2  # the examples', the test suite's
    for line in set_up:
        for step in map(_step, line.split(" && ")):  # each step, as .ci/run runs it (an install: extras included)
            assert any(step[0] == command and step[1] <= extras for command, extras in ci), step
