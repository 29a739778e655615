"""Process groups for DistributedDataParallel.

``torchrun --nproc_per_node=N`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init_distributed` then joins the process group (NCCL on CUDA, Gloo on CPU) and picks this
rank's device: ``--device cuda`` (or ``auto``) puts each process on the GPU of its
``LOCAL_RANK``; ``cuda:N`` is refused under torchrun, since it would put every process on one
GPU (choose the GPUs with ``CUDA_VISIBLE_DEVICES``). Only rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from engine.devices import resolve_rank_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if there is one and choose this rank's device.

    The chosen GPU becomes the current CUDA device (``torch.cuda.set_device``), so that
    pinned memory, ``torch.cuda`` queries and NCCL use it and not GPU 0.

    Raises:
        UserError: ``cuda:N`` under torchrun, or a device that does not exist.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    device = resolve_rank_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=world)
        if device.type == "cpu":
            # N processes on one CPU must share its cores instead of each taking all of them.
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return info, device


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def reduce_means(
    sums: Mapping[str, torch.Tensor | float],
    counts: Mapping[str, int],
    device: torch.device,
) -> dict[str, float]:
    """Means over all ranks of per-rank sums: ``sum of sums[k] / sum of counts[k]``.

    Every rank takes part with the union of all ranks' keys, so a rank that saw no batch
    (validation with fewer batches than processes) or a key only some batches produce
    sends zeros instead of a shorter list; a key counted nowhere is left out. The sums may
    be tensors on ``device``: they are read back to the host once, after the reduction.

    Args:
        sums: per-key sums of this rank (scalars).
        counts: per-key number of summed values of this rank (keys of ``sums``).
        device: where the reduction runs (this rank's device).
    """
    keys = sorted(sums)
    if dist.is_initialized():
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, keys)
        keys = sorted(set().union(*every))
    if not keys:
        return {}
    totals = torch.stack(
        [
            torch.as_tensor(sums.get(k, 0.0), dtype=torch.float64, device=device)
            for k in keys
        ]
        + [
            torch.tensor(float(counts.get(k, 0)), dtype=torch.float64, device=device)
            for k in keys
        ]
    )
    if dist.is_initialized():
        dist.all_reduce(totals)
    values = totals.tolist()
    n = len(keys)
    return {k: values[i] / values[n + i] for i, k in enumerate(keys) if values[n + i]}
