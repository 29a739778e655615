"""One precision setting: ``auto|fp32|bf16|fp16|int8`` means the same for every network.

SuperPoint and R2D2 extraction run at every precision this CPU supports (fp16 is refused
on the CPU, in one line); the provenance label of each feature file is the precision as
resolved for the device (``auto`` decided in one place, ``engine.devices``), never read
from configuration keys. Homographic adaptation labels follow the same rule, and the
inversion and point-cloud networks take the same values (no int8 path: refused by name).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import engine.devices as devices
from datasets.features import read_provenance
from extract import main as extract_main
from models.quantize import precision_label
from tests.helpers import write_photos
from utils.io import atomic_torch_save

CPU = torch.device("cpu")
# How each network's int8 path takes part in ``auto`` (engine.devices.INT8_PATHS).
INT8 = {"superpoint": "auto", "r2d2": "explicit"}


@pytest.fixture(autouse=True)
def small_calibration(monkeypatch):
    """Int8 calibrates on the same photographs at 64x80: the labels are tested here, not
    the int8 accuracy (``tests/test_quantize.py``), and it keeps the suite fast."""
    import models.quantize as quantize

    full = quantize.calibration_batch
    monkeypatch.setattr(
        quantize, "calibration_batch", lambda h, w, c=1: full(64, 80, c)
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    from models import build_model
    from models.r2d2 import R2D2

    root = tmp_path_factory.mktemp("precision")
    torch.manual_seed(0)
    conf = {
        "name": "superpoint",
        "channels": [8, 8, 16, 16],
        "head_channels": 16,
        "descriptor_dim": 16,
    }
    superpoint = root / "superpoint.pt"
    state = build_model(conf).state_dict()
    atomic_torch_save({"model": state, "config": {"model": conf}}, superpoint)
    r2d2_conf = {"name": "r2d2", "dim": 16, "mchan": 1, "fast": True}
    r2d2 = root / "r2d2.pt"
    state = R2D2(r2d2_conf).state_dict()
    atomic_torch_save({"model": state, "config": {"model": r2d2_conf}}, r2d2)
    photos = write_photos(root / "photos", ("coffee",), size=(96, 64))
    return {"superpoint": superpoint, "r2d2": r2d2, "image": photos / "coffee.png"}


def extract(inputs, model: str, out: Path, *extra: str) -> int:
    args = ["--model", str(inputs[model]), "--images", str(inputs["image"])]
    args += ["--out-dir", str(out), "--tag", "t", *extra]
    if model == "r2d2":
        args += ["min_size=32", "reliability_thr=0", "repeatability_thr=0"]
    return extract_main(args)


@pytest.mark.parametrize("model", ["superpoint", "r2d2"])
@pytest.mark.parametrize(
    "precision, spelling",
    [("auto", "flag"), ("fp32", "override"), ("bf16", "flag"), ("int8", "override")],
)
def test_extraction_records_the_resolved_precision(
    inputs, model, precision, spelling, tmp_path
):
    """The label is the resolved precision (auto: int8 for SuperPoint, fp32 for R2D2 on
    CPUs without native bf16, bf16 where it is native), given as ``--precision P`` or
    as the override ``precision=P``."""
    resolved = devices.inference_precision(precision, CPU, INT8[model])
    if spelling == "flag":
        words = ["--precision", precision]
    else:
        words = [f"precision={precision}"]
    assert extract(inputs, model, tmp_path, *words) == 0
    record = read_provenance(tmp_path / "coffee.png.t")
    assert record["options"]["precision"] == precision_label(resolved)
    assert len(np.load(tmp_path / "coffee.png.t")["keypoints"]) > 0


def test_flag_and_override_are_one_setting(inputs, tmp_path):
    """``--precision bf16`` and ``precision=bf16``: the same record, the same features."""
    flag, override = tmp_path / "flag", tmp_path / "override"
    assert extract(inputs, "superpoint", flag, "--precision", "bf16") == 0
    assert extract(inputs, "superpoint", override, "precision=bf16") == 0
    a, b = (out / "coffee.png.t" for out in (flag, override))
    assert read_provenance(a) == read_provenance(b)
    np.testing.assert_array_equal(np.load(a)["keypoints"], np.load(b)["keypoints"])


@pytest.mark.parametrize("model", ["superpoint", "r2d2"])
def test_auto_follows_the_device(inputs, model, tmp_path, monkeypatch):
    """The same command on a CPU with native bf16 labels its files bf16."""
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert extract(inputs, model, tmp_path, "--precision", "auto") == 0
    record = read_provenance(tmp_path / "coffee.png.t")
    assert record["options"]["precision"] == "bf16"


@pytest.mark.parametrize("model", ["superpoint", "r2d2"])
def test_the_extractor_runs_what_the_label_says(inputs, model):
    """The label is read from what runs: bf16 casts (SuperPoint) or autocasts (R2D2)
    to bf16, fp32 does not (int8 builds the quantised network: ``test_quantize.py``)."""
    from models.extractor import load_extractor

    for precision in ("fp32", "bf16"):
        extractor = load_extractor(str(inputs[model]), conf={"precision": precision})
        assert extractor.precision == precision
        image = torch.rand(1, 3, 64, 80)
        expected = torch.bfloat16 if precision == "bf16" else torch.float32
        if model == "superpoint":
            assert extractor.runner.quantized is None
            assert next(extractor.runner.model.parameters()).dtype == expected
            assert len(extractor(image[:, :1])["keypoints"]) > 0
        else:
            with torch.inference_mode():
                features = extractor.dense(extractor.net.normalize(image))[0]
            assert features.dtype == expected


@pytest.mark.parametrize("model", ["superpoint", "r2d2", "sift"])
def test_fp16_on_the_cpu_and_precision_for_opencv_are_one_line(
    inputs, model, tmp_path, capsys
):
    source = str(inputs.get(model, model))
    args = ["--model", source, "--images", str(inputs["image"]), "--out-dir"]
    code = extract_main([*args, str(tmp_path / "out"), "--precision", "fp16"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1
    if model == "sift":
        assert "sift runs in OpenCV: precision applies to learned models only" in err[0]
    else:
        assert "precision 'fp16' is only supported on CUDA" in err[0]
    assert not (tmp_path / "out").exists()


def test_homographic_adaptation_labels_record_the_resolved_precision(inputs, tmp_path):
    from export import main as export_main

    photos = inputs["image"].parent
    out = tmp_path / "ha"
    args = ["homography_adaptation", "configs/magicpoint_coco_export.yaml"]
    args += ["--images", str(photos), "--out", str(out), "--no-progress"]
    args += ["data.layout=folder", "data.image_size=[64,80]"]
    args += ["export.num_homographies=2", "model.channels=[8,8,16,16]"]
    args += ["model.head_channels=16", "--precision", "auto"]
    assert export_main(args) == 0
    with np.load(next(out.glob("*.npz"))) as labels:
        record = json.loads(str(labels["provenance"]))
    resolved = devices.inference_precision("auto", CPU, "auto")
    assert record["precision"] == precision_label(resolved)


def test_networks_without_int8_take_the_same_values(tmp_path, capsys):
    """The point-cloud networks run at bf16 through the same option (the summary says
    so) and refuse int8 by name, in one line, like the inversion networks."""
    import data_gen
    import evaluation
    from tests.test_eval_pointcloud import constant_model, save

    depth = tmp_path / "depth"
    assert data_gen.main(
        ["pointclouds", "--procedural", "1", "--size", "24,32", "--out", str(depth)]
    ) == 0  # fmt: skip
    focal = save(constant_model("focal", 1.1), tmp_path / "focal.pt")
    shift = save(constant_model("shift", 0.05), tmp_path / "shift.pt")
    common = ["pointcloud", "--focal-model", focal, "--shift-model", shift]
    common += ["--depth", str(depth), "--draws", "1"]
    assert (
        evaluation.main([*common, "--out", str(tmp_path / "a"), "precision=bf16"]) == 0
    )
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["precision"] == "bf16"
    capsys.readouterr()
    code = evaluation.main(
        [*common, "--out", str(tmp_path / "b"), "--precision", "int8"]
    )
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1
    assert "'int8' is not available for the point-cloud networks" in err[0]


def test_inversion_networks_run_at_bf16(tmp_path):
    from models.inversion import InversionModel
    from pipelines.reconstruction import load_networks
    from utils.errors import UserError

    conf = {"name": "inversion", "in_channels": 5, "widths": [4, 8]}
    model = InversionModel(conf, {"perceptual": 0.0})
    path = tmp_path / "coarse.pt"
    atomic_torch_save(
        {"model": model.state_dict(), "config": {"model": model.conf, "data": {}}},
        path,
    )
    sparse = torch.rand(1, 5, 32, 48)
    exact = load_networks(str(path), device="cpu").predict(sparse)["coarse"]
    networks = load_networks(str(path), device="cpu", precision="bf16")
    assert networks.precision == "bf16"
    reduced = networks.predict(sparse)["coarse"]
    assert reduced.dtype == torch.float32 and reduced.shape == exact.shape
    # bf16 keeps about 3 significant digits: close to fp32, but not bit-identical.
    assert 0 < float((reduced - exact).abs().max()) < 0.05
    with pytest.raises(UserError, match="not available for the inversion networks"):
        load_networks(str(path), precision="int8")


def test_no_second_precision_vocabulary_in_the_models():
    """R2D2's former keys are gone from every model file (not just renamed)."""
    for path in Path("models").glob("*.py"):
        text = path.read_text()
        for word in ('"autocast"', "'autocast'", "fp32_first_convs", '"int8": '):
            assert word not in text, (path, word)
