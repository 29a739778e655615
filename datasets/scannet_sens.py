"""Reader of ScanNet ``.sens`` files (RGB-D streams with intrinsics and camera poses).

Layout (little endian), as written by ScanNet's SensorData:

* header: ``version`` uint32; sensor-name length uint64 and the name bytes; colour
  intrinsics, colour extrinsics, depth intrinsics, depth extrinsics as 4x4 float32 each;
  colour and depth compression as int32; colour width, height, depth width, height as
  uint32; depth shift float32 (raw units per metre, 1000 for millimetres); frame count
  uint64;
* per frame: camera-to-world pose 4x4 float32; colour and depth timestamps uint64; colour
  and depth byte sizes uint64; the colour bytes (JPEG) and the depth bytes (zlib-compressed
  uint16, ``depth_width x depth_height``).

The reader indexes frame offsets once (seeking over the payloads) so any frame can be read
without decoding the ones before it; a truncated file is reported with the frame at which
it ends.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.errors import UserError

# Compression codes of ScanNet's SensorData.
COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
FRAME_HEADER = struct.Struct("<64sQQQQ")  # pose, two timestamps, two byte sizes


@dataclass
class SensHeader:
    """Header of a ``.sens`` file; matrices are ``(4, 4)`` float64."""

    version: int
    sensor_name: str
    intrinsic_color: np.ndarray
    extrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_depth: np.ndarray
    color_compression: str
    depth_compression: str
    color_size: tuple[int, int]  # (height, width)
    depth_size: tuple[int, int]  # (height, width)
    depth_shift: float
    num_frames: int


class SensReader:
    """Random access to the frames of one ``.sens`` file.

    Example:
        >>> sens = SensReader("scene0000_00.sens")  # doctest: +SKIP
        >>> depth, K = sens.depth(0), sens.depth_intrinsics()  # doctest: +SKIP
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f".sens file '{self.path}' not found")
        with open(self.path, "rb") as f:
            self.header = self._read_header(f)
            self.offsets = self._index_frames(f)

    def _fail(self, what: str) -> UserError:
        return UserError(f".sens file '{self.path}' is truncated or corrupt: {what}")

    def _read(self, f, count: int, what: str) -> bytes:
        data = f.read(count)
        if len(data) != count:
            raise self._fail(f"ends inside {what}")
        return data

    def _read_header(self, f) -> SensHeader:
        (version,) = struct.unpack("<I", self._read(f, 4, "the version"))
        (name_length,) = struct.unpack("<Q", self._read(f, 8, "the sensor name"))
        if name_length > 1 << 16:
            raise self._fail(f"sensor-name length {name_length} is implausible")
        name = self._read(f, name_length, "the sensor name").decode("utf-8", "replace")
        matrices = np.frombuffer(
            self._read(f, 4 * 64, "the calibration"), "<f4"
        ).reshape(4, 4, 4)
        color_comp, depth_comp = struct.unpack("<ii", self._read(f, 8, "compression"))
        cw, ch, dw, dh = struct.unpack("<IIII", self._read(f, 16, "the image sizes"))
        (shift,) = struct.unpack("<f", self._read(f, 4, "the depth shift"))
        (frames,) = struct.unpack("<Q", self._read(f, 8, "the frame count"))
        if depth_comp not in (0, 1):
            raise UserError(
                f".sens file '{self.path}': depth compression "
                f"{DEPTH_COMPRESSION.get(depth_comp, depth_comp)!r} is not supported "
                "(expected zlib_ushort or raw_ushort)"
            )
        if color_comp not in (0, 1, 2):
            raise UserError(
                f".sens file '{self.path}': colour compression {color_comp} is unknown"
            )
        if not np.isfinite(shift) or shift <= 0:
            raise self._fail(f"depth shift {shift} is not positive")
        return SensHeader(
            version=version,
            sensor_name=name,
            intrinsic_color=matrices[0].astype(np.float64),
            extrinsic_color=matrices[1].astype(np.float64),
            intrinsic_depth=matrices[2].astype(np.float64),
            extrinsic_depth=matrices[3].astype(np.float64),
            color_compression=COLOR_COMPRESSION[color_comp],
            depth_compression=DEPTH_COMPRESSION[depth_comp],
            color_size=(ch, cw),
            depth_size=(dh, dw),
            depth_shift=float(shift),
            num_frames=int(frames),
        )

    def _index_frames(self, f) -> list[tuple[int, int, int, np.ndarray]]:
        """``(colour offset, colour size, depth size, pose)`` of every frame."""
        total = self.path.stat().st_size
        offsets = []
        for index in range(self.header.num_frames):
            head = f.read(FRAME_HEADER.size)
            if len(head) != FRAME_HEADER.size:
                raise self._fail(
                    f"frame {index} of {self.header.num_frames} has no complete header"
                )
            pose_bytes, _, _, color_bytes, depth_bytes = FRAME_HEADER.unpack(head)
            start = f.tell()
            if start + color_bytes + depth_bytes > total:
                raise self._fail(
                    f"frame {index} of {self.header.num_frames} needs "
                    f"{color_bytes + depth_bytes} bytes, {total - start} remain"
                )
            pose = np.frombuffer(pose_bytes, "<f4").reshape(4, 4).astype(np.float64)
            offsets.append((start, color_bytes, depth_bytes, pose))
            f.seek(color_bytes + depth_bytes, 1)
        return offsets

    def __len__(self) -> int:
        return self.header.num_frames

    def _payload(self, index: int) -> tuple[bytes, bytes]:
        if not 0 <= index < len(self):
            raise UserError(f".sens file '{self.path}' has no frame {index}")
        start, color_bytes, depth_bytes, _ = self.offsets[index]
        with open(self.path, "rb") as f:
            f.seek(start)
            color = f.read(color_bytes)
            depth = f.read(depth_bytes)
        return color, depth

    def depth_raw(self, index: int) -> np.ndarray:
        """``(H, W)`` uint16 raw depth of frame ``index`` (0: no measurement)."""
        _, data = self._payload(index)
        height, width = self.header.depth_size
        if self.header.depth_compression == "zlib_ushort":
            try:
                data = zlib.decompress(data)
            except zlib.error as err:
                raise self._fail(
                    f"depth of frame {index} does not inflate ({err})"
                ) from None
        if len(data) != 2 * height * width:
            raise UserError(
                f".sens file '{self.path}': depth of frame {index} has {len(data)} "
                f"bytes, the header's {width}x{height} needs {2 * height * width}"
            )
        return np.frombuffer(data, "<u2").reshape(height, width)

    def depth(self, index: int) -> np.ndarray:
        """``(H, W)`` float32 depth of frame ``index`` in metres (0: no measurement)."""
        return self.depth_raw(index).astype(np.float32) / self.header.depth_shift

    def color(self, index: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB colour of frame ``index``."""
        data, _ = self._payload(index)
        height, width = self.header.color_size
        if self.header.color_compression == "raw":
            if len(data) != 3 * height * width:
                raise self._fail(f"raw colour of frame {index} has {len(data)} bytes")
            return np.frombuffer(data, np.uint8).reshape(height, width, 3).copy()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise self._fail(f"colour of frame {index} does not decode")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def pose(self, index: int) -> np.ndarray:
        """``(4, 4)`` camera-to-world pose of frame ``index``."""
        return self.offsets[index][3].copy()

    def depth_intrinsics(self) -> np.ndarray:
        """``(3, 3)`` intrinsics of the depth images."""
        return self.header.intrinsic_depth[:3, :3].copy()
