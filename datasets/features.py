"""Feature files: one ``<image>.<tag>`` npz archive per image, as ``extract.py`` writes them.

The layout is the D2-Net/R2D2 evaluation scripts' (see ``extract.py``): ``keypoints`` (N, 2)
or (N, 3), ``scores`` (N,), optional ``descriptors`` (N, D), ``imsize`` and ``original_imsize``.
Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_features(path: str | Path, feats: dict[str, np.ndarray]) -> None:
    """Write an npz archive to ``path`` (any extension) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # A file object stops numpy from appending ".npz" to the name.
    with open(tmp, "wb") as f:
        np.savez(f, **feats)
    os.replace(tmp, path)
