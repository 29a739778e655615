"""HPatches sequences: the standard release layout, its splits, and protocol resizing.

The release (``hpatches-sequences-release/``) holds 116 sequence folders, 57 ``i_*``
(illumination changes, identity homographies) and 59 ``v_*`` (viewpoint changes), each
with images ``1.ppm ... 6.ppm`` and ground-truth homographies ``H_1_2 ... H_1_6`` (3x3
text) that map pixels of image 1 to image k. The D2-Net protocol (also used by R2D2 and
glue-factory) drops the 8 sequences listed in :data:`EXCLUDED_SEQUENCES`, whose images are
larger than 1600x1200, leaving 108.

Protocols evaluate at different resolutions; a resize is described by a short string
(see :func:`parse_resize`) so it can be recorded next to every number:

- ``none``: full resolution (D2-Net);
- ``240x320``: crop the top-left region with the target aspect ratio, then resize to
  exactly 240x320 (the pytorch-superpoint HPatches loader; keeps the scale isotropic);
- ``short480``: resize so that the short side is 480 (glue-factory);
- ``max1024``: downscale so that the long side is at most 1024.

Homographies are adapted with :func:`geometry.homography.scale_homography`, in the repository's
pixel-centre convention. ``python -m datasets.hpatches --root DIR --show`` draws a grid of
pairs to check the data by eye; ``python -m datasets.hpatches --check DIR`` checks every
file of a release before an evaluation (:func:`check_release`).
"""

from __future__ import annotations

import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from datasets.checks import CheckReport
from geometry.homography import scale_homography
from utils.arguments import ArgumentParser
from utils.errors import UserError, run_cli

EXCLUDED_SEQUENCES: tuple[str, ...] = (
    "i_contruction",
    "i_crownnight",
    "i_dc",
    "i_pencils",
    "i_whitebuilding",
    "v_artisans",
    "v_astronautis",
    "v_talent",
)
"""Sequences dropped by the D2-Net protocol (images larger than 1600x1200)."""

NUM_SEQUENCES_RELEASE = 116
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".ppm",
    ".pgm",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
)
RELEASE_FOLDER = "hpatches-sequences-release"


# --------------------------------------------------------------------------- resizing


@dataclass(frozen=True)
class ResizeSpec:
    """A protocol resize: ``mode`` in none | crop_resize | short_side | max_size.

    ``size`` is ``(height, width)`` for ``crop_resize`` and a single int otherwise.
    """

    mode: str = "none"
    size: tuple[int, int] | int | None = None

    def __str__(self) -> str:
        if self.mode == "crop_resize":
            return f"{self.size[0]}x{self.size[1]}"
        if self.mode == "short_side":
            return f"short{self.size}"
        if self.mode == "max_size":
            return f"max{self.size}"
        return "none"


def parse_resize(spec: str | ResizeSpec | None) -> ResizeSpec:
    """Parse ``none``, ``HxW`` (e.g. ``240x320``), ``shortN`` or ``maxN``.

    Raises:
        UserError: naming the value and the accepted forms.
    """
    if isinstance(spec, ResizeSpec):
        return spec
    text = "none" if spec is None else str(spec).strip().lower()
    if text in ("none", "", "full"):
        return ResizeSpec()
    if m := re.fullmatch(r"(\d+)x(\d+)", text):
        h, w = int(m.group(1)), int(m.group(2))
        if h > 0 and w > 0:
            return ResizeSpec("crop_resize", (h, w))
    if m := re.fullmatch(r"short(\d+)", text):
        if int(m.group(1)) > 0:
            return ResizeSpec("short_side", int(m.group(1)))
    if m := re.fullmatch(r"max(\d+)", text):
        if int(m.group(1)) > 0:
            return ResizeSpec("max_size", int(m.group(1)))
    raise UserError(
        f"invalid resize {spec!r}: expected none, HxW (e.g. 240x320), shortN or maxN"
    )


def resize_plan(
    shape: tuple[int, int], resize: ResizeSpec | str | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where an image of ``shape = (h, w)`` is cropped and what size it ends at.

    Returns:
        ``(crop_hw, out_hw)``: the top-left crop kept from the original, and the final
        size. Pixel ``(x, y)`` of the crop maps to ``s * (x + 0.5) - 0.5`` with
        ``s = out / crop`` per axis.
    """
    resize = parse_resize(resize)
    h, w = int(shape[0]), int(shape[1])
    if resize.mode == "crop_resize":
        th, tw = resize.size
        s = max(th / h, tw / w)
        # The pytorch-superpoint loader keeps the top-left region with the target aspect
        # ratio; the epsilon guards int() against 479.99999 when the ratio is exact.
        crop = (min(h, int(th / s + 1e-6)), min(w, int(tw / s + 1e-6)))
        return crop, (th, tw)
    if resize.mode == "short_side":
        s = resize.size / min(h, w)
        return (h, w), (int(round(h * s)), int(round(w * s)))
    if resize.mode == "max_size" and max(h, w) > resize.size:
        s = resize.size / max(h, w)
        return (h, w), (max(1, int(round(h * s))), max(1, int(round(w * s))))
    return (h, w), (h, w)


def resize_scale(
    shape: tuple[int, int], resize: ResizeSpec | str | None
) -> tuple[float, float]:
    """``(sx, sy)`` = new size / kept size for an image of ``shape = (h, w)``."""
    (ch, cw), (oh, ow) = resize_plan(shape, resize)
    return ow / cw, oh / ch


def preprocess_image(image: np.ndarray, resize: ResizeSpec | str | None) -> np.ndarray:
    """Crop and resize ``image`` (H, W[, C]) as the protocol ``resize`` says."""
    (ch, cw), (oh, ow) = resize_plan(image.shape[:2], resize)
    image = image[:ch, :cw]
    if (oh, ow) == (ch, cw):
        return np.ascontiguousarray(image)
    # INTER_AREA when shrinking (as the pytorch-superpoint loader), linear when enlarging.
    interp = cv2.INTER_AREA if oh * ow < ch * cw else cv2.INTER_LINEAR
    return cv2.resize(image, (ow, oh), interpolation=interp)


def adapt_homography(
    H: np.ndarray,
    shape0: tuple[int, int],
    shape1: tuple[int, int],
    resize: ResizeSpec | str | None,
) -> np.ndarray:
    """Adapt ``H_0to1`` given between originals of shapes ``shape0``/``shape1`` (h, w)."""
    return scale_homography(
        H, resize_scale(shape0, resize), resize_scale(shape1, resize)
    )


# --------------------------------------------------------------------------- files


def read_homography(path: str | Path) -> np.ndarray:
    """Read a 3x3 homography text file (``H_1_k``).

    Raises:
        UserError: missing file, not 9 finite numbers in 3 rows, or singular matrix.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: homography file is missing")
    try:
        text = path.read_text()
        rows = [line.split() for line in text.strip().splitlines() if line.strip()]
        H = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(
            f"{path}: malformed homography, expected 3x3 numbers ({err})"
        ) from None
    if H.shape != (3, 3) or not np.all(np.isfinite(H)):
        raise UserError(
            f"{path}: malformed homography, expected 3 rows of 3 finite numbers"
        )
    if abs(np.linalg.det(H)) < 1e-12 * max(1.0, np.abs(H).max() ** 3):
        raise UserError(f"{path}: homography is singular")
    return H


def _ppm_size(data: bytes) -> tuple[int, int] | None:
    tokens: list[bytes] = []
    for line in data.split(b"\n"):
        line = line.split(b"#", 1)[0]
        tokens.extend(line.split())
        if len(tokens) >= 4:
            break
    if len(tokens) < 4 or tokens[0] not in (b"P2", b"P3", b"P5", b"P6"):
        return None
    try:
        w, h = int(tokens[1]), int(tokens[2])
    except ValueError:
        return None
    return (h, w) if w > 0 and h > 0 else None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, from its header for PPM/PGM/PNG.

    Reading only the header keeps scoring from cached features fast (no decoding).

    Raises:
        UserError: missing or undecodable file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as err:
        raise UserError(f"{path}: cannot read image ({err.strerror})") from None
    size = None
    if head[:1] == b"P":
        size = _ppm_size(head)
    elif head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        size = (h, w) if w > 0 and h > 0 else None
    if size is None:
        size = read_image(path).shape[:2]
    return int(size[0]), int(size[1])


def read_image(path: str | Path, gray: bool = False) -> np.ndarray:
    """Decode an image as uint8 RGB (H, W, 3), or gray (H, W) when ``gray``.

    Raises:
        UserError: missing or undecodable file (one line naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image is missing")
    data = np.fromfile(str(path), dtype=np.uint8)
    flag = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    # OpenCV logs its own decoder complaints to stderr; the UserError below is the one
    # line the user should see.
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        image = cv2.imdecode(data, flag) if data.size else None
    finally:
        cv2.utils.logging.setLogLevel(previous)
    if image is None:
        raise UserError(f"{path}: cannot decode image (corrupt or unsupported format)")
    if not gray:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def find_image(seq_dir: Path, index: int) -> Path:
    """Path of image ``index`` (1..6) of a sequence, ``<index>.ppm`` or another format.

    Raises:
        UserError: no such image in the folder.
    """
    for ext in IMAGE_EXTENSIONS:
        candidate = seq_dir / f"{index}{ext}"
        if candidate.is_file():
            return candidate
    raise UserError(f"{seq_dir / f'{index}.ppm'}: image is missing")


@dataclass
class Sequence:
    """One HPatches sequence: 6 image paths and ``H_1_k`` for k = 2..6."""

    name: str
    path: Path
    images: list[Path]
    homographies: list[np.ndarray]

    @property
    def kind(self) -> str:
        """``"i"`` (illumination) or ``"v"`` (viewpoint)."""
        return self.name[0]


def resolve_root(root: str | Path) -> Path:
    """Accept either the release folder or a folder containing it.

    Raises:
        UserError: the folder does not exist or holds no ``i_*``/``v_*`` sequences.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: HPatches folder does not exist")
    if not _sequence_dirs(root) and (root / RELEASE_FOLDER).is_dir():
        root = root / RELEASE_FOLDER
    if not _sequence_dirs(root):
        raise UserError(
            f"{root}: no HPatches sequences (expected folders named i_* and v_*)"
        )
    return root


def _sequence_dirs(root: Path) -> list[Path]:
    return sorted(
        p for p in root.iterdir() if p.is_dir() and p.name[:2] in ("i_", "v_")
    )


def list_sequences(
    root: str | Path, split: str = "all", exclude: bool = False
) -> list[str]:
    """Sorted sequence names under ``root``.

    Args:
        root: release folder (or its parent).
        split: ``all``, ``i`` (illumination) or ``v`` (viewpoint).
        exclude: drop :data:`EXCLUDED_SEQUENCES` (D2-Net protocol).
    """
    if split not in ("all", "i", "v"):
        raise UserError(f"invalid split {split!r}: expected all, i or v")
    names = [p.name for p in _sequence_dirs(resolve_root(root))]
    if split != "all":
        names = [n for n in names if n[0] == split]
    if exclude:
        names = [n for n in names if n not in EXCLUDED_SEQUENCES]
    return names


def load_sequence(root: str | Path, name: str) -> Sequence:
    """Find the images and read the homographies of one sequence.

    Raises:
        UserError: a missing image or a missing/malformed ``H_1_k``, naming the file.
    """
    seq_dir = resolve_root(root) / name
    images = [find_image(seq_dir, i) for i in range(1, 7)]
    homographies = [read_homography(seq_dir / f"H_1_{k}") for k in range(2, 7)]
    return Sequence(name, seq_dir, images, homographies)


# --------------------------------------------------------------------------- dataset


class HPatchesPairs(torch.utils.data.Dataset):
    """Pairs (1, k), k = 2..6, of every sequence, preprocessed as a protocol says.

    Each sample holds ``image0``/``image1`` (C, H, W) float in [0, 1] (C = 1 when
    ``gray``, else 3), ``H_0to1`` (3, 3) float64 adapted to the resize, ``scene`` (the
    sequence name), ``kind`` (``i``/``v``) and ``index`` (k).

    Args:
        root: release folder (or its parent).
        resize: a :func:`parse_resize` string.
        split: ``all``, ``i`` or ``v``.
        exclude: drop the 8 high-resolution sequences (D2-Net protocol).
        gray: load grayscale images.
    """

    def __init__(
        self,
        root: str | Path,
        resize: str = "none",
        split: str = "all",
        exclude: bool = False,
        gray: bool = True,
    ):
        self.root = resolve_root(root)
        self.resize = parse_resize(resize)
        self.gray = gray
        self.sequences = [
            load_sequence(self.root, n)
            for n in list_sequences(self.root, split, exclude)
        ]
        self.pairs = [(s, k) for s in self.sequences for k in range(2, 7)]

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, path: Path) -> tuple[torch.Tensor, tuple[int, int]]:
        image = read_image(path, gray=self.gray)
        shape = image.shape[:2]
        image = preprocess_image(image, self.resize)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).float() / 255.0
        tensor = tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)
        return tensor, shape

    def __getitem__(self, idx: int) -> dict:
        seq, k = self.pairs[idx]
        image0, shape0 = self._load(seq.images[0])
        image1, shape1 = self._load(seq.images[k - 1])
        H = adapt_homography(seq.homographies[k - 2], shape0, shape1, self.resize)
        return {
            "image0": image0,
            "image1": image1,
            "H_0to1": torch.from_numpy(H),
            "scene": seq.name,
            "kind": seq.kind,
            "index": k,
        }


def show_pairs(dataset: HPatchesPairs, out: Path, num: int = 6) -> Path:
    """Save a grid of ``num`` pairs with image 1's outline warped into image k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = np.linspace(0, len(dataset) - 1, min(num, len(dataset))).round().astype(int)
    fig, axes = plt.subplots(len(idx), 2, figsize=(8, 3 * len(idx)), squeeze=False)
    for row, i in enumerate(idx):
        sample = dataset[int(i)]
        for col, key in enumerate(("image0", "image1")):
            img = sample[key].permute(1, 2, 0).numpy().squeeze()
            axes[row, col].imshow(img, cmap="gray" if img.ndim == 2 else None)
            axes[row, col].axis("off")
        h, w = sample["image0"].shape[-2:]
        corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1], [0, 0]])
        homog = np.c_[corners, np.ones(5)] @ sample["H_0to1"].numpy().T
        warped = homog[:, :2] / homog[:, 2:]
        axes[row, 1].plot(warped[:, 0], warped[:, 1], "r-", lw=1)
        axes[row, 0].set_title(f"{sample['scene']} 1", fontsize=8)
        axes[row, 1].set_title(f"{sample['scene']} {sample['index']}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def check_release(
    root: str | Path, expected: int = NUM_SEQUENCES_RELEASE
) -> CheckReport:
    """Count the sequences, images and homographies under ``root``; record every problem.

    The full release holds 116 sequences, 696 images and 580 homographies. Every image
    must look sound (:func:`datasets.checks.image_file_problem`) and every ``H_1_k``
    must be a finite, invertible 3x3 matrix.

    Args:
        root: release folder (or its parent).
        expected: sequences the folder must hold (0: any number, e.g. for a demo set).

    Raises:
        UserError: ``root`` is not a folder or holds no ``i_*``/``v_*`` sequence.
    """
    root = resolve_root(root)
    sequences = _sequence_dirs(root)
    report = CheckReport(f"HPatches {root}")
    report.count("sequences", len(sequences))
    report.count("images", 0)
    report.count("homographies", 0)
    kinds = [p.name[0] for p in sequences]
    report.note(f"{kinds.count('i')} i_* and {kinds.count('v')} v_* sequences")
    if expected and len(sequences) != expected:
        report.problem(
            f"{root}: {len(sequences)} sequences where the release has {expected} "
            "(--sequences 0 accepts any number)"
        )
    for folder in sequences:
        for index in range(1, 7):
            try:
                path = find_image(folder, index)
            except UserError as err:
                report.problem(str(err))
                continue
            report.count("images")
            report.check_image(path)
        for k in range(2, 7):
            try:
                read_homography(folder / f"H_1_{k}")
            except UserError as err:
                report.problem(str(err))
                continue
            report.count("homographies")
    return report


def main(argv: list[str] | None = None) -> int:
    """``--check DIR``: check every file; ``--root DIR --show``: draw a grid of pairs."""
    parser = ArgumentParser(
        prog="python -m datasets.hpatches",
        description="Check an HPatches-format folder, or draw pairs with the image-1 "
        "outline.",
    )
    parser.add_argument(
        "--check",
        metavar="DIR",
        help="check every image and homography of this release folder (or its parent); "
        "exit code 1 when a problem is found",
    )
    parser.add_argument(
        "--sequences",
        type=int,
        default=NUM_SEQUENCES_RELEASE,
        help="with --check: sequences expected (0: any number, e.g. a demo set)",
    )
    parser.add_argument("--root", help="release folder or its parent, for --show")
    parser.add_argument("--resize", default="none", help="none | HxW | shortN | maxN")
    parser.add_argument(
        "--split",
        default="all",
        choices=["all", "i", "v"],
        help="all sequences, illumination (i) or viewpoint (v) only",
    )
    parser.add_argument("--exclude", action="store_true", help="drop the 8 sequences")
    parser.add_argument("--show", action="store_true", help="write a grid of pairs")
    parser.add_argument("--num", type=int, default=6, help="pairs in the grid")
    parser.add_argument(
        "--out", default="outputs/hpatches_samples.png", help="PNG file of the grid"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        if args.check:
            return check_release(args.check, args.sequences).finish()
        if not args.root:
            raise UserError("give --check DIR, or --root DIR (with --show)")
        dataset = HPatchesPairs(
            args.root, args.resize, args.split, args.exclude, gray=False
        )
        kinds = [s.kind for s in dataset.sequences]
        print(
            f"{len(dataset.sequences)} sequences ({kinds.count('i')} i, "
            f"{kinds.count('v')} v), {len(dataset)} pairs"
        )
        if args.show:
            print(f"wrote {show_pairs(dataset, Path(args.out), args.num)}")
        return 0

    return run_cli(run, "datasets.hpatches")


if __name__ == "__main__":
    sys.exit(main())
