"""scripts/gpu_check.sh keeps running end to end: on CPU at a tiny size (no GPU needed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_gpu_check_runs_on_cpu_tiny(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny"]
        + ["--steps", "2", "--workers", "0", "--repeats", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    trained = report["training"]
    assert {name.split("_")[0] for name in trained} == {
        "magicpoint",
        "superpoint",
        "r2d2",
    }
    assert all(row["steps"] == 2 and row["finite"] for row in trained.values())
    assert report["ddp"]["backend"] == "gloo" and report["ddp"]["processes"] == 2
    assert report["homographic_adaptation"]["images_per_s"] > 0
    assert len(report["extraction"]) == 2
    table = (tmp_path / "gpu_check.md").read_text()
    assert "COCO train2014" in table and "| DDP | 2 processes, gloo, ok |" in table


def test_gpu_check_without_cuda_says_so(tmp_path):
    import torch

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
