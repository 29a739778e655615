"""Point tracking: two-way matching, track bookkeeping, frames/video output, bad input."""

import json

import cv2
import numpy as np
import pytest

from pipelines.tracking import PointTracker, run_tracking, two_way_matches
from utils.errors import UserError


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_two_way_matches_known_answer():
    rng = np.random.default_rng(0)
    d0 = unit(rng.normal(size=(5, 16)))
    d1 = d0[[3, 0, 4]]  # images of 3, 0, 4; 1 and 2 have no partner
    m = two_way_matches(d0, d1, nn_thresh=0.7)
    assert sorted(map(tuple, m[:, :2].astype(int).tolist())) == [(0, 1), (3, 0), (4, 2)]
    assert np.allclose(m[:, 2], 0, atol=1e-3)
    far = unit(rng.normal(size=(3, 16)))
    assert len(two_way_matches(d0, far, nn_thresh=0.1)) == 0
    assert two_way_matches(d0, np.zeros((0, 16)), 0.7).shape == (0, 3)


def test_tracker_follows_points_and_counts():
    rng = np.random.default_rng(1)
    desc = unit(rng.normal(size=(6, 32)))
    tracker = PointTracker(nn_thresh=0.7, max_length=3)
    base = rng.uniform(10, 50, size=(6, 2))
    for frame in range(4):
        keep = slice(0, 6) if frame < 3 else slice(0, 4)  # 2 points vanish at frame 3
        alive = tracker.update(base[keep] + frame, desc[keep])
    assert len(alive) == 4
    assert all(len(t.points) == 4 for t in alive)
    assert alive[0].points[-1][1:] == pytest.approx(tuple(base[0] + 3))
    stats = tracker.stats()
    assert stats["frames"] == 4 and stats["num_tracks"] == 6
    assert stats["mean_track_length"] == pytest.approx((4 * 4 + 2 * 3) / 6)
    assert stats["mean_tracks_per_frame"] == pytest.approx((0 + 6 + 6 + 4) / 4)


class ShiftExtractor:
    """Fake extractor: fixed descriptors at the bright dots of the frame."""

    grayscale = True

    def __init__(self, n):
        self.desc = unit(np.random.default_rng(2).normal(size=(n, 8)))

    def __call__(self, image):
        ys, xs = np.nonzero(image > 128)
        order = np.argsort(xs * 1000 + ys)
        pts = np.stack([xs[order], ys[order]], 1).astype(np.float32)
        return {"keypoints": pts, "descriptors": self.desc[: len(pts)]}


def make_frames(folder, count=5):
    folder.mkdir()
    for t in range(count):
        frame = np.zeros((48, 64), np.uint8)
        for k in range(3):
            frame[10 + 10 * k, 5 + 15 * k + t] = 255
        cv2.imwrite(str(folder / f"{t:03d}.png"), frame)


def test_run_tracking_on_frames_writes_frames_and_stats(tmp_path):
    make_frames(tmp_path / "frames")
    stats = run_tracking(
        tmp_path / "frames", ShiftExtractor(3), tmp_path / "out", progress=False
    )
    assert stats["frames"] == 5 and stats["num_tracks"] == 3
    assert stats["mean_track_length"] == 5
    assert len(list((tmp_path / "out").glob("*.png"))) == 5
    saved = json.loads((tmp_path / "out" / "track_stats.json").read_text())
    assert saved["mean_track_length"] == 5


def test_run_tracking_video_in_and_out(tmp_path):
    make_frames(tmp_path / "frames", 4)
    video = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write MJPG here")
    for path in sorted((tmp_path / "frames").glob("*.png")):
        writer.write(cv2.imread(str(path)))
    writer.release()
    stats = run_tracking(video, ShiftExtractor(3), tmp_path / "out.avi", progress=False)
    assert stats["frames"] == 4
    assert (tmp_path / "out.avi").stat().st_size > 0
    assert (tmp_path / "out_track_stats.json").is_file()
    assert not list(tmp_path.glob(".out.*"))


def test_bad_sources(tmp_path):
    with pytest.raises(UserError, match="not found"):
        run_tracking(tmp_path / "missing.mp4", ShiftExtractor(1), tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        run_tracking(tmp_path / "empty", ShiftExtractor(1), tmp_path / "o")
    (tmp_path / "junk.mp4").write_bytes(b"nothing")
    with pytest.raises(UserError, match="junk.mp4"):
        run_tracking(tmp_path / "junk.mp4", ShiftExtractor(1), tmp_path / "o")


def test_track_main_with_sift_on_real_frames(tmp_path, capsys):
    import skimage.data

    from pipelines.tracking import track_main

    frames = tmp_path / "frames"
    frames.mkdir()
    base = cv2.resize(skimage.data.camera(), (160, 120), interpolation=cv2.INTER_AREA)
    for t in range(3):
        shifted = np.roll(base, 2 * t, axis=1)
        cv2.imwrite(str(frames / f"{t:03d}.png"), shifted)
    out = tmp_path / "tracks"
    args = ["--video", str(frames), "--model", "sift", "--out", str(out)]
    assert track_main(args) == 0
    assert "mean_track_length" in capsys.readouterr().out
    stats = json.loads((out / "track_stats.json").read_text())
    assert stats["frames"] == 3 and stats["mean_track_length"] >= 2
    assert track_main(["--video", str(tmp_path / "none"), "--model", "sift",
                       "--out", str(out)]) == 2  # fmt: skip


def test_extract_cli_tracks_a_frame_folder_with_sift(tmp_path, capsys):
    import skimage.data

    import extract

    frames = tmp_path / "frames"
    frames.mkdir()
    base = skimage.data.camera()[100:260, 100:340]
    for i in range(4):  # the scene moves 2 px right per frame
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.roll(base, 2 * i, axis=1))
    out = tmp_path / "tracks"
    code = extract.main(
        ["--model", "sift", "--video", str(frames), "--track", "--out", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    stats = json.loads((out / "track_stats.json").read_text())
    assert stats["mean_track_length"] > 2.0
    assert len(list(out.glob("*.png"))) == 4
    assert (
        extract.main(
            [
                "--model",
                "sift",
                "--video",
                str(tmp_path / "nope"),
                "--track",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
