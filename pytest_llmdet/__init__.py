"""pytest-llmdet: regression-test language models with forced greedy decoding and golden files.

Importing this package is cheap: torch, transformers and filelock are imported only when a test
first uses a model or a golden file, and `Generation` only when it is first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_llmdet.generation import Generation

__all__ = ["Generation", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:  # PEP 562: pytest imports this package on every run; most never need it
    if name == "Generation":
        from pytest_llmdet.generation import Generation

        return Generation
    raise AttributeError(f"module 'pytest_llmdet' has no attribute {name!r}")
