"""Resolve `--device auto|cpu|cuda|cuda:N` to a torch device, with a clear error when absent."""

from __future__ import annotations

import torch

from cxrad.errors import CxradError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA GPU when one is usable, else the CPU."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CxradError(
                f"--device {spec}: no CUDA GPU is visible to this process (torch {torch.__version__}); "
                "use --device cpu or auto, or install a CUDA build of torch."
            )
        index = 0 if spec == "cuda" else spec.split(":", 1)[1]
        if not str(index).isdigit() or int(index) >= torch.cuda.device_count():
            raise CxradError(
                f"--device {spec}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0..); pick one of them."
            )
        return torch.device(f"cuda:{int(index)}")
    raise CxradError(f"--device {spec}: not understood; use auto, cpu, cuda or cuda:N.")


def device_name(device: torch.device) -> str:
    """Human name recorded in manifests and benchmark results."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
