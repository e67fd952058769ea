"""The module pytest loads (the `pytest11` entry point): the plugin (plugin.py), imported past pytest's
assertion-rewriting import hook.

pytest loads an entry point's module through that hook, which rewrites and compiles it from source whenever it
cannot keep its own bytecode cache: on every run under PYTHONDONTWRITEBYTECODE=1, set in many CI images and
Dockerfiles. This module is all it rewrites; plugin.py, which holds no assert, loads as a normal import from the
bytecode pip compiled (benchmarks/bench_import.py measures both). PYTEST_DONT_REWRITE"""

import sys

_rewriters = [(i, finder) for i, finder in enumerate(sys.meta_path)
              if type(finder).__name__ == "AssertionRewritingHook"]
for _i, _finder in reversed(_rewriters):
    sys.meta_path.remove(_finder)
try:
    from pytest_llmdet.plugin import *  # noqa: F403  (the hooks and fixtures; pytest registers this module)
    from pytest_llmdet.plugin import pytest_plugins  # noqa: F401
finally:
    for _i, _finder in _rewriters:
        sys.meta_path.insert(_i, _finder)
