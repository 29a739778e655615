"""MagicPoint training throughput at 120x160: every speed switch against plain eager fp32.

Part 1 times optimisation steps on one fixed batch (compute only), side by side with the
plain eager fp32 baseline (contiguous memory): channels-last, ``torch.compile`` (inductor),
their combination, and bf16 autocast where the CPU runs it natively (skipped with a note
elsewhere). Part 2 runs the real engine on Synthetic Shapes (photometric + homographic
augmentation; drawn on the fly, or read from the main job's shape cache with ``--cache``)
with each placement of loader workers and compute threads on the machine's cores, and
reports images/s and the share of step time spent waiting for data. ``--widths`` includes
the main job's CPU recipes (``amx_recipe``, ``small_recipe``).

    python -m benchmarks.bench_magicpoint_training [--batch-size 32] [--steps 10]
        [--widths amx_recipe small_recipe] [--cache data/synthetic_shapes_120x160]

To measure what an AVX2-only CPU does on a newer one, cap the instruction set:
``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python -m benchmarks...`` (the CPU line
says so).
"""

from __future__ import annotations

import os
import tempfile

import torch

from benchmarks.common import items_per_second, native_precisions, print_header
from datasets.synthetic_shapes import SyntheticShapes
from engine.distributed import DistInfo
from engine.state import seed_everything
from engine.trainer import Trainer
from losses.detector import detector_loss
from models import build_model
from utils.arguments import ArgumentParser
from utils.config import load_config

WIDTHS = {
    "full": ([64, 64, 128, 128], 256),
    "three_quarter": ([48, 48, 96, 96], 192),
    "half": ([32, 32, 64, 64], 128),
    "quarter": ([16, 16, 32, 32], 64),
    # The main job's CPU recipes (configs/magicpoint_shapes_cpu.yaml, _avx2, _avx512bf16):
    # half width with a quarter-width first block, and a narrower one.
    "amx_recipe": ([16, 32, 64, 64], 128),
    "small_recipe": ([8, 16, 32, 64], 128),
}


def model_conf(width: str) -> dict:
    channels, head = WIDTHS[width]
    return {"name": "magicpoint", "channels": channels, "head_channels": head}


def compute_throughput(
    width: str,
    precision: str,
    channels_last: bool,
    batch: int,
    steps: int,
    compile_model: bool = False,
):
    seed_everything(0)
    model = build_model(model_conf(width))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    images = torch.rand(batch, 1, 120, 160)
    keypoint_map = (torch.rand(batch, 120, 160) < 0.002).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    network = torch.compile(model) if compile_model else model

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            pred = network({"image": images})
        detector_loss(pred["logits"], keypoint_map).backward()
        optimizer.step()

    return items_per_second(step, batch, steps)


def engine_run(
    config: str,
    width: str,
    precision: str,
    batch: int,
    steps: int,
    workers: int,
    threads: int = 0,
    compile_model: bool = False,
    cache: str | None = None,
):
    overrides = [f"data.cache_dir={cache}"] if cache else []
    overrides += [
        f"train.num_threads={threads}",
        f"train.compile={str(compile_model).lower()}",
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


def main(argv: list[str] | None = None) -> None:
    """Print the throughput tables (see the module docstring)."""
    parser = ArgumentParser(
        prog="python -m benchmarks.bench_magicpoint_training",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per step")
    parser.add_argument(
        "--steps", type=int, default=10, help="timed compute-only steps"
    )
    parser.add_argument(
        "--engine-steps", type=int, default=60, help="steps of each real-engine run"
    )
    parser.add_argument(
        "--widths",
        nargs="+",
        default=["half", "full"],
        choices=sorted(WIDTHS),
        help="network widths (encoder channels 64-64-128-128 x 1, 3/4, 1/2, 1/4)",
    )
    parser.add_argument(
        "--config",
        default="configs/magicpoint_shapes_cpu.yaml",
        help="config whose data section the real-engine runs use",
    )
    parser.add_argument(
        "--cache",
        help="shape cache of data_gen.py synthetic_shapes for part 2 (as the main job); "
        "without it the shapes are drawn on the fly",
    )
    parser.add_argument(
        "--skip-engine", action="store_true", help="part 1 (compute only) only"
    )
    parser.add_argument(
        "--skip-compile", action="store_true", help="no torch.compile rows in part 1"
    )
    parser.add_argument(
        "--engine-compile",
        action="store_true",
        help="also run the engine with train.compile (slow to start)",
    )
    args = parser.parse_args(argv)
    print_header(
        f"MagicPoint training, 120x160, batch {args.batch_size} "
        "(images/s; ratios against plain eager fp32 measured in this run)"
    )
    precisions = native_precisions()
    variants = [("fp32", False, False), ("fp32", True, False), ("fp32", True, True)]
    if "bf16" in precisions:
        variants += [("bf16", True, False), ("bf16", True, True)]
    if args.skip_compile:
        variants = [v for v in variants if not v[2]]
    print("\n1) compute only (fixed batch)")
    print(
        f"{'network':>8} {'precision':>9} {'layout':>14} {'compile':>8} {'img/s':>8} {'ratio':>7}"
    )
    for width in args.widths:
        base = None
        for precision, channels_last, compiled in variants:
            layout = "channels_last" if channels_last else "contiguous"
            row = f"{width:>8} {precision:>9} {layout:>14} {str(compiled):>8}"
            try:
                rate = compute_throughput(
                    width,
                    precision,
                    channels_last,
                    args.batch_size,
                    args.steps,
                    compiled,
                )
            except Exception as err:  # an inductor failure is a result, not a crash
                print(f"{row}   failed: {type(err).__name__}: {str(err)[:80]}")
                continue
            base = base or rate
            print(f"{row} {rate:8.1f} {rate / base:6.2f}x", flush=True)
    if args.skip_engine:
        return
    cores = os.cpu_count() or 1
    source = f"from the cache {args.cache}" if args.cache else "drawn on the fly"
    print(f"\n2) real engine, Synthetic Shapes {source} ({cores} cores)")
    print(
        f"{'network':>8} {'precision':>9} {'workers':>7} {'threads':>7} "
        f"{'compile':>8} {'img/s':>8} {'wait':>6}"
    )
    best = precisions[-1]
    placements = [(2, cores), (1, cores), (2, max(1, cores - 1)), (0, cores)]
    runs = [("fp32", 2, cores, False)]
    runs += [(best, w, th, False) for (w, th) in placements]
    runs += [(best, 1, cores, True)] if args.engine_compile else []
    for width in args.widths[:1]:
        for precision, workers, threads, compiled in runs:
            row = f"{width:>8} {precision:>9} {workers:>7} {threads:>7} {str(compiled):>8}"
            try:
                speed, wait = engine_run(
                    args.config,
                    width,
                    precision,
                    args.batch_size,
                    args.engine_steps,
                    workers,
                    threads,
                    compiled,
                    args.cache,
                )
            except Exception as err:
                print(f"{row}   failed: {type(err).__name__}: {str(err)[:80]}")
                continue
            print(f"{row} {speed:8.1f} {100 * wait:5.1f}%", flush=True)


if __name__ == "__main__":
    main()
