"""Devices and precision: the one rule every command follows.

``--device auto|cpu|cuda|cuda:<i>`` (default ``auto``: the first CUDA GPU when there is one,
else the CPU) is added by :func:`add_device_argument` and resolved by :func:`resolve_device`
in every command.

``precision: auto|fp32|bf16|fp16|int8`` (``--precision``, :func:`add_precision_argument`) means
the same for every network. ``fp32``: as trained. ``bf16`` and ``fp16``: reduced-precision
floats (fp16 on CUDA only). ``int8``: static int8 convolutions (``models.quantize``, CPU only,
for the networks that have such a path: SuperPoint/MagicPoint and R2D2). ``auto`` is decided
by the device here, once: bf16 on CUDA GPUs that compute it natively (compute capability 8.0
or newer: A100, H100, RTX 30xx and later), fp16 with a gradient scaler on older GPUs (V100,
T4, RTX 20xx), bf16 on CPUs with native bf16 (AMX or AVX512-BF16, where it makes
SuperPoint-sized convnets several times faster); on other CPUs fp32 for training, and for
inference int8 where the network's int8 path keeps at least 95% of the fp32 keypoints
(:func:`inference_precision`), fp32 elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
from collections.abc import Mapping
from typing import Any

import torch

from utils.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
DEVICE_HELP = "auto | cpu | cuda | cuda:<i> (auto: the first CUDA GPU, else the CPU)"


def add_device_argument(
    parser: argparse.ArgumentParser, key: str | None = None
) -> None:
    """``--device`` of a command, default ``auto`` (``key``: the config key it sets,
    whose default is ``auto``)."""
    if key is None:
        parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    else:
        parser.add_argument("--device", help=f"{DEVICE_HELP}; sets {key}")


def add_precision_argument(
    parser: argparse.ArgumentParser,
    default: str | None,
    key: str | None = None,
    note: str = "",
) -> None:
    """``--precision auto|fp32|bf16|fp16|int8`` of a command (see the module docstring).

    Args:
        default: the command's default, or None when ``key`` (a config key) holds it.
        key: the config key the option sets.
        note: what the command runs at that precision, for ``--help``.
    """
    text = " | ".join(PRECISIONS)
    text += f" ({note})" if note else ""
    text += f"; sets {key}" if key else ""
    parser.add_argument("--precision", default=default, choices=PRECISIONS, help=text)


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:i`` to a device (``cuda`` means this rank's GPU).

    Raises:
        UserError: a CUDA device without CUDA, a GPU index that does not exist, or an
            unknown name (one line, exit code 2 in every command).
    """
    name = str(name)
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


def resolve_rank_device(name: str | torch.device) -> torch.device:
    """:func:`resolve_device` for this process of a ``torchrun`` launch (or the only one).

    ``cuda`` is the GPU of ``LOCAL_RANK``. ``cuda:N`` is refused when ``WORLD_SIZE`` > 1,
    since it would put every process on one GPU.
    """
    name = str(name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and name.startswith("cuda:"):
        raise UserError(
            f"device '{name}' puts all {world} torchrun processes on one GPU: "
            "use --device cuda (each process takes the GPU of its LOCAL_RANK) and "
            "CUDA_VISIBLE_DEVICES to choose the GPUs"
        )
    return resolve_device(name, int(os.environ.get("LOCAL_RANK", "0")))


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

    On a CPU without them bf16 is emulated and many times slower than fp32, so ``auto`` must
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

    Native bf16 without AMX (AVX512-BF16, e.g. AMD Zen 4) is slower per step than on AMX
    tiles (``python -m benchmarks.bench_magicpoint_training --widths half`` times a
    MagicPoint training step), which is what separates the main job's two bf16 recipes
    (``scripts/main_job.sh``).
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
    (``vpmaddubsw``): with 8-bit activations and nearest-rounded weights the sums overflow
    and the outputs go wrong, so
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
    """Pick the autocast precision of training for ``device`` (see module docstring)."""
    if name not in PRECISIONS:
        raise UserError(f"precision '{name}' is not one of {', '.join(PRECISIONS)}")
    if name == "int8":
        raise UserError(
            "precision 'int8' is an inference path (extraction, evaluation); "
            "train with auto, fp32, bf16 or fp16"
        )
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise UserError(
                "precision 'fp16' is only supported on CUDA; use bf16 or fp32"
            )
        return name
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


INT8_PATHS = ("auto", "explicit", "none")


def inference_precision(
    name: str, device: torch.device, int8: str = "none", network: str = "this network"
) -> str:
    """The precision an inference path (extraction, homographic adaptation, evaluation)
    runs at: ``auto`` resolved for ``device`` (see the module docstring), the others
    checked.

    On GPUs ``auto`` is :func:`resolve_precision`'s choice (bf16 where native, fp16
    before compute capability 8), on CPUs with native bf16 it is bf16. On other CPUs it
    is the fastest path that keeps >= 95% of the fp32 keypoints: static int8 for a
    network whose int8 path does (``int8="auto"``), fp32 for the others (``"explicit"``:
    int8 runs only when asked). On a 2-core AMD EPYC Zen 4, natively and with its
    instruction set capped at AVX2, the SuperPoint family's int8 path keeps 96.2-96.3% of a
    trained detector's keypoints over six photographs
    (``benchmarks/bench_superpoint_inference.py --detector CKPT --agreement-photos 6``) and
    99.0% of its homographic adaptation labels
    (``benchmarks/bench_homographic_adaptation.py --checkpoint CKPT``); R2D2's keeps
    84.2-84.4% (``python -m benchmarks.bench_r2d2_extract --weights CKPT``), so it is
    ``"explicit"``.

    Args:
        name: one of :data:`PRECISIONS`.
        device: where the network runs.
        int8: the network's int8 path, one of :data:`INT8_PATHS` (``"none"``: asking
            for int8 is an error).
        network: the network's name, for that error.

    Returns:
        ``fp32``, ``bf16``, ``fp16`` (CUDA only) or ``int8`` (CPU only).
    """
    if int8 not in INT8_PATHS:
        raise ValueError(f"int8={int8!r}: expected one of {INT8_PATHS}")
    if name == "int8":
        if int8 == "none":
            raise UserError(
                f"precision 'int8' is not available for {network}; "
                "use auto, fp32 or bf16 (fp16 on CUDA)"
            )
        if device.type != "cpu":
            raise UserError(
                "precision 'int8' runs on the CPU only; use bf16 or fp16 on GPUs"
            )
        return name
    if name == "auto" and device.type == "cpu" and not cpu_has_native_bf16():
        return "int8" if int8 == "auto" else "fp32"
    return resolve_precision(name, device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"no autocast for precision {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class AutocastCall:
    """``module(*args)`` under :func:`autocast` at a resolved ``precision`` (``fp32``,
    ``bf16``, ``fp16``), its floating outputs (tensors, or dicts/lists of them) returned in
    float32, in inference mode: how networks without an int8 path (inversion, point-cloud)
    run at the ``precision`` setting.

    Example:
        >>> net = AutocastCall(torch.nn.Linear(2, 1), torch.device("cpu"), "bf16")
        >>> net(torch.ones(1, 2)).dtype
        torch.float32
    """

    def __init__(self, module: Any, device: torch.device, precision: str):
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision {precision!r}: expected fp32, bf16 or fp16")
        self.module, self.device, self.precision = module, device, precision

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(), autocast(self.device, self.precision):
            return _to_float(self.module(*args, **kwargs))


def _to_float(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, Mapping):
        return {k: _to_float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch
