"""Seeds and deterministic algorithms: everything that makes the same call give the same tokens.

Only `seed_everything` and `configure_torch` import torch, and only when a model is first used.
"""

from __future__ import annotations

import random
import sys
import warnings
from typing import Any


def seed_everything(seed: int) -> None:
    """Seed python's random, numpy (if it is installed) and torch, CUDA included."""
    import torch

    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is None:
        try:
            import numpy
        except ImportError:  # numpy is optional
            numpy = None
    if numpy is not None:
        numpy.random.seed(seed)
    if _accelerator_available(torch):
        torch.manual_seed(seed)  # seeds every CUDA device too
    else:
        # Only the CPU generator exists. torch.manual_seed would also queue a lazy seed for CUDA and XPU, and
        # format the whole call stack to do so: ~0.5 ms per call inside a test, and it runs on every generate.
        torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


def _accelerator_available(torch: Any) -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6; it covers every device type
    if accelerator is not None:
        return bool(accelerator.is_available())
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def configure_torch(deterministic_algorithms: str, threads: int | None) -> None:
    """Make torch deterministic: cuDNN deterministic, TF32 off, and deterministic algorithms as configured.

    `deterministic_algorithms` is warn (report a non-deterministic op, then run it), strict (raise) or off.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if deterministic_algorithms == "off":
        torch.use_deterministic_algorithms(False)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that warn_only mode may hide errors: that is the point
        torch.use_deterministic_algorithms(True, warn_only=deterministic_algorithms == "warn")
