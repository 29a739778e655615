"""Every GPU-bound command keeps CUDA's device rules, checked on the CPU.

Each command of :data:`COMMANDS` runs once at a tiny size in this process under
:class:`tests.device_discipline.DeviceDiscipline`: a tensor made without ``device=`` is a host
tensor, and mixing it with the model's or the batch's tensors fails as it would on a GPU. The
training commands run one step with its validation and TensorBoard panels. The table runs in
order: later rows read what earlier rows wrote (checkpoints, labels). A row that breaks the
rules is run again without them, so that the rows after it still get their inputs.
"""

from __future__ import annotations

import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from tests.commands import run_command
from tests.device_discipline import DeviceDiscipline
from tests.helpers import write_photos

ONE_STEP = [
    "train.max_steps=1",
    "train.val_every=1",
    "train.val_batches=1",
    "train.image_every=1",
    "train.log_every=1",
    "train.save_every=1",
    "train.batch_size=2",
    "train.num_workers=0",
    "train.precision=fp32",
    "--device",
    "cpu",
    "--logdir",
    "{logs}",
]
TINY_SUPERPOINT = ["model.channels=[8,8,16,16]", "model.head_channels=16"]
INVERSION_DATA = [
    "data.images={photos}",
    "data.crop=64",
    "data.scale=[64,96]",
    "data.eval_size=64",
    "data.repeat=2",
    "loss.perceptual=0",
]
# Two scales of one 128x96 photograph, every local maximum kept (an untrained network).
R2D2_EXTRACT = ["min_size=100", "reliability_thr=0", "repeatability_thr=0"]
SUPERPOINT = "{logs}/superpoint/checkpoints/best.pt"
R2D2 = "{logs}/r2d2/checkpoints/best.pt"
COARSE = "{logs}/coarse/checkpoints/best.pt"
REFINER = "{logs}/refine/checkpoints/best.pt"

# (name, argv): the command, then its arguments; {name} is a path of `paths` below.
COMMANDS: list[tuple[str, list[str]]] = [
    (
        "train magicpoint",
        ["train_superpoint.py", "configs/magicpoint_shapes.yaml", "--exp", "magicpoint"]
        + ["data.image_size=[64,80]", "data.split_sizes={{train: 2, val: 2, test: 2}}"]
        + TINY_SUPERPOINT
        + ONE_STEP,
    ),
    (
        "export homography_adaptation",
        ["export.py", "homography_adaptation", "configs/magicpoint_coco_export.yaml"]
        + ["data.layout=folder", "data.image_size=[64,96]", "export.batch_size=2"]
        + ["export.num_homographies=3", "export.precision=bf16", "export.device=cpu"]
        + ["--images", "{photos}", "--out", "{labels}", "--no-progress"]
        + ["--checkpoint", "{logs}/magicpoint/checkpoints/best.pt"],
    ),
    (
        "train superpoint",
        ["train_superpoint.py", "configs/superpoint_coco.yaml", "--exp", "superpoint"]
        + ["data.root={photos}", "data.layout=folder", "data.labels_dir={labels}"]
        + ["data.image_size=[64,96]", "data.val_fraction=0.4"]
        + ["model.descriptor_dim=16", "loss.descriptor_loss=sparse"]
        + TINY_SUPERPOINT
        + ONE_STEP,
    ),
    (
        "train superpoint dense",
        ["train_superpoint.py", "configs/superpoint_coco.yaml", "--exp", "dense"]
        + ["data.root={photos}", "data.layout=folder", "data.labels_dir={labels}"]
        + ["data.image_size=[64,96]", "data.val_fraction=0.4"]
        + ["model.descriptor_dim=16", "loss.descriptor_loss=dense"]
        + TINY_SUPERPOINT
        + ONE_STEP,
    ),
    (
        "train r2d2",
        ["train_r2d2.py", "configs/r2d2_demo_builtin.yaml", "--exp", "r2d2"]
        + ["data.sources.photos.root={photos}", "data.sources.photos.list=null"]
        + ["data.crop=48", "data.scale=[64,96]", "data.synthetic.scale=[64,96]"]
        + ["data.val_pairs=2", "model.dim=16", "model.mchan=1", "loss.N=8"]
        + ["loss.sampler.border=8", "train.epochs=0"]
        + ONE_STEP,
    ),
    (
        "train r2d2 hardnet dice",
        ["train_r2d2.py", "configs/r2d2_demo_builtin.yaml", "--exp", "r2d2_study"]
        + ["data.sources.photos.root={photos}", "data.sources.photos.list=null"]
        + ["data.crop=48", "data.scale=[64,96]", "data.synthetic.scale=[64,96]"]
        + ["data.val_pairs=2", "model.dim=16", "model.mchan=1", "loss.N=8"]
        + ["loss.sampler.border=8", "train.epochs=0"]
        + ["loss.reliability=hardnet", "loss.similarity=dice"]
        + ONE_STEP,
    ),
    (
        "train reconstruct",
        ["train_reconstruct.py", "configs/inversion_sift.yaml", "--exp", "coarse"]
        + INVERSION_DATA
        + ["data.extractor_conf={{top_k: 300}}", "model.widths=[4,8]"]
        + ONE_STEP,
    ),
    (
        "train refine",
        ["train_refine.py", "configs/refine_sift.yaml", "--exp", "refine"]
        + INVERSION_DATA
        + ["data.extractor_conf={{top_k: 300}}", f"model.coarse_checkpoint={COARSE}"]
        + ["model.widths=[4,8]", "model.coarse.widths=[4,8]"]
        + ["model.discriminator.widths=[4,8]"]
        + ONE_STEP,
    ),
    (
        "train 3d focal",
        ["train_3d.py", "configs/pointcloud_focal.yaml", "--exp", "focal"]
        + ["data.root=null", "data.procedural.count=6", "data.procedural.size=[24,32]"]
        + ["data.train_split=0.67", "data.num_points=64"]
        + ["model.widths=[8,16]", "model.head=[8]"]
        + ONE_STEP,
    ),
    (
        "train 3d shift",
        ["train_3d.py", "configs/pointcloud_shift.yaml", "--exp", "shift"]
        + ["data.root=null", "data.procedural.count=6", "data.procedural.size=[24,32]"]
        + ["data.train_split=0.67", "data.num_points=64"]
        + ["model.widths=[8,16]", "model.head=[8]"]
        + ONE_STEP,
    ),
    (
        "train 3d voxelnet",
        ["train_3d.py", "{voxel_config}", "--exp", "voxel"]
        + ["data.root=null", "data.procedural.count=6", "data.procedural.size=[24,32]"]
        + ["data.train_split=0.67", "data.num_points=64", "model.head=[8]"]
        + ONE_STEP,
    ),
    (
        "extract superpoint",
        ["extract.py", "--model", SUPERPOINT, "--images", "{photos}"]
        + ["--out-dir", "{out}/superpoint", "--device", "cpu"],
    ),
    (
        "extract superpoint bf16",
        ["extract.py", "--model", SUPERPOINT, "--images", "{photos}"]
        + ["--out-dir", "{out}/superpoint_bf16", "--device", "cpu"]
        + ["precision=bf16", "descriptor_sampling=magicleap"],
    ),
    (
        "extract r2d2",
        ["extract.py", "--model", R2D2, "--images", "{photos}/chelsea.png"]
        + ["--out-dir", "{out}/r2d2", "--device", "cpu", *R2D2_EXTRACT],
    ),
    (
        "extract r2d2 bf16",
        ["extract.py", "--model", R2D2, "--images", "{photos}/chelsea.png"]
        + ["--out-dir", "{out}/r2d2_bf16", "--device", "cpu", *R2D2_EXTRACT]
        + ["precision=bf16"],
    ),
    (
        "tracking",
        ["extract.py", "--model", SUPERPOINT, "--video", "{photos}", "--track"]
        + ["--out", "{out}/tracks", "--device", "cpu"],
    ),
    (
        "export reconstruct",
        ["export.py", "reconstruct", "--checkpoint", COARSE, "--refiner", REFINER]
        + ["--images", "{sift_photos}", "--features", "sift", "--size", "64"]
        + ["--out", "{out}/reconstructed", "--device", "cpu"],
    ),
    (
        "evaluation synthetic_shapes",
        ["evaluation.py", "synthetic_shapes"]
        + ["--checkpoint", "{logs}/magicpoint/checkpoints/best.pt"]
        + ["--num-images", "1", "--image-size", "64", "80", "--batch-size", "4"]
        + ["--workers", "0", "--out", "{out}/synthetic", "--device", "cpu"]
        + ["--precision", "fp32"],
    ),
    (
        "evaluation hpatches",
        ["evaluation.py", "hpatches", "--data", "{hpatches}", "--preset", "superpoint"]
        + ["--model", SUPERPOINT, "--out", "{out}/hpatches", "--device", "cpu"]
        + ["--num-match-plots", "1"],
    ),
    (
        "evaluation pointcloud",
        [
            "evaluation.py",
            "pointcloud",
            "--focal-model",
            "{logs}/focal/checkpoints/best.pt",
        ]
        + ["--shift-model", "{logs}/shift/checkpoints/best.pt", "--depth", "{clouds}"]
        + ["--out", "{out}/pointcloud", "--device", "cpu"],
    ),
    (
        "evaluation inversion",
        ["evaluation.py", "inversion", "--checkpoint", COARSE, "--refiner", REFINER]
        + ["--images", "{photos}", "--model", "sift", "--size", "64"]
        + ["--keep", "0.5", "--out", "{out}/inversion", "--device", "cpu"],
    ),
]


@dataclass
class Outcome:
    """What one command did under the device rules."""

    code: int | None = None
    violations: list[str] = field(default_factory=list)
    error: str = ""


def _paths(root: Path) -> dict[str, str]:
    """Inputs every command reads: small real photographs, HPatches-style sequences,
    depth maps, SIFT feature files next to a copy of the photographs, and the point-cloud
    recipe with the voxel network."""
    import data_gen
    import extract

    photos = write_photos(root / "photos", ("chelsea", "coffee", "astronaut", "rocket"))
    sift_photos = root / "sift_photos"
    shutil.copytree(photos, sift_photos)
    assert extract.main(["--model", "sift", "--images", str(sift_photos)]) == 0
    from datasets.hpatches_demo import generate

    hpatches = root / "hpatches"
    generate("builtin", hpatches, num_sequences=1, max_size=96, progress=False)
    voxel_config = root / "voxel_shift.yaml"
    conf = yaml.safe_load(Path("configs/pointcloud_shift.yaml").read_text())
    conf["model"] = {"name": "voxelnet", "target": "shift", "input_channels": 5}
    conf["model"].update(voxel_size=0.5, widths=[4, 8])
    voxel_config.write_text(yaml.safe_dump(conf))
    clouds = root / "clouds"
    argv = ["pointclouds", "--procedural", "2", "--size", "24,32", "--out", str(clouds)]
    assert data_gen.main(argv) == 0
    return {
        "photos": str(photos),
        "sift_photos": str(sift_photos),
        "hpatches": str(hpatches),
        "clouds": str(clouds),
        "voxel_config": str(voxel_config),
        "labels": str(root / "labels"),
        "logs": str(root / "logs"),
        "out": str(root / "out"),
    }


def run_disciplined(argv: list[str]) -> Outcome:
    """Run one command under :class:`DeviceDiscipline`; exceptions become the outcome."""
    outcome = Outcome()
    mode = DeviceDiscipline()
    try:
        with mode:
            outcome.code = run_command((argv[0],), argv[1:])
    except Exception:  # noqa: BLE001 - the traceback is the test's report
        outcome.error = traceback.format_exc(limit=-6)
    outcome.violations = list(mode.violations)
    return outcome


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, monkeypatch_module) -> dict[str, Outcome]:
    """Every row of :data:`COMMANDS`, in order, under the device rules."""
    root = tmp_path_factory.mktemp("discipline")
    monkeypatch_module.chdir(Path(__file__).resolve().parents[1])
    threads = torch.get_num_threads()
    # Tiny tensors gain nothing from intra-op threads; on a busy machine they only wait.
    torch.set_num_threads(1)
    try:
        paths = _paths(root)
        results = {}
        for name, template in COMMANDS:
            argv = [word.format(**paths) for word in template]
            results[name] = run_disciplined(argv)
            if results[name].code != 0:
                # The rows after it need this row's files (checkpoints, labels).
                run_command((argv[0],), [*argv[1:], *_overwrite(argv)])
    finally:
        torch.set_num_threads(threads)
    return results


def _overwrite(argv: list[str]) -> list[str]:
    return ["--overwrite"] if argv[0].startswith("train_") else []


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize("name", [name for name, _ in COMMANDS])
def test_command_keeps_cuda_device_rules(outcomes, name):
    outcome = outcomes[name]
    assert not outcome.violations, "\n".join(outcome.violations)
    assert outcome.code == 0, outcome.error or f"exit code {outcome.code}"


def _mixes(code) -> list[str]:
    mode = DeviceDiscipline()
    with pytest.raises(RuntimeError, match="device discipline"), mode:
        code()
    return mode.violations


def test_a_tensor_made_without_device_is_refused_next_to_the_batch():
    def batch() -> torch.Tensor:
        return torch.ones(4).to(torch.device("cpu"))  # moved like a batch is

    def mutual(sim: torch.Tensor) -> torch.Tensor:  # as train_superpoint's panels were
        nn01, nn10 = sim.argmax(1), sim.argmax(0)
        return nn10[nn01] == torch.arange(len(nn01))

    # The bug of a GPU run: arange lands on the host, the batch is on the device.
    assert "__eq__" in _mixes(lambda: mutual(batch()[:, None] * batch()))[0]
    assert "cat" in _mixes(lambda: torch.cat([batch(), torch.zeros(2)]))[0]
    assert "numpy" in _mixes(lambda: batch().numpy())[0]
    assert "index a host" in _mixes(lambda: torch.zeros(5)[batch().long()])[0]


def test_what_cuda_allows_passes():
    mode = DeviceDiscipline()
    with mode:
        net = torch.nn.Linear(3, 2).to(torch.device("cpu"))
        x = torch.rand(4, 3).to(torch.device("cpu"))
        y = net(x) * torch.tensor(2.0)  # a 0-dim host tensor is a CPU scalar
        y = y[torch.arange(2)]  # host indices may index a device tensor
        z = torch.zeros(2, 2, device=y.device) + y
        host = z.cpu()
        total = torch.cat([host, torch.ones(1, 2)]).detach().numpy().sum()
        assert mode.place(z) == "device" and mode.place(host) == "host"
        assert mode.place(x) == "device" and mode.place(net.weight) == "device"
    assert mode.violations == [] and total > 0
