"""scripts/main_job.sh (the README's main job): the recipe follows the machine, and the job runs
end to end, shrunk: shape cache, training from it, evaluation."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.devices import cpu_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import main_job_recipe  # noqa: E402

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def test_each_machine_kind_has_its_recipe():
    kind = main_job_recipe.machine_kind
    assert kind(cuda=True, native_bf16=True, amx_bf16=True) == "cuda"
    assert kind(cuda=True, native_bf16=False, amx_bf16=False) == "cuda"
    assert kind(cuda=False, native_bf16=True, amx_bf16=True) == "amx"
    assert kind(cuda=False, native_bf16=True, amx_bf16=False) == "avx512_bf16"
    assert kind(cuda=False, native_bf16=False, amx_bf16=False) == "fp32"
    precisions = {}
    for name, config in main_job_recipe.RECIPES.items():
        conf = main_job_recipe.resolve(ROOT / config)
        precisions[name] = conf["train"]["precision"]
        assert "steps x" in main_job_recipe.describe(conf)
    assert precisions == {
        "cuda": "auto",
        "amx": "bf16",
        "avx512_bf16": "bf16",
        "fp32": "fp32",
    }


def test_a_cuda_machine_trains_the_gpu_recipe(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU")
    config, why = main_job_recipe.choose()
    assert config == "configs/magicpoint_shapes.yaml"
    assert "CUDA GPU" in why and "Test GPU" in why


def recipe_line(env: dict, *args: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "main_job_recipe.py"), *args],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.rstrip("\n").split("\t")


def test_the_cpu_recipe_follows_the_instruction_set_and_says_why():
    config, why, cache, options = recipe_line(AVX2, "data.split_sizes.train=8")
    assert config == "configs/magicpoint_shapes_avx2.yaml"
    assert why.startswith("no native bf16") and "precision fp32" in why
    assert cache == "data/synthetic_shapes_120x160_train8_val200"
    assert "--size 120 160 --splits train val --split-sizes train=8 val=200" in options
    flags = cpu_info()["flags"]
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        pytest.skip("this CPU has no native bf16 to cap")
    config, why, _, _ = recipe_line({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})
    assert config == "configs/magicpoint_shapes_avx512bf16.yaml"
    assert "without AMX" in why and "precision bf16" in why
    if "amx_bf16" in flags:
        config, why, _, _ = recipe_line({})
        assert config == "configs/magicpoint_shapes_cpu.yaml" and "AMX" in why


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
@pytest.mark.parametrize(
    "caps, config",
    [
        (AVX2, "avx2"),
        ({"CONFIG": "configs/magicpoint_shapes_cpu.yaml"}, "cpu"),
    ],
)
def test_main_job_picks_a_recipe_trains_and_evaluates(tmp_path, caps, config):
    env = {
        **os.environ,
        **caps,
        "CUDA_VISIBLE_DEVICES": "",
        "LOGS": str(tmp_path / "logs"),
        "OUT": str(tmp_path / "eval"),
        "DATA": str(tmp_path / "shapes"),
        "EXTRA": "train.max_steps=2 train.val_every=2 train.val_batches=1 "
        "train.batch_size=4 train.num_workers=0 "
        "data.split_sizes.train=1 data.split_sizes.val=1",
        "EVAL_EXTRA": "--num-images 1",
        "EVAL_WORKERS": "0",
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
    assert "main job: why: " in proc.stdout
    assert len(list((tmp_path / "shapes").rglob("*.npz"))) == 18  # train, val x 9
    assert (tmp_path / "logs" / f"magicpoint_shapes_{config}" / "checkpoints").is_dir()
    assert (tmp_path / "eval" / "results.json").is_file()
    assert "main job: shapes" in proc.stdout and "training" in proc.stdout
