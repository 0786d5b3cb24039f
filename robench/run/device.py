"""Where a run executes: the device (`--device`), the autocast dtype (`--precision`) and the run's provenance."""

from __future__ import annotations

import platform
import sys

import torch

from robench.errors import RobenchError
from robench.run import dist

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank() if dist.is_distributed() else 0)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RobenchError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RobenchError(f"device '{name}' requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RobenchError("device 'mps' requested but MPS is not available")
    return dev


def provenance(plan, device: torch.device) -> dict:
    """The run record's environment (runs table)."""
    import timm  # local: only its version is needed, and it costs ~1 s to import

    return dict(torch_version=torch.__version__, timm_version=timm.__version__,
                python_version=platform.python_version(), device=str(device),
                gpu_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "",
                precision=plan.precision, seed=plan.seed, world_size=dist.world_size(),
                command=plan.command or " ".join(sys.argv), host=platform.node())
