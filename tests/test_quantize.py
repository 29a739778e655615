"""Static int8 quantisation (the fast inference path of CPUs without native bf16)."""

import pytest
import torch

from models.extractor import Extractor
from models.quantize import SuperPointDense, calibration_batch
from models.superpoint import SuperPoint

TINY = {"channels": [8, 8, 16, 16], "head_channels": 16, "descriptor_dim": 16}


def test_calibration_images_are_fixed_and_in_range():
    first, second = calibration_batch(64, 80), calibration_batch(64, 80)
    assert len(first) == 8 and first[0].shape == (1, 1, 64, 80)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert 0.0 <= min(float(x.min()) for x in first)
    assert max(float(x.max()) for x in first) <= 1.0


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A real photograph that is not one of the calibration images: ``(1, 3, 96, 128)``
    RGB in [0, 1] (scikit-image's rocket)."""
    import cv2
    import skimage.data

    small = cv2.resize(skimage.data.rocket(), (128, 96), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255.0


def gray(rgb: torch.Tensor) -> torch.Tensor:
    weights = rgb.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (rgb * weights).sum(1, keepdim=True)


def relative_error(exact: torch.Tensor, approx: torch.Tensor) -> float:
    """L2 error relative to the signal, both maps taken about their spatial mean per
    channel: a random network's outputs are mostly a constant offset (its biases),
    against which a plain relative error would hide any error in the image content."""
    exact = exact.float() - exact.float().mean((-2, -1), keepdim=True)
    approx = approx.float() - approx.float().mean((-2, -1), keepdim=True)
    return float((approx - exact).norm() / exact.norm())


@pytest.fixture(scope="module")
def superpoint_pair():
    """A tiny SuperPoint and its fp32 and int8 extractors (int8 calibration is the
    slow part, done once)."""
    torch.manual_seed(0)
    model = SuperPoint({**TINY, "detection_threshold": 0.0, "top_k": 30}).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    extractors = {p: Extractor(model, "t", precision=p) for p in ("fp32", "int8")}
    return model, before, extractors


def test_int8_superpoint_within_tolerance_of_fp32_on_a_photograph(
    superpoint_pair, photo
):
    """On a photograph outside the calibration set, the int8 network's raw outputs
    (logits, descriptors) are within 5% of fp32 (:func:`relative_error`), its
    normalised dense descriptors point the same way (cosine >= 0.999 in every cell),
    and at least 80% of the 30 strongest fp32 keypoints are found within 1 px
    (measured: 1.9% and 1.6%, 0.99999, 93%)."""
    model, _, extractors = superpoint_pair
    image = gray(photo)
    with torch.inference_mode():
        exact = SuperPointDense(model)(image)
        approx = extractors["int8"].runner.quantized(image)
    for a, b in zip(exact, approx):
        assert b.shape == a.shape and b.dtype == torch.float32
        assert relative_error(a, b) < 0.05
    fp32, int8 = (extractors[p].dense(image) for p in ("fp32", "int8"))
    cosine = (fp32["dense_descriptors"] * int8["dense_descriptors"]).sum(1)
    assert float(cosine.min()) >= 0.999
    kp32, kp8 = (extractors[p](image)["keypoints"] for p in ("fp32", "int8"))
    assert len(kp32) == len(kp8) == 30
    found = torch.cdist(kp32, kp8).min(1).values <= 1.0
    assert float(found.float().mean()) >= 0.8


def test_building_extractors_leaves_the_model_unchanged(superpoint_pair):
    """Every weight, its dtype and memory layout, and the mode of the caller's model
    are those it had before the fp32 (channels-last) and int8 extractors were built."""
    model, before, _ = superpoint_pair
    after = model.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        assert after[key].dtype == value.dtype
        assert torch.equal(after[key], value), key
        if after[key].dim() == 4:
            assert after[key].is_contiguous(), key
    assert not model.training


def test_int8_r2d2_within_tolerance_of_fp32_on_a_photograph(photo):
    """R2D2's int8 trunk on a photograph outside the calibration set: raw features,
    reliability and repeatability maps within 8% of fp32 (:func:`relative_error`;
    measured: 2.6%, 1.4%, 3.0%); the tag names the precision."""
    from models.r2d2 import R2D2Extractor

    torch.manual_seed(0)
    conf = {"model": {"dim": 16, "mchan": 1}, "min_size": 32, "top_k": 200}
    exact = R2D2Extractor(conf)
    fast = R2D2Extractor({**conf, "precision": "int8"}, net=exact.net)
    assert (fast.tag, exact.tag) == ("r2d2-int8", "r2d2")
    assert (fast.precision, exact.precision) == ("int8", "fp32")
    image = exact.net.normalize(photo)
    with torch.inference_mode():
        maps32, maps8 = exact.dense(image), fast.dense(image)
    for a, b in zip(maps32, maps8):
        assert b.shape == a.shape
        assert relative_error(a, b) < 0.08


def test_auto_inference_precision_follows_the_cpu(monkeypatch):
    import engine.devices as devices
    from utils.errors import UserError

    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    for int8 in devices.INT8_PATHS:
        assert devices.inference_precision("auto", cpu, int8) == "bf16"
    assert devices.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    # int8 only for networks whose int8 path was measured to keep the keypoints.
    assert devices.inference_precision("auto", cpu, "auto") == "int8"
    assert devices.inference_precision("auto", cpu, "explicit") == "fp32"
    assert devices.inference_precision("auto", cpu, "none") == "fp32"
    assert devices.inference_precision("int8", cpu, "explicit") == "int8"
    assert devices.resolve_precision("auto", cpu) == "fp32"  # training stays fp32
    assert devices.inference_precision("fp32", cpu) == "fp32"
    assert devices.inference_precision("bf16", cpu) == "bf16"
    # SuperPoint-family extraction keeps its keypoints in int8 (96.2-96.5% measured), so
    # its auto is int8 there; R2D2's is fp32.
    assert Extractor(SuperPoint(TINY), "t", precision="auto").precision == "int8"
    from models.r2d2 import R2D2Extractor

    r2d2 = R2D2Extractor({"model": {"dim": 16, "mchan": 1}, "precision": "auto"})
    assert r2d2.precision == "fp32"
    with pytest.raises(UserError, match="CPU only"):
        devices.inference_precision("int8", torch.device("cuda"), "auto")
    with pytest.raises(UserError, match="not available for the inversion networks"):
        devices.inference_precision("int8", cpu, "none", "the inversion networks")
    with pytest.raises(UserError, match="only supported on CUDA"):
        devices.inference_precision("fp16", cpu, "auto")
    with pytest.raises(UserError, match="inference path"):
        devices.resolve_precision("int8", cpu)


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


def test_provenance_label_of_each_resolved_precision():
    """Int8 files carry the name of the method (equalised, GPTQ-rounded weights, the
    same on every CPU); the float precisions their own name; ``auto`` is never a label."""
    from models.quantize import precision_label

    assert precision_label("int8") == "int8-cle-gptq"
    for name in ("fp32", "bf16", "fp16"):
        assert precision_label(name) == name
    with pytest.raises(ValueError):
        precision_label("auto")
