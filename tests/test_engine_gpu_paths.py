"""The engine's GPU paths, shown on the CPU: precision choice by compute capability, fp16
overflow skips, per-device random states, deterministic mode, the device rules of
torchrun, Ctrl-C in loader workers, learned extractors in loader workers and R2D2's
confidence maps under fp16 autocast. CUDA is simulated where needed (patched capability,
device count and generator states; a forked copy of a process that refuses to run the
parent's model, as CUDA does)."""

from __future__ import annotations

import os
import pickle
import signal

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from engine.data import collate, make_loader
from engine.devices import cuda_has_native_bf16, resolve_precision
from engine.distributed import init_distributed
from engine.reproducibility import (
    Autotuning,
    configure_backends,
    restore_rank_rng,
    rng_state,
    set_rng_state,
)
from tests.test_engine import make_trainer
from utils.errors import UserError

CUDA0, CUDA1 = torch.device("cuda:0"), torch.device("cuda:1")


@pytest.mark.parametrize(
    "capability, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16")]
)
def test_auto_precision_takes_bf16_only_where_the_gpu_computes_it(
    monkeypatch, capability, expected
):
    # torch says bf16 is supported on a V100 or T4 too: it counts emulation.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    assert cuda_has_native_bf16(CUDA0) == (expected == "bf16")
    assert resolve_precision("auto", CUDA0) == expected
    assert resolve_precision("bf16", CUDA0) == "bf16"


def _inject_overflow(trainer, steps: set[int]) -> None:
    """Gradients of the first parameter become inf on ``steps`` (1-based) while the loss
    stays finite: what an fp16 overflow of the scaled gradients looks like."""
    param = next(trainer.model.parameters())
    param.register_hook(lambda g: g * float("inf") if trainer.step + 1 in steps else g)


def test_fp16_overflow_skips_are_not_nan_steps(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    trainer = make_trainer(
        tmp_path, "o", max_steps=4, nan_policy="stop", max_nan_steps=0
    )
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    _inject_overflow(trainer, {2, 3})
    trainer.fit()
    assert trainer.step == 4 and trainer.nan_streak == 0
    assert trainer.scaler.get_scale() == 64.0, "each overflow halves the scale"
    param = next(trainer.model.parameters())
    assert int(trainer.optimizer.state[param]["step"]) == 2, "steps 2, 3 skipped"
    assert "non-finite" not in capsys.readouterr().out
    events = EventAccumulator(str(tmp_path / "o"), size_guidance={"scalars": 0})
    events.Reload()
    skips = [e.value for e in events.Scalars("train/fp16_overflow_skips")]
    assert skips == [0, 1, 1, 0]


def test_fp16_overflow_below_unit_scale_and_nan_loss_are_nan_steps(tmp_path):
    trainer = make_trainer(tmp_path, "u", max_steps=4, nan_policy="stop")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    _inject_overflow(trainer, {2})
    with pytest.raises(UserError, match="non-finite loss or gradient at step 2"):
        trainer.fit()

    trainer = make_trainer(tmp_path, "n", max_steps=4, nan_policy="stop")
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    original = trainer.model.loss

    def nan_loss(pred, data):
        losses, metrics = original(pred, data)
        return {k: v * float("nan") for k, v in losses.items()}, metrics

    trainer.model.loss = nan_loss
    with pytest.raises(UserError, match="non-finite loss or gradient at step 1"):
        trainer.fit()


class FakeCuda:
    """Per-GPU generator states of a machine with ``count`` GPUs (the real calls fail
    for an index beyond the visible GPUs, as this does)."""

    def __init__(self, monkeypatch, count: int):
        self.count, self.states = count, {}
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        for module in (torch.cuda, torch.cuda.random):
            monkeypatch.setattr(module, "device_count", lambda: self.count)
            monkeypatch.setattr(module, "get_rng_state", self.get)
            monkeypatch.setattr(module, "set_rng_state", self.set)

    def _index(self, device) -> int:
        index = device if isinstance(device, int) else torch.device(device).index or 0
        if index >= self.count:
            raise IndexError(f"GPU {index} of {self.count}")
        return index

    def get(self, device="cuda") -> torch.Tensor:
        index = self._index(device)
        return self.states.get(index, torch.full((4,), index, dtype=torch.uint8))

    def set(self, state, device="cuda") -> None:
        self.states[self._index(device)] = state.clone()


def test_random_state_is_that_of_the_rank_gpu_and_resumes_on_fewer_gpus(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=2)
    cuda.set(torch.tensor([7, 7, 7, 7], dtype=torch.uint8), CUDA1)
    # Rank 1 of a two-GPU run saves the state of its own GPU only.
    saved = rng_state(CUDA1)
    assert torch.equal(saved["cuda"], torch.tensor([7, 7, 7, 7], dtype=torch.uint8))
    rank0 = rng_state(CUDA0)
    # One GPU left: rank 0 of a one-process resume gets rank 0's GPU state.
    cuda.count, cuda.states = 1, {}
    assert restore_rank_rng([rank0, saved], 0, 1, 0, 10, CUDA0) is not None
    assert torch.equal(cuda.states[0], rank0["cuda"])
    # A checkpoint with the states of every visible GPU (two) restores on one.
    old = {**rank0, "cuda": [torch.full((4,), 3, dtype=torch.uint8), saved["cuda"]]}
    set_rng_state(old, CUDA0)
    assert torch.equal(cuda.states[0], torch.full((4,), 3, dtype=torch.uint8))


def test_ranks_a_checkpoint_lacks_get_a_derived_state():
    cpu = torch.device("cpu")
    saved = [rng_state(cpu)]
    note = restore_rank_rng(saved, 1, 3, 0, 10, cpu)
    assert note.endswith("ranks 1-2 start from (seed, rank, step)")
    first = torch.get_rng_state(), np.random.get_state()[1].copy()
    restore_rank_rng(saved, 1, 3, 0, 10, cpu)
    assert torch.equal(torch.get_rng_state(), first[0])
    assert np.array_equal(np.random.get_state()[1], first[1])
    restore_rank_rng(saved, 2, 3, 0, 10, cpu)
    assert not torch.equal(torch.get_rng_state(), first[0])
    restore_rank_rng(saved, 0, 3, 0, 10, cpu)
    assert torch.equal(torch.get_rng_state(), saved[0]["torch"])
    assert restore_rank_rng(saved, 0, 1, 0, 10, cpu) is None


@pytest.fixture
def restore_determinism(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = False


def test_deterministic_mode_and_cudnn_autotuning(restore_determinism):
    assert configure_backends(False, "auto", CUDA0) is True
    assert configure_backends(False, "auto", torch.device("cpu")) is False
    assert configure_backends(True, "auto", CUDA0) is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    with pytest.raises(UserError, match="contradicts"):
        configure_backends(True, True, CUDA0)
    with pytest.raises(UserError, match="'train.cudnn_benchmark'"):
        configure_backends(False, "yes", CUDA0)


def test_op_without_deterministic_kernel_is_one_line(tmp_path, restore_determinism):
    trainer = make_trainer(tmp_path, "d", max_steps=2, deterministic=True)
    original = trainer.model.loss

    def loss(pred, data):
        # put_ without accumulation has no deterministic kernel on any device.
        torch.zeros(4).put_(torch.tensor([0]), torch.tensor([1.0]))
        return original(pred, data)

    trainer.model.loss = loss
    with pytest.raises(UserError, match="'put_' has no deterministic implementation"):
        trainer.fit()


def test_autotuning_stops_when_batches_change_size(restore_determinism):
    tuning = Autotuning(False, "auto", CUDA0)
    assert tuning.on and torch.backends.cudnn.benchmark
    assert (
        tuning.watch({"image": torch.zeros(2, 1, 64, 64), "name": ["a", "b"]}) is None
    )
    assert tuning.watch({"image": torch.zeros(2, 1, 64, 64)}) is None
    assert torch.backends.cudnn.benchmark
    assert "change size" in tuning.watch({"image": torch.zeros(2, 1, 64, 96)})
    assert not torch.backends.cudnn.benchmark and not tuning.on


def test_torchrun_refuses_one_gpu_for_all_and_one_process_sets_its_gpu(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="'cuda:1' puts all 2 torchrun processes"):
        init_distributed("cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    info, device = init_distributed("cuda:1")
    assert device == CUDA1 and current == [CUDA1] and not info.enabled


class SelfInterruptingSet(Dataset):
    """Each item sends Ctrl-C to the process reading it (a loader worker)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        os.kill(os.getpid(), signal.SIGINT)
        return {"value": torch.tensor([float(index)])}


def test_loader_workers_ignore_ctrl_c():
    loader = make_loader(
        SelfInterruptingSet(), range(4), 2, 1, collate, torch.device("cpu")
    )
    values = torch.cat([batch["value"] for batch in loader])
    assert values.flatten().tolist() == [0.0, 1.0, 2.0, 3.0]


class ParentBoundExtractor:
    """Stands in for an extractor holding CUDA state: it runs in the process that built
    it and in one that unpickled it (a spawned worker builds its own), but not in a forked
    copy, where CUDA fails."""

    device = "cuda"

    def __init__(self, inner):
        self.inner, self.owner = inner, os.getpid()
        self.grayscale = inner.grayscale

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.owner = os.getpid()

    def __call__(self, image: np.ndarray) -> dict:
        if os.getpid() != self.owner:
            raise RuntimeError("Cannot re-initialize CUDA in forked subprocess")
        return self.inner(image)


def test_learned_extractor_on_a_gpu_runs_in_loader_workers(tmp_path):
    from datasets.inversion import InversionDataset
    from models import build_model
    from tests.test_inversion_data import _conf, _write_folder

    model = {"name": "superpoint", "channels": [8, 8, 16, 16], "head_channels": 16}
    model["descriptor_dim"] = 16
    torch.manual_seed(0)
    path = tmp_path / "superpoint.pt"
    torch.save(
        {"model": build_model(model).state_dict(), "config": {"model": model}}, path
    )
    conf = _conf(
        _write_folder(tmp_path),
        features="online",
        extractor=str(path),
        extractor_conf={"detection_threshold": 0.0, "top_k": 50},
    )
    dataset = InversionDataset(conf, "train")
    assert dataset.worker_start_method is None, "a CPU extractor forks"
    dataset._extractor = ParentBoundExtractor(dataset._extractor)
    assert dataset.worker_start_method == "spawn"
    copy = pickle.loads(pickle.dumps(dataset))
    # No CUDA context in this process: the device setting travels as it is.
    assert copy._extractor is None
    assert copy.conf["extractor_device"] == dataset.conf["extractor_device"] == "auto"
    expected = [dataset[i]["input"] for i in range(3)]
    loader = make_loader(dataset, range(3), 1, 1, collate, torch.device("cpu"))
    inputs = [batch["input"][0] for batch in loader]
    assert all(torch.equal(a, b) for a, b in zip(inputs, expected))


def test_r2d2_confidence_maps_stay_finite_under_fp16_autocast():
    from models.r2d2_net import R2D2Net

    torch.manual_seed(0)
    net = R2D2Net(dim=16, mchan=1).train()
    with torch.no_grad():
        # Raw features of a few thousand: their squares overflow fp16 (65504).
        net.ops[-1].weight.mul_(3000)
    image = torch.rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.float16):
        features = net.features(net.normalize(image))
        out = net(image)
    assert features.dtype == torch.float16 and features.abs().max() > 256
    for key in ("reliability", "repeatability"):
        assert torch.isfinite(out[key]).all(), key
        assert out[key].dtype == torch.float32, key
