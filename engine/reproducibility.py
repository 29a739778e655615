"""Reproducible training: random states per process, deterministic kernels, cuDNN autotuning.

A checkpoint holds the random state of every training process (rank): the CPU generators of
torch, NumPy and Python, and the generator of the one GPU the process uses (not of every GPU
it can see, so a checkpoint resumes on a machine with fewer GPUs). On ``--resume`` each rank
restores its own. A run resumed with more processes than wrote the checkpoint seeds the extra
ranks from ``(seed, rank, step)``, and one line says so; with fewer, the other states are
unused. Data order depends on the number of processes too, so only a resume with the same
number continues exactly.

Bit-exact resume (the weights after N steps equal those of an uninterrupted run) holds on the
CPU, in one process or several (Gloo). On CUDA it needs ``train.deterministic=true``:
deterministic kernels (``torch.use_deterministic_algorithms``), the cuBLAS workspace setting
they require and no cuDNN autotuning; an operation that has no deterministic CUDA kernel then
stops the run with one line naming it. Without it, CUDA runs resume with the right state but
their kernels (atomic additions in ``scatter_add``, ``index_add_``, ``grid_sample``'s
backward, cuDNN's autotuned algorithms) differ in the last bits from run to run.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from utils.errors import UserError

CUBLAS_WORKSPACE = ":4096:8"
"""``CUBLAS_WORKSPACE_CONFIG`` that makes cuBLAS deterministic (CUDA >= 10.2)."""


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's random state: torch (CPU), NumPy, Python and, for a CUDA ``device``,
    the generator of that one GPU."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            pos,
            has_gauss,
            cached,
        ),
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore :func:`rng_state`; its GPU state goes to ``device`` when that is a GPU.

    A list under ``"cuda"`` (one state per visible GPU, as older checkpoints hold) gives
    ``device`` the entry of its index, or the first when there are fewer.
    """
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):
        index = device.index or 0
        cuda = cuda[index] if index < len(cuda) else cuda[0]
    torch.cuda.set_rng_state(cuda, device)


def gather_rng_states(device: torch.device) -> list[dict[str, Any]] | None:
    """Every rank's :func:`rng_state`, in rank order, on rank 0 (None on the others).

    A collective under a process group: every rank must call it. Without one, the list
    holds this process's state.
    """
    own = rng_state(device)
    if not dist.is_initialized():
        return [own]
    rank = dist.get_rank()
    gathered = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(own, gathered, dst=0)
    return gathered


def saved_rng_states(saved: Any) -> list[dict[str, Any]]:
    """The per-rank states of a checkpoint's ``"rng"`` entry (a single state: rank 0's)."""
    return list(saved) if isinstance(saved, (list, tuple)) else [saved]


def seed_derived(seed: int, rank: int, step: int) -> None:
    """Seed torch (CPU and GPUs), NumPy and Python from ``(seed, rank, step)``.

    The state of a rank that a checkpoint does not hold: deterministic, and different for
    every rank and resume step.
    """
    derived = np.random.SeedSequence([seed, rank, step]).generate_state(2)
    torch.manual_seed(int(derived[0]))
    np.random.seed(int(derived[1]))
    random.seed(int(derived[1]))


def restore_rank_rng(
    saved: Any, rank: int, world_size: int, seed: int, step: int, device: torch.device
) -> str | None:
    """Restore rank ``rank``'s random state from a checkpoint's ``"rng"`` entry.

    Returns:
        a one-line notice when the checkpoint was written by another number of processes
        (ranks it does not cover are seeded by :func:`seed_derived`), else None.
    """
    states = saved_rng_states(saved)
    if rank < len(states):
        set_rng_state(states[rank], device)
    else:
        seed_derived(seed, rank, step)
    if len(states) == world_size:
        return None
    note = (
        f"the checkpoint holds the random states of {len(states)} process(es), this run "
        f"has {world_size}: data order differs from an uninterrupted run"
    )
    if world_size > len(states):
        note += f"; ranks {len(states)}-{world_size - 1} start from (seed, rank, step)"
    return note


def configure_determinism(deterministic: Any) -> None:
    """Apply ``train.deterministic``: deterministic kernels everywhere and cuBLAS's
    workspace setting, which cuBLAS reads only when it starts (so call this before any
    CUDA work; the training commands do it before choosing the device).

    Raises:
        UserError: a value other than true or false.
    """
    if not isinstance(deterministic, bool):
        raise UserError(
            f"config key 'train.deterministic' must be true or false, got {deterministic!r}"
        )
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True


def configure_backends(
    deterministic: Any, benchmark: Any, device: torch.device
) -> bool:
    """Apply ``train.deterministic`` (:func:`configure_determinism`) and
    ``train.cudnn_benchmark``; returns whether cuDNN autotuning is on.

    ``benchmark``: ``auto`` autotunes convolutions on CUDA unless ``deterministic`` (the
    trainer switches it off again when training batches change size), ``true``/``false``
    force it.

    Raises:
        UserError: a value that is not one of these, or autotuning forced on together
            with ``deterministic`` (it picks kernels by timing, which varies).
    """
    configure_determinism(deterministic)
    if not (benchmark == "auto" or isinstance(benchmark, bool)):
        raise UserError(
            "config key 'train.cudnn_benchmark' must be auto, true or false, got "
            f"{benchmark!r}"
        )
    if deterministic and benchmark is True:
        raise UserError(
            "train.cudnn_benchmark=true contradicts train.deterministic=true "
            "(autotuning picks kernels by timing); use auto or false"
        )
    on = benchmark is True or (
        benchmark == "auto" and device.type == "cuda" and not deterministic
    )
    torch.backends.cudnn.benchmark = on
    return on


class Autotuning:
    """cuDNN autotuning of a training run (``train.cudnn_benchmark``).

    On as :func:`configure_backends` decides; with ``auto`` it goes off again once the
    training batches change size, since every new shape is benchmarked anew.
    """

    def __init__(self, deterministic: Any, setting: Any, device: torch.device):
        self.setting = setting
        self.on = configure_backends(deterministic, setting, device)
        self._shapes: tuple | None = None

    def watch(self, batch: dict[str, Any]) -> str | None:
        """Check the size of a training batch's images (4-D tensors); returns a notice
        when that switched autotuning off."""
        if not self.on or self.setting is True:
            return None
        shapes = tuple(
            tuple(v.shape)
            for v in batch.values()
            if isinstance(v, torch.Tensor) and v.dim() == 4
        )
        if self._shapes is None:
            self._shapes = shapes
        elif shapes != self._shapes:
            torch.backends.cudnn.benchmark = self.on = False
            return "note: training batches change size: cuDNN autotuning off"
        return None


def deterministic_error(err: RuntimeError, device: torch.device) -> UserError | None:
    """One line for PyTorch's "no deterministic implementation" error, None for any
    other error."""
    marker = " does not have a deterministic implementation"
    if marker not in str(err):
        return None
    op = str(err).split(marker)[0].strip().split()[-1]
    return UserError(
        f"train.deterministic=true: '{op}' has no deterministic implementation on "
        f"{device.type} in torch {torch.__version__}; set train.deterministic=false "
        "(resume is then bit-exact on the CPU only)"
    )
