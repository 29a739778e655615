"""One override grammar: every command that reads a configuration takes ``key=value``.

Two tables over the same commands (every ``train_*.py``, ``extract.py`` and tracking, every
``evaluation.py`` and ``export.py`` sub-command):

* each command runs with a ``key=value`` override, and the value is found where the
  command records it (run config, provenance record, summary); floats are written in the
  notations YAML 1.1 reads as strings (``5e-4``, ``1E-3``) and ``.5``, and one run reads
  ``lr: 5e-4`` from its YAML file;
* each command given a misspelled key fails with exit code 2 and one stderr line that
  names the closest key, before doing any work.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import yaml

import data_gen
from engine.state import latest_checkpoint
from tests import test_inversion_train as inversion
from tests import test_train_3d as pointcloud
from tests import test_train_r2d2 as r2d2
from tests import test_train_superpoint as superpoint
from tests.commands import command_id, run_command
from tests.helpers import write_photos
from utils.io import atomic_torch_save

LR = "train.lr=5e-4"


@dataclass(frozen=True)
class Row:
    """``command`` run with ``args`` (``{name}`` filled from the work fixture); for a
    valid override ``check(work, out)`` finds the value where the command records it,
    for a misspelled key ``message`` is in the one error line."""

    command: tuple[str, ...]
    args: tuple[str, ...]
    check: Callable[[dict, Path], bool] | None = None
    message: str = ""

    @property
    def id(self) -> str:
        return command_id(self.command)


def fill(args: tuple[str, ...], work: dict[str, Any]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in work.items()}) for a in args]


def tiny_magicpoint(path: Path) -> Path:
    from models import build_model

    conf = {"name": "magicpoint", "channels": [8, 8, 16, 16], "head_channels": 16}
    torch.manual_seed(0)
    atomic_torch_save(
        {"model": build_model(conf).state_dict(), "config": {"model": conf}}, path
    )
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Any]:
    """Inputs of every row: photos, frames, a demo HPatches set, depth maps, small
    checkpoints; the five training runs (one step each, with their override) are the
    ``train_*.py`` rows and give the inversion and R2D2 checkpoints."""
    import train_3d
    import train_r2d2
    import train_reconstruct
    import train_refine
    import train_superpoint
    from datasets.hpatches_demo import generate
    from tests.test_eval_pointcloud import constant_model, save

    root = tmp_path_factory.mktemp("overrides")
    photos = write_photos(root / "photos", ("chelsea", "coffee", "rocket"))
    (photos / "list.txt").write_text("chelsea.png\ncoffee.png\nrocket.png\n")
    logs = root / "logs"
    frames = root / "frames"
    frames.mkdir()
    base = cv2.resize(cv2.imread(str(photos / "coffee.png")), (96, 64))
    for t in range(3):
        cv2.imwrite(str(frames / f"{t:03d}.png"), np.roll(base, 2 * t, axis=1))
    hpatches = root / "hp"
    generate("builtin", hpatches, num_sequences=1, max_size=64, kinds="v")
    assert data_gen.main(
        ["pointclouds", "--procedural", "2", "--size", "24,32", "--seed", "5",
         "--out", str(root / "depth")]
    ) == 0  # fmt: skip

    # The README's example, written in the YAML file: lr: 5e-4.
    text = Path(superpoint.CONFIG).read_text()
    assert "  lr: 0.001\n" in text
    config = root / "magicpoint.yaml"
    config.write_text(text.replace("  lr: 0.001\n", "  lr: 5e-4\n"))
    empty = root / "empty.yaml"
    empty.write_text("")
    one = ["train.max_steps=1", "--logdir", str(logs)]
    assert train_superpoint.main([str(config), *superpoint.SHRINK, *one]) == 0
    r2d2_args = r2d2.args(str(photos), logs, "r2d2", LR, "train.max_steps=1")
    assert train_r2d2.main(r2d2_args) == 0
    focal = "configs/pointcloud_focal.yaml"
    args_3d = [focal, "--exp", "pc", *pointcloud.SHRINK, *pointcloud.POINTNET]
    assert train_3d.main([*args_3d, LR, *one]) == 0
    coarse_args = inversion.coarse_args(str(photos), logs, "coarse", LR, one[0])
    assert train_reconstruct.main(coarse_args) == 0
    coarse = latest_checkpoint(logs / "coarse")
    refine_args = inversion.refine_args(str(photos), logs, "refine", coarse, LR)
    assert train_refine.main([*refine_args, one[0]]) == 0
    return {
        "root": root,
        "logs": logs,
        "photos": photos,
        "frames": frames,
        "hp": hpatches,
        "depth": root / "depth",
        "config": config,
        "empty": empty,
        "mp": tiny_magicpoint(root / "mp.pt"),
        "r2d2": latest_checkpoint(logs / "r2d2"),
        "coarse": coarse,
        "focal": save(constant_model("focal", 1.1), root / "focal.pt"),
        "shift": save(constant_model("shift", 0.05), root / "shift.pt"),
    }


def run_config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def provenance(path: Path) -> dict:
    from datasets.features import read_provenance

    return read_provenance(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def train_lr(exp: str) -> Callable[[dict, Path], bool]:
    def check(work: dict, out: Path) -> bool:
        lr = run_config(work["logs"] / exp)["train"]["lr"]
        return isinstance(lr, float) and lr == 5e-4

    return check


def tracked_at_most(count: int) -> Callable[[dict, Path], bool]:
    def check(work: dict, out: Path) -> bool:
        stats = read_json(out / "track_stats.json")
        return 0 < stats["mean_keypoints_per_frame"] <= count

    return check


def hpatches_check(work: dict, out: Path) -> bool:
    summary = read_json(out / "summary.json")
    preset = summary["preset"]
    return (
        preset["name"] == "d2net[top_k=20,mma_thresholds=[1,2.5]]"
        and preset["mma_thresholds"] == [1.0, 2.5]
        and 0 < summary["results"]["all"]["num_features"] <= 20
    )


def shapes_check(work: dict, out: Path) -> bool:
    protocol = read_json(out / "results.json")["protocol"]
    return (protocol["nms_radius"], protocol["floor"], protocol["variants"]) == (
        2,
        0.001,
        ["clean"],
    )


def inversion_check(work: dict, out: Path) -> bool:
    summary = read_json(out / "summary.json")
    keeps = [r["keep"] for r in summary["results"]]
    return summary["max_points"] == 20 and keeps == [0.5, 1.0]


def ha_check(work: dict, out: Path) -> bool:
    export = yaml.safe_load((out / "export_config.yaml").read_text())["export"]
    return export["num_homographies"] == 2 and export["detection_threshold"] == 0.005


def onnx_opset(path: Path) -> int:
    import onnx

    return onnx.load(str(path)).opset_import[0].version


VALID = [
    Row(("train_superpoint.py",), (), train_lr("magicpoint")),
    Row(("train_r2d2.py",), (), train_lr("r2d2")),
    Row(("train_3d.py",), (), train_lr("pc")),
    Row(("train_reconstruct.py",), (), train_lr("coarse")),
    Row(("train_refine.py",), (), train_lr("refine")),
    Row(
        ("extract.py",),
        ("--model", "{mp}", "--images", "{photos}/chelsea.png", "--out-dir", "{out}")
        + ("--tag", "mp", "nms_radius=2", "detection_threshold=1E-3"),
        lambda w, out: (
            provenance(out / "chelsea.png.mp")["options"]
            == {"nms_radius": 2, "detection_threshold": 0.001, "precision": "fp32"}
        ),
    ),
    Row(
        ("extract.py",),
        ("--model", "{r2d2}", "--images", "{photos}/coffee.png", "--out-dir", "{out}")
        + ("--tag", "r2", "reliability_thr=.5", "repeatability_thr=0", "min_size=32"),
        lambda w, out: (
            provenance(out / "coffee.png.r2")["options"]["reliability_thr"] == 0.5
        ),
    ),
    Row(
        ("extract.py",),
        ("--model", "sift", "--video", "{frames}", "--track", "--out", "{out}")
        + ("top_k=20",),
        tracked_at_most(20),
    ),
    Row(
        ("-m", "pipelines.tracking"),
        ("--model", "sift", "--video", "{frames}", "--out", "{out}", "top_k=20"),
        tracked_at_most(20),
    ),
    Row(
        ("evaluation.py", "hpatches"),
        ("--data", "{hp}", "--preset", "d2net", "--model", "sift", "--out", "{out}")
        + ("--num-match-plots", "0", "top_k=20", "mma_thresholds=[1,2.5]"),
        hpatches_check,
    ),
    Row(
        ("evaluation.py", "synthetic_shapes"),
        ("--checkpoint", "{mp}", "--out", "{out}", "num_images=1", "nms_radius=2")
        + ("variants=[clean]", "floor=1E-3", "--device", "cpu"),
        shapes_check,
    ),
    Row(
        ("evaluation.py", "pointcloud"),
        ("--focal-model", "{focal}", "--shift-model", "{shift}", "--depth", "{depth}")
        + ("--out", "{out}", "fov_init=5e1", "draws=1"),
        lambda w, out: read_json(out / "summary.json")["fov_init"] == 50.0,
    ),
    Row(
        ("evaluation.py", "inversion"),
        ("--checkpoint", "{coarse}", "--images", "{photos}", "--model", "sift")
        + ("--out", "{out}", "max_points=20", "keep=[.5,1]", "grids=0")
        + ("extractor_conf.top_k=30",),
        inversion_check,
    ),
    Row(
        ("export.py", "homography_adaptation"),
        ("configs/magicpoint_coco_export.yaml", "--images", "{photos}", "--out")
        + ("{out}", "--checkpoint", "{mp}", "data.layout=folder")
        + ("export.num_homographies=2", "export.detection_threshold=5e-3")
        + ("export.precision=fp32",),
        ha_check,
    ),
    Row(
        ("export.py", "onnx"),
        ("--checkpoint", "{mp}", "--out", "{out}/mp.onnx", "height=64", "opset=17"),
        lambda w, out: onnx_opset(out / "mp.onnx") == 17,
    ),
    Row(
        ("export.py", "reconstruct"),
        ("--checkpoint", "{coarse}", "--images", "{photos}", "--model", "sift")
        + ("--out", "{out}", "size=48", "keep=.5"),
        lambda w, out: min(cv2.imread(str(out / "chelsea.png")).shape[:2]) == 48,
    ),
]


@pytest.mark.parametrize("row", VALID, ids=[r.id for r in VALID])
def test_every_command_takes_key_value_overrides(row, work, tmp_path, capsys):
    """The ``train_*.py`` rows ran in the fixture (their checkpoints feed the others)."""
    out = tmp_path / "out"
    if row.args:
        code = run_command(row.command, fill(row.args, {**work, "out": out}))
        err = capsys.readouterr().err
        assert code == 0, err
    assert row.check(work, out)


MISSPELLED = [
    Row(
        (script,),
        ("{empty}", "train.lrr=1", "--logdir", "{out}"),
        message="'train.lrr'; did you mean 'train.lr'?",
    )
    for script in (
        "train_superpoint.py",
        "train_r2d2.py",
        "train_3d.py",
        "train_reconstruct.py",
        "train_refine.py",
    )
] + [
    Row(
        ("extract.py",),
        ("--model", "{mp}", "--images", "{photos}", "nms_radious=2"),
        message="'nms_radious'; did you mean 'nms_radius'?",
    ),
    Row(
        ("extract.py",),
        ("--model", "{r2d2}", "--images", "{photos}", "reliability_th=0.5"),
        message="'reliability_th'; did you mean 'reliability_thr'?",
    ),
    Row(
        ("extract.py",),
        ("--model", "sift", "--images", "{photos}", "topk=5"),
        message="'topk'; did you mean 'top_k'?",
    ),
    Row(
        ("extract.py",),
        ("--model", "sift", "--video", "{frames}", "--track", "--out", "{out}")
        + ("topk=5",),
        message="'topk'; did you mean 'top_k'?",
    ),
    Row(
        ("-m", "pipelines.tracking"),
        ("--model", "{mp}", "--video", "{frames}", "--out", "{out}", "nms_radios=2"),
        message="'nms_radios'; did you mean 'nms_radius'?",
    ),
    Row(
        ("evaluation.py", "hpatches"),
        ("--data", "{hp}", "--model", "sift", "--out", "{out}", "topk=5"),
        message="'topk'; did you mean 'top_k'?",
    ),
    Row(
        ("evaluation.py", "synthetic_shapes"),
        ("--checkpoint", "{mp}", "--out", "{out}", "nms_radios=2"),
        message="'nms_radios'; did you mean 'nms_radius'?",
    ),
    Row(
        ("evaluation.py", "pointcloud"),
        ("--focal-model", "{focal}", "--shift-model", "{shift}", "--depth", "{depth}")
        + ("--out", "{out}", "fov_int=50"),
        message="'fov_int'; did you mean 'fov_init'?",
    ),
    Row(
        ("evaluation.py", "inversion"),
        ("--checkpoint", "{coarse}", "--images", "{photos}", "--out", "{out}")
        + ("max_point=20",),
        message="'max_point'; did you mean 'max_points'?",
    ),
    Row(
        ("export.py", "homography_adaptation"),
        ("configs/magicpoint_coco_export.yaml", "--images", "{photos}", "--out")
        + ("{out}", "export.num_homography=2"),
        message="'export.num_homography'; did you mean 'export.num_homographies'?",
    ),
    Row(
        ("export.py", "onnx"),
        ("--checkpoint", "{mp}", "--out", "{out}/mp.onnx", "opsett=17"),
        message="'opsett'; did you mean 'opset'?",
    ),
    Row(
        ("export.py", "reconstruct"),
        ("--checkpoint", "{coarse}", "--images", "{photos}", "--out", "{out}")
        + ("keeep=0.5",),
        message="'keeep'; did you mean 'keep'?",
    ),
]


@pytest.mark.parametrize("row", MISSPELLED, ids=[r.id for r in MISSPELLED])
def test_a_misspelled_key_is_one_line_naming_the_closest(row, work, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    code = run_command(row.command, fill(row.args, {**work, "out": out}))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(err) == 1 and row.message in err[0], err
    assert not out.exists()


def test_floats_in_every_python_notation():
    """On the command line and in YAML files, wherever a float is expected."""
    from utils.config import load_config, load_yaml, parse_overrides

    for text, value in (("5e-4", 5e-4), ("1E3", 1e3), (".5", 0.5), ("-2.5E-2", -0.025)):
        assert parse_overrides([f"train.lr={text}"]) == {"train": {"lr": value}}
        assert load_yaml(f"lr: {text}") == {"lr": value}
    assert load_yaml("tag: 5e3x") == {"tag": "5e3x"}
    defaults = {"train": {"lr": 1e-3, "name": "x"}}
    assert load_config(None, ["train.lr=5e-4"], defaults)["train"]["lr"] == 5e-4


def test_the_config_reader_is_a_safe_loader():
    """yaml.safe_load, then exponent floats: no Python objects."""
    import yaml

    from utils.config import load_yaml

    with pytest.raises(yaml.constructor.ConstructorError):
        load_yaml("x: !!python/object/apply:os.getcwd []")
    assert load_yaml("x: [1, {a: b}]") == yaml.safe_load("x: [1, {a: b}]")
