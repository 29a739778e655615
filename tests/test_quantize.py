"""Static int8 quantisation (the fast inference path of CPUs without native bf16)."""

import numpy as np
import torch

from models.extractor import Extractor
from models.quantize import SuperPointDense, calibration_batch, quantize_static
from models.superpoint import SuperPoint

TINY = {"channels": [8, 8, 16, 16], "head_channels": 16, "descriptor_dim": 16}


def test_calibration_images_are_fixed_and_in_range():
    first, second = calibration_batch(64, 80), calibration_batch(64, 80)
    assert len(first) == 8 and first[0].shape == (1, 1, 64, 80)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert 0.0 <= min(float(x.min()) for x in first)
    assert max(float(x.max()) for x in first) <= 1.0


def test_int8_network_stays_close_to_fp32():
    torch.manual_seed(0)
    dense = SuperPointDense(SuperPoint(TINY).eval()).eval()
    calibration = calibration_batch(64, 96)
    quantized = quantize_static(dense, calibration)
    with torch.inference_mode():
        for image in calibration[:3]:
            for exact, approx in zip(dense(image), quantized(image)):
                assert approx.shape == exact.shape and approx.dtype == torch.float32
                error = float((approx - exact).norm() / exact.norm())
                assert error < 0.1, error


def test_int8_extractor_output_contract():
    torch.manual_seed(0)
    model = SuperPoint({**TINY, "detection_threshold": 0.0153})
    image = calibration_batch(64, 96)[4]
    exact = Extractor(model, "t", precision="fp32")(image)
    fast = Extractor(model, "t", precision="int8")(image)
    keypoints = fast["keypoints"].numpy()
    assert len(keypoints) > 0 and fast["descriptors"].shape == (len(keypoints), 16)
    assert np.allclose(fast["descriptors"].norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert (keypoints >= 0).all() and (keypoints[:, 0] < 96).all()
    assert (keypoints[:, 1] < 64).all()
    # The caller's model is not modified by building extractors (copy, not in place).
    assert next(model.parameters()).is_contiguous()
    assert len(exact["keypoints"]) > 0


def test_r2d2_int8_extractor_runs_and_tags():
    from models.r2d2 import R2D2Extractor

    torch.manual_seed(0)
    conf = {"model": {"dim": 16, "mchan": 1}, "min_size": 32, "top_k": 200}
    conf.update(reliability_thr=0.0, repeatability_thr=0.0)
    exact = R2D2Extractor(conf)
    fast = R2D2Extractor({**conf, "int8": True}, net=exact.net)
    image = calibration_batch(64, 80, channels=3)[2]
    a, b = exact(image), fast(image)
    assert fast.tag == "r2d2-int8" and exact.tag == "r2d2"
    assert b["descriptors"].shape[1] == 16 and len(b["keypoints"]) > 0
    assert np.allclose(b["descriptors"].norm(dim=1).numpy(), 1.0, atol=1e-5)
    # Same multi-scale pyramid: every keypoint lies in the image at a known scale.
    assert set(b["scales"].tolist()) <= set(a["scales"].tolist()) | {32.0}


def test_auto_inference_precision_follows_the_cpu(monkeypatch):
    import pytest

    import engine.devices as devices
    from utils.errors import UserError

    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.inference_precision("auto", cpu) == "bf16"
    assert devices.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.inference_precision("auto", cpu) == "int8"
    assert devices.resolve_precision("auto", cpu) == "fp32"  # training stays fp32
    assert devices.inference_precision("fp32", cpu) == "fp32"
    with pytest.raises(UserError, match="CPU only"):
        devices.inference_precision("int8", torch.device("cuda"))


def test_bf16_capped_by_the_instruction_set_is_not_native(monkeypatch):
    import engine.devices as devices

    info = {"model": "x", "cores": 2, "flags": ["avx2", "avx512f", "avx512_bf16"]}
    for restricted, native in (
        ({}, True),
        ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
        ({"ATEN_CPU_CAPABILITY": "avx2"}, False),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True),
    ):
        monkeypatch.setattr(
            devices, "cpu_info", lambda r=restricted: {**info, "restricted": r}
        )
        devices.cpu_has_native_bf16.cache_clear()
        assert devices.cpu_has_native_bf16() is native, restricted
    devices.cpu_has_native_bf16.cache_clear()
