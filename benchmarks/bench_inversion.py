"""Feature-inversion training throughput at 256 x 256, and the online-feature loader beside it.

Part 1 times optimisation steps of the coarse model (L1 loss; the perceptual term needs VGG16
weights, which are not here) on one fixed batch of SIFT + RGB sparse maps (131 channels) for
UNet and InvNet, in fp32 (the baseline) and in the CPU's other paths: channels-last memory
format and bf16 autocast. Ratios are against plain fp32 in the same run.

Part 2 times the data pipeline alone (``InversionDataset``, one process): online SIFT and
ORB on each 256 crop, and extract.py-style feature files read and rasterised, against the
training step's images/s from part 1, to show how many loader workers a run needs.

    python -m benchmarks.bench_inversion [--batch-size 4] [--steps 5]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.common import items_per_second, native_precisions, print_header
from datasets.features import write_features
from datasets.inversion import InversionDataset, export_builtin
from engine.state import seed_everything
from models.classical import OpenCVExtractor
from models.inversion import InversionModel
from utils.arguments import ArgumentParser

NETWORKS = {
    "unet": [16, 32, 64, 128],
    "invnet": [16, 32, 64, 64, 128, 128],
}


def train_throughput(
    arch: str, precision: str, channels_last: bool, batch: int, steps: int, size: int
) -> float:
    """Training images/s on a fixed batch (forward, L1 loss, backward, Adam)."""
    seed_everything(0)
    conf = {"arch": arch, "widths": NETWORKS[arch], "in_channels": 131}
    model = InversionModel(conf, {"perceptual": 0.0})
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    rng = torch.Generator().manual_seed(0)
    sparse = torch.zeros(batch, 131, size, size)
    mask = torch.rand(batch, 1, size, size, generator=rng) < 0.01
    sparse = torch.where(
        mask, torch.randn(batch, 131, size, size, generator=rng), sparse
    )
    batch_data = {
        "input": sparse,
        "image": torch.rand(batch, 3, size, size, generator=rng),
    }
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        batch_data["input"] = sparse.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            pred = model(batch_data)
        losses, _ = model.loss(pred, batch_data)
        losses["total"].backward()
        optimizer.step()

    return items_per_second(step, batch, steps)


def loader_throughput(
    conf: dict, samples: int, extractor: OpenCVExtractor | None = None
) -> float:
    """Samples/s of the training data pipeline in one process."""
    dataset = InversionDataset(conf, "train", extractor=extractor)
    dataset[0]
    start = time.perf_counter()
    for index in range(1, samples + 1):
        dataset[index % len(dataset)]
    return samples / (time.perf_counter() - start)


def write_sift_files(folder: Path) -> None:
    """extract.py-layout SIFT files next to the exported built-in training photographs."""
    sift = OpenCVExtractor("sift")
    for path in sorted((folder / "train").glob("*.png")):
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        feats = sift(gray)
        write_features(
            path.with_name(f"{path.name}.sift"),
            {
                **feats,
                "imsize": np.array([gray.shape[1], gray.shape[0]]),
                "original_imsize": np.array([gray.shape[1], gray.shape[0]]),
            },
        )


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=4, help="training batch")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--size", type=int, default=256, help="training crop side")
    parser.add_argument(
        "--samples", type=int, default=40, help="samples timed per loader variant"
    )
    args = parser.parse_args()
    print_header(f"Feature inversion: batch {args.batch_size}, {args.size}x{args.size}")
    precisions = native_precisions()
    print("\n1) training step (fixed batch, L1 loss): images/s, ratio to plain fp32")
    header = " ".join(f"{p:>8}" for p in precisions)
    print(f"{'network':>8} {'format':>14} {header}  ratio to plain fp32")
    best = {}
    for arch in NETWORKS:
        baseline = None
        for channels_last in (False, True):
            speeds = {
                precision: train_throughput(
                    arch,
                    precision,
                    channels_last,
                    args.batch_size,
                    args.steps,
                    args.size,
                )
                for precision in precisions
            }
            baseline = baseline or speeds["fp32"]
            fmt = "channels_last" if channels_last else "contiguous"
            values = " ".join(f"{v:8.2f}" for v in speeds.values())
            ratios = " / ".join(f"{v / baseline:.2f}x" for v in speeds.values())
            print(f"{arch:>8} {fmt:>14} {values}  {ratios}", flush=True)
            for precision, speed in speeds.items():
                if speed > best.get(arch, (0.0, ""))[0]:
                    best[arch] = (speed, f"{precision}, {fmt}")
    for arch, (speed, how) in best.items():
        print(f"fastest {arch}: {how} ({speed:.2f} images/s)")

    print(f"\n2) data pipeline, one process, {args.size} crops: samples/s")
    base = {"crop": args.size, "scale": [args.size, 2 * args.size], "repeat": 10}
    with tempfile.TemporaryDirectory() as tmp:
        export_builtin(tmp)
        write_sift_files(Path(tmp))
        images = str(Path(tmp) / "train")
        rows = [
            ("online SIFT", {**base, "images": images}, OpenCVExtractor("sift")),
            ("online ORB", {**base, "images": images}, OpenCVExtractor("orb")),
            ("SIFT files", {**base, "images": images, "features": "sift"}, None),
        ]
        fastest_step = max(speed for speed, _ in best.values())
        for name, conf, extractor in rows:
            speed = loader_throughput(conf, args.samples, extractor)
            workers = int(np.ceil(fastest_step / speed))
            print(
                f"{name:>12}: {speed:7.1f} samples/s; the fastest training step above "
                f"needs >= {workers} loader worker(s) at {fastest_step:.1f} images/s",
                flush=True,
            )


if __name__ == "__main__":
    main()
