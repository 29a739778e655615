"""Batches for the training engine: collation of sample dicts and a resumable sampler.

Samples are dicts. Tensors (and NumPy arrays) of equal shape across the batch are stacked;
anything else (variable-length keypoint sets, names) is kept as a list, so a batch of
synthetic shapes carries ``keypoints`` as a list of ``(N_i, 2)`` tensors. The sampler's order
is a pure function of ``(seed, epoch)`` and can start mid-epoch, which is what makes
``--resume`` replay exactly the batches an uninterrupted run would see. :func:`make_loader`
builds the engine's data loaders.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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


def _ignore_sigint(worker_id: int) -> None:
    """Loader workers ignore Ctrl-C: the main process finishes its step with their batches
    and shuts them down itself (a worker ended by it would fail the step instead)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(
    dataset: Dataset,
    sampler: Sampler | Iterable[int],
    batch_size: int,
    workers: int,
    collate_fn: Callable,
    device: torch.device,
    seed: int = 0,
) -> DataLoader:
    """A loader of ``dataset`` in ``sampler``'s order for a training process on ``device``.

    Workers ignore Ctrl-C and start with the dataset's ``worker_start_method`` when it has
    one: a dataset running a model on the GPU in its workers needs ``spawn``, since a forked
    process cannot use CUDA once its parent has.
    """
    # A private generator: creating a loader must not consume the global torch RNG, or a
    # resumed run (which creates its loader at another moment) would diverge.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        drop_last=False,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_ignore_sigint if workers > 0 else None,
        multiprocessing_context=getattr(dataset, "worker_start_method", None)
        if workers > 0
        else None,
        generator=torch.Generator().manual_seed(seed),
    )
