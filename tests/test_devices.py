"""One device rule: ``--device auto|cpu|cuda|cuda:<i>``, ``auto`` by default, resolved by
``engine.devices.resolve_device`` in every command; ``cuda`` without CUDA is one line and
exit code 2 (checked where this machine has no GPU)."""

from __future__ import annotations

import pytest
import torch

from tests.commands import ROOT, all_commands, command_id, run_command
from tests.test_cli_help import help_entries

# A GPU check: it exists to run on CUDA, so that is its default (``--device cpu --tiny``
# in the test suite).
GPU_ONLY = {("-m", "benchmarks.gpu_check")}


def device_help(command: tuple[str, ...], capsys) -> str | None:
    assert run_command(command, ["--help"]) == 0
    entries = dict(help_entries(capsys.readouterr().out))
    return next(
        (text for inv, text in entries.items() if inv.startswith("--device")), None
    )


@pytest.mark.parametrize("command", all_commands(), ids=command_id)
def test_every_device_option_defaults_to_auto(command, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    text = device_help(command, capsys)
    if text is None or command in GPU_ONLY:
        return
    assert text.startswith("auto | cpu | cuda | cuda:<i>")
    assert (
        "(default: auto)" in text
        or "sets train.device" in text
        or ("sets export.device" in text)
    ), text


def test_config_defaults_of_devices_are_auto():
    from datasets.inversion import InversionDataset
    from engine.trainer import TRAIN_DEFAULTS
    from pipelines.ha_export import EXPORT_DEFAULTS

    assert TRAIN_DEFAULTS["device"] == "auto"
    assert EXPORT_DEFAULTS["device"] == "auto"
    assert InversionDataset.default_conf["extractor_device"] == "auto"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from datasets.hpatches_demo import generate
    from tests.helpers import write_photos
    from tests.test_overrides import tiny_magicpoint

    root = tmp_path_factory.mktemp("devices")
    write_photos(root / "photos", ("coffee",), size=(96, 64))
    generate("builtin", root / "hp", num_sequences=1, max_size=64, kinds="v")
    return tiny_magicpoint(root / "mp.pt"), root / "photos", root / "hp"


CUDA_ROWS = [
    (("extract.py",), ("--model", "{mp}", "--images", "{photos}")),
    (("-m", "pipelines.tracking"), ("--model", "{mp}", "--video", "{photos}")),
    (("evaluation.py", "synthetic_shapes"), ("--checkpoint", "{mp}")),
    (("evaluation.py", "hpatches"), ("--model", "{mp}", "--data", "{hp}")),
    (
        ("evaluation.py", "pointcloud"),
        ("--focal-model", "{mp}", "--shift-model", "{mp}", "--depth", "{photos}"),
    ),
    (("evaluation.py", "inversion"), ("--checkpoint", "{mp}", "--images", "x")),
    (("export.py", "reconstruct"), ("--checkpoint", "{mp}", "--images", "x")),
    (
        ("export.py", "homography_adaptation"),
        ("configs/magicpoint_coco_export.yaml", "--images", "{photos}"),
    ),
    (("train_superpoint.py",), ("configs/magicpoint_shapes.yaml",)),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize(
    "command, args", CUDA_ROWS, ids=[command_id(c) for c, _ in CUDA_ROWS]
)
def test_cuda_without_cuda_is_one_line(command, args, checkpoint, tmp_path, capsys):
    mp, photos, hp = checkpoint
    words = [a.format(mp=mp, photos=photos, hp=hp) for a in args]
    out = tmp_path / "out"
    if command[0] == "train_superpoint.py":
        words += ["--logdir", str(out)]
    elif command != ("extract.py",):
        words += ["--out", str(out)]
    code = run_command(command, [*words, "--device", "cuda"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "device 'cuda' requested but CUDA is not available" in err[0]
    assert not out.exists()
