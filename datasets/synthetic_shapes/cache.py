"""Synthetic Shapes: the on-disk cache (uncompressed npz shards, memory-mapped when read; format in
the package docstring), with its generation settings checked on read.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from pathlib import Path

import numpy as np

from datasets.synthetic_shapes.raster import Array
from utils.errors import UserError


def shard_path(root: Path, primitive: str, split: str, shard: int) -> Path:
    """Location of shard ``shard`` of a primitive/split in a cache directory."""
    return Path(root) / primitive / f"{split}-{shard:04d}.npz"


def _npz_memmap(path: Path) -> dict[str, Array]:
    """Open the arrays of an uncompressed ``.npz`` as read-only memory maps.

    ``np.load`` cannot memory-map ``.npz`` members; since our shards are stored without
    compression, each member's ``.npy`` payload sits contiguously in the file and can be
    mapped directly, so DataLoader workers share the page cache instead of copying.
    """
    arrays: dict[str, Array] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                arrays[name] = np.load(archive.open(info))
                continue
            handle.seek(info.header_offset)
            header = handle.read(30)
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            handle.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            if dtype.hasobject:
                raise UserError(f"{path}: member {name!r} holds Python objects")
            if dtype.kind == "U" or math.prod(shape) == 0:
                arrays[name] = np.load(archive.open(info))
                continue
            arrays[name] = np.memmap(
                path,
                dtype=dtype,
                mode="r",
                offset=handle.tell(),
                shape=shape,
                order="F" if fortran else "C",
            )
    return arrays


def _read_meta(path: Path) -> dict:
    try:
        with np.load(path) as data:
            return json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not a synthetic shapes shard ({err})") from err


class _ShardIndex:
    """Locates and lazily memory-maps the cached shards of one primitive/split."""

    def __init__(
        self, root: Path, primitive: str, split: str, size: int, settings: dict
    ) -> None:
        self.shards: list[tuple[int, int, Path]] = []
        folder = Path(root) / primitive
        for path in sorted(folder.glob(f"{split}-*.npz")):
            meta = _read_meta(path)
            stored = {k: meta.get(k) for k in settings}
            if stored != settings:
                raise UserError(
                    f"{path}: generated with {stored}, but the config asks for {settings}"
                )
            self.shards.append((int(meta["start"]), int(meta["count"]), path))
        covered = 0
        for start, count, _ in self.shards:
            if start > covered:
                break
            covered = max(covered, start + count)
        if covered < size:
            raise UserError(
                f"cache {root} holds only {covered} {split} images of {primitive} "
                f"(need {size}); run: data_gen.py synthetic_shapes --out {root} "
                f"--primitives {primitive} --splits {split}"
            )
        self._arrays: dict[int, dict[str, Array]] = {}

    def __getstate__(self) -> dict:
        # Memory maps are reopened in each worker rather than pickled.
        return {"shards": self.shards, "_arrays": {}}

    def get(self, index: int) -> tuple[Array, Array]:
        for k, (start, count, path) in enumerate(self.shards):
            if start <= index < start + count:
                if k not in self._arrays:
                    self._arrays[k] = _npz_memmap(path)
                arrays = self._arrays[k]
                i = index - start
                lo, hi = arrays["offsets"][i], arrays["offsets"][i + 1]
                return np.array(arrays["images"][i]), np.array(
                    arrays["keypoints"][lo:hi]
                )
        raise IndexError(index)
