"""Where the 2 cores go in the main job (``scripts/main_job.sh``): a profile of one recipe.

Each part of the job is timed on a sample in this process, one thread, as CPU seconds
(``time.process_time``, which a busy machine disturbs far less than wall time), and scaled
by how often the job does it: the shape cache (drawing the training and validation
shapes), per training image the cache read, photometric and homographic augmentation and
building the sample (cut to the recipe's ``data.crop`` window, if any), per batch the
collation, the forward pass with the loss and the backward pass with the optimiser step,
the validations, the checkpoints, TensorBoard's panels, and the evaluation (drawing the
clean and noisy test sets, the network, each OpenCV baseline with its NMS and matching,
scoring the network). It prints each part's core-seconds and share of the job, and the
job's wall time predicted on 2 cores: the core-seconds over 2 cores at
``--parallel-efficiency`` (the 2-thread training step's throughput over twice the 1-thread
one, 0.95 by default; time it on a quiet machine).
The per-image cost of drawing shapes on the fly is printed too, for comparison with the
cache.

    python -m benchmarks.bench_main_job_profile [--config CONFIG] [--images 180]

Cap the instruction set to profile another CPU kind, e.g. ``ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2`` (the CPU line says so); without ``--config`` the recipe is the
one ``scripts/main_job.sh`` picks here.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_header  # noqa: E402
from datasets.base import keypoint_sample  # noqa: E402
from datasets.synthetic_shapes import (  # noqa: E402
    SyntheticShapes,
    augmentation_rng,
    generate_main,
)
from datasets.synthetic_shapes.dataset import random_crop  # noqa: E402
from engine.data import collate  # noqa: E402
from engine.devices import autocast, resolve_precision  # noqa: E402
from engine.state import build_optimizer, seed_everything  # noqa: E402
from evaluators.synthetic_scoring import score_network  # noqa: E402
from evaluators.synthetic_shapes import (  # noqa: E402
    CLASSICAL,
    ClassicalScoring,
    ScoringSettings,
    _test_set,
    build_parser,
)
from models import build_model  # noqa: E402
from utils.arguments import ArgumentParser  # noqa: E402
from utils.io import atomic_torch_save  # noqa: E402


def cpu_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """CPU seconds of one call of ``fn``: the fastest of ``repeats`` calls, the least
    disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


class Profile:
    """Rows of ``(part, core-seconds of the whole job, how it was counted)``."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, str]] = []

    def add(self, part: str, unit_s: float, count: int, unit: str) -> None:
        note = f"{1e3 * unit_s:8.3f} ms x {count:>7} {unit}"
        self.rows.append((part, unit_s * count, note))

    def print(self, efficiency: float, cores: int = 2) -> None:
        total = sum(seconds for _, seconds, _ in self.rows)
        print(f"\n{'part':<36} {'core-s':>8} {'share':>6}   per unit x count")
        for part, seconds, note in self.rows:
            print(f"{part:<36} {seconds:8.1f} {100 * seconds / total:5.1f}%   {note}")
        wall = total / (cores * efficiency)
        print(
            f"{'whole job':<36} {total:8.1f} 100.0%   -> {wall / 60:.1f} min on "
            f"{cores} cores at parallel efficiency {efficiency:.2f}"
        )


def data_parts(conf: dict, images: int, profile: Profile, steps: int, batch: int):
    """Shape cache, per-image augmentation and batch collation; returns a batch."""
    data_conf = {k: v for k, v in conf["data"].items() if k != "name"}
    sizes = data_conf["split_sizes"]
    h, w = data_conf["image_size"]
    per_primitive = max(1, images // 9)
    with tempfile.TemporaryDirectory() as cache:
        args = ["--out", cache, "--size", str(h), str(w), "--splits", "train"]
        args += ["--split-sizes", f"train={per_primitive}", "--workers", "1"]
        start = time.process_time()
        generate_main(args)
        draw = (time.process_time() - start) / (9 * per_primitive)
        n_cached = 9 * (sizes["train"] + sizes["val"])
        profile.add("shape cache: drawing", draw, n_cached, "images")
        small = {**data_conf, "cache_dir": cache}
        small["split_sizes"] = {**sizes, "train": per_primitive}
        dataset = SyntheticShapes(small, "train")
        parts = {"read": [], "photometric": [], "homographic": [], "sample": []}
        for _ in range(3):  # the fastest of 3 passes: the least disturbed by load
            totals = dict.fromkeys(parts, 0.0)
            samples = []
            for index in range(len(dataset)):
                t0 = time.process_time()
                image, points, primitive = dataset.content(index)
                t1 = time.process_time()
                _, j = dataset.locate(index)
                rng = augmentation_rng(0, primitive, "train", j, 1)
                image = dataset.aug.photometric_step(image, rng)
                t2 = time.process_time()
                image, points, mask = dataset.aug.homographic_step(image, points, rng)
                t3 = time.process_time()
                if dataset.crop is not None:  # the recipe's training windows
                    image, points, mask = random_crop(
                        image, points, mask, dataset.crop, rng
                    )
                samples.append(
                    {**keypoint_sample(image, points, mask), "primitive": primitive}
                )
                t4 = time.process_time()
                for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    totals[key] += dt
            for key in parts:
                parts[key].append(totals[key] / len(samples))
    seen = steps * batch
    for key, label in (
        ("read", "data: cache read"),
        ("photometric", "data: photometric augmentation"),
        ("homographic", "data: homographic augmentation"),
        ("sample", "data: sample building"),
    ):
        profile.add(label, min(parts[key]), seen, "images")
    samples = (samples * (batch // len(samples) + 1))[:batch]
    profile.add(
        "data: collation", cpu_seconds(lambda: collate(samples), 5), steps, "batches"
    )
    return collate(samples), draw


def training_parts(conf, batch, profile: Profile, steps: int, device) -> dict:
    """Forward + loss and backward + optimiser step of the recipe's network."""
    tconf = conf["train"]
    precision = resolve_precision(tconf["precision"], device)
    seed_everything(0)
    model = build_model(conf["model"], conf["loss"])
    if tconf["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        batch = {
            k: v.contiguous(memory_format=torch.channels_last) if k == "image" else v
            for k, v in batch.items()
        }
    optimizer = build_optimizer(model.parameters(), tconf)
    forward_s, backward_s = [], []
    for _ in range(8):
        t0 = time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            pred = model(batch)
        losses, _ = model.loss(pred, batch)
        t1 = time.process_time()
        losses["total"].backward()
        optimizer.step()
        t2 = time.process_time()
        forward_s.append(t1 - t0)
        backward_s.append(t2 - t1)
    forward, backward = min(forward_s[2:]), min(backward_s[2:])
    profile.add(f"training: forward + loss ({precision})", forward, steps, "steps")
    profile.add("training: backward + optimiser", backward, steps, "steps")
    return {"model": model, "optimizer": optimizer, "forward": forward}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m benchmarks.bench_main_job_profile",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--config", help="recipe (default: the main job's choice here)")
    parser.add_argument(
        "--images", type=int, default=180, help="sample of images per measured part"
    )
    parser.add_argument(
        "--parallel-efficiency",
        type=float,
        default=0.95,
        help="2-thread throughput over twice the 1-thread one (for the prediction)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from scripts.main_job_recipe import choose, describe, resolve

    config = args.config or choose()[0]
    conf = resolve(config)
    device = torch.device("cpu")
    tconf = conf["train"]
    steps, bs = tconf["max_steps"], tconf["batch_size"]
    print_header(f"Main job profile: {config} ({describe(conf)}), one thread, CPU time")

    profile = Profile()
    batch, draw = data_parts(conf, args.images, profile, steps, bs)
    trained = training_parts(conf, batch, profile, steps, device)
    n_val = 9 * conf["data"]["split_sizes"]["val"]
    if tconf["val_batches"] > 0:
        n_val = min(n_val, tconf["val_batches"] * bs)
    validations = steps // tconf["val_every"] + (steps % tconf["val_every"] > 0)
    profile.add(
        "validation: forward + loss",
        trained["forward"] / bs,
        validations * n_val,
        "images",
    )
    with tempfile.TemporaryDirectory() as tmp:
        state = {
            "model": trained["model"].state_dict(),
            "optimizer": trained["optimizer"].state_dict(),
        }
        save = cpu_seconds(lambda: atomic_torch_save(state, Path(tmp) / "c.pt"), 3)
    saves = steps // tconf["save_every"] + validations
    profile.add("checkpoints (last_*.pt, best.pt)", save, saves, "files")

    eval_args = build_parser().parse_args([])
    n_test = 9 * eval_args.num_images
    data_conf = {k: v for k, v in conf["data"].items() if k != "augmentation"}
    few = max(1, args.images // 9)
    for variant in ("clean", "noisy"):
        dataset = _test_set(data_conf, variant == "noisy", few)
        samples = [dataset[i] for i in range(len(dataset))]
        draw_test = cpu_seconds(lambda d=dataset: [d[i] for i in range(len(d))], 2)
        profile.add(
            f"evaluation: drawing {variant} test set",
            draw_test / len(samples),
            n_test,
            "images",
        )
    settings = ScoringSettings.from_args(eval_args)
    for method in CLASSICAL:
        scoring = ClassicalScoring([method], settings)
        per_image = cpu_seconds(lambda f=scoring: f(samples), 2) / len(samples)
        profile.add(
            f"evaluation: {method} (+NMS, matching)", per_image, 2 * n_test, "images"
        )
    model = trained["model"].eval()
    precision = resolve_precision("auto", device)
    images = collate(samples)["image"][:bs]
    gt = [np.zeros((0, 2))] * len(images)

    def network() -> None:  # as the evaluator's loader workers score a batch
        with autocast(device, precision):
            score_network(model, images, gt, settings)

    network()
    per_image = cpu_seconds(network, 2) / len(images)
    profile.add(
        f"evaluation: network ({precision}, +NMS, matching)",
        per_image,
        2 * n_test,
        "images",
    )
    profile.print(args.parallel_efficiency)
    per_step = sum(s for p, s, _ in profile.rows if p.startswith(("data", "training")))
    print(
        f"\nper training image: {1e3 * per_step / (steps * bs):.2f} core-ms from the "
        f"cache; drawing on the fly would add {1e3 * draw:.2f} core-ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
