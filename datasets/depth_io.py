"""Reading depth maps and camera intrinsics from the files datasets ship them in.

Depth files: 16-bit PNG (raw units, divided by a depth scale: 1000 for ScanNet/Redwood
millimetres, 5000 for TUM, 512 for Taskonomy), float EXR (through the ``OpenEXR``
package: the OpenCV wheels are built without EXR support, so ``OPENCV_IO_ENABLE_OPENEXR``
does not help there), ``.npy`` and ``.npz`` (key ``depth`` or the only array). Depth
values that are NaN, infinite, zero or negative are invalid: they are masked (set to 0),
counted and reported, never silently used.

Intrinsics: ``fx,fy,cx,cy`` on the command line, or a file: JSON (``fx fy cx cy`` or
``K``, optionally ``width height``), text (4 numbers or a 3x3 matrix) or ``.npy`` (3x3).
When the intrinsics carry an image size it must equal the depth map's; otherwise the
principal point must lie inside the depth map, which catches intrinsics of another size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from geometry.camera import intrinsics_matrix, invalid_depth_counts, valid_depth_mask
from utils.errors import UserError

DEPTH_SUFFIXES = (".png", ".exr", ".npy", ".npz")


def read_exr(path: str | Path) -> np.ndarray:
    """``(H, W)`` float32 first depth-like channel (``Y``, ``Z``, ``depth``, ``R``...) of an EXR."""
    import OpenEXR

    path = Path(path)
    if not path.is_file():
        raise UserError(f"EXR file '{path}' not found")
    try:
        with OpenEXR.File(str(path)) as exr:
            channels = {name: ch.pixels for name, ch in exr.channels().items()}
    except Exception as err:  # the bindings raise several types for a corrupt file
        raise UserError(f"EXR file '{path}' cannot be read: {err}") from None
    for name in ("Y", "Z", "depth", "R", "RGB", "RGBA"):
        if name in channels:
            pixels = channels[name]
            break
    else:
        pixels = next(iter(channels.values()))
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        pixels = pixels[..., 0]
    return pixels.astype(np.float32)


def write_exr(path: str | Path, depth: np.ndarray) -> None:
    """Write ``(H, W)`` float32 ``depth`` as a one-channel (``Y``) ZIP-compressed EXR."""
    import OpenEXR

    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"Y": np.ascontiguousarray(depth, np.float32)}) as exr:
        exr.write(str(path))


def read_depth_file(path: str | Path, depth_scale: float = 1.0) -> np.ndarray:
    """``(H, W)`` float32 depth: stored values divided by ``depth_scale`` (invalid kept).

    PNGs must be single-channel 16-bit; other formats hold floats or integers.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"depth file '{path}' not found")
    suffix = path.suffix.lower()
    if suffix == ".png":
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise UserError(f"depth file '{path}' is not a readable PNG")
        if raw.ndim != 2 or raw.dtype != np.uint16:
            raise UserError(
                f"depth file '{path}' is {raw.dtype} with shape {raw.shape}; "
                "expected a single-channel 16-bit PNG"
            )
        depth = raw.astype(np.float32)
    elif suffix == ".exr":
        depth = read_exr(path)
    elif suffix in (".npy", ".npz"):
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UserError(f"depth file '{path}' cannot be read: {err}") from None
        if suffix == ".npz":
            keys = list(data.keys())
            if "depth" not in keys and len(keys) != 1:
                raise UserError(f"depth file '{path}' has no 'depth' array ({keys})")
            data = data["depth" if "depth" in keys else keys[0]]
        depth = np.asarray(data, np.float32)
    else:
        raise UserError(
            f"depth file '{path}' has suffix '{path.suffix}'; expected one of "
            f"{', '.join(DEPTH_SUFFIXES)}"
        )
    if depth.ndim != 2:
        raise UserError(f"depth file '{path}' has shape {depth.shape}; expected (H, W)")
    if not np.isfinite(depth_scale) or depth_scale <= 0:
        raise UserError(f"depth scale {depth_scale} must be a positive number")
    return depth / np.float32(depth_scale)


def clean_depth(
    depth: np.ndarray, name: str, min_valid: int = 16
) -> tuple[np.ndarray, dict[str, int]]:
    """Mask invalid depths (NaN, inf, <= 0) to 0 and count them.

    Returns:
        the cleaned ``(H, W)`` float32 depth and the counts ``{"nan", "inf", "zero"}``.

    Raises:
        UserError: fewer than ``min_valid`` valid pixels remain.
    """
    counts = invalid_depth_counts(depth)
    valid = valid_depth_mask(depth)
    if int(valid.sum()) < min_valid:
        raise UserError(
            f"depth '{name}' has {int(valid.sum())} valid pixels of {depth.size} "
            f"(NaN {counts['nan']}, inf {counts['inf']}, zero or negative "
            f"{counts['zero']}); at least {min_valid} are needed"
        )
    return np.where(valid, depth, 0).astype(np.float32), counts


def describe_invalid(counts: dict[str, int]) -> str:
    """``"NaN a, inf b, zero or negative c"``."""
    return (
        f"NaN {counts['nan']}, inf {counts['inf']}, zero or negative {counts['zero']}"
    )


def parse_intrinsics(text: str) -> np.ndarray:
    """``"fx,fy,cx,cy"`` to a ``(3, 3)`` intrinsics matrix."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(np.isfinite(values)) or min(values[:2]) <= 0:
        raise UserError(
            f"intrinsics '{text}' are not fx,fy,cx,cy (four numbers, positive focals)"
        )
    return intrinsics_matrix(*values)


def _matrix_from_values(values: Any, where: str) -> np.ndarray:
    array = np.asarray(values, np.float64)
    if array.size == 4:
        return intrinsics_matrix(*array.ravel())
    if array.size == 9:
        return array.reshape(3, 3)
    if array.shape == (4, 4):
        return array[:3, :3]
    raise UserError(f"intrinsics {where} hold {array.size} numbers; expected 4 or 3x3")


def read_intrinsics_file(path: str | Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Intrinsics ``(3, 3)`` and the image size ``(H, W)`` they are for, if the file says.

    Formats: JSON (``fx fy cx cy`` or ``K``, optional ``width height``), ``.npy`` (3x3),
    text (whitespace- or comma-separated 4 numbers or 3x3 matrix).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"intrinsics file '{path}' not found")
    where = f"file '{path}'"
    size = None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise UserError(f"intrinsics {where} must hold a JSON object")
            if "K" in data:
                K = _matrix_from_values(data["K"], where)
            elif all(k in data for k in ("fx", "fy", "cx", "cy")):
                K = intrinsics_matrix(
                    *(float(data[k]) for k in ("fx", "fy", "cx", "cy"))
                )
            else:
                raise UserError(
                    f"intrinsics {where} has neither 'K' nor fx, fy, cx, cy "
                    f"(keys: {sorted(data)})"
                )
            if "width" in data and "height" in data:
                size = (int(data["height"]), int(data["width"]))
        elif path.suffix.lower() == ".npy":
            K = _matrix_from_values(np.load(path, allow_pickle=False), where)
        else:
            numbers = path.read_text().replace(",", " ").split()
            K = _matrix_from_values([float(v) for v in numbers], where)
    except (ValueError, TypeError, json.JSONDecodeError) as err:
        raise UserError(f"intrinsics {where} cannot be parsed: {err}") from None
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise UserError(f"intrinsics {where} need finite, positive focal lengths")
    return K, size


def check_intrinsics_fit(
    K: np.ndarray, size: tuple[int, int] | None, shape: tuple[int, int], name: str
) -> None:
    """Raise if intrinsics are for another image size than a depth map of ``shape``."""
    height, width = shape
    if size is not None and tuple(size) != (height, width):
        raise UserError(
            f"depth '{name}' is {width}x{height} but its intrinsics are for "
            f"{size[1]}x{size[0]}"
        )
    cx, cy = K[0, 2], K[1, 2]
    if not (-0.5 <= cx <= width - 0.5 and -0.5 <= cy <= height - 0.5):
        raise UserError(
            f"depth '{name}' is {width}x{height} but its intrinsics' principal point "
            f"({cx:.1f}, {cy:.1f}) lies outside it: intrinsics of another image size?"
        )


def read_json_field(path: str | Path, field: str, what: str) -> float:
    """A numeric ``field`` of a JSON object file, or a one-line error naming both."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} '{path}' not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{what} '{path}' is not valid JSON: {err}") from None
    if not isinstance(data, dict) or field not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{what} '{path}' has no '{field}' (found: {keys})")
    try:
        value = float(data[field])
    except (TypeError, ValueError):
        raise UserError(f"{what} '{path}': '{field}' is not a number") from None
    if not np.isfinite(value) or value <= 0:
        raise UserError(f"{what} '{path}': '{field}' = {value} is not positive")
    return value
