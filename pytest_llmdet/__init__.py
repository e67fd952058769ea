"""pytest-llmdet: regression-test language models with forced greedy decoding and golden files.

Importing this package is cheap: torch, transformers and filelock are imported only when a test
first uses a model or a golden file, and `Generation` only when it is first asked for.

Its modules are plain imports. pytest marks every module of a plugin's distribution for assertion rewriting,
and its import hook then loads each from pytest's own bytecode cache (with `marshal.load` on an open file, many
times the instructions of a normal import) or, where it cannot write that cache (PYTHONDONTWRITEBYTECODE=1, set
in many CI images), parses, rewrites and compiles each from source on every run: 35 ms for the five modules the
report header needs. Rewriting them would change nothing a user sees (their asserts check the plugin's own
invariants; a test's assert on a golden file is in the test's module, which pytest rewrites as always), so this
module puts `_PlainImports` first on `sys.meta_path`: it finds this package's submodules as Python would without
pytest, from the bytecode pip compiled. Only this module is left to pytest's hook.
benchmarks/bench_import.py measures both ways; tests/test_llm_fixture.py checks the loaders.
"""

from __future__ import annotations

import atexit
import sys
from importlib.machinery import PathFinder
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_llmdet.generation import Generation

__all__ = ["Generation", "__version__"]
__version__ = "0.1.0"


class _PlainImports:
    """A meta-path finder for this package's submodules only: Python's own path finder, ahead of pytest's."""

    prefix = __name__ + "."

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> Any:
        return PathFinder.find_spec(name, path, target) if name.startswith(cls.prefix) else None

    @classmethod
    def uninstall(cls) -> None:
        """Off sys.meta_path at exit: a finder of Python's own left there makes the interpreter's shutdown cost
        about 8 million more instructions (measured with callgrind, a `pytest --co` run)."""
        if cls in sys.meta_path:
            sys.meta_path.remove(cls)


if not any(getattr(finder, "prefix", None) == _PlainImports.prefix for finder in sys.meta_path):
    sys.meta_path.insert(0, _PlainImports)
    atexit.register(_PlainImports.uninstall)


def __getattr__(name: str) -> Any:  # PEP 562: pytest imports this package on every run; most never need it
    if name == "Generation":
        from pytest_llmdet.generation import Generation

        return Generation
    raise AttributeError(f"module 'pytest_llmdet' has no attribute {name!r}")
