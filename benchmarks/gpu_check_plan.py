"""What ``scripts/gpu_check.sh`` runs: every step, its command, size, timeout and checks.

:func:`build_plan` is a pure function of the options and of the machine (device, visible GPUs,
the precision ``engine.devices.resolve_precision("auto", device)`` picks), so the GPU plan can
be read and tested on a machine without a GPU. The steps, in order:

* ``setup``: small real photographs, HPatches-style sequences and depth maps (no downloads);
* ``train_<task>_<precision>``: every training task (MagicPoint, SuperPoint, R2D2, coarse
  inversion, GAN refiner, point cloud) for ``steps`` steps, in bf16 and in fp16 on a GPU whose
  ``auto`` precision is bf16, in fp16 alone on one whose ``auto`` is fp16 (bf16 would be
  emulated there), in the CPU's ``auto`` precision on the CPU. SuperPoint trains on
  homographic adaptation labels of the MagicPoint run (``ha_labels``), the refiner over the
  coarse run; ``train_pointcloud_shift`` gives the point-cloud evaluation its second model;
* ``resume_magicpoint``, ``resume_refine``: both runs continued with ``--resume`` for
  ``resume_steps`` more steps (the engine's step, and the refiner's own step and state);
  the step they resumed from is checked;
* ``ddp_<task>``: two processes through ``torchrun`` for every task that runs under it (all
  but the refiner); with one GPU both ranks share it (``benchmarks/shared_gpu.py``), over
  NCCL if it accepts that, else over Gloo on the GPU;
* ``ha_sharded``: homographic adaptation export split over two ``torchrun`` processes;
* ``extract_superpoint``, ``extract_r2d2``, ``tracking``, ``export_reconstruct`` and
  ``evaluate_<command>`` for each ``evaluation.py`` sub-command, all with ``--device``;
* ``speed``: homographic adaptation and extraction throughput (``benchmarks/gpu_speed.py``);
* ``cpu_<task>``: on a GPU, ``cpu_steps`` steps of each training on the CPU, the images/s the
  GPU is compared with.

``tiny`` shrinks every size (networks, images, data) so that the whole plan runs on a CPU in
the test suite; there only the first DDP task runs (the others have the same command shape).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Training tasks: script and recipe (a config file plus the data this check provides).
TASKS = {
    "magicpoint": ("train_superpoint.py", ["configs/magicpoint_shapes.yaml"]),
    "superpoint": (
        "train_superpoint.py",
        ["configs/superpoint_coco.yaml", "data.root={photos}", "data.layout=folder"]
        + ["data.labels_dir={labels}"],
    ),
    "r2d2": (
        "train_r2d2.py",
        ["configs/r2d2_demo_builtin.yaml", "data.sources.photos.root={photos}"]
        + ["data.sources.photos.list=null", "train.epochs=0"],
    ),
    "reconstruct": (
        "train_reconstruct.py",
        ["configs/inversion_sift.yaml", "data.images={photos}", "loss.perceptual=0"],
    ),
    "refine": (
        "train_refine.py",
        ["configs/refine_sift.yaml", "data.images={photos}", "loss.perceptual=0"]
        + ["model.coarse_checkpoint={coarse}"],
    ),
    "pointcloud": ("train_3d.py", ["configs/pointcloud_focal.yaml", "data.root=null"]),
}
SHIFT_MODEL = ("train_3d.py", ["configs/pointcloud_shift.yaml", "data.root=null"])
# train_refine.py runs in one process; every other training takes torchrun.
DDP_TASKS = ("magicpoint", "superpoint", "r2d2", "reconstruct", "pointcloud")
EVALUATIONS = ("synthetic_shapes", "hpatches", "pointcloud", "inversion")

TINY_SP = ["model.channels=[8,8,16,16]", "model.head_channels=16"]
TINY_INVERSION = ["data.crop=64", "data.scale=[64,96]", "data.eval_size=64"]
TINY_INVERSION += ["data.repeat=2", "data.extractor_conf={top_k: 300}"]
TINY_POINTS = ["data.procedural.count=6", "data.procedural.size=[24,32]"]
TINY_POINTS += ["data.train_split=0.67", "data.num_points=64", "model.head=[8]"]
# Toy sizes (tiny) and real-recipe data sizes (GPU) of each task.
SIZES = {
    True: {
        "magicpoint": ["data.image_size=[64,80]", *TINY_SP]
        + ["data.split_sizes={train: 8, val: 4, test: 4}"],
        "superpoint": ["data.image_size=[64,80]", "data.max_images=6", *TINY_SP]
        + ["data.val_fraction=0.34", "model.descriptor_dim=16"],
        "r2d2": ["data.crop=48", "data.scale=[64,96]", "data.synthetic.scale=[64,96]"]
        + ["data.val_pairs=2", "model.dim=16", "model.mchan=1", "loss.N=8"]
        + ["loss.sampler.border=8"],
        "reconstruct": [*TINY_INVERSION, "model.widths=[4,8]"],
        "refine": [*TINY_INVERSION, "model.widths=[4,8]", "model.coarse.widths=[4,8]"]
        + ["model.discriminator.widths=[4,8]"],
        "pointcloud": [*TINY_POINTS, "model.widths=[8,16]"],
        "pointcloud_shift": [*TINY_POINTS, "model.widths=[8,16]"],
    },
    False: {
        "magicpoint": [],
        "superpoint": [],
        "r2d2": [],
        "reconstruct": [],
        "refine": [],
        "pointcloud": ["data.procedural.count=128", "data.procedural.size=[96,128]"],
        "pointcloud_shift": ["data.procedural.count=128"]
        + ["data.procedural.size=[96,128]"],
    },
}
# Seconds per step kind: the GPU sizes, and the tiny ones on a busy 2-core CPU.
TIMEOUTS = {
    True: {"train": 300, "ddp": 300, "short": 240, "setup": 120},
    False: {"train": 240, "ddp": 240, "short": 180, "setup": 120},
}


@dataclass
class Step:
    """One check: a command (or the built-in ``setup``) and what its outputs must show.

    ``argv`` starts with a script of the repository (``train_r2d2.py``) or ``-m MODULE``;
    ``torchrun`` > 0 launches it with that many processes (through ``shared_gpu.py``).
    Afterwards: ``run_dir`` holds a checkpoint of step ``steps`` with finite losses in its
    TensorBoard events, the log says it resumed from ``resumed_from``, and every path of
    ``outputs`` exists (a folder: with files in it).
    """

    name: str
    kind: str
    argv: list[str]
    timeout: float
    needs: list[str] = field(default_factory=list)
    torchrun: int = 0
    env: dict[str, str] = field(default_factory=dict)
    run_dir: str | None = None
    steps: int = 0
    resumed_from: int | None = None
    outputs: list[str] = field(default_factory=list)
    task: str = ""
    precision: str = ""


@dataclass
class Machine:
    """What the plan depends on: the device string, visible GPUs, ``auto`` precision."""

    device: str
    gpus: int
    auto_precision: str
    cpu_count: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")


def train_precisions(machine: Machine) -> list[str]:
    """Training precisions, the ``auto`` one first (see the module docstring)."""
    if not machine.gpu:
        return [machine.auto_precision]
    return ["bf16", "fp16"] if machine.auto_precision == "bf16" else ["fp16"]


def build_plan(
    machine: Machine,
    out: Path,
    tiny: bool = False,
    steps: int = 200,
    resume_steps: int = 20,
    ddp_steps: int = 30,
    cpu_steps: int = 2,
) -> list[Step]:
    """Every step of the check, in order (see the module docstring)."""
    first = train_precisions(machine)[0]
    paths = {
        "photos": str(out / "photos"),
        "labels": str(out / "ha_labels"),
        "logs": str(out / "logs"),
        "hpatches": str(out / "hpatches"),
        "clouds": str(out / "clouds"),
        "out": str(out / "outputs"),
    }
    paths["coarse"] = checkpoint(paths["logs"], f"reconstruct_{first}")
    workers = 0 if tiny else max(1, min(8, machine.cpu_count // 2))
    timeouts = TIMEOUTS[tiny]

    def training(task: str, n: int, device: str, exp: str, precision: str) -> list[str]:
        script, recipe = SHIFT_MODEL if task == "pointcloud_shift" else TASKS[task]
        argv = [script, *(word.format(**paths) for word in recipe), *SIZES[tiny][task]]
        argv += ["train.batch_size=2"] if tiny else []
        argv += [f"train.max_steps={n}", f"train.val_every={n}", "train.val_batches=2"]
        argv += [f"train.save_every={n}", f"train.image_every={n}"]
        argv += [f"train.log_every={max(1, n // 2)}", f"train.num_workers={workers}"]
        argv += ["--device", device, "--logdir", paths["logs"], "--exp", exp]
        return argv + ["--precision", precision, "--overwrite"]

    def needs_of(task: str) -> list[str]:
        return {
            "superpoint": ["ha_labels"],
            "refine": [f"train_reconstruct_{first}"],
        }.get(task, [])

    def train_step(task, precision, name, kind="train", device=machine.device, n=steps):
        exp = name.removeprefix("train_")
        return Step(
            name,
            kind,
            training(task, n, device, exp, precision),
            timeouts["train"],
            needs=["setup", *needs_of(task)],
            run_dir=f"{paths['logs']}/{exp}",
            steps=n,
            task=task,
            precision=precision,
        )

    plan = [Step("setup", "setup", [], timeouts["setup"], outputs=[paths["photos"]])]
    for task in TASKS:
        if task == "superpoint":
            plan.append(
                ha_labels(paths, machine.device, tiny, first, timeouts["short"])
            )
        for precision in train_precisions(machine):
            plan.append(train_step(task, precision, f"train_{task}_{precision}"))
    plan.append(train_step("pointcloud_shift", first, "train_pointcloud_shift"))
    for task in ("magicpoint", "refine"):
        resumed = train_step(task, first, f"resume_{task}", "resume")
        resumed.argv = training(
            task, steps + resume_steps, machine.device, f"{task}_{first}", first
        )
        resumed.argv = [w for w in resumed.argv if w != "--overwrite"] + ["--resume"]
        resumed.run_dir = f"{paths['logs']}/{task}_{first}"
        resumed.steps, resumed.resumed_from = steps + resume_steps, steps
        resumed.needs.append(f"train_{task}_{first}")
        plan.append(resumed)
    shared = {"GPU_CHECK_SHARED": "1"} if machine.gpu and machine.gpus < 2 else {}
    ddp_device = "cuda" if machine.gpu else "cpu"
    for task in DDP_TASKS[:1] if tiny else DDP_TASKS:
        step = train_step(task, first, f"ddp_{task}", "ddp", ddp_device, ddp_steps)
        step.torchrun, step.env, step.timeout = 2, dict(shared), timeouts["ddp"]
        plan.append(step)
    sharded = ha_labels(paths, ddp_device, tiny, first, timeouts["short"])
    sharded_out = str(out / "ha_labels_sharded")
    sharded.argv[sharded.argv.index(paths["labels"])] = sharded_out
    sharded.name, sharded.torchrun, sharded.env = "ha_sharded", 2, dict(shared)
    sharded.outputs = [sharded_out]
    plan.append(sharded)
    plan += inference_steps(paths, machine.device, first, tiny, timeouts["short"])
    if machine.gpu:
        for task in TASKS:
            cpu = train_step(task, "auto", f"cpu_{task}", "cpu", "cpu", cpu_steps)
            cpu.needs.append(f"train_{task}_{first}")
            plan.append(cpu)
    return plan


def checkpoint(logs: str, exp: str) -> str:
    """The ``best.pt`` of run ``exp``."""
    return f"{logs}/{exp}/checkpoints/best.pt"


def ha_labels(
    paths: dict[str, str], device: str, tiny: bool, first: str, timeout: float
) -> Step:
    """Homographic adaptation labels of the built-in photographs by the MagicPoint run."""
    size = ["data.image_size=[64,80]", "export.num_homographies=4", *TINY_SP]
    return Step(
        "ha_labels",
        "ha",
        ["export.py", "homography_adaptation", "configs/magicpoint_coco_export.yaml"]
        + ["data.layout=folder", *(size if tiny else []), f"export.device={device}"]
        + ["--images", paths["photos"], "--out", paths["labels"], "--no-progress"]
        + ["--checkpoint", checkpoint(paths["logs"], f"magicpoint_{first}")],
        timeout,
        needs=["setup", f"train_magicpoint_{first}"],
        outputs=[paths["labels"]],
    )


def inference_steps(
    paths: dict[str, str], device: str, first: str, tiny: bool, timeout: float
) -> list[Step]:
    """Extraction, tracking, reconstruction, every evaluation and the speed figures."""
    logs, out = paths["logs"], paths["out"]
    trained = {task: checkpoint(logs, f"{task}_{first}") for task in TASKS}
    shift = checkpoint(logs, "pointcloud_shift")
    dev = ["--device", device]
    size = "64" if tiny else "256"
    inversion = ["--checkpoint", trained["reconstruct"], "--refiner", trained["refine"]]
    inversion += ["--images", paths["photos"], "--model", "sift", "--size", size]

    def step(name, argv, needs, outputs) -> Step:
        kind = name.split("_")[0] if name != "tracking" else "extract"
        return Step(name, kind, [*argv, *dev], timeout, needs, outputs=outputs)

    return [
        step("extract_superpoint",
             ["extract.py", "--model", trained["superpoint"], "--images", paths["photos"],
              "--out-dir", f"{out}/superpoint"],
             [f"train_superpoint_{first}"], [f"{out}/superpoint"]),
        step("extract_r2d2",
             ["extract.py", "--model", trained["r2d2"], "--images", paths["photos"],
              "--out-dir", f"{out}/r2d2"],
             [f"train_r2d2_{first}"], [f"{out}/r2d2"]),
        step("tracking",
             ["extract.py", "--model", trained["superpoint"], "--video", paths["photos"],
              "--track", "--out", f"{out}/tracks"],
             [f"train_superpoint_{first}"], [f"{out}/tracks/track_stats.json"]),
        step("export_reconstruct",
             ["export.py", "reconstruct", *inversion, "--out", f"{out}/reconstructed"],
             [f"train_refine_{first}"], [f"{out}/reconstructed"]),
        step("evaluate_synthetic_shapes",
             ["evaluation.py", "synthetic_shapes", "--checkpoint", trained["magicpoint"],
              "--num-images", "2" if tiny else "50", "--workers", "0",
              "--out", f"{out}/synthetic_shapes"],
             [f"train_magicpoint_{first}"], [f"{out}/synthetic_shapes"]),
        step("evaluate_hpatches",
             ["evaluation.py", "hpatches", "--data", paths["hpatches"], "--preset",
              "superpoint", "--model", trained["superpoint"], "--num-match-plots", "1",
              "--out", f"{out}/hpatches"],
             [f"train_superpoint_{first}"], [f"{out}/hpatches/summary.json"]),
        step("evaluate_pointcloud",
             ["evaluation.py", "pointcloud", "--focal-model", trained["pointcloud"],
              "--shift-model", shift, "--depth", paths["clouds"],
              "--out", f"{out}/pointcloud"],
             [f"train_pointcloud_{first}", "train_pointcloud_shift"],
             [f"{out}/pointcloud/summary.json"]),
        step("evaluate_inversion",
             ["evaluation.py", "inversion", *inversion, "--keep", "0.5",
              "--out", f"{out}/inversion"],
             [f"train_refine_{first}"], [f"{out}/inversion/summary.json"]),
        step("speed",
             ["-m", "benchmarks.gpu_speed", "--out", f"{out}/speed.json",
              *(["--tiny", "--repeats", "1"] if tiny else [])],
             ["setup"], [f"{out}/speed.json"]),
    ]  # fmt: skip
