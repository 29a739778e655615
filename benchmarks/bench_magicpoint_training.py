"""MagicPoint training throughput at 120x160: fp32 vs bf16 autocast, and data starvation.

Part 1 times optimisation steps on one fixed batch (compute only) for each precision and memory
format, side by side with the plain fp32 baseline. Part 2 runs the real engine on on-the-fly
Synthetic Shapes (photometric + homographic augmentation, DataLoader workers) and reports
images/s and the share of step time spent waiting for data (target < 5 %).

    python -m benchmarks.bench_magicpoint_training [--batch-size 64] [--steps 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from datasets.synthetic_shapes import SyntheticShapes
from engine.devices import cpu_has_native_bf16
from engine.distributed import DistInfo
from engine.state import seed_everything
from engine.trainer import Trainer
from losses.detector import detector_loss
from models import build_model
from utils.config import load_config


def model_conf(width: str) -> dict:
    if width == "full":
        return {
            "name": "magicpoint",
            "channels": [64, 64, 128, 128],
            "head_channels": 256,
        }
    return {"name": "magicpoint", "channels": [32, 32, 64, 64], "head_channels": 128}


def compute_throughput(
    width: str, precision: str, channels_last: bool, batch: int, steps: int
):
    seed_everything(0)
    model = build_model(model_conf(width))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    images = torch.rand(batch, 1, 120, 160)
    keypoint_map = (torch.rand(batch, 120, 160) < 0.002).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            pred = model({"image": images})
        detector_loss(pred["logits"], keypoint_map).backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def engine_run(
    config: str, width: str, precision: str, batch: int, steps: int, workers: int
):
    overrides = [
        f"train.batch_size={batch}",
        f"train.max_steps={steps}",
        f"train.precision={precision}",
        f"train.num_workers={workers}",
        "train.device=cpu",
        "train.val_every=1000000",
        "train.save_every=1000000",
        "train.log_every=1000000",
        "train.image_every=1000000",
    ]
    from train_superpoint import defaults

    conf = load_config(config, overrides, defaults)
    conf["model"].update(model_conf(width))
    seed_everything(0)
    model = build_model(conf["model"], conf["loss"])
    data_conf = {k: v for k, v in conf["data"].items() if k != "name"}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            conf,
            model,
            SyntheticShapes(data_conf, "train"),
            None,
            tmp,
            DistInfo(),
            torch.device("cpu"),
        )
        trainer.fit()
    # Steady state: the step times exclude the engine's start-up (building the loader).
    return (
        batch * steps / trainer.step_time_s,
        trainer.data_wait_s / trainer.step_time_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--engine-steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--config", default="configs/magicpoint_shapes_cpu.yaml")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"native bf16: {cpu_has_native_bf16()}, batch {args.batch_size}, 120x160"
    )
    print("\n1) compute only (fixed batch): images/s")
    print(f"{'network':>8} {'format':>14} {'fp32':>8} {'bf16':>8} {'bf16/fp32':>10}")
    for width in ("full", "narrow"):
        for channels_last in (False, True):
            fp32 = compute_throughput(
                width, "fp32", channels_last, args.batch_size, args.steps
            )
            bf16 = compute_throughput(
                width, "bf16", channels_last, args.batch_size, args.steps
            )
            fmt = "channels_last" if channels_last else "contiguous"
            print(
                f"{width:>8} {fmt:>14} {fp32:8.1f} {bf16:8.1f} {bf16 / fp32:9.2f}x",
                flush=True,
            )
    print(f"\n2) real engine, on-the-fly Synthetic Shapes, {args.workers} workers")
    print(f"{'network':>8} {'precision':>9} {'images/s':>9} {'data wait':>10}")
    for width in ("narrow", "full"):
        for precision in ("fp32", "bf16"):
            speed, wait = engine_run(
                args.config,
                width,
                precision,
                args.batch_size,
                args.engine_steps,
                args.workers,
            )
            print(
                f"{width:>8} {precision:>9} {speed:9.1f} {100 * wait:9.1f}%", flush=True
            )


if __name__ == "__main__":
    main()
