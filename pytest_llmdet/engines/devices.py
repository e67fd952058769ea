"""Where a model goes: `llm_device = auto` per pytest-xdist worker, and a check that the device asked for exists
(torch is imported only by the functions that need it)."""

from __future__ import annotations

from pytest_llmdet.engines.sources import ModelLoadError


def auto_device(worker: str | None, cuda_devices: int) -> str:
    """Where `llm_device = auto` puts the model: cpu without CUDA; with CUDA, pytest-xdist worker `gwK` on
    cuda:(K mod cuda_devices), one device per worker, and a process outside xdist on cuda. `cuda_devices`
    counts the visible devices (torch's count honours CUDA_VISIBLE_DEVICES)."""
    if cuda_devices < 1:
        return "cpu"
    index = worker_index(worker)
    return "cuda" if index is None else f"cuda:{index % cuda_devices}"


def worker_index(worker: str | None) -> int | None:
    """K of pytest-xdist's worker id `gwK`; None outside xdist (or for an id of another shape)."""
    if worker is None or not worker.startswith("gw") or not worker[2:].isdigit():
        return None
    return int(worker[2:])


def cuda_device_count() -> int:
    """The CUDA devices torch can see (0 without CUDA); imports torch."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: str, worker: str | None = None) -> str:
    """Turn `auto` into a device (see `auto_device`; `worker` is the pytest-xdist worker id), and check that
    the requested device exists."""
    import torch

    if device == "auto":
        return auto_device(worker, cuda_device_count())
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"llm_device={device} but torch sees no CUDA device; use cpu or auto")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"llm_device={device} but only {torch.cuda.device_count()} CUDA devices exist")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("llm_device=mps but the MPS backend is not available; use cpu or auto")
    return device
