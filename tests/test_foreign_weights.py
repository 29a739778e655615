"""Foreign SuperPoint weights: fake state dicts in each public format load and run."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.extractor import load_extractor
from models.superpoint import SuperPoint
from models.weights import (
    MAGICLEAP_FRONTEND,
    convert_state_dict,
    detect_format,
    load_model,
    reference_frontend,
)
from utils.errors import UserError

# Names and shapes of the public releases (out, in, k), written out independently of our
# model so that the key maps are really checked.
LAYERS = {
    "conv1a": (64, 1, 3), "conv1b": (64, 64, 3), "conv2a": (64, 64, 3),
    "conv2b": (64, 64, 3), "conv3a": (128, 64, 3), "conv3b": (128, 128, 3),
    "conv4a": (128, 128, 3), "conv4b": (128, 128, 3), "convPa": (256, 128, 3),
    "convPb": (65, 256, 1), "convDa": (256, 128, 3), "convDb": (256, 256, 1),
}  # fmt: skip


def conv(gen, out, inp, k):
    scale = (2.0 / (inp * k * k)) ** 0.5
    return torch.randn(out, inp, k, k, generator=gen) * scale, torch.randn(
        out, generator=gen
    ) * 0.05


def bn(gen, prefix, c):
    return {
        f"{prefix}.weight": 1 + 0.1 * torch.randn(c, generator=gen),
        f"{prefix}.bias": 0.1 * torch.randn(c, generator=gen),
        f"{prefix}.running_mean": 0.1 * torch.randn(c, generator=gen),
        f"{prefix}.running_var": 1 + 0.1 * torch.rand(c, generator=gen),
        f"{prefix}.num_batches_tracked": torch.tensor(1000),
    }


def magicleap_state(seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, (o, i, k) in LAYERS.items():
        state[f"{name}.weight"], state[f"{name}.bias"] = conv(gen, o, i, k)
    return state


def rpautrat_state(seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    names = list(LAYERS)
    for stage in range(4):
        for block in range(2):
            o, i, k = LAYERS[names[2 * stage + block]]
            p = f"backbone.{stage}.{block}"
            state[f"{p}.conv.weight"], state[f"{p}.conv.bias"] = conv(gen, o, i, k)
            state.update(bn(gen, f"{p}.bn", o))
    for head, letter in (("detector", "P"), ("descriptor", "D")):
        for block, ab in enumerate("ab"):
            o, i, k = LAYERS[f"conv{letter}{ab}"]
            p = f"{head}.{block}"
            state[f"{p}.conv.weight"], state[f"{p}.conv.bias"] = conv(gen, o, i, k)
            state.update(bn(gen, f"{p}.bn", o))
    return state


def gauss2_state(seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    prefixes = ["inc.conv.conv", "down1.mpconv.1.conv", "down2.mpconv.1.conv",
                "down3.mpconv.1.conv"]  # fmt: skip
    names = list(LAYERS)
    for stage, prefix in enumerate(prefixes):
        for j, layer in ((0, 0), (1, 3)):
            o, i, k = LAYERS[names[2 * stage + j]]
            w, b = conv(gen, o, i, k)
            state[f"{prefix}.{layer}.weight"], state[f"{prefix}.{layer}.bias"] = w, b
            state.update(bn(gen, f"{prefix}.{layer + 1}", o))
    for head in ("Pa", "Pb", "Da", "Db"):
        o, i, k = LAYERS[f"conv{head}"]
        state[f"conv{head}.weight"], state[f"conv{head}.bias"] = conv(gen, o, i, k)
        state.update(bn(gen, f"bn{head}", o))
    return state


def image(seed=0, shape=(64, 96)):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, shape[0] // 8, shape[1] // 8, generator=gen)
    return F.interpolate(x, size=shape, mode="bilinear", align_corners=False)


def save(obj, path):
    torch.save(obj, path)
    return str(path)


def test_formats_are_detected():
    assert detect_format(magicleap_state()) == "magicleap"
    assert detect_format(rpautrat_state()) == "rpautrat_v6"
    assert detect_format({"model_state_dict": gauss2_state(), "n_iter": 1}) == (
        "pytorch_superpoint"
    )
    with pytest.raises(UserError, match="unknown weight format"):
        detect_format({"foo.weight": torch.zeros(1)})


def test_magicleap_loads_with_frontend_and_matches_reference(tmp_path):
    state = magicleap_state()
    model, fmt = load_model(save(state, tmp_path / "superpoint_v1.pth"))
    assert fmt == "magicleap"
    assert torch.equal(model.conv3b[0].weight, state["conv3b.weight"])
    assert torch.equal(model.convDb[0].bias, state["convDb.bias"])
    assert all(model.conf[k] == v for k, v in MAGICLEAP_FRONTEND.items())
    extractor = load_extractor(str(tmp_path / "superpoint_v1.pth"))
    x = image()
    out = extractor(x)
    kps, scores, desc = reference_frontend(model, x[0, 0].numpy())
    assert len(kps) > 0
    assert np.array_equal(out["keypoints"].numpy(), kps)
    np.testing.assert_allclose(out["keypoint_scores"].numpy(), scores, atol=1e-6)
    np.testing.assert_allclose(out["descriptors"].numpy(), desc, atol=1e-5)


def test_rpautrat_v6_is_conv_relu_bn(tmp_path):
    state = rpautrat_state()
    model, fmt = load_model(save(state, tmp_path / "superpoint_v6_from_tf.pth"))
    assert fmt == "rpautrat_v6" and model.conf["batch_norm"]
    x = torch.rand(1, 64, 16, 16)
    p = "backbone.1.1"
    y = F.conv2d(x, state[f"{p}.conv.weight"], state[f"{p}.conv.bias"], padding=1)
    y = F.batch_norm(
        F.relu(y), state[f"{p}.bn.running_mean"], state[f"{p}.bn.running_var"],
        state[f"{p}.bn.weight"], state[f"{p}.bn.bias"], eps=1e-3,
    )  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(model.conv2b(x), y, atol=1e-5, rtol=1e-5)
    p = "detector.1"
    z = torch.rand(1, 256, 4, 4)
    ref = F.batch_norm(
        F.conv2d(z, state[f"{p}.conv.weight"], state[f"{p}.conv.bias"]),
        state[f"{p}.bn.running_mean"], state[f"{p}.bn.running_var"],
        state[f"{p}.bn.weight"], state[f"{p}.bn.bias"], eps=1e-3,
    )  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(model.convPb(z), ref, atol=1e-5, rtol=1e-5)
    out = load_extractor(str(tmp_path / "superpoint_v6_from_tf.pth"))(image())
    assert out["descriptors"].shape[1] == 256


def test_pytorch_superpoint_checkpoints(tmp_path):
    state = gauss2_state()
    ckpt = {
        "n_iter": 5,
        "model_state_dict": {f"module.{k}": v for k, v in state.items()},
    }
    model, fmt = load_model(save(ckpt, tmp_path / "gauss2.pth.tar"))
    assert fmt == "pytorch_superpoint" and model.conf["batch_norm_order"] == "bn_relu"
    x = torch.rand(1, 64, 8, 8)
    p = "down1.mpconv.1.conv"
    y = F.conv2d(x, state[f"{p}.0.weight"], state[f"{p}.0.bias"], padding=1)
    y = F.relu(F.batch_norm(
        y, state[f"{p}.1.running_mean"], state[f"{p}.1.running_var"],
        state[f"{p}.1.weight"], state[f"{p}.1.bias"], eps=1e-5,
    ))  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(model.conv2a(x), y, atol=1e-5, rtol=1e-5)
    plain = {"model_state_dict": magicleap_state(), "optimizer_state_dict": {}}
    model, _ = load_model(save(plain, tmp_path / "plain.pth.tar"))
    assert not model.conf["batch_norm"]
    assert (
        load_extractor(str(tmp_path / "plain.pth.tar"))(image())["keypoints"].ndim == 2
    )


@pytest.mark.parametrize(
    "make, bad",
    [
        (magicleap_state, "conv5a.weight"),
        (rpautrat_state, "backbone.4.0.conv.weight"),
        (lambda: {"model_state_dict": gauss2_state()}, "bnQa.weight"),
    ],
)
def test_unknown_key_is_refused_naming_it(tmp_path, make, bad):
    obj = make()
    target = obj["model_state_dict"] if "model_state_dict" in obj else obj
    target[bad] = torch.zeros(3)
    with pytest.raises(UserError, match=bad.replace(".", r"\.")):
        load_model(save(obj, tmp_path / "bad.pth"))


def test_shape_mismatch_and_missing_key_are_refused(tmp_path):
    state = magicleap_state()
    state["convPb.bias"] = torch.zeros(64)
    with pytest.raises(UserError, match="convPb.0.bias"):
        load_model(save(state, tmp_path / "shape.pth"))
    state = magicleap_state()
    del state["conv2a.bias"]
    with pytest.raises(UserError, match="missing key 'conv2a.0.bias'"):
        load_model(save(state, tmp_path / "missing.pth"))


def test_engine_checkpoints_still_load(tmp_path):
    conf = {"name": "superpoint", "channels": [8, 8, 16, 16], "head_channels": 16,
            "descriptor_dim": 16}  # fmt: skip
    model = SuperPoint(conf)
    ckpt = {"model": model.state_dict(), "config": {"model": dict(model.conf)}}
    loaded, fmt = load_model(save(ckpt, tmp_path / "engine.pt"))
    assert fmt == "engine" and loaded.conf["descriptor_dim"] == 16
    out = load_extractor(str(tmp_path / "engine.pt"), conf={"top_k": 5})(image())
    assert len(out["keypoints"]) <= 5


def test_convert_reads_widths_from_tensors():
    _, state, conf = convert_state_dict(magicleap_state())
    assert conf["channels"] == [64, 64, 128, 128] and conf["descriptor_dim"] == 256
    assert "conv1a.0.weight" in state and "conv1a.weight" not in state


def test_benchmark_detector_takes_a_magicpoint_and_refuses_a_narrow_one(tmp_path):
    from benchmarks.bench_superpoint_inference import detector_from
    from models.superpoint import MagicPoint

    torch.manual_seed(1)
    trained = MagicPoint({}).eval()
    path = tmp_path / "mp.pt"
    save({"model": trained.state_dict(), "config": {"model": dict(trained.conf)}}, path)
    model = detector_from(str(path))
    state, source = model.state_dict(), trained.state_dict()
    detector_keys = [k for k in state if not k.startswith("convD")]
    assert detector_keys and all(
        torch.equal(state[k], source[k]) for k in detector_keys
    )
    assert any(k.startswith("convD") for k in state)  # the descriptor head is there

    narrow = MagicPoint({"channels": [8, 8, 16, 16], "head_channels": 16}).eval()
    save({"model": narrow.state_dict(), "config": {"model": dict(narrow.conf)}}, path)
    with pytest.raises(UserError, match="not a full-size"):
        detector_from(str(path))
