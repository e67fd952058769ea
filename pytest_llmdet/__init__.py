"""PYTEST_DONT_REWRITE pytest-llmdet: regression-test language models with forced greedy decoding and golden files.

pytest compiles this module itself on every run under PYTHONDONTWRITEBYTECODE=1 (each line costs every run), so it
is kept to a few plain lines; docs/architecture.md, "Startup", says what `_PlainImports` is for."""

import sys
from atexit import register
from importlib.machinery import PathFinder

__all__ = ["Generation", "__version__"]
__version__ = "0.1.0"


class _PlainImports:
    """A meta-path finder for this package's submodules only: Python's own path finder, ahead of pytest's."""

    prefix = __name__ + "."

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return PathFinder.find_spec(name, path, target) if name.startswith(cls.prefix) else None


if all(getattr(finder, "prefix", None) != _PlainImports.prefix for finder in sys.meta_path):
    sys.meta_path.insert(0, _PlainImports)
    # off at exit: left there, it costs the interpreter's shutdown about 8 million instructions
    register(lambda finder=_PlainImports: finder in sys.meta_path and sys.meta_path.remove(finder))


def __getattr__(name):  # PEP 562: `Generation` (and so torch) only when it is first asked for
    if name != "Generation":
        raise AttributeError(f"module 'pytest_llmdet' has no attribute {name!r}")
    from pytest_llmdet.generation import Generation

    return Generation
