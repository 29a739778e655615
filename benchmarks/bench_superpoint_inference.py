"""Benchmark: SuperPoint end-to-end inference at 480x640 on CPU vs a reference frontend.

End to end = network forward, keypoint selection (threshold 0.015, NMS radius 4, border 4)
and descriptor sampling, for one 480x640 grayscale photo:

* ``reference``: a plain re-implementation of MagicLeap's ``SuperPointFrontend.run``
  (fp32 forward, NumPy softmax and depth-to-space, greedy NMS loop;
  :func:`models.weights.reference_frontend`);
* ``plain fp32``: this repository's :class:`models.extractor.Extractor` post-processing on the
  plain eager network (contiguous memory), the baseline every other row is a ratio of;
* ``fp32``: the extractor's fp32 path (channels-last memory, same numbers);
* ``int8``: static int8 quantisation of the convolutions after cross-layer equalisation,
  GPTQ-rounded weights (``models.quantize``), the fast path of CPUs without native bf16;
* ``bf16``: the weights cast once, channels-last (only where the CPU has native bf16);
* ``onnxruntime``: the ``export.py onnx`` graph in ONNX Runtime (``--onnx``), network only,
  post-processing as the extractor's.

All use the MagicLeap post-processing mode, so they select the same points up to numerics.
The network has random weights unless ``--checkpoint`` is given; the detection threshold is
then set to the quantile of its heatmap that leaves about ``--target-points`` keypoints (at
0.015 a random network fires everywhere). Reports the median time of ``--repeats`` runs, the
speed-ups over the reference and over plain fp32, and the share of plain-fp32
keypoints with a keypoint of the path within 1 px, and the reverse, and
the cosine of each path's dense descriptors to plain fp32's.

    python benchmarks/bench_superpoint_inference.py [--repeats 5] [--threads 2] [--onnx]
        [--detector CKPT --agreement-photos 6]
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    interleaved_medians,
    native_precisions,
    print_header,
)
from models.extractor import Extractor  # noqa: E402
from models.superpoint import SuperPoint  # noqa: E402
from models.weights import (  # noqa: E402
    MAGICLEAP_FRONTEND,
    load_initial_weights,
    load_model,
    reference_frontend,
)
from utils.arguments import ArgumentParser  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402

SHAPE = (480, 640)
# scikit-image photographs for --agreement-photos (the first is the timed image).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry")


def agreement(a: np.ndarray, b: np.ndarray, radius: float = 1.0) -> float:
    """Share of points of ``a`` with a point of ``b`` within ``radius`` pixels."""
    if len(a) == 0:
        return 1.0 if len(b) == 0 else 0.0
    if len(b) == 0:
        return 0.0
    dist = np.linalg.norm(a[:, None].astype(np.float64) - b[None], axis=-1)
    return float((dist.min(axis=1) <= radius).mean())


def photo(name: str) -> np.ndarray:
    """A scikit-image photograph as a 480x640 grey float image in [0, 1]."""
    import skimage.data

    rgb = getattr(skimage.data, name)()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    gray = cv2.resize(gray, SHAPE[::-1], interpolation=cv2.INTER_AREA)
    return gray.astype(np.float32) / 255.0


def calibrate(model: SuperPoint, image: np.ndarray, target: int) -> tuple[float, int]:
    """Detection threshold leaving about ``target`` reference keypoints after NMS.

    A random network's heatmap is nearly flat around 1/65, just above the frontend's
    0.015, so it would fire everywhere; a quantile of its own heatmap gives a realistic
    number of points while keeping the image-dependent structure.
    """
    x = torch.from_numpy(image)[None, None]
    with torch.inference_mode():
        heat = model({"image": x})["heatmap"][0].flatten().sort().values
    lo, hi = 0, len(heat) - 1
    best = (float(heat[0]), 0)
    for _ in range(20):
        mid = (lo + hi) // 2
        threshold = float(heat[mid])
        count = len(reference_frontend(model, image, conf_thresh=threshold)[0])
        best = (threshold, count)
        if abs(count - target) <= target // 20:
            break
        if count > target:
            lo = mid + 1
        else:
            hi = mid - 1
    return best


def onnx_dense(model: SuperPoint, threads: int):
    """The network through ONNX Runtime: ``image -> {"heatmap", "dense_descriptors"}``."""
    import logging
    import tempfile
    import warnings

    import onnxruntime as ort

    from models.onnx import export_onnx

    path = Path(tempfile.mkdtemp()) / "superpoint.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        outputs = export_onnx(model, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, ["CPUExecutionProvider"])

    def dense(image: torch.Tensor) -> dict[str, torch.Tensor]:
        results = session.run(None, {"image": image.numpy()})
        pred = {"heatmap": torch.from_numpy(results[0])}
        if len(outputs) > 1:
            pred["dense_descriptors"] = torch.from_numpy(results[1])
        return pred

    return dense


def detector_from(path: str) -> SuperPoint:
    """A full-size SuperPoint whose encoder and detector head are those of ``path``
    (through :func:`models.weights.load_initial_weights`; the descriptor head keeps its
    random initialisation when the file has none)."""
    if not Path(path).is_file():
        raise UserError(f"--detector: '{path}' does not exist")
    model = SuperPoint({**MAGICLEAP_FRONTEND}).eval()
    try:
        fresh = load_initial_weights(model, path)
    except UserError as err:
        raise UserError(
            f"{path}: not a full-size MagicPoint/SuperPoint detector ({err})"
        ) from None
    lacking = [k for k in fresh if not k.startswith("convD")]
    if lacking:
        raise UserError(
            f"{path}: not a full-size MagicPoint/SuperPoint detector "
            f"(missing {lacking[:3]})"
        )
    return model


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python benchmarks/bench_superpoint_inference.py",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per path")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--target-points",
        type=int,
        default=1000,
        help="keypoints the random network's threshold is calibrated to",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="SuperPoint weights (engine or foreign format) instead of random ones; "
        "then the frontend's threshold 0.015 is used",
    )
    parser.add_argument(
        "--detector",
        default=None,
        help="trained MagicPoint (or SuperPoint) weights for the detector only, the "
        "descriptor head staying random: the keypoints, and so their agreement, depend on "
        "the detector alone, and the timing is still the full SuperPoint's",
    )
    parser.add_argument(
        "--agreement-photos",
        type=int,
        default=1,
        help=f"also pool the keypoint agreement over this many photographs (the timed "
        f"one first; at most {len(PHOTOS)}): one image's few hundred points move by "
        "a percent or two with any change",
    )
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="also time ONNX Runtime on the exported graph",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not 1 <= args.agreement_photos <= len(PHOTOS):
        raise UserError(f"--agreement-photos: expected 1 to {len(PHOTOS)}")
    print_header("SuperPoint end to end, 480x640, MagicLeap post-processing")
    image = photo(PHOTOS[0])
    torch.manual_seed(0)
    if args.checkpoint and args.detector:
        raise UserError("pass --checkpoint or --detector, not both")
    if args.detector:
        model = detector_from(args.detector)
        threshold = MAGICLEAP_FRONTEND["detection_threshold"]
        count = len(reference_frontend(model, image, threshold)[0])
        print(f"detector of {args.detector}, random descriptor head: {count} keypoints")
    elif args.checkpoint:
        model, fmt = load_model(args.checkpoint, dict(MAGICLEAP_FRONTEND))
        threshold = MAGICLEAP_FRONTEND["detection_threshold"]
        count = len(reference_frontend(model, image, threshold)[0])
        print(f"{fmt} weights {args.checkpoint}: {count} reference keypoints")
    else:
        model = SuperPoint({**MAGICLEAP_FRONTEND}).eval()
        threshold, count = calibrate(model, image, args.target_points)
        model.conf["detection_threshold"] = threshold
        print(
            f"random SuperPoint, detection threshold {threshold:.6f}: {count} "
            "reference keypoints (agreement of reduced precisions is not representative "
            "with random weights: their heatmap is nearly flat, so rounding reorders it; "
            "pass --checkpoint with trained weights)"
        )

    tensor = torch.from_numpy(image)[None, None]
    # The plain eager path: contiguous memory.
    plain = Extractor(model, "bench", precision="fp32", channels_last=False)
    extractors = {"plain fp32": plain}
    for precision in ["fp32", "int8"] + native_precisions(("bf16",)):
        extractors[precision] = Extractor(model, "bench", precision=precision)
    if args.onnx:
        onnx = Extractor(model, "bench", precision="fp32")
        onnx.dense = onnx_dense(model, args.threads)
        extractors["onnxruntime fp32"] = onnx
    runs = {"reference": lambda: reference_frontend(model, image, threshold)}
    for name, extractor in extractors.items():
        runs[name] = lambda e=extractor: e(tensor)
    median = interleaved_medians(runs, args.repeats)
    baseline = extractors["plain fp32"](tensor)["keypoints"].numpy()
    ref_kps = reference_frontend(model, image, conf_thresh=threshold)[0]
    print(f"reference (fp32, NumPy, greedy NMS loop): {median['reference']:.3f} s")
    print(
        f"{'path':>17} {'seconds':>8} {'vs ref':>7} {'vs plain':>9} {'kpts':>6} "
        f"{'plain->path':>12} {'path->plain':>12}"
    )
    for name, extractor in extractors.items():
        kps = extractor(tensor)["keypoints"].numpy()
        print(
            f"{name:>17} {median[name]:8.3f} {median['reference'] / median[name]:6.2f}x "
            f"{median['plain fp32'] / median[name]:8.2f}x {len(kps):6d} "
            f"{100 * agreement(baseline, kps):11.1f}% {100 * agreement(kps, baseline):11.1f}%"
        )
    with torch.inference_mode():
        exact = plain.dense(tensor)["dense_descriptors"].float()
        print("dense descriptors vs plain fp32 on the timed photo (cosine per cell):")
        for name, extractor in extractors.items():
            if name == "plain fp32":
                continue
            other = extractor.dense(tensor)["dense_descriptors"].float()
            cosine = F.cosine_similarity(exact, other, dim=1).flatten()
            print(
                f"{name:>17} mean {float(cosine.mean()):.4f}, 1st percentile "
                f"{float(cosine.quantile(0.01)):.4f}, min {float(cosine.min()):.4f}"
            )
    if args.agreement_photos > 1:
        names = PHOTOS[: args.agreement_photos]
        tensors = [torch.from_numpy(photo(n))[None, None] for n in names]
        bases = [plain(t)["keypoints"].numpy() for t in tensors]
        total = sum(len(b) for b in bases)
        print(f"agreement with plain fp32 over {', '.join(names)} ({total} keypoints):")
        for name, extractor in extractors.items():
            found = [extractor(t)["keypoints"].numpy() for t in tensors]
            share = sum(agreement(b, k) * len(b) for b, k in zip(bases, found)) / total
            each = " ".join(
                f"{100 * agreement(b, k):.0f}" for b, k in zip(bases, found)
            )
            print(f"{name:>17} {100 * share:6.1f}%  (per photo: {each})")
    plain_vs_ref = agreement(ref_kps, baseline)
    print(
        f"plain fp32 finds {100 * plain_vs_ref:.1f}% of the reference's keypoints "
        "within 1 px"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "bench_superpoint_inference.py"))
