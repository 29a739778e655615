"""scripts/superpoint_demo.sh end to end, shrunk to a few steps of a tiny network.

The README's demo chain (HA export -> MagicPoint round -> HA -> SuperPoint joint training ->
HPatches evaluation) must keep running, and a second invocation must resume every step
instead of redoing it.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import build_model
from utils.io import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def run_demo(env: dict) -> str:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "superpoint_demo.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.replace("\r", "\n")


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_demo_chain_runs_and_resumes(tmp_path):
    magicpoint = build_model(
        {"name": "magicpoint", "channels": [8, 8, 16, 16], "head_channels": 16}
    )
    ckpt = tmp_path / "magicpoint.pt"
    torch.save(
        {"model": magicpoint.state_dict(), "config": {"model": magicpoint.conf}}, ckpt
    )
    env = {
        **os.environ,
        "MAGICPOINT": str(ckpt),
        "MP_STEPS": "2",
        "SP_STEPS": "2",
        "NUM_H": "2",
        "HP_SEQUENCES": "2",
        "DEVICE": "cpu",
        "LOGS": str(tmp_path / "logs"),
        "DATA": str(tmp_path / "data"),
        "PYTHON": sys.executable,
    }
    first = run_demo(env)
    assert first.count("18 exported") == 2  # both HA rounds labelled every photo
    row = re.search(r"^\| demo_superpoint \|(.*)\|$", first, re.MULTILINE)
    assert row, first[-2000:]
    values = [v.strip() for v in row.group(1).split("|")]
    assert len(values) == 8 and all(v != "n/a" for v in values[2:])
    sp = load_checkpoint(
        tmp_path / "logs" / "demo_superpoint" / "checkpoints" / "best.pt"
    )
    # The SuperPoint kept the widths of the MagicPoint it started from.
    assert sp["config"]["model"]["channels"] == [8, 8, 16, 16]
    assert sp["config"]["model"]["name"] == "superpoint"

    second = run_demo(env)
    assert second.count("0 exported") == 2 and second.count("18 already done") == 2
    for exp in ("demo_magicpoint_round1", "demo_superpoint"):
        names = sorted(
            p.name for p in (tmp_path / "logs" / exp / "checkpoints").iterdir()
        )
        assert names == ["best.pt", "last_00000002.pt"], names
    assert re.search(r"^\| demo_superpoint \|", second, re.MULTILINE)
