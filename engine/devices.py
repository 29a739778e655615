"""Devices and mixed precision.

``--device auto`` takes the first CUDA GPU when there is one, else the CPU. Precision ``auto``
picks bf16 autocast on a CPU that has native bf16 (AMX or AVX512-BF16, where it makes
SuperPoint-sized convnets several times faster), bf16 on CUDA GPUs that compute it natively
(compute capability 8.0 or newer: A100, H100, RTX 30xx and later), fp16 with a gradient scaler
on older GPUs (V100, T4, RTX 20xx), and fp32 elsewhere.
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


# /proc/cpuinfo flags that decide which fast paths a CPU has.
SPEED_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
)
# ONEDNN_MAX_CPU_ISA values that still allow oneDNN's native bf16 kernels.
_BF16_ISAS = (
    "avx512_core_bf16",
    "avx10_1_512",
    "avx512_core_amx",
    "avx512_core_amx_fp16",
)


@functools.cache
def cpu_info() -> dict[str, Any]:
    """The CPU's model name, logical core count and the :data:`SPEED_FLAGS` it advertises.

    Reads Linux ``/proc/cpuinfo``; elsewhere the model is the platform's name and no flag is
    known. ``restricted`` names the environment variables that cap the instruction set
    PyTorch may use (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``): with them an AVX-512
    machine behaves as an AVX2-only one, which is how this repository's AVX2 figures can be
    measured on newer hardware.
    """
    import os
    import platform

    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        # Virtual machines often report a bare "AMD EPYC": family and model tell which one.
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    flags = set(fields.get("flags", "").split())
    restricted = {
        name: os.environ[name]
        for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
        if os.environ.get(name)
    }
    return {
        "model": model,
        "cores": os.cpu_count() or 1,
        "flags": [flag for flag in SPEED_FLAGS if flag in flags],
        "restricted": restricted,
    }


def cpu_line() -> str:
    """One line naming the CPU and its speed flags, printed next to every CPU figure."""
    info = cpu_info()
    flags = " ".join(info["flags"]) or "none of " + "/".join(SPEED_FLAGS)
    line = f"CPU: {info['model']}, {info['cores']} cores, flags: {flags}"
    if info["restricted"]:
        caps = ", ".join(f"{k}={v}" for k, v in info["restricted"].items())
        line += f" (instruction set capped by {caps})"
    line += f"; native bf16: {'yes' if cpu_has_native_bf16() else 'no'}"
    line += f"; int8 dot product: {'yes' if cpu_has_int8_dot_product() else 'no'}"
    return line + f"; torch {torch.__version__}, {torch.get_num_threads()} threads"


def _onednn_isa_cap() -> str:
    """The ``ONEDNN_MAX_CPU_ISA`` cap in lower case, ``""`` when there is none."""
    return cpu_info()["restricted"].get("ONEDNN_MAX_CPU_ISA", "").lower()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether bf16 runs natively: AMX-BF16 or AVX512-BF16, and no cap below them.

    On a CPU without them bf16 is emulated and about 16x slower than fp32, so ``auto`` must
    not pick it. An ``ONEDNN_MAX_CPU_ISA`` below the bf16 instruction sets, or
    ``ATEN_CPU_CAPABILITY`` of ``avx2``/``default``, counts as "no".
    """
    flags = cpu_info()["flags"]
    if "amx_bf16" not in flags and "avx512_bf16" not in flags:
        return False
    isa = _onednn_isa_cap()
    if isa and isa not in _BF16_ISAS:
        return False
    aten = cpu_info()["restricted"].get("ATEN_CPU_CAPABILITY", "").lower()
    return aten not in ("avx2", "default")


@functools.cache
def cpu_has_amx_bf16() -> bool:
    """Whether bf16 runs on AMX tiles (AMX-BF16, and no ``ONEDNN_MAX_CPU_ISA`` cap below it).

    Native bf16 without AMX (AVX512-BF16, e.g. AMD Zen 4) is slower: a half-width MagicPoint
    training step runs at 99 images/s there against 134 on a 2-core AMX Xeon, which is
    what separates the main job's two recipes (``scripts/main_job.sh``).
    """
    if not cpu_has_native_bf16() or "amx_bf16" not in cpu_info()["flags"]:
        return False
    isa = _onednn_isa_cap()
    return not isa or "amx" in isa


# ONEDNN_MAX_CPU_ISA values below every int8 dot-product instruction (VNNI, AMX-INT8).
_NO_VNNI_ISAS = ("sse41", "avx", "avx2", "avx512_core")


@functools.cache
def cpu_has_int8_dot_product() -> bool:
    """Whether oneDNN's int8 convolutions accumulate u8 x s8 products exactly in int32.

    That needs AVX512-VNNI, AVX-VNNI or AMX-INT8 (and no ``ONEDNN_MAX_CPU_ISA`` cap below
    them). Without them the kernels add pairs of products in saturating int16
    (``vpmaddubsw``): with 8-bit activations the sums overflow and the outputs go wrong
    (about 65% relative error on R2D2's trunk with nearest-rounded weights), so
    ``models.rounding`` limits the weights of each such pair (exact with 8-bit
    activations), and ``models.quantize`` falls back to 7-bit activations on these CPUs
    only for layers that rounding does not cover.
    """
    flags = cpu_info()["flags"]
    if not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags):
        return False
    return _onednn_isa_cap() not in _NO_VNNI_ISAS


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` computes bf16 natively: compute capability 8.0 or newer.

    Older GPUs (V100 is 7.0, T4 7.5) run bf16 through slow emulation, although
    ``torch.cuda.is_bf16_supported()`` says yes there (it counts emulation), so it is not
    asked: ``precision=auto`` takes fp16 with the gradient scaler on them instead.
    """
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


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
        return "bf16" if cuda_has_native_bf16(device) else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def inference_precision(
    name: str, device: torch.device, int8_keeps_points: bool = False
) -> str:
    """Precision of an inference path (extraction, homographic adaptation): ``auto`` is the
    fastest path measured to keep >= 95% of the fp32 keypoints within 1 px.

    That is bf16 on CPUs with native bf16; on GPUs it is :func:`resolve_precision`'s
    choice (bf16 where native, fp16 before compute capability 8). On other CPUs bf16 would be
    emulated: there ``auto`` is static int8 (``models.quantize``) where the caller says
    that int8 keeps the keypoints (``int8_keeps_points``: the SuperPoint family, whose int8
    path kept 96.2-96.5% of a trained detector's keypoints over six photographs, and homographic
    adaptation, 99% of its labels; ``benchmarks/``), and fp32 elsewhere: R2D2's int8 kept
    84%, so it stays an explicit choice there.
    ``fp32``, ``bf16``, ``int8`` (CPU only) and ``fp16`` (CUDA only) are taken as given.
    """
    if name == "auto":
        if device.type == "cuda":
            return resolve_precision("auto", device)
        if cpu_has_native_bf16():
            return "bf16"
        return "int8" if int8_keeps_points else "fp32"
    if name == "int8" and device.type != "cpu":
        raise UserError(
            "precision 'int8' runs on the CPU only; use bf16 or fp16 on GPUs"
        )
    if name == "int8":
        return name
    return resolve_precision(name, device)


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
