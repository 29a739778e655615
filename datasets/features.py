"""Feature files: one ``<image>.<tag>`` npz archive per image, as ``extract.py`` writes them.

The layout is the D2-Net/R2D2 evaluation scripts' (see ``extract.py``): ``keypoints`` (N, 2)
or (N, 3), ``scores`` (N,), optional ``descriptors`` (N, D), ``imsize`` and ``original_imsize``
(width, height), plus ``provenance``: a JSON string saying where the features came from, so a
file is never silently reused for another model. The record holds:

- ``extractor``: ``id`` (``sha256:<hex>`` of the weights file, or ``sift``/``orb`` with the
  OpenCV version) and ``weights`` (the path it was read from; informative only);
- ``options``: the extractor options (``top_k``, ``nms_radius``, ``precision``...);
- ``preset``: the HPatches preset when ``evaluation.py`` wrote it, else null;
- ``resize`` and ``top_k``: the image preprocessing and the keypoint budget;
- ``image_size`` / ``original_size``: ``[width, height]`` of the processed and source image.

A file without ``provenance`` (another tool's, for example) is still read by
:func:`read_features`, and :func:`stale_reason` calls it stale. This module is the one reader
of feature files. Files are written to a temporary name and renamed, so a reader never sees
half a file.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.errors import UserError
from utils.io import atomic_write

PROVENANCE = "provenance"

COMPARED_FIELDS = ("extractor.id", "options", "preset", "resize", "top_k")
"""Record fields that must be equal for a file to be reused (plus the source image size)."""


@dataclass
class FeatureFile:
    """The arrays of a feature file and its provenance record (None for old files)."""

    arrays: dict[str, np.ndarray]
    provenance: dict[str, Any] | None


def write_features(
    path: str | Path,
    feats: dict[str, np.ndarray],
    provenance: dict[str, Any] | None = None,
) -> None:
    """Write an npz archive to ``path`` (any extension) atomically, with its record.

    Args:
        path: output file, e.g. ``image.png.sift``.
        feats: ``keypoints`` (N, 2|3), ``scores`` (N,), ``descriptors`` (N, D), ...
        provenance: the record described in the module docstring (JSON-serialisable).
    """
    arrays = dict(feats)
    if provenance is not None:
        arrays[PROVENANCE] = np.array(json.dumps(provenance, sort_keys=True))
    # A file object stops numpy from appending ".npz" to the name.
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read_features(path: str | Path) -> FeatureFile:
    """Read every array of a feature file and its provenance record.

    Raises:
        UserError: missing file, not an npz archive, or an unreadable record.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: features file is missing (run extract.py or pass --model)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(
            f"{path}: cannot read features (expected an npz archive; {err})"
        ) from None
    record = arrays.pop(PROVENANCE, None)
    return FeatureFile(arrays, _decode(record, path) if record is not None else None)


def read_provenance(path: str | Path) -> dict[str, Any] | None:
    """The provenance record of a feature file, reading nothing else; None if absent.

    An npz archive is a zip file, so this reads one small member, not the arrays.
    A file that cannot be read at all also gives None (it will be rewritten).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if PROVENANCE not in data.files:
                return None
            record = data[PROVENANCE]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    try:
        return _decode(record, Path(path))
    except UserError:
        return None


def _decode(record: np.ndarray, path: Path) -> dict[str, Any]:
    try:
        value = json.loads(str(record))
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UserError(f"{path}: the '{PROVENANCE}' entry is not a JSON record")
    return value


def _field(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def stale_reason(
    stored: dict[str, Any] | None,
    expected: dict[str, Any],
    original_size: tuple[int, int] | None = None,
) -> str | None:
    """Why a file with record ``stored`` cannot stand for ``expected``; None if it can.

    Args:
        stored: the file's record (None: written before records existed, or unreadable).
        expected: the record this run would write, without the image sizes.
        original_size: ``(width, height)`` of the source image now, if known.
    """
    if stored is None:
        return "no provenance record (written by an earlier version, or unreadable)"
    # Compare as JSON sees them, so tuples and lists (or 1 and 1.0 kept as int) agree.
    expected = json.loads(json.dumps(expected))
    for name in COMPARED_FIELDS:
        was, now = _field(stored, name), _field(expected, name)
        if was != now:
            return f"{name} was {json.dumps(was)}, now {json.dumps(now)}"
    if original_size is not None and stored.get("original_size") != list(original_size):
        return (
            f"source image was {stored.get('original_size')}, now {list(original_size)}"
        )
    return None
