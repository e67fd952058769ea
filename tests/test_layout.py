"""The layout: imports go one way between the layers, no module imports another in a circle (not even through
an import inside a function), and every module imports alone in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_llmdet

PACKAGE = Path(pytest_llmdet.__file__).parent

# A module may import modules of its own layer's package and of lower layers, never of a higher one; golden and
# determinism are siblings that never import each other.
LAYERS = {
    "base": 0,  # settings, markers, generation, commands, vocabulary, errors, the package itself
    "engines": 1,
    "golden": 2,
    "determinism": 2,
    "top": 3,  # json_report, review, header, __main__, reports/
    "hooks": 4,
    "plugin": 5,
}


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts or parts[0] in ("settings", "markers", "generation", "divergence", "versions", "commands",
                                 "vocabulary", "errors", "__init__"):
        return "base"
    if parts[0] in ("engines", "golden", "determinism", "hooks", "plugin"):
        return parts[0]
    return "top"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        found[name] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Every pytest_llmdet module `path` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pytest_llmdet"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("pytest_llmdet"))
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {dep for dep in imports_of(path) if dep in known and dep != name} for name, path in known.items()}


def test_imports_go_one_way_between_the_layers():
    wrong = []
    for module, deps in graph().items():
        for dep in deps:
            mine, theirs = layer_of(module), layer_of(dep)
            if dep == "pytest_llmdet" or (mine == theirs):
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{module} ({mine}) imports {dep} ({theirs})")
    assert wrong == []


def test_no_module_imports_another_in_a_circle():
    edges = graph()
    circles = []

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(edges[module]):
            if dep in path:
                circles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(module)

    done: set[str] = set()
    for module in sorted(edges):
        if module not in done:
            visit(module, [module])
    assert circles == []


def test_no_private_name_is_imported_across_modules():
    private = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pytest_llmdet"):
                private += [f"{name} imports {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []


@pytest.mark.parametrize("module", sorted(m for m in modules() if not m.endswith("__main__")))
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_no_module_below_the_hooks_imports_pytest():
    # golden/, engines/, determinism/ and the rest are plain Python a test suite can call without a pytest
    # session: a test fails through a callable the hooks give them (golden.snapshot.SnapshotContext.fail).
    allowed = {"pytest_llmdet.plugin"} | {name for name in modules() if layer_of(name) == "hooks"}
    importing = []
    for name, path in modules().items():
        if name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            importing += [f"{name} imports {n}" for n in names if n == "pytest" or n.startswith(("pytest.", "_pytest"))]
    assert importing == []


def test_no_test_file_shares_its_module_name_with_a_file_that_a_pytester_test_writes():
    """pytester imports the files it writes by their basename: an inner `test_review.py` beside an outer
    tests/test_review.py fails with "import file mismatch" under -n 2 (where both are collected in one worker)."""
    tests = Path(__file__).parent
    outer = {path.stem for path in tests.rglob("test_*.py")}
    inner = set()
    for path in tests.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("makepyfile", "makeconftest"):
                inner |= {keyword.arg for keyword in node.keywords if keyword.arg}
                inner |= {key.value for arg in node.args if isinstance(arg, ast.Dict)
                          for key in arg.keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}
    assert not outer & inner, f"rename the outer test file or the inner one: {sorted(outer & inner)}"


def _names_an_engine(node: ast.expr) -> bool:
    # `engine`, `kind.engine`, `spec.engine`, `settings.engine`: a value that is an engine's name
    return (isinstance(node, ast.Name) and node.id == "engine") or \
        (isinstance(node, ast.Attribute) and node.attr == "engine")


def _is_words(node: ast.expr) -> bool:
    # a string, or a tuple, list or set of strings
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    return isinstance(node, ast.Tuple | ast.List | ast.Set) and all(_is_words(e) for e in node.elts)


def engine_name_comparisons(source: str) -> list[int]:
    """The lines of `source` that compare an engine's name with a word (`engine == "vllm"`, `spec.engine !=
    "openai"`, `settings.engine in ("vllm", "openai")`, either way round)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for left, right, op in zip(sides[:-1], sides[1:], node.ops, strict=True):
                if not isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn):
                    continue
                if (_names_an_engine(left) and _is_words(right)) or (_names_an_engine(right) and _is_words(left)):
                    lines.append(node.lineno)
    return lines


def test_the_engine_name_check_finds_each_spelling():
    source = ('engine == "vllm"\nspec.engine != "openai"\n"vllm" == settings.engine\n'
              'x.engine in ("vllm", "openai")\nengine not in ["vllm"]\n'
              'engine == other.engine\nengine is None\nname == "vllm"\nengine == DEFAULT\n')
    assert engine_name_comparisons(source) == [1, 2, 3, 4, 5]


def test_no_module_outside_the_engines_branches_on_an_engines_name():
    # engines/kinds.py chooses an engine by its name once (`engine_kind(name)`); everything an engine owns is its
    # kind's, so no other module compares a name with a word. (Comparing two engines' names, as a variant key's
    # engine with the current one, is data, not a branch on which engine it is.)
    branching = [f"{name}:{line}" for name, path in modules().items() if layer_of(name) != "engines"
                 for line in engine_name_comparisons(path.read_text(encoding="utf-8"))]
    assert branching == []


# The size rule (docs/architecture.md, issue 21): no class over about 120 lines, no module over about 400, no
# function over about 40, nested functions and methods included. Each one that must stay bigger is named here
# with its reason; an entry that is no longer over the limit fails too, so that the list stays true.
MAX_CLASS, MAX_MODULE, MAX_FUNCTION = 120, 400, 40
ALLOWED_OVER: dict[str, str] = {}


def oversized(path: Path, relative: str) -> list[str]:
    """What in the module at `path` is over the size rule: 'module R', 'class R:Name', 'function R:name'."""
    source = path.read_text(encoding="utf-8")
    found = [f"module {relative}"] if len(source.splitlines()) > MAX_MODULE else []
    for node in ast.walk(ast.parse(source)):
        lines = node.end_lineno - node.lineno + 1 if isinstance(node, ast.stmt) else 0
        if isinstance(node, ast.ClassDef) and lines > MAX_CLASS:
            found.append(f"class {relative}:{node.name}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and lines > MAX_FUNCTION:
            found.append(f"function {relative}:{node.name}")
    return found


def test_the_size_check_finds_a_long_function_and_a_long_class(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION))
    methods = "\n".join(f"    def m{i}(self):\n        return {i}\n" for i in range(MAX_CLASS // 3 + 1))
    module = tmp_path / "m.py"
    module.write_text(f"def long():\n{body}\n\ndef short():\n    return 1\n\nclass Big:\n{methods}\n")
    assert oversized(module, "m.py") == ["function m.py:long", "class m.py:Big"]


def test_no_class_module_or_function_of_the_package_is_over_the_size_rule():
    over = {item for path in sorted(PACKAGE.rglob("*.py"))
            for item in oversized(path, path.relative_to(PACKAGE.parent).as_posix())}
    assert sorted(over - set(ALLOWED_OVER)) == [], "split it along its jobs, or name it in ALLOWED_OVER with why"
    assert sorted(set(ALLOWED_OVER) - over) == [], "no longer over the limit: take it off ALLOWED_OVER"
