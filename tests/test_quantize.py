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
    # int8 only where the caller measured it to keep the keypoints (HA labels).
    assert devices.inference_precision("auto", cpu) == "fp32"
    assert devices.inference_precision("auto", cpu, int8_keeps_points=True) == "int8"
    assert devices.inference_precision("int8", cpu) == "int8"
    assert devices.resolve_precision("auto", cpu) == "fp32"  # training stays fp32
    assert devices.inference_precision("fp32", cpu) == "fp32"
    # SuperPoint-family extraction keeps its keypoints in int8 (96.2-96.5% measured), so its
    # auto is int8 there.
    assert Extractor(SuperPoint(TINY), "t", precision="auto").precision == "int8"
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


def test_amx_follows_flags_and_cap(monkeypatch):
    """The main job's bf16 recipe needs AMX: AVX512-BF16 alone (Zen 4) is not enough."""
    import engine.devices as devices

    for flags, restricted, amx in (
        (["avx2", "avx512f", "avx512_bf16"], {}, False),
        (["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"], {}, True),
        (
            ["avx2", "avx512f", "avx512_bf16", "amx_bf16"],
            {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
            False,
        ),
        (["avx2", "amx_bf16"], {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True),
        (["avx2", "amx_bf16"], {"ATEN_CPU_CAPABILITY": "avx2"}, False),
    ):
        info = {"model": "x", "cores": 2, "flags": flags, "restricted": restricted}
        monkeypatch.setattr(devices, "cpu_info", lambda info=info: info)
        devices.cpu_has_native_bf16.cache_clear()
        devices.cpu_has_amx_bf16.cache_clear()
        assert devices.cpu_has_amx_bf16() is amx, (flags, restricted)
    devices.cpu_has_native_bf16.cache_clear()
    devices.cpu_has_amx_bf16.cache_clear()


def test_int8_dot_product_follows_flags_and_cap(monkeypatch):
    import engine.devices as devices

    for flags, restricted, exact in (
        (["avx2"], {}, False),
        (["avx2", "avx512f", "avx512_vnni"], {}, True),
        (["avx2", "avx_vnni"], {}, True),
        (["avx2", "avx512f", "avx512_vnni"], {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
        (
            ["avx2", "avx512f", "avx512_vnni"],
            {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
            False,
        ),
        (["avx2", "amx_int8"], {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, True),
    ):
        info = {"model": "x", "cores": 2, "flags": flags, "restricted": restricted}
        monkeypatch.setattr(devices, "cpu_info", lambda info=info: info)
        devices.cpu_has_int8_dot_product.cache_clear()
        assert devices.cpu_has_int8_dot_product() is exact, (flags, restricted)
    devices.cpu_has_int8_dot_product.cache_clear()


def test_feature_provenance_names_the_int8_method():
    """Int8 features of the current method (equalised, GPTQ-rounded weights) carry their
    own label, the same on every CPU: earlier int8 features are not reused."""
    from types import SimpleNamespace

    from models.extractor import _resolved_precision

    superpoint = SimpleNamespace(precision="int8")
    r2d2 = SimpleNamespace(conf={"autocast": False, "int8": True})
    assert _resolved_precision(superpoint) == "int8-cle-gptq"
    assert _resolved_precision(r2d2) == "int8-cle-gptq"
    assert _resolved_precision(SimpleNamespace(precision="bf16")) == "bf16"
