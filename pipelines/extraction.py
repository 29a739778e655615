"""Extraction of local features from image files into feature files (``extract.py``).

Images are read and preprocessed (the protocol resizes of ``datasets.hpatches``), described by
any extractor of ``models.extractor.build_extractor`` (learned checkpoints, SIFT, ORB), cut to
the top-k by score, and written one ``<image>.<tag>`` npz per image (``datasets.features``) or
into one HDF5 file (the hloc layout). Finished outputs are skipped, so an interrupted run
resumes, and a bad image can be skipped with a warning instead of stopping the run.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datasets.features import write_features
from datasets.hpatches import (
    IMAGE_EXTENSIONS,
    parse_resize,
    preprocess_image,
    read_image,
)
from geometry.keypoints import top_k_indices
from models.extractor import ImageExtractor
from utils.errors import UserError


def extract_image(
    extractor: ImageExtractor,
    path: str | Path,
    resize: str = "none",
    top_k: int | None = None,
) -> dict[str, np.ndarray]:
    """Read, preprocess and describe one image; returns the arrays of the output file.

    Raises:
        UserError: the image is missing or cannot be decoded.
    """
    image = read_image(path, gray=extractor.grayscale)
    original = image.shape[:2]
    image = preprocess_image(image, resize)
    feats = extractor(image)
    keypoints = np.asarray(feats["keypoints"], np.float32).reshape(-1, 2)
    scores = np.asarray(feats.get("scores", np.ones(len(keypoints))), np.float32)
    keep = top_k_indices(scores, len(keypoints), top_k)
    if feats.get("scales") is not None:
        scales = np.asarray(feats["scales"], np.float32).reshape(-1, 1)
        keypoints = np.concatenate([keypoints, scales], axis=1)
    out = {
        "keypoints": keypoints[keep],
        "scores": scores[keep],
        "imsize": np.array([image.shape[1], image.shape[0]], np.int64),
        "original_imsize": np.array([original[1], original[0]], np.int64),
    }
    if feats.get("descriptors") is not None:
        out["descriptors"] = np.asarray(feats["descriptors"])[keep]
    return out


def collect_images(inputs: list[str]) -> list[tuple[Path, str]]:
    """Expand files, ``.txt`` lists and folders into ``(path, relative name)`` pairs.

    Folders are searched recursively for image files and names are relative to the
    folder; list entries are relative to the list's folder unless absolute.

    Raises:
        UserError: a path that does not exist, or no image at all.
    """
    found: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            found += [(p, p.relative_to(path).as_posix()) for p in files]
        elif path.suffix.lower() == ".txt":
            if not path.is_file():
                raise UserError(f"{path}: image list does not exist")
            for line in path.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                entry = Path(line)
                found.append(
                    (entry if entry.is_absolute() else path.parent / entry, line)
                )
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise UserError(f"{path}: no such image, list or folder")
    if not found:
        raise UserError(f"no images found in {' '.join(inputs)}")
    return found


def default_tag(base: str, top_k: int | None, resize: str) -> str:
    """Output tag encoding the settings, e.g. ``sift``, ``sift-k1000-240x320``."""
    parts = [base]
    if top_k:
        parts.append(f"k{top_k}")
    if str(parse_resize(resize)) != "none":
        parts.append(str(parse_resize(resize)))
    return "-".join(parts)


@dataclass
class ExtractionReport:
    """Counts of one extraction run."""

    written: int = 0
    skipped: int = 0
    failed: int = 0


def _extract_or_skip(
    extractor: ImageExtractor,
    image: Path,
    resize: str,
    top_k: int | None,
    skip_bad: bool,
    report: ExtractionReport,
) -> dict[str, np.ndarray] | None:
    """Features of one image; with ``skip_bad`` a bad image warns, counts as failed, None."""
    try:
        return extract_image(extractor, image, resize, top_k)
    except UserError as err:
        if not skip_bad:
            raise
        print(f"warning: skipped: {err}", file=sys.stderr)
        report.failed += 1
        return None


def extract_to_files(
    extractor: ImageExtractor,
    jobs: list[tuple[Path, Path]],
    resize: str = "none",
    top_k: int | None = None,
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
) -> ExtractionReport:
    """Extract ``(image, output)`` jobs, skipping outputs that already exist.

    Raises:
        UserError: a bad image, unless ``skip_bad`` (then a warning, counted failed).
    """
    report = ExtractionReport()
    todo = [(i, o) for i, o in jobs if overwrite or not o.is_file()]
    report.skipped = len(jobs) - len(todo)
    for image, output in tqdm(
        todo, desc=f"extract {extractor.tag}", disable=not progress
    ):
        feats = _extract_or_skip(extractor, image, resize, top_k, skip_bad, report)
        if feats is None:
            continue
        write_features(output, feats)
        report.written += 1
    return report


def extract_to_h5(
    extractor: ImageExtractor,
    images: list[tuple[Path, str]],
    h5_path: Path,
    resize: str = "none",
    top_k: int | None = None,
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: bool = True,
) -> ExtractionReport:
    """Extract into one HDF5 file (hloc layout); groups already present are skipped.

    The file is updated through a temporary copy, so an interrupted run leaves the
    previous file intact.
    """
    import h5py

    report = ExtractionReport()
    h5_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = h5_path.with_name(f".{h5_path.name}.tmp")
    if h5_path.is_file():
        shutil.copyfile(h5_path, tmp)
    try:
        with h5py.File(tmp, "a") as h5:
            for path, name in tqdm(
                images, desc=f"extract {extractor.tag}", disable=not progress
            ):
                if name in h5 and not overwrite:
                    report.skipped += 1
                    continue
                feats = _extract_or_skip(
                    extractor, path, resize, top_k, skip_bad, report
                )
                if feats is None:
                    continue
                if name in h5:
                    del h5[name]
                group = h5.create_group(name)
                group.create_dataset("keypoints", data=feats["keypoints"][:, :2])
                if feats["keypoints"].shape[1] == 3:
                    group.create_dataset("scales", data=feats["keypoints"][:, 2])
                group.create_dataset("scores", data=feats["scores"])
                group.create_dataset("image_size", data=feats["imsize"])
                group.create_dataset(
                    "original_image_size", data=feats["original_imsize"]
                )
                if "descriptors" in feats:
                    group.create_dataset("descriptors", data=feats["descriptors"])
                report.written += 1
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{h5_path}: cannot write HDF5 file ({err})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, h5_path)
    return report
