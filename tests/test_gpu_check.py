"""scripts/gpu_check.sh: its GPU plan (read without a GPU), its checks, an injected failure,
and the whole script on a CPU at toy sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check_plan import (
    DDP_TASKS,
    TASKS,
    Machine,
    Step,
    build_plan,
    train_precisions,
)
from benchmarks.gpu_check_run import Result, Runner, check_training
from benchmarks.shared_gpu import force_backend, share_gpus

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ["bash", str(ROOT / "scripts" / "gpu_check.sh")]
TINY = ["--device", "cpu", "--tiny", "--steps", "2", "--resume-steps", "1"]
TINY += ["--ddp-steps", "2"]


def plan_names(machine: Machine) -> dict:
    return {step.name: step for step in build_plan(machine, Path("/out"))}


def test_one_gpu_plan_covers_every_command_in_both_precisions():
    steps = plan_names(Machine("cuda", gpus=1, auto_precision="bf16", cpu_count=16))
    for task in TASKS:
        for precision in ("bf16", "fp16"):
            step = steps[f"train_{task}_{precision}"]
            assert step.argv[step.argv.index("--precision") + 1] == precision
            assert step.argv[step.argv.index("--device") + 1] == "cuda"
            assert "train.max_steps=200" in step.argv
        cpu = steps[f"cpu_{task}"]
        assert cpu.argv[cpu.argv.index("--device") + 1] == "cpu"
    for task in DDP_TASKS:  # both ranks on the one GPU, NCCL tried first
        ddp = steps[f"ddp_{task}"]
        assert ddp.torchrun == 2 and ddp.env == {"GPU_CHECK_SHARED": "1"}
    assert "ddp_refine" not in steps  # the refiner refuses torchrun
    assert steps["ha_sharded"].torchrun == 2
    assert steps["resume_magicpoint"].resumed_from == 200
    assert steps["resume_refine"].argv[-1] == "--resume"
    for name in (
        "extract_superpoint",
        "extract_r2d2",
        "tracking",
        "export_reconstruct",
    ):
        assert steps[name].argv[-2:] == ["--device", "cuda"]
    for command in ("synthetic_shapes", "hpatches", "pointcloud", "inversion"):
        assert steps[f"evaluate_{command}"].argv[-2:] == ["--device", "cuda"]


def test_precisions_follow_resolve_precision(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    import engine.devices

    listed = {}
    for auto in ("bf16", "fp16"):
        monkeypatch.setattr(
            engine.devices, "resolve_precision", lambda n, d, auto=auto: auto
        )
        assert gpu_check.main(["--list", "--out", str(tmp_path)]) == 0
        listed[auto] = capsys.readouterr().out
    assert (
        "train_refine_bf16" in listed["bf16"] and "train_refine_fp16" in listed["bf16"]
    )
    assert "_bf16 " not in listed["fp16"] and "train_refine_fp16" in listed["fp16"]
    # Two GPUs: one rank each, no sharing wrapper needed for NCCL.
    assert "GPU_CHECK_SHARED" not in str(
        plan_names(Machine("cuda", 2, "bf16"))["ddp_r2d2"].env
    )
    assert train_precisions(Machine("cpu", 0, "fp32")) == ["fp32"]


def test_only_selects_a_step_and_what_it_needs():
    plan = build_plan(Machine("cuda", 1, "bf16"), Path("/out"))
    names = [s.name for s in gpu_check.select(plan, ["evaluate_hpatches"])]
    assert names == [
        "setup",
        "train_magicpoint_bf16",
        "ha_labels",
        "train_superpoint_bf16",
        "evaluate_hpatches",
    ]


def test_ranks_share_one_gpu_and_gloo_replaces_nccl(monkeypatch):
    environ = {"LOCAL_RANK": "1"}
    share_gpus(1, environ)
    assert environ["LOCAL_RANK"] == "0"
    environ = {"LOCAL_RANK": "1"}
    share_gpus(2, environ)  # a GPU per rank: unchanged
    assert environ["LOCAL_RANK"] == "1"
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw))
    force_backend("gloo")
    dist.init_process_group(backend="nccl", rank=0, world_size=2)
    assert calls == [{"backend": "gloo", "rank": 0, "world_size": 2}]


def test_ranks_sharing_a_gpu_fall_back_from_nccl_to_gloo_once(tmp_path):
    # A stand-in for a DDP command: NCCL refuses, Gloo works (as with two ranks on one GPU).
    check = "import os, sys; sys.exit(0 if os.environ['GPU_CHECK_BACKEND'] == 'gloo' else 5)"
    shared = {"GPU_CHECK_SHARED": "1"}
    steps = [
        Step(f"ddp_{k}", "ddp", ["-c", check, "cuda"], 60, env=shared) for k in "ab"
    ]
    results = Runner(tmp_path, tmp_path).run(steps)
    first, second = results["ddp_a"], results["ddp_b"]
    assert first.status == second.status == "ok"
    assert first.metrics["backend"] == "gloo" and "nccl_failed" in first.metrics
    assert second.metrics == {"backend": "gloo"}  # NCCL not tried again
    assert (tmp_path / "step_logs" / "ddp_a.nccl.log").is_file()


def test_non_finite_loss_fails_the_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"step": 2}, run / "checkpoints" / "last_00000002.pt")
    writer = SummaryWriter(str(run))
    for step, value in ((1, 0.5), (2, float("nan"))):
        writer.add_scalar("train/loss/total", value, step)
    writer.add_scalar("val/loss/total", 0.4, 2)
    writer.close()
    step = build_plan(Machine("cpu", 0, "fp32"), tmp_path)[1]
    step.run_dir, step.steps = str(run), 2
    result = Result(step.name)
    check_training(step, "", result)
    assert result.status == "failed"
    assert result.problems == ["train/loss/total is not finite at step 2"]
    step.steps = 3  # a run that stopped early
    result = Result(step.name)
    check_training(step, "", result)
    assert result.problems[0].startswith("no checkpoint")


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_injected_failure_exits_non_zero_naming_the_step(tmp_path):
    proc = subprocess.run(
        [*SCRIPT, *TINY, "--only", "train_pointcloud_shift", "evaluate_pointcloud"]
        + ["--fail-step", "train_pointcloud_shift", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "gpu_check: FAILED: train_pointcloud_shift (skipped: evaluate_pointcloud)"
    )
    steps = {
        r["name"]: r
        for r in json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    }
    assert steps["train_pointcloud_shift"]["problems"][0].startswith("exit code 3")
    assert steps["setup"]["status"] == "ok"


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_whole_check_runs_on_cpu_tiny(tmp_path):
    proc = subprocess.run(
        [*SCRIPT, *TINY, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {row["name"]: row for row in report["steps"]}
    assert all(row["status"] == "ok" for row in steps.values())
    precision = report["precisions"][0]
    for task in TASKS:
        metrics = steps[f"train_{task}_{precision}"]["metrics"]
        assert metrics["images_per_s"] > 0 and metrics["val_loss_total"] > 0
    assert steps["resume_refine"]["metrics"]["resumed_from"] == 2
    assert steps["ddp_magicpoint"]["metrics"]["backend"] == "gloo"
    assert len(list((tmp_path / "ha_labels_sharded").glob("*.npz"))) == 6
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| ddp_magicpoint | ok |" in table and "COCO train2014" in table


def test_gpu_check_without_cuda_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gpu_check: CUDA is not available; use --device cpu --tiny"
    ]


def test_the_plan_can_be_read_on_a_machine_without_cuda(capsys, tmp_path):
    # --list shows a one-GPU bf16 machine's plan; running it is refused in one line.
    assert gpu_check.main(["--list", "--out", str(tmp_path)]) == 0
    listed = capsys.readouterr().out.splitlines()
    names = [line.split(" [")[0] for line in listed]
    assert names == [s.name for s in build_plan(Machine("cuda", 1, "bf16"), tmp_path)]
    assert any("--device cuda" in line for line in listed)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
