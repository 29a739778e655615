"""Devices and mixed precision.

``--device auto`` takes the first CUDA GPU when there is one, else the CPU. Precision ``auto``
picks bf16 autocast on a CPU that has native bf16 (AMX or AVX512-BF16, where it makes
SuperPoint-sized convnets several times faster), bf16 on CUDA GPUs that support it (fp16 with a
gradient scaler otherwise), and fp32 elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from typing import Any

import torch

from utils.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:i`` to a device (``cuda`` means this rank's GPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}' requested but CUDA is not available")
        if name == "cuda":
            name = f"cuda:{local_rank}"
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise UserError(
                f"device '{name}' does not exist ({torch.cuda.device_count()} GPUs)"
            )
    elif name != "cpu":
        raise UserError(f"device '{name}' is not one of auto, cpu, cuda, cuda:<i>")
    return torch.device(name)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether the CPU advertises AMX-BF16 or AVX512-BF16 (Linux ``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    """Pick the autocast precision for ``device`` (see module docstring)."""
    if name not in PRECISIONS:
        raise UserError(f"precision '{name}' is not one of {', '.join(PRECISIONS)}")
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise UserError(
                "precision 'fp16' is only supported on CUDA; use bf16 or fp32"
            )
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch
