"""Benchmark: the point-cloud module's networks and data generation on this machine.

Prints the CPU line (``engine.devices.cpu_line``: model name, avx2 / avx512f / avx512_bf16 /
amx flags), then:

* points/s through each network (the demo's PointNet, without and with its EdgeConv layer,
  the focal demo's xyz + normal PointNet, and the default VoxelNet), forward only and
  forward + backward + Adam step, in fp32 and under bf16 autocast (only where the CPU runs
  bf16 natively; elsewhere it is skipped with a note), with the bf16 / fp32 ratio (> 1: bf16
  is the faster path here); the PointNet's per-point MLP is also timed as ``Conv1d`` layers,
  the plain formulation its ``Linear`` layers replace;
* data generation samples/s: procedural scenes (clutter and sensor effects) rendered at
  96x128 and 192x256, the ray caster called one pixel at a time at 24x32 as the plain
  baseline of casting all pixels at once (the same scene at the same size), and training
  samples built from a generated folder (load, distort, normalise, sample points), with
  xyz and with xyz + normal.

    python benchmarks/bench_pointcloud.py [--batch-size 32] [--points 512] [--repeats 5]
"""

from __future__ import annotations

import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import native_precisions  # noqa: E402
from datasets.pointcloud import PointCloudDataset  # noqa: E402
from datasets.procedural_scenes import (  # noqa: E402
    random_scene,
    render,
    render_procedural,
)
from datasets.scene_geometry import cast_rays  # noqa: E402
from engine.devices import cpu_line  # noqa: E402
from models.pointcloud_nets import build_cloud_model  # noqa: E402
from utils.arguments import ArgumentParser  # noqa: E402

# The demo's networks (configs/pointcloud_*.yaml) and the voxel network's defaults.
NETWORKS = {
    "pointnet": {"name": "pointnet", "widths": [32, 64, 128], "neighbors": 8},
    "pointnet, xyz + normal (focal demo)": {
        "name": "pointnet",
        "widths": [32, 64, 128],
        "neighbors": 8,
        "input_channels": 6,
    },
    "pointnet, no EdgeConv": {"name": "pointnet", "widths": [32, 64, 128]},
    "voxelnet": {"name": "voxelnet"},
}


def amp(precision: str) -> torch.autocast:
    """bf16 autocast on CPU, or a disabled one for fp32."""
    return torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def network_rates(
    model: nn.Module, points: torch.Tensor, repeats: int, precisions: list[str]
) -> dict[str, float]:
    """Points/s forward (eval) and train step in each of ``precisions`` (fp32, bf16
    autocast)."""
    batch = {"points": points, "target": torch.ones(points.shape[0])}
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    count = points.shape[0] * points.shape[1]
    rates = {}
    for precision in precisions:

        def forward(precision=precision):
            model.eval()
            with torch.no_grad(), amp(precision):
                model(batch)

        def step(precision=precision):
            model.train()
            optimizer.zero_grad(set_to_none=True)
            with amp(precision):
                pred = model(batch)
            model.loss(pred, batch)[0]["total"].backward()
            optimizer.step()

        rates[f"forward {precision}"] = count / timed(forward, repeats)
        rates[f"train {precision}"] = count / timed(step, repeats)
    return rates


class Conv1dPointMLP(nn.Module):
    """The per-point MLP as 1x1 ``Conv1d`` layers on ``(B, C, N)`` (plain baseline)."""

    def __init__(self, widths: list[int]):
        super().__init__()
        layers, channels = [], 3
        for width in widths:
            layers += [nn.Conv1d(channels, width, 1, bias=False), nn.BatchNorm1d(width)]
            layers.append(nn.ReLU(inplace=True))
            channels = width
        self.net = nn.Sequential(*layers)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.net(points.transpose(1, 2)).amax(-1)


def per_point_mlp_rates(
    points: torch.Tensor, repeats: int, precisions: list[str]
) -> None:
    widths = NETWORKS["pointnet, no EdgeConv"]["widths"]
    model = build_cloud_model(NETWORKS["pointnet, no EdgeConv"])
    conv = Conv1dPointMLP(widths)
    count = points.shape[0] * points.shape[1]
    for precision in precisions:

        def linear(precision=precision):
            with amp(precision):
                model.features(points).float().sum().backward()

        def conv1d(precision=precision):
            with amp(precision):
                conv(points).float().sum().backward()

        fast, plain = count / timed(linear, repeats), count / timed(conv1d, repeats)
        print(
            f"  per-point MLP fwd+bwd {precision}: Linear {fast / 1e3:.0f} k points/s, "
            f"Conv1d {plain / 1e3:.0f} k points/s (Linear/Conv1d {fast / plain:.2f}x)"
        )


def loop_render(scene: dict, K: np.ndarray, height: int, width: int) -> np.ndarray:
    """Exact depth by the same ray caster called one pixel at a time."""
    origin, rotation = scene["camera_position"], scene["world_from_camera"]
    depth = np.zeros((height, width))
    for v in range(height):
        for u in range(width):
            ray = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0])
            t, _, _ = cast_rays(origin, (rotation @ ray)[None], scene["scene"])
            depth[v, u] = t[0]
    return depth


def data_rates(repeats: int) -> None:
    for height, width in ((96, 128), (192, 256)):
        count = 10
        seconds = timed(
            lambda h=height, w=width, n=count: [
                render_procedural(i, 0, h, w) for i in range(n)
            ],
            max(1, repeats // 2),
        )
        print(f"  procedural scenes {height}x{width}: {count / seconds:.1f} samples/s")
    sample = render_procedural(0, 0, 24, 32)
    scene = random_scene(np.random.default_rng([0, 0]))
    fast = timed(lambda: render(scene, 24, 32), repeats)
    plain = timed(lambda: loop_render(scene, sample["K"], 24, 32), 1)
    np.testing.assert_allclose(
        loop_render(scene, sample["K"], 24, 32), sample["exact_depth"], rtol=1e-6
    )
    print(
        f"  renderer 24x32: all pixels at once {1 / fast:.1f} scenes/s, one ray at a "
        f"time {1 / plain:.2f} scenes/s ({plain / fast:.0f}x), same depth"
    )
    from datasets.pointcloud_gen import main as generate

    with tempfile.TemporaryDirectory() as folder:
        with contextlib.redirect_stdout(io.StringIO()):
            generate(["--procedural", "40", "--size", "96,128", "--out", folder])
        for channels in (3, 6):
            dataset = PointCloudDataset(
                {"root": folder, "num_points": 512, "input_channels": channels}, "train"
            )
            seconds = timed(lambda d=dataset: [d[i] for i in range(len(d))], repeats)
            print(
                f"  training samples (96x128 depth file -> 512 distorted points, "
                f"{channels} channels): {len(dataset) / seconds:.1f} samples/s"
            )


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--batch-size", type=int, default=32, help="clouds per batch")
    parser.add_argument("--points", type=int, default=512, help="points per cloud")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median)")
    args = parser.parse_args(argv)
    print(cpu_line())
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(args.batch_size, args.points, 3, generator=gen)
    points = points * torch.tensor([2.0, 2.0, 1.2]) - torch.tensor([1.0, 1.0, 0.0])
    normals = F.normalize(
        torch.randn(args.batch_size, args.points, 3, generator=gen), dim=-1
    )
    precisions = native_precisions()
    print(f"networks, batch {args.batch_size} x {args.points} points:")
    for name, conf in NETWORKS.items():
        inputs = points
        if conf.get("input_channels") == 6:
            inputs = torch.cat([points, normals], -1)
        rates = network_rates(build_cloud_model(conf), inputs, args.repeats, precisions)
        for kind in ("forward", "train"):
            fp32 = rates[f"{kind} fp32"]
            line = f"  {name} {kind}: fp32 {fp32 / 1e3:.0f} k points/s"
            if f"{kind} bf16" in rates:
                bf16 = rates[f"{kind} bf16"]
                faster = "bf16" if bf16 > fp32 else "fp32"
                line += (
                    f", bf16 {bf16 / 1e3:.0f} k points/s (bf16/fp32 {bf16 / fp32:.2f}x; "
                    f"faster: {faster})"
                )
            print(line)
    per_point_mlp_rates(points, args.repeats, precisions)
    print("data generation:")
    data_rates(args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
