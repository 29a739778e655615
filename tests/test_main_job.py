"""scripts/main_job.sh (the README's main job) runs end to end, shrunk, on either recipe."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
@pytest.mark.parametrize(
    "caps, config",
    [
        ({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}, "avx2"),
        ({"CONFIG": "configs/magicpoint_shapes_cpu.yaml"}, "cpu"),
    ],
)
def test_main_job_picks_a_recipe_trains_and_evaluates(tmp_path, caps, config):
    env = {
        **os.environ,
        **caps,
        "LOGS": str(tmp_path / "logs"),
        "OUT": str(tmp_path / "eval"),
        "EXTRA": "train.max_steps=2 train.val_every=2 train.val_batches=1 "
        "train.batch_size=4 train.num_workers=0",
        "EVAL_EXTRA": "--num-images 2 --workers 0",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "main_job.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"main job: configs/magicpoint_shapes_{config}.yaml" in proc.stdout
    assert (tmp_path / "logs" / f"magicpoint_shapes_{config}" / "checkpoints").is_dir()
    assert (tmp_path / "eval" / "results.json").is_file()
    assert "main job: training" in proc.stdout
