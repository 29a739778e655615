"""Batches for the training engine: collation of sample dicts and a resumable sampler.

Samples are dicts. Tensors (and NumPy arrays) of equal shape across the batch are stacked;
anything else (variable-length keypoint sets, names) is kept as a list, so a batch of
synthetic shapes carries ``keypoints`` as a list of ``(N_i, 2)`` tensors. The sampler's order
is a pure function of ``(seed, epoch)`` and can start mid-epoch, which is what makes
``--resume`` replay exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from engine.distributed import DistInfo


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate a list of sample dicts into a batch dict (see module docstring)."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], np.ndarray):
            values = [torch.from_numpy(np.ascontiguousarray(v)) for v in values]
        if isinstance(values[0], torch.Tensor) and all(
            v.shape == values[0].shape for v in values
        ):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


class ResumableSampler(Sampler[int]):
    """Shuffled, rank-sharded indices that can start mid-epoch.

    The permutation of epoch ``e`` depends only on ``(seed, e)``; rank ``r`` of ``w`` takes
    every ``w``-th index of the part that fills whole global batches, and ``start_batch``
    skips the batches already consumed, so a resumed run sees the same data.
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        dist_info: DistInfo,
    ):
        self.length, self.batch_size, self.shuffle, self.seed = (
            length,
            batch_size,
            shuffle,
            seed,
        )
        self.rank, self.world = dist_info.rank, dist_info.world_size
        self.epoch, self.start_batch = 0, 0
        self.batches_per_epoch = length // (batch_size * self.world)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.length, generator=gen)
        else:
            order = torch.arange(self.length)
        order = order[: self.batches_per_epoch * self.batch_size * self.world]
        mine = order[self.rank :: self.world]
        return iter(mine[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size
