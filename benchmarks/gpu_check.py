"""The CUDA path, end to end: training in each mixed precision, DDP, HA and extraction speed.

Run on a GPU machine (``bash scripts/gpu_check.sh``), it checks what CPU tests cannot:

1. a few hundred steps of MagicPoint (Synthetic Shapes), SuperPoint (joint training on
   homographic-adaptation labels of the built-in photographs) and Fast-R2D2 (synthetic pairs)
   in every mixed precision the device has (bf16, fp16 with the gradient scaler), with the
   images/s each reached and the final loss (finite or not);
2. DistributedDataParallel with NCCL when several GPUs are visible (``torchrun``), else said;
3. homographic adaptation throughput at 240x320 with 100 homographies (full-width MagicPoint,
   batched warps) and the projected time for the 82,783 COCO train2014 images (goal: under one
   hour on one modern GPU);
4. SuperPoint extraction at 480x640 and R2D2 multi-scale extraction at 800x640 (published
   defaults), seconds per image.

Everything is written to ``OUT/gpu_check.json`` and a markdown table ``OUT/gpu_check.md``.
``--device cpu --tiny`` runs the same steps at toy sizes, which is how the test suite keeps
this script working on machines without a GPU.

    python -m benchmarks.gpu_check --device cuda --out outputs/gpu_check
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
COCO_TRAIN2014 = 82_783
TINY_MODEL = ["model.channels=[8,8,16,16]", "model.head_channels=16"]


def precisions(device: str) -> list[str]:
    """Mixed precisions to train in on ``device``."""
    if device.startswith("cuda"):
        return ["bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp16"]
    from engine.devices import cpu_has_native_bf16

    return ["bf16"] if cpu_has_native_bf16() else ["fp32"]


def train_run(module: str, argv: list[str]) -> dict[str, Any]:
    """Run ``<module>.run(argv)`` in this process; images/s and the last losses."""
    runner = __import__(module)
    start = time.perf_counter()
    trainer = runner.run(argv)
    wall = time.perf_counter() - start
    batch = trainer.tconf["batch_size"] * trainer.dist.world_size
    val = trainer.validate()
    loss = float(val.get("loss/total", float("nan")))
    return {
        "steps": trainer.step,
        "images_per_s": round(batch * trainer.step / max(trainer.step_time_s, 1e-9), 2),
        "wall_s": round(wall, 1),
        "val_loss": loss,
        "finite": math.isfinite(loss),
    }


def check_training(args, out: Path) -> dict[str, Any]:
    """MagicPoint, SuperPoint and R2D2 in each precision (see module docstring)."""
    steps, results = args.steps, {}
    tiny = TINY_MODEL if args.tiny else []
    common = [
        f"train.max_steps={steps}",
        f"train.val_every={steps}",
        f"train.save_every={steps}",
        "train.val_batches=1",
        f"train.num_workers={args.workers}",
        "--device",
        args.device,
        "--logdir",
        str(out / "logs"),
        "--overwrite",
    ]
    magicpoint_ckpt = None
    for precision in precisions(args.device):
        size = ["data.image_size=[64,80]", "train.batch_size=4"] if args.tiny else []
        name = f"magicpoint_{precision}"
        results[name] = train_run(
            "train_superpoint",
            [
                "configs/magicpoint_shapes.yaml",
                *common,
                *tiny,
                *size,
                "--precision",
                precision,
                "--exp",
                name,
            ],
        )
        magicpoint_ckpt = out / "logs" / name / "checkpoints" / "best.pt"
        print(f"{name}: {results[name]}", flush=True)

    labels, photos = out / "ha_labels", out / "photos"
    write_photos(photos)
    export = [
        sys.executable,
        "export.py",
        "homography_adaptation",
        "configs/magicpoint_coco_export.yaml",
        "data.layout=folder",
        f"export.num_homographies={4 if args.tiny else 100}",
        f"export.device={args.device}",
        "--images",
        "builtin",
        "--checkpoint",
        str(magicpoint_ckpt),
        "--out",
        str(labels),
    ]
    subprocess.run(export, cwd=ROOT, check=True)
    for precision in precisions(args.device):
        name = f"superpoint_{precision}"
        size = ["data.image_size=[64,80]", "train.batch_size=2"] if args.tiny else []
        results[name] = train_run(
            "train_superpoint",
            [
                "configs/superpoint_coco.yaml",
                *common,
                *tiny,
                *(["model.descriptor_dim=16"] if args.tiny else []),
                *size,
                "data.root=builtin",
                "data.layout=folder",
                f"data.labels_dir={labels}",
                "--precision",
                precision,
                "--exp",
                name,
            ],
        )
        print(f"{name}: {results[name]}", flush=True)
        name = f"r2d2_{precision}"
        size = ["data.crop=48", "train.batch_size=2"] if args.tiny else []
        results[name] = train_run(
            "train_r2d2",
            [
                "configs/r2d2_demo_builtin.yaml",
                *common,
                *size,
                f"data.sources.photos.root={photos}",
                "data.sources.photos.list=null",
                "train.epochs=0",
                "--precision",
                precision,
                "--exp",
                name,
            ],
        )
        print(f"{name}: {results[name]}", flush=True)
    return results


def write_photos(folder: Path) -> None:
    """The built-in photographs as PNG files (R2D2 pairs read a folder)."""
    import cv2

    from datasets.hpatches_demo import load_photos

    folder.mkdir(parents=True, exist_ok=True)
    for name, rgb in load_photos("builtin"):
        image = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / f"{name}.png"), image)


def check_ddp(args, out: Path) -> dict[str, Any]:
    """Two or more processes through torchrun: NCCL on GPUs, Gloo with ``--device cpu``."""
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    procs = gpus if gpus >= 2 else (2 if args.device == "cpu" else 0)
    if procs == 0:
        return {"skipped": f"{gpus} GPU visible; NCCL DDP needs 2 or more"}
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={procs}",
        "train_superpoint.py",
        "configs/magicpoint_shapes.yaml",
        f"train.max_steps={args.steps}",
        f"train.val_every={args.steps}",
        f"train.save_every={args.steps}",
        "train.val_batches=1",
        "train.num_workers=0",
        *(
            TINY_MODEL + ["data.image_size=[64,80]", "train.batch_size=2"]
            if args.tiny
            else []
        ),
        "--device",
        "cuda" if gpus else "cpu",
        "--logdir",
        str(out / "logs"),
        "--exp",
        "ddp",
        "--overwrite",
    ]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"DDP run failed:\n{proc.stderr[-3000:]}")
    backend = "nccl" if gpus else "gloo"
    return {
        "processes": procs,
        "backend": backend,
        "wall_s": time.perf_counter() - start,
    }


def check_homographic_adaptation(args) -> dict[str, Any]:
    """Images/s of batched HA at 240x320 with 100 homographies, and the COCO projection."""
    from datasets.hpatches_demo import load_photos
    from engine.devices import resolve_precision
    from models.superpoint import MagicPoint
    from pipelines.homographic_adaptation import (
        homographic_adaptation,
        model_detector,
        sample_homographies,
    )

    shape, num = ((64, 80), 4) if args.tiny else ((240, 320), 100)
    device = torch.device(args.device)
    conf = {"channels": [8, 8, 16, 16], "head_channels": 16} if args.tiny else {}
    model = MagicPoint(conf).to(device)
    precision = resolve_precision("auto", device)
    if precision == "fp16":
        precision = "fp32"  # model_detector casts the network; bf16 or fp32 only
    detector = model_detector(model, precision, channels_last=device.type == "cpu")
    photos = []
    for _, photo in load_photos("builtin")[: 2 if args.tiny else 8]:
        gray = photo if photo.ndim == 2 else photo.mean(-1)
        import cv2

        gray = cv2.resize(gray.astype(np.float32), shape[::-1])
        photos.append(torch.from_numpy(gray / 255.0)[None, None].float().to(device))
    homographies = [
        sample_homographies(shape, num, np.random.default_rng(k))
        for k in range(len(photos))
    ]
    homographic_adaptation(photos[0], detector, homographies[0][:4])
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for image, Hs in zip(photos, homographies):
        homographic_adaptation(image, detector, Hs, batch_size=100 if num > 25 else 25)
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = len(photos) / (time.perf_counter() - start)
    return {
        "size": f"{shape[0]}x{shape[1]}",
        "homographies": num,
        "precision": precision,
        "images_per_s": round(rate, 3),
        "coco_train2014_hours": round(COCO_TRAIN2014 / rate / 3600, 2),
    }


def check_extraction(args) -> dict[str, Any]:
    """Seconds per image: SuperPoint at 480x640, R2D2 multi-scale at 800x640."""
    from models.extractor import Extractor
    from models.r2d2 import R2D2Extractor
    from models.r2d2_net import R2D2Net
    from models.superpoint import SuperPoint

    device = args.device
    sp_shape, r2_shape = (
        ((64, 80), (96, 128)) if args.tiny else ((480, 640), (640, 800))
    )
    sp_conf = {"channels": [8, 8, 16, 16], "head_channels": 16} if args.tiny else {}
    superpoint = Extractor(SuperPoint(sp_conf), "superpoint", device=device)
    r2d2_net = R2D2Net(**({"mchan": 1} if args.tiny else {}))
    r2d2 = R2D2Extractor(
        {"min_size": 32 if args.tiny else 256}, net=r2d2_net.to(device)
    )
    results = {}
    for kind, extractor, shape in (
        ("superpoint", superpoint, sp_shape),
        ("r2d2_multiscale", r2d2, r2_shape),
    ):
        name = f"{kind}_{shape[1]}x{shape[0]}"
        channels = 1 if kind == "superpoint" else 3
        image = torch.rand(1, channels, *shape, device=device)
        extractor(image)
        times = []
        for _ in range(args.repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            extractor(image)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        results[name] = {"seconds": round(float(np.median(times)), 4)}
    return results


def markdown(report: dict[str, Any]) -> str:
    """The README table of a report."""
    lines = [f"Device: {report['device_name']}", "", "| check | result |", "|---|---|"]
    for name, row in report["training"].items():
        lines.append(
            f"| train {name} ({row['steps']} steps) | {row['images_per_s']} images/s, "
            f"val loss {row['val_loss']:.4g} ({'finite' if row['finite'] else 'NOT finite'}) |"
        )
    ddp = report["ddp"]
    lines.append(
        f"| DDP | {ddp['skipped']} |"
        if "skipped" in ddp
        else f"| DDP | {ddp['processes']} processes, {ddp['backend']}, ok |"
    )
    ha = report["homographic_adaptation"]
    lines.append(
        f"| HA {ha['size']}, {ha['homographies']} homographies ({ha['precision']}) | "
        f"{ha['images_per_s']} images/s; COCO train2014: {ha['coco_train2014_hours']} h |"
    )
    for name, row in report["extraction"].items():
        lines.append(f"| extraction {name} | {row['seconds']} s per image |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the checks and write the report (see the module docstring)."""
    sys.path.insert(0, str(ROOT))
    from utils.arguments import ArgumentParser

    parser = ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument(
        "--device",
        default="cuda",
        help="cuda, cuda:<i> or cpu (with --tiny for a test)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="toy sizes: checks the script, not the speed",
    )
    parser.add_argument(
        "--steps", type=int, default=300, help="training steps per run (default: 300)"
    )
    parser.add_argument(
        "--workers", type=int, default=4, help="loader workers per run (default: 4)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed extractions (default: 5)"
    )
    parser.add_argument(
        "--out",
        default="outputs/gpu_check",
        help="output folder (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_check: CUDA is not available; use --device cpu --tiny", file=sys.stderr
        )
        return 2
    os.chdir(ROOT)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from engine.devices import cpu_line

    name = (
        torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda")
        else cpu_line()
    )
    report: dict[str, Any] = {"device": args.device, "device_name": name}
    report["training"] = check_training(args, out)
    report["ddp"] = check_ddp(args, out)
    print(f"ddp: {report['ddp']}", flush=True)
    report["homographic_adaptation"] = check_homographic_adaptation(args)
    print(f"homographic adaptation: {report['homographic_adaptation']}", flush=True)
    report["extraction"] = check_extraction(args)
    print(f"extraction: {report['extraction']}", flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
