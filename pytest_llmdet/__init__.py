"""pytest-llmdet: regression-test language models with forced greedy decoding and golden files.

Importing this package is cheap: torch, transformers and filelock are imported only when a test
first uses a model or a golden file.
"""

from pytest_llmdet.generation import Generation

__all__ = ["Generation", "__version__"]
__version__ = "0.1.0"
