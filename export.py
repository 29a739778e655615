"""Export labels and models: ``python export.py COMMAND --help``.

python export.py homography_adaptation configs/magicpoint_coco_export.yaml \
    --images data/coco --out data/coco_ha --checkpoint logs/magicpoint/checkpoints/best.pt
python export.py onnx --checkpoint pretrained/superpoint_v1.pth --out superpoint.onnx
python export.py reconstruct --checkpoint logs/inv/checkpoints/best.pt --images DIR \
    --features sift --out outputs/reconstructed
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from utils.arguments import ArgumentParser
from utils.dispatch import dispatch
from utils.errors import UserError, run_cli

COMMANDS = {
    "homography_adaptation": (
        "pipelines.ha_export:export_main",
        "homographic adaptation labels (npz per image) from a detector checkpoint",
    ),
    "onnx": (
        "export:onnx_main",
        "SuperPoint/MagicPoint network + heads to ONNX (heatmap, dense descriptors)",
    ),
    "reconstruct": (
        "pipelines.reconstruction:export_main",
        "feature inversion: reconstructed PNGs from sparse features (coarse/refiner)",
    ),
}


def onnx_main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="export.py onnx",
        description="Export a SuperPoint/MagicPoint checkpoint (engine or foreign "
        "weights) to ONNX: input 'image' (B, 1, H, W) in [0, 1], outputs 'heatmap' "
        "(B, H, W) and 'descriptors' (B, D, H/8, W/8).",
    )
    parser.add_argument("--checkpoint", required=True, help="weights file")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--height", type=int, default=480, help="example height")
    parser.add_argument("--width", type=int, default=640, help="example width")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset")
    parser.add_overrides("settings", keys="options")
    args = parser.parse_args(argv)

    def run() -> int:
        import logging
        import warnings

        from models.onnx import export_onnx
        from models.weights import load_model

        if args.height % 8 or args.width % 8:
            raise UserError(
                f"--height/--width must be multiples of 8, got {args.height}x{args.width}"
            )
        model, fmt = load_model(args.checkpoint)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            outputs = export_onnx(model, args.out, args.height, args.width, args.opset)
        print(f"wrote {args.out} ({fmt} weights; outputs: {', '.join(outputs)})")
        return 0

    return run_cli(run, "export.py onnx")


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("export.py", __doc__.split("\n")[0], COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
