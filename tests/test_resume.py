"""--resume is never stranded: unreadable checkpoints are skipped with a warning, overrides after
--resume stay overrides, TensorBoard keeps one curve, files keep the umask, and corrupt or
foreign weights files get one line of our own everywhere.
"""

from __future__ import annotations

import os
import stat

import pytest
import torch

import train_superpoint
from engine.cli import LATEST, parse
from tests.test_train_superpoint import CONFIG, SHRINK
from utils.errors import UserError
from utils.io import atomic_write_text, load_checkpoint


def train(tmp_path, *extra, exp="run"):
    args = [CONFIG, "--exp", exp, "--logdir", str(tmp_path), *SHRINK]
    return train_superpoint.run([*args, "train.save_every=2", *extra])


def scalar_steps(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path, capsys):
    previous = os.umask(0o022)
    try:
        straight = train(tmp_path, "train.max_steps=6", exp="straight")
        train(tmp_path, "train.max_steps=4")
    finally:
        os.umask(previous)
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    first = capsys.readouterr()
    assert f"checkpoints in {ckpts}" in first.out
    # Files keep the process umask (0644 here), not the temporary file's 0600.
    for path in (run_dir / "config.yaml", ckpts / "last_00000004.pt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path

    # A kill during a copy or a full disk: the newest checkpoint is cut short.
    newest = ckpts / "last_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    resumed = train(tmp_path, "--resume", "train.max_steps=6")
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {newest}: not a readable PyTorch checkpoint (truncated or corrupt); "
        "trying an older checkpoint"
    ]
    assert f"resumed from step 2 ({ckpts / 'last_00000002.pt'})" in out
    assert resumed.step == 6
    # Resuming from step 2 replays steps 3-4 exactly (the engine's data order is a pure
    # function of the step), and TensorBoard shows each step once.
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert scalar_steps(run_dir, "train/loss/total") == [1, 2, 3, 4, 5, 6]


def test_overwrite_starts_afresh_with_one_curve(tmp_path):
    train(tmp_path, "train.max_steps=4")
    with pytest.raises(UserError, match="already holds checkpoints"):
        train(tmp_path, "train.max_steps=2")
    train(tmp_path, "train.max_steps=2", "--overwrite")
    run_dir = tmp_path / "run"
    # The longer first run's checkpoints and curves are gone, not mixed into the new run.
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("last_*.pt")) == [
        "last_00000002.pt"
    ]
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert scalar_steps(run_dir, "train/loss/total") == [1, 2]


def test_resume_with_no_readable_checkpoint_is_one_line(tmp_path, capsys):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last_00000002.pt").write_bytes(os.urandom(300))
    code = train_superpoint.main(
        [CONFIG, "--exp", "run", "--logdir", str(tmp_path), *SHRINK, "--resume"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == (
        f"train_superpoint.py: error: --resume: no readable checkpoint in '{ckpts}' "
        "(last_00000002.pt all unreadable)"
    )


@pytest.mark.parametrize(
    ("argv", "resume", "overrides", "config"),
    [
        (
            ["c.yaml", "--resume", "train.max_steps=310"],
            LATEST,
            ["train.max_steps=310"],
            "c.yaml",
        ),
        (["--resume", "c.yaml", "a.b=1"], LATEST, ["a.b=1"], "c.yaml"),
        (["c.yaml", "--resume"], LATEST, [], "c.yaml"),
        (["c.yaml", "--resume", "--device", "cpu"], LATEST, [], "c.yaml"),
        (["c.yaml", "--resume", "CKPT", "a.b=1"], "CKPT", ["a.b=1"], "c.yaml"),
        (["c.yaml", "--resume=train.x=1"], "train.x=1", [], "c.yaml"),
    ],
)
def test_resume_keeps_overrides_and_config_apart_from_its_file(
    tmp_path, argv, resume, overrides, config
):
    ckpt = tmp_path / "some.pt"
    ckpt.write_bytes(b"")
    argv = [str(ckpt) if a == "CKPT" else a for a in argv]
    args = parse(argv, "train_x.py", "")
    assert args.resume == (str(ckpt) if resume == "CKPT" else resume)
    assert args.overrides == overrides and args.config == config


def test_resume_from_an_explicit_file_and_overrides_after_it(tmp_path, capsys):
    train(tmp_path, "train.max_steps=4")
    older = tmp_path / "run" / "checkpoints" / "last_00000002.pt"
    resumed = train(tmp_path, "--resume", str(older), "train.max_steps=5")
    assert resumed.step == 5
    assert f"resumed from step 2 ({older})" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "text", "numpy"])
def test_corrupt_weights_files_get_one_line_of_our_own(tmp_path, kind):
    path = tmp_path / "weights.pth"
    torch.save({"model": {"w": torch.zeros(64, 64)}}, path)
    data = path.read_bytes()
    content = {
        "truncated": data[: len(data) // 2],
        "random": os.urandom(2000),
        "empty": b"",
        "text": b"not a checkpoint\n",
        "numpy": b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False}",
    }[kind]
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    assert str(err.value) == (
        f"{path}: not a readable PyTorch checkpoint (truncated or corrupt)"
    )


def test_a_file_pickling_code_is_refused_naming_the_class(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole module, not a state dict
    with pytest.raises(UserError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a readable PyTorch checkpoint")
    assert "torch.nn.modules.linear.Linear" in message
    assert "weights_only" not in message and "\n" not in message


def test_atomic_writes_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
