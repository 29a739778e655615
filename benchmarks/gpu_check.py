"""The CUDA path end to end, strict: every command trains, resumes, extracts and evaluates.

    bash scripts/gpu_check.sh                          # one GPU machine, ~10 minutes
    bash scripts/gpu_check.sh --only 'train_r2d2*'     # one step (and what it needs)
    bash scripts/gpu_check.sh --device cpu --tiny      # the script itself, on a CPU

The steps (``benchmarks/gpu_check_plan.py``): every ``train_*.py`` task for ``--steps`` steps
in bf16 and fp16 (fp16 alone where ``engine.devices.resolve_precision("auto", device)`` picks
fp16), ``--resume`` of the engine's and of the refiner's run, data-parallel training through
``torchrun`` for every task that supports it (two processes; on a one-GPU machine both share
the GPU, over Gloo when NCCL refuses), homographic adaptation sharded with ``torchrun``,
``extract.py`` (SuperPoint, R2D2), tracking, ``export.py reconstruct``, every
``evaluation.py`` sub-command with ``--device``, inference throughput, and a few CPU steps of
each training for comparison. Each step has its own timeout and is checked (exit code,
checkpoint of the expected step, finite losses, the resumed step, outputs written); a step
whose input failed is skipped. ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` hold every
step's status, time and figures (images/s, against the CPU), ``OUT/step_logs/`` their
output. The exit status is 0 when every step passed, else 1 with the failed steps named.

``--fail-step NAME`` replaces that step by a failing command: the test suite checks with it
that a failure is reported. ``--tiny`` runs toy sizes with the commands in this process.
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def select(plan: list, patterns: list[str] | None) -> list:
    """The steps matching any of ``patterns`` (fnmatch) and every step they need."""
    if not patterns:
        return plan
    by_name = {step.name: step for step in plan}
    wanted = {s.name for s in plan if any(fnmatch.fnmatch(s.name, p) for p in patterns)}
    todo = list(wanted)
    while todo:
        for need in by_name[todo.pop()].needs:
            if need not in wanted:
                wanted.add(need)
                todo.append(need)
    return [step for step in plan if step.name in wanted]


def write_inputs(out: Path, tiny: bool) -> None:
    """Photographs, HPatches-style sequences and depth maps (the ``setup`` step)."""
    import cv2

    import data_gen
    from datasets.hpatches_demo import generate, load_photos

    photos = out / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    size = (128, 96) if tiny else (320, 240)
    for name, rgb in load_photos("builtin")[: 6 if tiny else None]:
        image = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(photos / f"{name}.png"), image)
    generate(
        "builtin",
        out / "hpatches",
        num_sequences=1 if tiny else 4,
        max_size=96 if tiny else 480,
        progress=False,
    )
    argv = ["pointclouds", "--procedural", "2" if tiny else "8", "--size"]
    argv += ["24,32" if tiny else "96,128", "--out", str(out / "clouds")]
    if data_gen.main(argv) != 0:
        raise RuntimeError("data_gen.py pointclouds failed")


def throughput(results: dict, plan: list) -> list[dict[str, Any]]:
    """Images/s of each training run, with the CPU's where a ``cpu_<task>`` step ran."""
    rows = []
    for step in plan:
        result = results.get(step.name)
        if step.kind not in ("train", "ddp") or result is None:
            continue
        rate = result.metrics.get("images_per_s")
        cpu = results.get(f"cpu_{step.task}")
        cpu_rate = cpu.metrics.get("images_per_s") if cpu else None
        rows.append(
            {
                "step": step.name,
                "precision": step.precision,
                "images_per_s": rate,
                "cpu_images_per_s": cpu_rate,
                "speedup": round(rate / cpu_rate, 1) if rate and cpu_rate else None,
            }
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    """The tables of ``gpu_check.md``."""
    lines = [
        f"Device: {report['device_name']} ({report['device']}); torch "
        f"{report['torch']}, CUDA {report['cuda'] or '-'}; precisions "
        f"{', '.join(report['precisions'])}; {report['total_seconds']:.0f} s in all.",
        "",
        "| step | status | seconds | result |",
        "|---|---|---|---|",
    ]
    for row in report["steps"]:
        detail = "; ".join(row["problems"]) or ", ".join(
            f"{k}={v}" for k, v in row["metrics"].items()
        )
        lines.append(
            f"| {row['name']} | {row['status']} | {row['seconds']} | {detail} |"
        )
    lines += [
        "",
        "| training | images/s | CPU images/s | speed-up |",
        "|---|---|---|---|",
    ]
    for row in report["throughput"]:
        lines.append(
            f"| {row['step']} | {row['images_per_s']} | {row['cpu_images_per_s']} | "
            f"{row['speedup']} |"
        )
    speed = report.get("speed") or {}
    if speed:
        ha = speed["homographic_adaptation"]
        lines += [
            "",
            f"Homographic adaptation {ha['size']}, {ha['homographies']} homographies "
            f"({ha['precision']}): {ha['images_per_s']} images/s; COCO train2014: "
            f"{ha['coco_train2014_hours']} h.",
        ]
        for name, row in speed["extraction"].items():
            lines.append(f"Extraction {name}: {row['seconds']} s per image.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None):
    from utils.arguments import ArgumentParser

    parser = ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--device", default="cuda", help="cuda, cuda:<i> or cpu")
    parser.add_argument(
        "--tiny", action="store_true", help="toy sizes, in this process (a test)"
    )
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument(
        "--resume-steps", type=int, default=20, help="steps added by --resume"
    )
    parser.add_argument("--ddp-steps", type=int, default=30, help="steps under DDP")
    parser.add_argument(
        "--cpu-steps", type=int, default=2, help="CPU steps of the comparison"
    )
    parser.add_argument("--only", nargs="+", help="step name patterns (with needs)")
    parser.add_argument("--list", action="store_true", help="print the plan, run none")
    parser.add_argument("--fail-step", help="make this step fail (tests the check)")
    parser.add_argument(
        "--out", default="outputs/gpu_check", help="output folder (%(default)s)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the plan and write the report (see the module docstring)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks.gpu_check_plan import Machine, build_plan, train_precisions
    from benchmarks.gpu_check_run import Runner, command_line
    from engine.devices import resolve_precision

    args = parse_args(argv)
    cuda = args.device.startswith("cuda")
    # Without CUDA, --list shows the plan of a one-GPU machine with native bf16.
    plan_only = cuda and not torch.cuda.is_available()
    if plan_only and not args.list:
        print(
            "gpu_check: CUDA is not available; use --device cpu --tiny", file=sys.stderr
        )
        return 2
    if cuda and ":" in args.device and not plan_only:
        # Every step, torchrun's included, sees the chosen GPU alone, as cuda:0.
        index = int(args.device.split(":")[1])
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(64)]
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[index]
        args.device = "cuda"
    os.chdir(ROOT)
    out = Path(args.out).resolve()
    device = torch.device(args.device)
    if plan_only:
        machine = Machine("cuda", 1, "bf16")
    else:
        machine = Machine(
            args.device,
            torch.cuda.device_count() if cuda else 0,
            resolve_precision("auto", device),
        )
    plan = build_plan(
        machine,
        out,
        tiny=args.tiny,
        steps=args.steps,
        resume_steps=args.resume_steps,
        ddp_steps=args.ddp_steps,
        cpu_steps=args.cpu_steps,
    )
    plan = select(plan, args.only)
    if args.list:
        for step in plan:
            print(f"{step.name} [{step.timeout:.0f} s]: {' '.join(command_line(step))}")
        return 0
    from engine.devices import cpu_line

    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if cuda else cpu_line()
    print(f"gpu_check on {name}: {len(plan)} steps", flush=True)
    start = time.perf_counter()
    runner = Runner(
        out,
        out / "photos",
        in_process=args.tiny,
        fail_step=args.fail_step,
        setup=lambda: write_inputs(out, args.tiny),
    )
    if args.tiny:
        # Toy tensors gain nothing from intra-op threads; on a busy machine they only wait.
        torch.set_num_threads(1)
    results = runner.run(plan)
    speed_file = out / "outputs" / "speed.json"
    report = {
        "device": args.device,
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "precisions": train_precisions(machine),
        "total_seconds": round(time.perf_counter() - start, 1),
        "steps": [vars(result) for result in results.values()],
        "throughput": throughput(results, plan),
        "speed": json.loads(speed_file.read_text()) if speed_file.is_file() else None,
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    failed = [r.name for r in results.values() if r.status == "failed"]
    skipped = [r.name for r in results.values() if r.status == "skipped"]
    print(f"gpu_check: {report['total_seconds']:.0f} s; report in {out}/gpu_check.md")
    if failed or skipped:
        note = f" (skipped: {', '.join(skipped)})" if skipped else ""
        print(
            f"gpu_check: FAILED: {', '.join(failed) or 'none'}{note}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
