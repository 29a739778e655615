"""Atomic file writing and safe loading.

Everything this repository writes (checkpoints, configs, exported keypoints) goes through a
temporary file in the destination folder followed by ``os.replace``, so an interrupted run never
leaves a half-written file where a finished one is expected, and re-runs can trust what exists.
Finished files get the permissions of a plain ``open()`` (``0o666`` less the process umask), not
the private ``0o600`` of the temporary file. Checkpoints are read with ``weights_only=True`` by
:func:`load_checkpoint`, the one loader, whose errors are one line of our own.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from utils.errors import UserError


def ensure_writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` if needed and check that files can be written in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as err:
        raise UserError(f"{what} '{path}' is not writable ({err.strerror})") from None
    return path


def _umask() -> int:
    """The process umask (read without changing it where ``/proc`` allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    # Elsewhere the only way to read it is to set it and put it back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    The file ends with the mode a plain ``open(path, "wb")`` would give it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0o600 files: fine while private, wrong once renamed into place.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_image(path: str | Path, image: np.ndarray) -> None:
    """Encode ``image`` (uint8, gray or OpenCV's BGR) in the format of ``path``'s extension
    and write it atomically; a failed encoding is a :class:`UserError` naming the file."""
    ok, data = cv2.imencode(Path(path).suffix or ".png", image)
    if not ok:
        raise UserError(f"could not encode {path}")
    atomic_write(path, lambda f: f.write(data.tobytes()))


def atomic_savez(path: str | Path, **arrays: np.ndarray) -> None:
    """``np.savez`` (uncompressed) to exactly ``path``, atomically."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's content, computed once per process for an unchanged file.

    The cache is keyed by (absolute path, size, modification time), so a weights file is
    hashed once per run however many images are extracted with it, and a file rewritten
    in place is hashed again.
    """
    path = Path(path)
    info = path.stat()
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def load_checkpoint(path: str | Path) -> Any:
    """Load a torch checkpoint safely on CPU (``weights_only=True``).

    Raises:
        UserError: one line naming the file: missing, or ``<path>: not a readable PyTorch
            checkpoint (truncated or corrupt)`` for anything ``torch.load`` refuses
            (truncated, random bytes, another format), or a note that the file stores
            Python objects other than tensors and plain containers. PyTorch's own text
            (which suggests ``weights_only=False``) is never shown.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip/EOF/OS errors have many types; see below
        raise UserError(_unreadable_reason(path, err)) from None


def _unreadable_reason(path: Path, err: Exception) -> str:
    """The one-line message for a file ``torch.load(weights_only=True)`` refused."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    if found and zipfile.is_zipfile(path):
        # A complete PyTorch file that pickles a class (e.g. a whole nn.Module): loading
        # it would run that class's code, which weights_only=True exists to prevent.
        return (
            f"{path}: not a readable PyTorch checkpoint (it stores a Python object of "
            f"class {found.group(1)}; only tensors and plain containers are loaded)"
        )
    return f"{path}: not a readable PyTorch checkpoint (truncated or corrupt)"
