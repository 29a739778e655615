"""Point tracking on a video with any keypoint extractor.

As MagicLeap's ``demo_superpoint.py``: every frame is described, its points are matched to
the previous frame's by two-way nearest neighbours in descriptor space (kept when the L2
distance of the unit descriptors is below ``nn_thresh``, 0.7), matched points extend their
track and unmatched points start new ones. A track is drawn with its last ``max_length``
positions while it is alive; it ends when its point is not matched in the next frame.

Output: annotated frames (a folder of PNGs) or a video (``.mp4``/``.avi``), and
``track_stats.json``: frames, mean keypoints, matches and live tracks per frame, the mean
and maximum length of tracks (tracks of at least 2 frames), and the number of tracks.

The extractor is any callable ``(uint8 image) -> {"keypoints": (N, 2), "descriptors":
(N, D), ...}`` as built by ``models.extractor.build_extractor`` (learned models, SIFT, ORB).
Entry points: :func:`run_tracking` (for ``extract.py --video ... --track``) and
:func:`track_main` (``python -m pipelines.tracking --help``).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engine.devices import add_device_argument, add_precision_argument
from utils.arguments import ArgumentParser
from utils.errors import UserError, run_cli

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff")


def two_way_matches(
    desc0: np.ndarray, desc1: np.ndarray, nn_thresh: float = 0.7
) -> np.ndarray:
    """Mutual nearest neighbours of unit descriptors with L2 distance < ``nn_thresh``.

    Args:
        desc0: ``(N0, D)``; desc1: ``(N1, D)``; both L2-normalised.

    Returns:
        ``(M, 3)`` float array of ``(index0, index1, distance)``.
    """
    if len(desc0) == 0 or len(desc1) == 0:
        return np.zeros((0, 3), np.float32)
    sim = np.clip(desc0.astype(np.float32) @ desc1.astype(np.float32).T, -1.0, 1.0)
    dist = np.sqrt(np.maximum(2.0 - 2.0 * sim, 0.0))
    nn01 = dist.argmin(axis=1)
    nn10 = dist.argmin(axis=0)
    idx0 = np.arange(len(desc0))
    best = dist[idx0, nn01]
    keep = (best < nn_thresh) & (nn10[nn01] == idx0)
    return np.stack([idx0[keep], nn01[keep], best[keep]], axis=1).astype(np.float32)


@dataclass
class Track:
    """One track: its id and positions ``(frame, x, y)``."""

    track_id: int
    points: list[tuple[int, float, float]] = field(default_factory=list)


class PointTracker:
    """Frame-to-frame tracks from two-way NN matches (see module docstring).

    Args:
        nn_thresh: descriptor distance threshold.
        max_length: number of recent positions drawn per track.
    """

    def __init__(self, nn_thresh: float = 0.7, max_length: int = 5):
        self.nn_thresh, self.max_length = nn_thresh, max_length
        self.frame = -1
        self.next_id = 0
        self.prev_desc: np.ndarray | None = None
        self.prev_tracks: list[Track] = []
        self.finished: list[Track] = []
        self.keypoints_per_frame: list[int] = []
        self.matches_per_frame: list[int] = []
        self.live_per_frame: list[int] = []

    def update(self, keypoints: np.ndarray, descriptors: np.ndarray) -> list[Track]:
        """Add one frame's points; returns the tracks alive in this frame.

        Args:
            keypoints: ``(N, 2)`` (x, y); descriptors: ``(N, D)`` L2-normalised.
        """
        self.frame += 1
        keypoints = np.asarray(keypoints, np.float32).reshape(-1, 2)
        descriptors = np.asarray(descriptors, np.float32).reshape(len(keypoints), -1)
        tracks: list[Track | None] = [None] * len(keypoints)
        matched = np.zeros((0, 3), np.float32)
        if self.prev_desc is not None:
            matched = two_way_matches(self.prev_desc, descriptors, self.nn_thresh)
        continued = set()
        for i0, i1, _ in matched:
            track = self.prev_tracks[int(i0)]
            tracks[int(i1)] = track
            continued.add(id(track))
        self.finished += [t for t in self.prev_tracks if id(t) not in continued]
        for i, (x, y) in enumerate(keypoints):
            if tracks[i] is None:
                tracks[i] = Track(self.next_id)
                self.next_id += 1
            tracks[i].points.append((self.frame, float(x), float(y)))
        self.prev_tracks = [t for t in tracks if t is not None]
        self.prev_desc = descriptors
        self.keypoints_per_frame.append(len(keypoints))
        self.matches_per_frame.append(len(matched))
        alive = [t for t in self.prev_tracks if len(t.points) >= 2]
        self.live_per_frame.append(len(alive))
        return alive

    def stats(self) -> dict:
        """Track statistics over everything seen so far (see module docstring)."""
        lengths = [len(t.points) for t in self.finished + self.prev_tracks]
        lengths = [n for n in lengths if n >= 2]

        def mean(values: list[int]) -> float:
            return float(np.mean(values)) if values else 0.0

        return {
            "frames": self.frame + 1,
            "mean_keypoints_per_frame": mean(self.keypoints_per_frame),
            "mean_matches_per_frame": mean(self.matches_per_frame),
            "mean_tracks_per_frame": mean(self.live_per_frame),
            "num_tracks": len(lengths),
            "mean_track_length": mean(lengths),
            "max_track_length": max(lengths) if lengths else 0,
        }


def draw_tracks(
    image: np.ndarray, keypoints: np.ndarray, tracks: list[Track], max_length: int
) -> np.ndarray:
    """BGR frame with keypoints (red) and the recent path of each live track.

    A track's colour encodes its age (longer tracks warmer), as a JET colormap index.
    """
    canvas = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    canvas = np.ascontiguousarray(canvas.copy())
    for x, y in np.asarray(keypoints).reshape(-1, 2):
        cv2.circle(canvas, (int(round(x)), int(round(y))), 1, (0, 0, 255), -1)
    for track in tracks:
        recent = track.points[-max_length:]
        age = min(len(track.points), 4 * max_length) / (4 * max_length)
        color = cv2.applyColorMap(np.array([[int(255 * age)]], np.uint8), 2)[0, 0]
        color = tuple(int(c) for c in color)
        for (_, xa, ya), (_, xb, yb) in zip(recent[:-1], recent[1:]):
            pa, pb = (int(round(xa)), int(round(ya))), (int(round(xb)), int(round(yb)))
            cv2.line(canvas, pa, pb, color, 1, cv2.LINE_AA)
        _, x, y = recent[-1]
        cv2.circle(canvas, (int(round(x)), int(round(y))), 2, color, -1, cv2.LINE_AA)
    return canvas


def read_frames(
    source: str | Path, grayscale: bool = True, max_frames: int = 0
) -> Iterator[tuple[str, np.ndarray]]:
    """Frames of a video file or of a folder of images (sorted), as uint8 arrays.

    Yields ``(name, image)``: ``(H, W)`` when ``grayscale`` else ``(H, W, 3)`` RGB.

    Raises:
        UserError: missing source, unreadable video, empty folder, corrupt frame.
    """
    from datasets.hpatches import read_image

    source = Path(source)
    count = 0
    if source.is_dir():
        files = sorted(
            p for p in source.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS
        )
        if not files:
            raise UserError(f"frames folder '{source}' holds no images")
        for path in files:
            if max_frames and count >= max_frames:
                return
            count += 1
            yield path.stem, read_image(path, gray=grayscale)
        return
    if not source.is_file():
        raise UserError(f"video '{source}' not found (a video file or frames folder)")
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise UserError(f"video '{source}' cannot be opened (unsupported or corrupt)")
    try:
        while not max_frames or count < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            code = cv2.COLOR_BGR2GRAY if grayscale else cv2.COLOR_BGR2RGB
            yield f"{count:06d}", cv2.cvtColor(frame, code)
            count += 1
    finally:
        capture.release()
    if count == 0:
        raise UserError(f"video '{source}' has no readable frame")


def run_tracking(
    source: str | Path,
    extractor: Callable[[np.ndarray], dict],
    out: str | Path,
    nn_thresh: float = 0.7,
    max_length: int = 5,
    max_frames: int = 0,
    fps: float = 15.0,
    progress: bool = True,
) -> dict:
    """Track points through a video and write annotated output and statistics.

    Args:
        source: video file or folder of frames.
        extractor: ``(uint8 image) -> {"keypoints", "descriptors", ...}``; its
            ``grayscale`` attribute (default True) selects the frame format.
        out: a folder (annotated PNG frames + ``track_stats.json`` inside) or a video
            path ending in .mp4/.avi (stats written next to it as
            ``<stem>_track_stats.json``).
        nn_thresh: descriptor distance threshold of two-way matching.
        max_length: positions drawn per track.
        max_frames: stop after this many frames (0: all).
        fps: frame rate of an output video.
        progress: show a tqdm bar.

    Returns:
        The statistics dict (also written as JSON).
    """
    from tqdm import tqdm

    from utils.io import atomic_write_image, atomic_write_text, ensure_writable_dir

    out = Path(out)
    as_video = out.suffix.lower() in VIDEO_EXTENSIONS
    grayscale = bool(getattr(extractor, "grayscale", True))
    # The first frame is read before anything is created: a missing, empty or corrupt
    # source leaves no output folder behind.
    frames = read_frames(source, grayscale, max_frames)
    first = next(frames)
    folder = ensure_writable_dir(out.parent if as_video else out)
    stats_path = (
        folder / f"{out.stem}_track_stats.json"
        if as_video
        else out / "track_stats.json"
    )
    tracker = PointTracker(nn_thresh, max_length)
    writer = None
    tmp_video = None
    try:
        for name, image in tqdm(
            itertools.chain([first], frames),
            desc="tracking",
            disable=not progress,
            leave=False,
        ):
            feats = extractor(image)
            if feats.get("descriptors") is None:
                raise UserError("tracking needs descriptors; the extractor has none")
            keypoints = np.asarray(feats["keypoints"], np.float32).reshape(-1, 2)
            desc = np.asarray(feats["descriptors"], np.float32)
            norms = np.linalg.norm(desc, axis=1, keepdims=True)
            desc = desc / np.maximum(norms, 1e-12)
            alive = tracker.update(keypoints, desc)
            shown = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            canvas = draw_tracks(shown, keypoints, alive, max_length)
            if as_video:
                if writer is None:
                    fd, tmp_video = tempfile.mkstemp(
                        dir=folder, prefix=f".{out.stem}.", suffix=out.suffix
                    )
                    os.close(fd)
                    fourcc = "mp4v" if out.suffix.lower() != ".avi" else "MJPG"
                    h, w = canvas.shape[:2]
                    writer = cv2.VideoWriter(
                        tmp_video, cv2.VideoWriter_fourcc(*fourcc), fps, (w, h)
                    )
                    if not writer.isOpened():
                        raise UserError(f"cannot write video '{out}' (codec {fourcc})")
                writer.write(canvas)
            else:
                atomic_write_image(out / f"{name}.png", canvas)
        if writer is not None:
            writer.release()
            writer = None
            os.replace(tmp_video, out)
            tmp_video = None
    finally:
        if writer is not None:
            writer.release()
        if tmp_video is not None and os.path.exists(tmp_video):
            os.unlink(tmp_video)
    stats = {
        **tracker.stats(),
        "nn_thresh": nn_thresh,
        "max_length": max_length,
        "source": str(source),
    }
    atomic_write_text(stats_path, json.dumps(stats, indent=2) + "\n")
    return stats


def track_main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m pipelines.tracking --video FILE|DIR --model M --out OUT``."""
    parser = ArgumentParser(
        prog="python -m pipelines.tracking",
        description="Track keypoints through a video (two-way NN descriptor matching) "
        "and write annotated frames or a video plus track statistics.",
    )
    parser.add_argument("--video", required=True, help="video file or frames folder")
    parser.add_argument("--model", required=True, help="checkpoint path, sift or orb")
    parser.add_argument("--out", required=True, help="output folder or .mp4/.avi file")
    parser.add_argument(
        "--nn-thresh",
        type=float,
        default=0.7,
        help="largest descriptor distance of a two-way match",
    )
    parser.add_argument(
        "--max-length", type=int, default=5, help="positions drawn per track"
    )
    parser.add_argument("--max-frames", type=int, default=0, help="0: all frames")
    add_device_argument(parser)
    add_precision_argument(
        parser, None, note="learned models; default fp32, as the references"
    )
    parser.add_argument(
        "--fps", type=float, default=15.0, help="frame rate of a video output"
    )
    parser.add_overrides(
        "model options, e.g. nms_radius=4 detection_threshold=0.005 (as extract.py)"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        from models.extractor import build_extractor
        from utils.config import parse_overrides

        conf = parse_overrides(args.overrides)
        if args.precision is not None:
            conf["precision"] = args.precision
        extractor = build_extractor(args.model, args.device, conf)
        stats = run_tracking(
            args.video,
            extractor,
            args.out,
            args.nn_thresh,
            args.max_length,
            args.max_frames,
            args.fps,
        )
        summary = ", ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in stats.items()
            if k not in ("source",)
        )
        print(f"tracking: {summary}")
        return 0

    return run_cli(run, "python -m pipelines.tracking")


__all__ = [
    "PointTracker",
    "Track",
    "draw_tracks",
    "read_frames",
    "run_tracking",
    "track_main",
    "two_way_matches",
]

if __name__ == "__main__":
    sys.exit(track_main())
