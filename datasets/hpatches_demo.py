"""Demo HPatches-format sequences made from any photographs (no download needed).

``data_gen.py hpatches_demo --images DIR|builtin --out DIR`` writes folders in the exact
release layout (``<seq>/1.ppm ... 6.ppm`` and ``H_1_2 ... H_1_6``):

- ``v_<photo>``: six views of the photograph taken through known random homographies
  (:func:`geometry.homography.sample_homography`, perspective and rotation growing with the
  image index as in HPatches); every view is a patch of the photograph, so no view has an
  empty border, and ``H_1_k`` is exact.
- ``i_<photo>``: the same crop under photometric changes of growing strength (gamma,
  contrast, colour gains, smooth shading, a little noise); ``H_1_k`` is the identity.

``builtin`` uses the real photographs bundled with scikit-image. The default settings
(every builtin photo, views of at most 640 px) are the README demo; tests shrink them with
``--num-sequences`` and ``--max-size``. Generation is deterministic for a given ``--seed``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from datasets.hpatches import IMAGE_EXTENSIONS, read_image
from geometry.homography import HomographyConfig, sample_homography, warp_image
from utils.arguments import ArgumentParser
from utils.errors import UserError, run_cli

PATCH_RATIO = 0.7
"""Fraction of the photograph each view covers (views keep the photo's resolution)."""


def _skimage_photos() -> dict[str, Callable[[], np.ndarray]]:
    import skimage.data as data

    return {
        "astronaut": data.astronaut,
        "brick": data.brick,
        "camera": data.camera,
        "cell": data.cell,
        "chelsea": data.chelsea,
        "clock": data.clock,
        "coffee": data.coffee,
        "coins": data.coins,
        "grass": data.grass,
        "gravel": data.gravel,
        "hubble": data.hubble_deep_field,
        "ihc": data.immunohistochemistry,
        "moon": data.moon,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
        "page": data.page,
        "retina": data.retina,
        "rocket": data.rocket,
        "text": data.text,
    }


BUILTIN_PHOTOS: tuple[str, ...] = tuple(_skimage_photos())
"""Real photographs shipped inside scikit-image (no network access needed)."""


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        image = np.clip(
            image.astype(np.float64) * (255 if image.max() <= 1 else 1), 0, 255
        )
        image = image.astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def load_photos(images: str) -> list[tuple[str, np.ndarray]]:
    """``(name, RGB uint8)`` for ``builtin`` or every image file in a folder (sorted).

    Raises:
        UserError: missing folder, no images in it, or an undecodable file.
    """
    if images == "builtin":
        return [(name, _as_rgb(load())) for name, load in _skimage_photos().items()]
    folder = Path(images)
    if not folder.is_dir():
        raise UserError(f"{folder}: --images must be 'builtin' or an existing folder")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise UserError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return [(_clean_name(p.stem), read_image(p)) for p in files]


def _clean_name(stem: str) -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem.lower())
    return name or "image"


def _fit_photo(photo: np.ndarray, max_size: int) -> np.ndarray:
    """Scale the photo so that views (``PATCH_RATIO`` of it) are at most ``max_size``."""
    h, w = photo.shape[:2]
    scale = max_size / (PATCH_RATIO * max(h, w))
    if scale < 1:
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        photo = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    return photo


def _view_shape(photo_shape: tuple[int, int]) -> tuple[int, int]:
    h, w = photo_shape
    return max(8, int(round(h * PATCH_RATIO))), max(8, int(round(w * PATCH_RATIO)))


def _reference_homography(photo_shape: tuple[int, int]) -> np.ndarray:
    """Photo -> view 1: the central crop, at the photo's resolution."""
    vh, vw = _view_shape(photo_shape)
    off_x, off_y = (photo_shape[1] - vw) // 2, (photo_shape[0] - vh) // 2
    return np.array([[1.0, 0, -off_x], [0, 1.0, -off_y], [0, 0, 1.0]])


def _view_homography(
    photo_shape: tuple[int, int], k: int, rng: np.random.Generator
) -> np.ndarray:
    """Photo -> view k (2..6): a random patch of the photo, harder as k grows."""
    t = (k - 1) / 5.0
    conf = HomographyConfig(
        patch_ratio=PATCH_RATIO,
        perspective_amplitude_x=0.3 * t,
        perspective_amplitude_y=0.3 * t,
        scaling_amplitude=0.2,
        max_angle=0.1 + 0.4 * t,
        n_angles=25,
        # The views stay centred on the reference crop (a free translation would leave
        # little overlap with image 1, unlike HPatches).
        translation=False,
        allow_artifacts=False,
    )
    to_full = sample_homography(photo_shape, rng, conf)
    vh, vw = _view_shape(photo_shape)
    sx, sy = vw / photo_shape[1], vh / photo_shape[0]
    # Pixel-centre convention: x -> s (x + 0.5) - 0.5 (as geometry.homography.scale_homography).
    shrink = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
    return shrink @ to_full


def photometric_change(
    image: np.ndarray, strength: float, rng: np.random.Generator
) -> np.ndarray:
    """Gamma, contrast, colour gains, smooth shading and noise on an RGB uint8 image.

    Args:
        image: (H, W, 3) uint8.
        strength: 0 (unchanged apart from noise) to 1 (strong change).
        rng: randomness.

    Returns:
        (H, W, 3) uint8, same geometry as the input.
    """
    f = image.astype(np.float64) / 255.0
    h, w = f.shape[:2]
    gamma = math.exp(rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.8) * strength)
    f = f**gamma
    contrast = 1.0 + rng.uniform(-0.5, 0.4) * strength
    mean = f.mean()
    f = (f - mean) * contrast + mean
    gains = np.clip(1.0 + rng.normal(0.0, 0.15 * strength, size=3), 0.6, 1.4)
    f = f * gains
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xs / w + np.sin(angle) * ys / h) - 0.5
    cx, cy, sigma = (
        rng.uniform(0, w),
        rng.uniform(0, h),
        rng.uniform(0.2, 0.5) * max(h, w),
    )
    blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    shade = 1.0 + strength * (0.6 * ramp + rng.uniform(-0.5, 0.5) * blob)
    f = f * np.clip(shade, 0.2, 2.0)[..., None]
    f = f + rng.normal(0.0, 1.5 / 255.0, size=f.shape)
    return (np.clip(f, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_sequence(
    photo: np.ndarray, kind: str, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Six RGB images and the five ``H_1_k`` of one sequence of ``kind`` ``i``/``v``."""
    A1 = _reference_homography(photo.shape[:2])
    vh, vw = _view_shape(photo.shape[:2])
    off_x, off_y = int(-A1[0, 2]), int(-A1[1, 2])
    ref = np.ascontiguousarray(photo[off_y : off_y + vh, off_x : off_x + vw])
    images, homographies = [ref], []
    for k in range(2, 7):
        if kind == "v":
            Ak = _view_homography(photo.shape[:2], k, rng)
            images.append(warp_image(photo, Ak, (vh, vw), interpolation=cv2.INTER_AREA))
            H = Ak @ np.linalg.inv(A1)
            homographies.append(H / H[2, 2])
        else:
            images.append(photometric_change(ref, (k - 1) / 5.0, rng))
            homographies.append(np.eye(3))
    return images, homographies


def _write_sequence(
    folder: Path, images: list[np.ndarray], homographies: list[np.ndarray]
) -> None:
    """Write into a temporary folder, then rename: never a half-written sequence."""
    tmp = folder.with_name(f".tmp_{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, image in enumerate(images, start=1):
        ok = cv2.imwrite(str(tmp / f"{i}.ppm"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise UserError(f"{tmp / f'{i}.ppm'}: cannot write image")
    for k, H in enumerate(homographies, start=2):
        np.savetxt(tmp / f"H_1_{k}", H, fmt="%.10e")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def generate(
    images: str,
    out: str | Path,
    num_sequences: int | None = None,
    max_size: int = 640,
    seed: int = 0,
    kinds: str = "iv",
    overwrite: bool = False,
    progress: bool = True,
) -> list[str]:
    """Write demo sequences; returns the sequence names (existing ones are skipped).

    Args:
        images: ``builtin`` or a folder of photographs.
        out: output folder (created).
        num_sequences: sequences per kind (default: one per photo); photos are reused
            with new random draws when more are asked for.
        max_size: longest side of the written images.
        seed: base seed; a sequence's randomness depends only on it and the sequence.
        kinds: ``iv``, ``i`` or ``v``.
        overwrite: regenerate existing sequences.
        progress: show a progress bar.
    """
    if not kinds or set(kinds) - {"i", "v"}:
        raise UserError(f"invalid --kinds {kinds!r}: expected i, v or iv")
    if max_size < 16:
        raise UserError(f"invalid --max-size {max_size}: expected at least 16")
    if num_sequences is not None and num_sequences < 1:
        raise UserError(f"invalid --num-sequences {num_sequences}: expected >= 1")
    photos = load_photos(images)
    count = len(photos) if num_sequences is None else num_sequences
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for index in range(count):
        name, photo = photos[index % len(photos)]
        suffix = "" if index < len(photos) else f"_{index // len(photos) + 1}"
        for kind in kinds:
            jobs.append((f"{kind}_{name}{suffix}", kind, index, photo))
    names = []
    for seq_name, kind, index, photo in tqdm(
        jobs, desc="hpatches_demo", disable=not progress
    ):
        names.append(seq_name)
        if (out / seq_name / "H_1_6").is_file() and not overwrite:
            continue
        rng = np.random.default_rng([seed, index, ord(kind)])
        seq_images, homographies = make_sequence(_fit_photo(photo, max_size), kind, rng)
        _write_sequence(out / seq_name, seq_images, homographies)
    manifest = {
        "images": images,
        "num_sequences_per_kind": count,
        "max_size": max_size,
        "seed": seed,
        "kinds": kinds,
        "sequences": sorted(names),
    }
    tmp = out / ".hpatches_demo.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / "hpatches_demo.json")
    return names


def main(argv: list[str] | None = None) -> int:
    """``data_gen.py hpatches_demo``: write demo sequences in the HPatches layout."""
    parser = ArgumentParser(
        prog="data_gen.py hpatches_demo",
        description=(
            "Write HPatches-format sequences from photographs: v_* by known random "
            "homographies, i_* by photometric changes with identity homographies."
        ),
    )
    parser.add_argument(
        "--images",
        default="builtin",
        help="'builtin' (scikit-image's photographs) or a folder of images",
    )
    parser.add_argument("--out", default="data/hpatches_demo", help="output folder")
    parser.add_argument(
        "--num-sequences",
        type=int,
        default=None,
        help="sequences per kind (default: one per photograph)",
    )
    parser.add_argument("--max-size", type=int, default=640, help="longest image side")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--kinds", default="iv", help="i, v or iv")
    parser.add_argument("--overwrite", action="store_true", help="regenerate existing")
    args = parser.parse_args(argv)

    def run() -> int:
        names = generate(
            args.images,
            args.out,
            args.num_sequences,
            args.max_size,
            args.seed,
            args.kinds,
            args.overwrite,
        )
        print(f"{len(names)} sequences in {args.out}")
        return 0

    return run_cli(run, "data_gen.py hpatches_demo")


if __name__ == "__main__":
    sys.exit(main())
