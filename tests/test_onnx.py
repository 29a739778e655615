"""``export.py onnx``: onnxruntime outputs match PyTorch within 1e-4."""

import numpy as np
import pytest
import torch

from export import main
from models.superpoint import SuperPoint

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_onnx_matches_pytorch_at_other_sizes(tmp_path, capsys):
    torch.manual_seed(0)
    conf = {"name": "superpoint", "channels": [8, 8, 16, 16], "head_channels": 16,
            "descriptor_dim": 16}  # fmt: skip
    model = SuperPoint(conf).eval()
    ckpt = tmp_path / "sp.pt"
    torch.save(
        {"model": model.state_dict(), "config": {"model": dict(model.conf)}}, ckpt
    )
    out = tmp_path / "sp.onnx"
    args = ["onnx", "--checkpoint", str(ckpt), "--out", str(out)]
    assert main([*args, "--height", "64", "--width", "96"]) == 0
    assert "heatmap, descriptors" in capsys.readouterr().out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["heatmap", "descriptors"]
    for shape in [(1, 1, 64, 96), (2, 1, 48, 40)]:
        x = torch.rand(*shape)
        heatmap, desc = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            ref = model({"image": x})
        np.testing.assert_allclose(heatmap, ref["heatmap"].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(
            desc, ref["dense_descriptors"].numpy(), atol=1e-4, rtol=0
        )


def test_onnx_bad_input(tmp_path, capsys):
    missing = tmp_path / "none.pt"
    code = main(["onnx", "--checkpoint", str(missing), "--out", str(tmp_path / "x")])
    assert code == 2 and "none.pt" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
