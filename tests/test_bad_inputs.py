"""Bad input to any command: one line on stderr, exit code 2, no traceback, nothing written.

One table (one parametrised test) runs each command as the shell would (``tests/commands.py``)
on tiny bad inputs: a missing file, a corrupt image, a wrong config key and type, a mismatched
or truncated checkpoint, a malformed homography, an empty folder. Every file and folder under
the test's inputs and outputs is compared before and after: a failing command leaves nothing,
not even an empty output folder or a temporary file.

Rows are generated where a case is generic: every ``train_*.py`` gets the config and checkpoint
cases, and every command (each script, each ``COMMANDS`` entry, each ``python -m`` module) gets
an unknown option. So commands added later are covered when they land.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from datasets.hpatches_demo import generate
from models import build_model
from tests.commands import ROOT, all_commands, command_id, run_command
from tests.test_train_superpoint import CONFIG, SHRINK

TINY = {"name": "magicpoint", "channels": [8, 8, 16, 16], "head_channels": 16}
OTHER = {"name": "magicpoint", "channels": [4, 4, 8, 8], "head_channels": 8}
CORRUPT = "not a readable PyTorch checkpoint (truncated or corrupt)"


@dataclass(frozen=True)
class Case:
    """One row: ``command`` run with ``args`` (``{in}``/``{out}`` filled in) must fail
    with one stderr line containing ``message``."""

    command: tuple[str, ...]
    kind: str
    args: tuple[str, ...]
    message: str

    @property
    def id(self) -> str:
        return f"{command_id(self.command)}: {self.kind}"


def train_cases(script: str) -> list[Case]:
    """The config and checkpoint cases every ``train_*.py`` must handle alike."""
    cmd = (script,)
    logdir = ("--logdir", "{out}/logs")
    empty = "{in}/empty.yaml"
    return [
        Case(cmd, "missing file", ("{in}/nope.yaml", *logdir), "nope.yaml' not found"),
        Case(
            cmd,
            "wrong config key",
            (empty, "train.learning_rate=1", *logdir),
            "unknown config key 'train.learning_rate'; did you mean 'train.lr'?",
        ),
        Case(
            cmd,
            "wrong config type",
            (empty, "train.max_steps=many", *logdir),
            "config key 'train.max_steps' expects int",
        ),
        Case(
            cmd,
            "truncated checkpoint (--resume)",
            (empty, "--resume", "{in}/truncated.pt", *logdir),
            f"truncated.pt: {CORRUPT}",
        ),
        Case(
            cmd,
            "truncated checkpoint (init_weights)",
            (empty, "train.init_weights={in}/random.pt", *logdir),
            f"random.pt: {CORRUPT}",
        ),
        Case(
            cmd,
            "foreign checkpoint (--resume)",
            (empty, "--resume", "{in}/good.pt", *logdir),
            "good.pt: not a train_*.py checkpoint (no 'optimizer' state)",
        ),
    ]


def specific_cases() -> list[Case]:
    """Rows that need to know a command's inputs."""
    train = ("train_superpoint.py",)
    extract = ("extract.py",)
    hpatches = ("evaluation.py", "hpatches")
    shapes = ("evaluation.py", "synthetic_shapes")
    ha = ("export.py", "homography_adaptation")
    onnx = ("export.py", "onnx")
    demo = ("data_gen.py", "hpatches_demo")
    gen = ("data_gen.py", "synthetic_shapes")
    pointcloud = ("evaluation.py", "pointcloud")
    clouds = ("data_gen.py", "pointclouds")
    hp = ("--preset", "d2net", "--out", "{out}/eval", "--num-match-plots", "0")
    hp_sift = ("--model", "sift", *hp)
    ha_args = ("configs/magicpoint_coco_export.yaml", "--out", "{out}/ha")
    ha_args += ("data.layout=folder", "export.num_homographies=2")
    onnx_out = ("--out", "{out}/model.onnx")
    return [
        Case(
            train,
            "mismatched checkpoint (--resume)",
            (CONFIG, *SHRINK, "--logdir", "{out}/logs", "train.max_steps=1")
            + ("--resume", "{in}/other.pt"),
            "does not match the model: tensor 'conv1a.0.weight' has shape (4, 1, 3, 3)",
        ),
        Case(
            train,
            "mismatched checkpoint (init_weights)",
            (CONFIG, *SHRINK, "--logdir", "{out}/logs", "train.max_steps=1")
            + ("train.init_weights={in}/narrow.pt",),
            "do not match the model: key 'conv1a.0.weight' has shape (4, 1, 3, 3)",
        ),
        Case(
            extract,
            "missing file",
            ("--model", "sift", "--images", "{in}/nope.png", "--out-dir", "{out}/f"),
            "nope.png: no such image, list or folder",
        ),
        Case(
            extract,
            "corrupt image",
            ("--model", "sift", "--images", "{in}/corrupt", "--out-dir", "{out}/f"),
            "corrupt.png: cannot decode image",
        ),
        Case(
            extract,
            "empty folder",
            ("--model", "sift", "--images", "{in}/empty", "--out-dir", "{out}/f"),
            "no images found in",
        ),
        Case(
            extract,
            "truncated checkpoint",
            ("--model", "{in}/truncated.pt", "--images", "{in}/images"),
            f"truncated.pt: {CORRUPT}",
        ),
        Case(
            extract,
            "mismatched checkpoint",
            ("--model", "{in}/x.pt", "--images", "{in}/images", "--out-dir", "{out}/f"),
            "do not match the model: key 'conv1a.0.weight' has shape",
        ),
        Case(
            extract,
            "wrong config key",
            ("--model", "{in}/good.pt", "--images", "{in}/images", "nms_radios=2"),
            "unknown config key 'nms_radios'; did you mean 'nms_radius'?",
        ),
        Case(
            extract,
            "wrong config type",
            ("--model", "{in}/good.pt", "--images", "{in}/images")
            + ("nms_radius=wide",),
            "config key 'nms_radius' expects int",
        ),
        Case(
            hpatches,
            "missing file",
            ("--data", "{in}/nope", *hp_sift),
            "nope: HPatches folder does not exist",
        ),
        Case(
            hpatches,
            "corrupt image",
            ("--data", "{in}/hp_corrupt", *hp_sift),
            "v_astronaut/1.ppm: cannot decode image",
        ),
        Case(
            hpatches,
            "malformed homography",
            ("--data", "{in}/hp_malformed", *hp_sift),
            "v_astronaut/H_1_3: malformed homography",
        ),
        Case(
            hpatches,
            "empty folder",
            ("--data", "{in}/empty", *hp_sift),
            "no HPatches sequences",
        ),
        Case(
            hpatches,
            "truncated checkpoint",
            ("--data", "{in}/hp", "--model", "{in}/truncated.pt", *hp),
            f"truncated.pt: {CORRUPT}",
        ),
        Case(
            hpatches,
            "mismatched checkpoint",
            ("--data", "{in}/hp", "--model", "{in}/x.pt", *hp),
            "do not match the model: key 'conv1a.0.weight'",
        ),
        Case(
            hpatches,
            "wrong config key",
            ("--data", "{in}/hp", *hp_sift, "topk=5"),
            "unknown config key 'topk'; did you mean 'top_k'?",
        ),
        Case(
            hpatches,
            "wrong config type",
            ("--data", "{in}/hp", *hp_sift, "top_k=many"),
            "config key 'top_k' expects int or null, got 'many'",
        ),
        Case(
            hpatches,
            "missing file (--compare)",
            ("--data", "{in}/hp", *hp_sift, "--compare", "{in}/nope.npy"),
            "nope.npy: not a D2-Net cache",
        ),
        Case(
            shapes,
            "missing file",
            ("--checkpoint", "{in}/nope.pt", "--out", "{out}/eval"),
            "nope.pt' not found",
        ),
        Case(
            shapes,
            "truncated checkpoint",
            ("--checkpoint", "{in}/truncated.pt", "--out", "{out}/eval"),
            f"truncated.pt: {CORRUPT}",
        ),
        Case(
            shapes,
            "mismatched checkpoint",
            ("--checkpoint", "{in}/x.pt", "--out", "{out}/eval"),
            "do not match the model: key 'conv1a.0.weight'",
        ),
        Case(
            ha,
            "missing file",
            ("{in}/nope.yaml", "--out", "{out}/ha"),
            "nope.yaml' not found",
        ),
        Case(
            ha,
            "wrong config key",
            (*ha_args, "--images", "{in}/images", "export.homographys=3"),
            "unknown config key 'export.homographys'; did you mean 'export.homographies'",
        ),
        Case(
            ha,
            "wrong config type",
            (*ha_args, "--images", "{in}/images", "export.batch_size=big"),
            "config key 'export.batch_size' expects int",
        ),
        Case(
            ha,
            "empty folder",
            (*ha_args, "--images", "{in}/empty", "--checkpoint", "{in}/good.pt"),
            "no images",
        ),
        Case(
            ha,
            "truncated checkpoint",
            (*ha_args, "--images", "{in}/images", "--checkpoint", "{in}/truncated.pt"),
            f"truncated.pt: {CORRUPT}",
        ),
        Case(
            ha,
            "mismatched checkpoint",
            (*ha_args, "--images", "{in}/images", "--checkpoint", "{in}/x.pt"),
            "do not match the model: key 'conv1a.0.weight'",
        ),
        Case(
            onnx,
            "missing file",
            ("--checkpoint", "{in}/nope.pt", *onnx_out),
            "nope.pt' not found",
        ),
        Case(
            onnx,
            "truncated checkpoint",
            ("--checkpoint", "{in}/truncated.pt", *onnx_out),
            f"truncated.pt: {CORRUPT}",
        ),
        Case(
            onnx,
            "mismatched checkpoint",
            ("--checkpoint", "{in}/x.pt", *onnx_out),
            "do not match the model: key 'conv1a.0.weight'",
        ),
        Case(
            demo,
            "missing file",
            ("--images", "{in}/nope", "--out", "{out}/hp"),
            "nope: --images must be 'builtin' or an existing folder",
        ),
        Case(
            demo,
            "empty folder",
            ("--images", "{in}/empty", "--out", "{out}/hp"),
            "empty: no images",
        ),
        Case(
            demo,
            "corrupt image",
            ("--images", "{in}/corrupt", "--out", "{out}/hp"),
            "corrupt.png: cannot decode image",
        ),
        Case(
            demo,
            "wrong config type",
            ("--kinds", "x", "--out", "{out}/hp"),
            "invalid --kinds 'x'",
        ),
        Case(
            gen,
            "wrong config key",
            ("--out", "{out}/shapes", "--primitives", "draw_stars"),
            "unknown synthetic shapes primitive 'draw_stars'",
        ),
        Case(
            gen,
            "wrong config type",
            ("--out", "{out}/shapes", "--split-sizes", "train=many"),
            "train=many",
        ),
        Case(
            pointcloud,
            "missing file",
            ("--focal-model", "{in}/nope.pt", "--shift-model", "{in}/nope.pt")
            + ("--depth", "{in}/empty", "--out", "{out}/pc"),
            "nope.pt' not found",
        ),
        Case(
            pointcloud,
            "truncated checkpoint",
            ("--focal-model", "{in}/truncated.pt", "--shift-model", "{in}/truncated.pt")
            + ("--depth", "{in}/empty", "--out", "{out}/pc"),
            f"truncated.pt: {CORRUPT}",
        ),
        Case(
            clouds,
            "empty folder",
            ("--folder", "{in}/empty", "-n", "2", "--out", "{out}/clouds"),
            "holds no depth file",
        ),
        Case(
            clouds,
            "missing file",
            ("--folder", "{in}/nope", "-n", "2", "--out", "{out}/clouds"),
            "nope' is not a folder",
        ),
        Case(
            clouds,
            "wrong config type",
            ("--procedural", "1", "--size", "big", "--out", "{out}/clouds"),
            "--size 'big' is not H,W",
        ),
        Case(
            ("-m", "models.weights"),
            "missing file",
            ("{in}/nope.pt",),
            "nope.pt' not found",
        ),
        Case(
            ("-m", "models.weights"),
            "truncated checkpoint",
            ("{in}/truncated.pt",),
            f"truncated.pt: {CORRUPT}",
        ),
        Case(
            ("-m", "models.weights"),
            "mismatched checkpoint",
            ("{in}/foreign.pt",),
            "unknown weight format (first key 'encoder.weight')",
        ),
        Case(
            ("-m", "datasets.hpatches"),
            "malformed homography",
            ("--root", "{in}/hp_malformed", "--show", "--out", "{out}/grid.png"),
            "v_astronaut/H_1_3: malformed homography",
        ),
        Case(
            ("-m", "datasets.hpatches"),
            "empty folder",
            ("--root", "{in}/empty", "--show", "--out", "{out}/grid.png"),
            "no HPatches sequences",
        ),
        Case(
            ("-m", "datasets.image_folder"),
            "empty folder",
            ("--root", "{in}/empty", "--show", "--out", "{out}/grid.png"),
            "no images",
        ),
        Case(
            ("-m", "pipelines.tracking"),
            "missing file",
            ("--video", "{in}/nope.mp4", "--model", "sift", "--out", "{out}/t"),
            "nope.mp4",
        ),
        Case(
            ("-m", "pipelines.tracking"),
            "truncated checkpoint",
            ("--video", "{in}/images", "--model", "{in}/truncated.pt")
            + ("--out", "{out}/t"),
            f"truncated.pt: {CORRUPT}",
        ),
    ]


def generic_cases() -> list[Case]:
    cases = [
        c
        for s in sorted(p.name for p in ROOT.glob("train_*.py"))
        for c in train_cases(s)
    ]
    cases += [
        Case(command, "unknown option", ("--no-such-option",), "error:")
        for command in all_commands()
    ]
    return cases


CASES = generic_cases() + specific_cases()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Tiny bad (and a few good) inputs shared by every row; rows must not change them."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    tiny = build_model(TINY).state_dict()
    torch.save({"model": tiny, "config": {"model": TINY}}, root / "good.pt")
    # Weights of one width under a config of another: every loader must name the tensor.
    torch.save({"model": tiny, "config": {"model": OTHER}}, root / "x.pt")
    # A complete training checkpoint of another width, for --resume.
    other = build_model(OTHER)
    opt = torch.optim.Adam(other.parameters())
    state = {"model": other.state_dict(), "optimizer": opt.state_dict()}
    state.update(scheduler={}, scaler={}, step=2, best=None, rng={}, config={})
    torch.save(state, root / "other.pt")
    narrow = {"model": other.state_dict(), "config": {"model": OTHER}}
    torch.save(narrow, root / "narrow.pt")
    torch.save({"encoder.weight": torch.zeros(2, 2)}, root / "foreign.pt")
    data = (root / "good.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "random.pt").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "empty.yaml").write_text("{}\n")
    for name in ("images", "corrupt", "empty"):
        (root / name).mkdir()
    cv2.imwrite(str(root / "images" / "camera.png"), skimage.data.camera()[::4, ::4])
    (root / "corrupt" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    generate(
        "builtin", root / "hp", num_sequences=1, max_size=64, kinds="v", progress=False
    )
    for variant in ("hp_malformed", "hp_corrupt"):
        shutil.copytree(root / "hp", root / variant)
    (root / "hp_malformed" / "v_astronaut" / "H_1_3").write_text("1 0 0\n0 1\n0 0 1\n")
    (root / "hp_corrupt" / "v_astronaut" / "1.ppm").write_bytes(b"P6\n" + bytes(64))
    return root


def snapshot(*folders: Path) -> dict[str, int]:
    """Every path under ``folders`` with its size and modification time."""
    found = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                info = path.stat()
                found[str(path)] = (info.st_size, info.st_mtime_ns)
    return found


def terminal_lines(text: str) -> list[str]:
    """The lines a terminal would show: progress bars redraw over themselves with ``\\r``."""
    shown = [line.split("\r")[-1].strip() for line in text.split("\n")]
    return [line for line in shown if line]


def test_every_train_script_and_command_has_rows():
    commands = {c.command for c in CASES}
    assert set(all_commands()) <= commands
    assert {("train_superpoint.py",), ("train_r2d2.py",)} <= commands


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case, inputs, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    args = [
        a.replace("{in}", str(inputs)).replace("{out}", str(out)) for a in case.args
    ]
    before = snapshot(inputs, tmp_path)
    code = run_command(case.command, args)
    captured = capsys.readouterr()
    lines = terminal_lines(captured.err)
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert code == 2, f"exit code {code}; stderr: {captured.err[-500:]}"
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert case.message in lines[0], lines[0]
    assert snapshot(inputs, tmp_path) == before, "files written or changed"
