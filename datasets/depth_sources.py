"""Depth datasets as sources of ``(depth, intrinsics, colour)`` frames grouped in scenes.

One class per dataset layout, each listing its scenes (lists of frame keys) without
decoding anything heavy and loading one frame on demand; ``data_gen.py pointclouds``
spreads its samples evenly over the scenes of each source.

* :class:`ScanNetSource`: every ``*.sens`` file under a folder is a scene (see
  ``datasets.scannet_sens``); depth intrinsics from the header.
* :class:`KenBurnsSource`: 3D Ken Burns, ``<scene>-depth/<frame>-<view>-depth.exr`` with
  ``<scene>/<frame>-meta.json`` holding ``fltFov``, the field of view in degrees over the
  image's **larger side** (as the dataset's own code converts it), converted here to this
  repository's vertical-FOV intrinsics. Depth values are used as stored.
* :class:`TaskonomySource`: ``depth_zbuffer`` 16-bit PNGs (metres = value / 512, 65535 =
  invalid) with ``point_info`` JSON files holding ``field_of_view_rads`` (square images).
* :class:`FolderSource`: any folder of depth maps (PNG divided by a depth scale: 1000 for
  ScanNet/Redwood millimetres, 5000 for TUM) with intrinsics given once or per file
  (``<stem>.json`` or ``<stem>.txt`` beside the depth file).
* :class:`ProceduralSource`: the built-in generator (``datasets.procedural_scenes``).
* :class:`MotorcycleSource`: the real Middlebury frame scikit-image ships
  (``datasets.middlebury``), a validation frame that training refuses.

``python -m datasets.depth_sources --check DIR --source NAME`` checks a dataset folder
before ``data_gen.py pointclouds`` reads it (:func:`check_depth_folder`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datasets.checks import CheckReport
from datasets.depth_io import (
    DEPTH_SUFFIXES,
    check_intrinsics_fit,
    read_depth_file,
    read_exr,
    read_intrinsics_file,
    read_json_field,
)
from datasets.scannet_sens import SensReader
from geometry.camera import intrinsics_matrix
from utils.arguments import ArgumentParser
from utils.errors import UserError, run_cli

TASKONOMY_SCALE = 512.0  # depth_zbuffer units per metre
TASKONOMY_INVALID = 65535


@dataclass
class Frame:
    """One depth frame: ``depth (H, W)`` float32 metres (invalid values still in place),
    ``K (3, 3)``, optional ``rgb (H, W, 3)`` uint8, and a ``name`` for messages."""

    depth: np.ndarray
    K: np.ndarray
    rgb: np.ndarray | None
    name: str


def _require_dir(path: str | Path, option: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{option} '{path}' is not a folder")
    return path


def _group_by_parent(files: list[Path]) -> list[list[str]]:
    scenes: dict[Path, list[str]] = {}
    for file in sorted(files):
        scenes.setdefault(file.parent, []).append(str(file))
    return [scenes[key] for key in sorted(scenes)]


def _resize_rgb(rgb: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if rgb is None or rgb.shape[:2] == shape:
        return rgb
    return cv2.resize(rgb, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def _read_rgb(path: Path) -> np.ndarray | None:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class ScanNetSource:
    """ScanNet ``.sens`` files under ``root`` (searched recursively)."""

    name = "scannet"

    def __init__(self, root: str | Path):
        root = _require_dir(root, "--scannet")
        self.files = sorted(root.rglob("*.sens"))
        if not self.files:
            raise UserError(f"--scannet '{root}' holds no .sens file")
        self.readers = {str(f): SensReader(f) for f in self.files}

    def scenes(self) -> list[list[Any]]:
        return [
            [(str(f), i) for i in range(len(self.readers[str(f)]))] for f in self.files
        ]

    def check(self, key: Any) -> None:
        """Headers and frame offsets were validated when the files were indexed."""

    def load(self, key: Any) -> Frame:
        path, index = key
        reader = self.readers[path]
        depth = reader.depth(index)
        rgb = _resize_rgb(reader.color(index), depth.shape)
        return Frame(depth, reader.depth_intrinsics(), rgb, f"{path}#{index}")


def read_kenburns(
    depth_path: str | Path, meta_path: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """3D Ken Burns frame: ``depth (H, W)`` float32 and intrinsics ``(3, 3)``.

    ``fltFov`` (degrees) spans the larger image side; the principal point is the centre.
    """
    depth = read_exr(depth_path)
    fov = read_json_field(meta_path, "fltFov", "Ken Burns meta JSON")
    if fov >= 180:
        raise UserError(f"Ken Burns meta JSON '{meta_path}': fltFov {fov} is not < 180")
    height, width = depth.shape
    focal = 0.5 * max(height, width) / math.tan(math.radians(fov) / 2)
    return depth, intrinsics_matrix(focal, focal, (width - 1) / 2, (height - 1) / 2)


def kenburns_meta_path(depth_path: Path) -> Path:
    """``<frame>-meta.json`` beside the depth file or in the colour folder (no ``-depth``)."""
    frame = depth_path.name.split("-")[0]
    beside = depth_path.parent / f"{frame}-meta.json"
    if beside.is_file():
        return beside
    folder = depth_path.parent.name
    if folder.endswith("-depth"):
        return (
            depth_path.parent.parent / folder[: -len("-depth")] / f"{frame}-meta.json"
        )
    return beside


class KenBurnsSource:
    """3D Ken Burns: every ``*-depth.exr`` under ``root``; scenes are their folders."""

    name = "kenburns"

    def __init__(self, root: str | Path):
        root = _require_dir(root, "--kenburns")
        self.files = sorted(root.rglob("*-depth.exr"))
        if not self.files:
            raise UserError(f"--kenburns '{root}' holds no *-depth.exr file")

    def scenes(self) -> list[list[Any]]:
        return _group_by_parent(self.files)

    def check(self, key: Any) -> None:
        """Read the frame's field of view, so a bad meta file fails before any writing."""
        read_json_field(kenburns_meta_path(Path(key)), "fltFov", "Ken Burns meta JSON")

    def load(self, key: Any) -> Frame:
        path = Path(key)
        meta = kenburns_meta_path(path)
        depth, K = read_kenburns(path, meta)
        image = meta.parent / path.name.replace("-depth.exr", "-image.png")
        return Frame(depth, K, _resize_rgb(_read_rgb(image), depth.shape), str(path))


def read_taskonomy(
    depth_path: str | Path, info_path: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """Taskonomy frame: ``depth (H, W)`` float32 metres (invalid = 0) and intrinsics.

    ``depth_zbuffer`` PNG values are metres x 512, 65535 marks no depth;
    ``field_of_view_rads`` spans the (square) image's side.
    """
    raw = cv2.imread(str(depth_path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2 or raw.dtype != np.uint16:
        raise UserError(
            f"Taskonomy depth '{depth_path}' is not a single-channel 16-bit PNG"
        )
    fov = read_json_field(info_path, "field_of_view_rads", "Taskonomy point_info JSON")
    if fov >= math.pi:
        raise UserError(
            f"Taskonomy point_info JSON '{info_path}': field_of_view_rads {fov} >= pi"
        )
    depth = (
        np.where(raw == TASKONOMY_INVALID, 0, raw).astype(np.float32) / TASKONOMY_SCALE
    )
    height, width = depth.shape
    focal = 0.5 * max(height, width) / math.tan(fov / 2)
    return depth, intrinsics_matrix(focal, focal, (width - 1) / 2, (height - 1) / 2)


def taskonomy_info_path(depth_path: Path) -> Path:
    """The ``point_info`` JSON of a ``depth_zbuffer`` PNG (same folder or mirrored tree)."""
    name = depth_path.name.replace("depth_zbuffer.png", "point_info.json")
    beside = depth_path.parent / name
    if beside.is_file():
        return beside
    parts = list(depth_path.parent.parts)
    if "depth_zbuffer" in parts:
        parts[len(parts) - 1 - parts[::-1].index("depth_zbuffer")] = "point_info"
        return Path(*parts) / name
    return beside


class TaskonomySource:
    """Taskonomy: every ``*depth_zbuffer.png`` under ``root``; scenes are their folders."""

    name = "taskonomy"

    def __init__(self, root: str | Path):
        root = _require_dir(root, "--taskonomy")
        self.files = sorted(root.rglob("*depth_zbuffer.png"))
        if not self.files:
            raise UserError(f"--taskonomy '{root}' holds no *depth_zbuffer.png file")

    def scenes(self) -> list[list[Any]]:
        return _group_by_parent(self.files)

    def check(self, key: Any) -> None:
        """Read the frame's field of view, so a bad JSON fails before any writing."""
        read_json_field(
            taskonomy_info_path(Path(key)),
            "field_of_view_rads",
            "Taskonomy point_info JSON",
        )

    def load(self, key: Any) -> Frame:
        path = Path(key)
        depth, K = read_taskonomy(path, taskonomy_info_path(path))
        return Frame(depth, K, None, str(path))


class FolderSource:
    """Depth maps under ``root`` (recursively; scenes are folders) with given intrinsics.

    Args:
        root: the folder.
        depth_scale: stored units per metre (PNG: 1000 ScanNet/Redwood, 5000 TUM).
        intrinsics: ``(3, 3)`` for every file, or None to read ``<stem>.json`` /
            ``<stem>.txt`` beside each depth file.
    """

    name = "folder"

    def __init__(
        self, root: str | Path, depth_scale: float, intrinsics: np.ndarray | None
    ):
        root = _require_dir(root, "--folder")
        self.files = sorted(
            f
            for f in root.rglob("*")
            if f.suffix.lower() in DEPTH_SUFFIXES and f.is_file()
        )
        if not self.files:
            raise UserError(
                f"--folder '{root}' holds no depth file ({', '.join(DEPTH_SUFFIXES)})"
            )
        self.depth_scale, self.intrinsics = depth_scale, intrinsics
        if intrinsics is None:
            for file in self.files:
                self.intrinsics_path(file)  # every file must have its own

    @staticmethod
    def intrinsics_path(depth_path: Path) -> Path:
        for suffix in (".json", ".txt"):
            candidate = depth_path.with_suffix(suffix)
            if candidate.is_file():
                return candidate
        raise UserError(
            f"depth '{depth_path}' has no intrinsics: pass --intrinsics fx,fy,cx,cy "
            f"(or a file) or put {depth_path.stem}.json / .txt beside it"
        )

    def scenes(self) -> list[list[Any]]:
        return _group_by_parent(self.files)

    def check(self, key: Any) -> None:
        """Parse the frame's own intrinsics file, if it has one."""
        if self.intrinsics is None:
            read_intrinsics_file(self.intrinsics_path(Path(key)))

    def load(self, key: Any) -> Frame:
        path = Path(key)
        depth = read_depth_file(
            path, self.depth_scale if path.suffix == ".png" else 1.0
        )
        if self.intrinsics is None:
            K, size = read_intrinsics_file(self.intrinsics_path(path))
        else:
            K, size = self.intrinsics, None
        check_intrinsics_fit(K, size, depth.shape, str(path))
        return Frame(depth, K, None, str(path))


class ProceduralSource:
    """``count`` procedural scenes of stream ``seed`` at ``height x width`` with a field-
    of-view prior and, with ``sensor``, sensor effects (``datasets.procedural_scenes``)."""

    name = "procedural"

    def __init__(
        self,
        count: int,
        seed: int,
        height: int,
        width: int,
        fov_prior: str = "real",
        sensor: bool = True,
    ):
        from datasets.procedural_scenes import FOV_PRIORS

        if fov_prior not in FOV_PRIORS:
            raise UserError(
                f"FOV prior '{fov_prior}' is not one of {sorted(FOV_PRIORS)}"
            )
        self.count, self.seed, self.height, self.width = count, seed, height, width
        self.fov_prior, self.sensor = fov_prior, sensor

    def scenes(self) -> list[list[Any]]:
        return [[i] for i in range(self.count)]

    def check(self, key: Any) -> None:
        """Nothing to read: scenes are rendered."""

    def load(self, key: Any) -> Frame:
        from datasets.procedural_scenes import render_procedural

        sample = render_procedural(
            int(key), self.seed, self.height, self.width, self.fov_prior, self.sensor
        )
        return Frame(sample["depth"], sample["K"], sample["rgb"], f"procedural#{key}")


class MotorcycleSource:
    """The Middlebury 2014 Motorcycle frame bundled with scikit-image
    (``datasets.middlebury``): one real frame, for validation only."""

    name = "middlebury_motorcycle"

    def scenes(self) -> list[list[Any]]:
        return [[0]]

    def check(self, key: Any) -> None:
        """The frame's scale is checked against the calibration when it is loaded."""

    def load(self, key: Any) -> Frame:
        from datasets.middlebury import motorcycle_frame

        depth, K, rgb = motorcycle_frame()
        return Frame(depth, K, rgb, "middlebury_motorcycle")


def spread_evenly(scene_sizes: list[int], count: int) -> list[tuple[int, int]]:
    """Pick ``count`` frames spread evenly over scenes, evenly spaced within each.

    Each scene gets ``count / scenes`` frames (a scene with fewer frames gives all it has
    and the rest goes to the others); within a scene the picks are evenly spaced.

    Returns:
        ``(scene, frame)`` index pairs, scene-major; fewer than ``count`` if the scenes
        hold fewer frames in total.
    """
    quotas = [0] * len(scene_sizes)
    remaining = min(count, sum(scene_sizes))
    open_scenes = [i for i, n in enumerate(scene_sizes) if n > 0]
    while remaining > 0 and open_scenes:
        share, extra = divmod(remaining, len(open_scenes))
        still_open = []
        for rank, scene in enumerate(open_scenes):
            give = min(share + (rank < extra), scene_sizes[scene] - quotas[scene])
            quotas[scene] += give
            remaining -= give
            if quotas[scene] < scene_sizes[scene]:
                still_open.append(scene)
        open_scenes = still_open
    picks = []
    for scene, quota in enumerate(quotas):
        if quota:
            frames = np.linspace(0, scene_sizes[scene] - 1, quota).round().astype(int)
            picks += [(scene, int(f)) for f in frames]
    return picks


# The files each dataset source reads, as ``data_gen.py pointclouds`` finds them.
SOURCE_FILES = {
    "scannet": "*.sens",
    "kenburns": "*-depth.exr",
    "taskonomy": "*depth_zbuffer.png",
    "folder": "*" + "|*".join(DEPTH_SUFFIXES),
}


def check_depth_folder(
    root: str | Path, source: str, shared_intrinsics: bool = False
) -> CheckReport:
    """Count the scenes and frames of a depth dataset folder; check every frame's files.

    ScanNet files are indexed (header and every frame's offset); a 3D Ken Burns frame
    needs its ``-meta.json`` with ``fltFov``, a Taskonomy frame its ``point_info`` JSON
    with ``field_of_view_rads``, and a folder depth map its ``<stem>.json``/``.txt``
    intrinsics unless ``shared_intrinsics``. PNG depth maps are checked as images.

    Args:
        root: the folder given to ``data_gen.py pointclouds --<source>``.
        source: ``scannet``, ``kenburns``, ``taskonomy`` or ``folder``.
        shared_intrinsics: ``folder`` only: one ``--intrinsics`` for every file.

    Raises:
        UserError: unknown source, or ``root`` is not a folder.
    """
    if source not in SOURCE_FILES:
        raise UserError(f"source '{source}' is not one of {', '.join(SOURCE_FILES)}")
    root = _require_dir(root, "--check")
    if source == "folder":
        files = sorted(
            f for f in root.rglob("*") if f.is_file() and f.suffix in DEPTH_SUFFIXES
        )
    else:
        files = sorted(root.rglob(SOURCE_FILES[source]))
    report = CheckReport(f"{source} depth {root}")
    scenes = files if source == "scannet" else {f.parent for f in files}
    report.count("scenes", len(scenes))
    report.count("frames", 0 if source == "scannet" else len(files))
    if not files:
        report.problem(f"{root}: no {SOURCE_FILES[source]} file")
    for file in files:
        try:
            if source == "scannet":
                report.count("frames", len(SensReader(file)))
                continue
            if file.suffix == ".png":
                report.check_image(file)
            elif file.stat().st_size == 0:
                report.problem(f"{file}: empty file")
            if source == "kenburns":
                read_json_field(
                    kenburns_meta_path(file), "fltFov", "Ken Burns meta JSON"
                )
            elif source == "taskonomy":
                info = taskonomy_info_path(file)
                read_json_field(info, "field_of_view_rads", "Taskonomy point_info JSON")
            elif not shared_intrinsics:
                read_intrinsics_file(FolderSource.intrinsics_path(file))
        except UserError as err:
            report.problem(str(err))
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m datasets.depth_sources --check DIR --source NAME``."""
    parser = ArgumentParser(
        prog="python -m datasets.depth_sources",
        description="Check a depth dataset folder before data_gen.py pointclouds reads it.",
    )
    parser.add_argument(
        "--check",
        metavar="DIR",
        required=True,
        help="the folder; exit code 1 when a problem is found",
    )
    parser.add_argument(
        "--source",
        required=True,
        choices=sorted(SOURCE_FILES),
        help="which dataset the folder holds (the data_gen.py pointclouds option)",
    )
    parser.add_argument(
        "--shared-intrinsics",
        action="store_true",
        help="folder only: intrinsics will be given once (data_gen.py --intrinsics), "
        "so depth maps need no <stem>.json / .txt",
    )
    args = parser.parse_args(argv)
    return run_cli(
        lambda: check_depth_folder(
            args.check, args.source, args.shared_intrinsics
        ).finish(),
        parser.prog,
    )


if __name__ == "__main__":
    sys.exit(main())
