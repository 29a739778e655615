"""ONNX export of SuperPoint/MagicPoint: the network and its dense heads as one graph.

``export.py onnx`` writes it; ONNX Runtime then runs the network (a test checks it against
PyTorch within 1e-4, and the inference benchmark times it). Keypoint selection stays outside
the graph, in ``models.superpoint``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from utils.io import atomic_write


class DenseHeads(torch.nn.Module):
    """ONNX-friendly wrapper: image tensor in, tuple of dense outputs out.

    Outputs ``heatmap`` ``(B, H, W)`` (softmax, dustbin dropped, depth-to-space) and, with
    the descriptor head, ``descriptors`` ``(B, D, H/8, W/8)`` L2-normalised; keypoint
    selection (threshold, NMS, sampling) stays outside the graph.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        pred = self.model({"image": image})
        if "dense_descriptors" in pred:
            return pred["heatmap"], pred["dense_descriptors"]
        return (pred["heatmap"],)


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    height: int = 480,
    width: int = 640,
    opset: int = 18,
) -> list[str]:
    """Write ``model`` (dense outputs, see :class:`DenseHeads`) as ONNX, atomically.

    Batch, height and width are dynamic (height and width multiples of 8).

    Returns:
        The output names.
    """
    from torch.export import Dim

    wrapper = DenseHeads(model.eval().float())
    example = torch.rand(1, model.conf.get("input_channels", 1), height, width)
    outputs = ["heatmap"]
    if model.conf.get("descriptor_head", False):
        outputs.append("descriptors")
    dynamic = {
        "image": {
            0: Dim("batch", max=1024),
            2: 8 * Dim("cells_h", max=1024),
            3: 8 * Dim("cells_w", max=1024),
        }
    }
    program = torch.onnx.export(
        wrapper,
        (example,),
        input_names=["image"],
        output_names=outputs,
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=dynamic,
        verbose=False,
    )
    data = program.model_proto.SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return outputs
