"""Extraction of local features from image files into feature files (``extract.py``).

Images are read and preprocessed (the protocol resizes of ``datasets.hpatches``), described by
any extractor of ``models.extractor.build_extractor`` (learned checkpoints, SIFT, ORB), cut to
the top-k by score, and written one ``<image>.<tag>`` npz per image (``datasets.features``) or
into one HDF5 file (the hloc layout). Every output carries a provenance record (extractor
identity, options, preset, preprocessing, image size; see ``datasets.features``). An existing
output is reused only when its record says it is what this run would write, so an interrupted
run resumes and a file of another model or other settings is re-extracted (or, with
``no_overwrite``, refused). A bad image can be skipped with a warning instead of stopping the
run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from datasets.features import read_provenance, stale_reason, write_features
from datasets.hpatches import (
    IMAGE_EXTENSIONS,
    image_size,
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
    """Read, preprocess and describe one image; returns the arrays of the output file:
    ``keypoints`` (N, 2) or (N, 3) with scales, ``scores`` (N,), optional ``descriptors``
    (N, D), ``imsize`` and ``original_imsize`` (width, height).

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
    """Counts of one extraction run: ``skipped`` outputs were up to date, ``stale`` ones
    (counted in ``written`` too) held features of another extractor or other settings."""

    written: int = 0
    skipped: int = 0
    failed: int = 0
    stale: int = 0

    def summary(self) -> str:
        """``3 written (1 stale, re-extracted), 2 up to date, 0 failed``."""
        stale = f" ({self.stale} stale, re-extracted)" if self.stale else ""
        return (
            f"{self.written} written{stale}, {self.skipped} up to date, "
            f"{self.failed} failed"
        )


def extraction_record(
    extractor: ImageExtractor,
    resize: str = "none",
    top_k: int | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """The provenance record of this run's outputs, without the per-image sizes."""
    return {
        "extractor": dict(extractor.identity),
        "options": dict(extractor.options),
        "preset": preset,
        "resize": str(parse_resize(resize)),
        "top_k": top_k,
    }


def _source_size(image: Path) -> tuple[int, int] | None:
    """``(width, height)`` of a source image from its header, None if unreadable."""
    try:
        h, w = image_size(image)
    except UserError:
        return None
    return w, h


def _why_stale(
    stored: dict[str, Any] | None, record: dict[str, Any], image: Path
) -> str | None:
    reason = stale_reason(stored, record)
    if reason is None:
        size = _source_size(image)
        reason = stale_reason(stored, record, size) if size else "unreadable image"
    return reason


def _refuse_stale(first: Path, reason: str, count: int) -> UserError:
    return UserError(
        f"{first}: feature file is stale ({reason}); --no-overwrite refuses to replace "
        f"it ({count} stale file(s); drop --no-overwrite to re-extract, or use --tag)"
    )


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
    preset: str | None = None,
    no_overwrite: bool = False,
) -> ExtractionReport:
    """Extract ``(image, output)`` jobs, reusing outputs whose record matches this run.

    Args:
        overwrite: redo every output.
        no_overwrite: refuse (before extracting anything) to replace a stale output.
        preset: the evaluation preset, recorded in every output.

    Raises:
        UserError: a bad image, unless ``skip_bad`` (then a warning, counted failed);
            with ``no_overwrite``, a stale output (the first one is named).
    """
    report = ExtractionReport()
    record = extraction_record(extractor, resize, top_k, preset)
    todo, stale = [], []
    for image, output in jobs:
        if overwrite or not output.is_file():
            todo.append((image, output))
            continue
        reason = _why_stale(read_provenance(output), record, image)
        if reason is None:
            report.skipped += 1
            continue
        stale.append((output, reason))
        todo.append((image, output))
    if stale and no_overwrite:
        raise _refuse_stale(stale[0][0], stale[0][1], len(stale))
    report.stale = len(stale)
    for image, output in tqdm(
        todo,
        desc=f"extract {extractor.tag}",
        disable=not progress,
        leave=False,
    ):
        feats = _extract_or_skip(extractor, image, resize, top_k, skip_bad, report)
        if feats is None:
            continue
        sizes = {
            "image_size": feats["imsize"].tolist(),
            "original_size": feats["original_imsize"].tolist(),
        }
        write_features(output, feats, {**record, **sizes})
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
    no_overwrite: bool = False,
) -> ExtractionReport:
    """Extract into one HDF5 file (hloc layout); groups whose record matches are reused.

    Each group holds its provenance record (JSON) in the ``provenance`` attribute. The
    file is updated through a temporary copy, so an interrupted run leaves the previous
    file intact.

    Raises:
        UserError: as :func:`extract_to_files`.
    """
    import h5py

    report = ExtractionReport()
    record = extraction_record(extractor, resize, top_k)
    if h5_path.is_file() and not overwrite:
        stale = _stale_groups(h5_path, images, record)
        if stale and no_overwrite:
            first, reason = stale[0]
            raise _refuse_stale(Path(f"{h5_path}:{first}"), reason, len(stale))
        report.stale = len(stale)
    h5_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = h5_path.with_name(f".{h5_path.name}.tmp")
    if h5_path.is_file():
        shutil.copyfile(h5_path, tmp)
    try:
        with h5py.File(tmp, "a") as h5:
            for path, name in tqdm(
                images,
                desc=f"extract {extractor.tag}",
                disable=not progress,
                leave=False,
            ):
                if name in h5 and not overwrite:
                    stored = _group_record(h5[name])
                    if _why_stale(stored, record, path) is None:
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
                sizes = {
                    "image_size": feats["imsize"].tolist(),
                    "original_size": feats["original_imsize"].tolist(),
                }
                group.attrs["provenance"] = json.dumps({**record, **sizes})
                report.written += 1
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{h5_path}: cannot write HDF5 file ({err})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, h5_path)
    return report


def _group_record(group: Any) -> dict[str, Any] | None:
    """The provenance record of an HDF5 group, None when absent or unreadable."""
    try:
        value = json.loads(group.attrs["provenance"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _stale_groups(
    h5_path: Path, images: list[tuple[Path, str]], record: dict[str, Any]
) -> list[tuple[str, str]]:
    """``(group name, reason)`` of the existing groups this run would not reuse."""
    import h5py

    stale = []
    try:
        with h5py.File(h5_path, "r") as h5:
            for path, name in images:
                if name in h5:
                    reason = _why_stale(_group_record(h5[name]), record, path)
                    if reason is not None:
                        stale.append((name, reason))
    except OSError as err:
        raise UserError(f"{h5_path}: cannot read HDF5 file ({err})") from None
    return stale
