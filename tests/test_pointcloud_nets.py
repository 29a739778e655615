"""Point and voxel regressors: shapes, voxelisation against a loop, invariances, gradients."""

import numpy as np
import pytest
import torch

from models.pointcloud_nets import build_cloud_model, neighbor_edges, voxelize
from utils.errors import UserError

TINY_POINT = {"name": "pointnet", "widths": [8, 16], "head": [8]}
TINY_VOXEL = {
    "name": "voxelnet",
    "widths": [4, 8],
    "head": [8],
    "voxel_size": 0.5,
    "grid_extent": [1.0, 1.0, 2.0],
}


def test_neighbor_edges_equal_a_plain_loop():
    points = torch.rand(2, 12, 5, generator=torch.Generator().manual_seed(1))
    edges = neighbor_edges(points, 3, far=2)
    assert edges.shape == (2, 12, 5, 10)
    for b in range(2):
        for i in range(12):
            distances = ((points[b, :, :3] - points[b, i, :3]) ** 2).sum(-1)
            by_distance = torch.argsort(distances)  # [0] is the point itself
            # Three nearest, then the points 4 and 8 places further in the cloud.
            partners = torch.cat([by_distance[1:4], torch.tensor([i + 4, i + 8]) % 12])
            torch.testing.assert_close(edges[b, i, :, :5], points[b, i].expand(5, 5))
            torch.testing.assert_close(
                edges[b, i, :, 5:], points[b, partners] - points[b, i]
            )


def test_voxelize_equals_a_plain_loop():
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(2, 50, 5, generator=gen) * 3 - torch.tensor(
        [1.5, 1.5, 0.2, 0, 0]
    )
    grid = voxelize(points, 0.5, [1.0, 1.0, 2.0])
    assert grid.shape == (2, 6, 4, 4, 4)  # (B, C + 1, Dz, Dy, Dx)
    sums = np.zeros((2, 4, 4, 4, 5))
    counts = np.zeros((2, 4, 4, 4))
    for b in range(2):
        for p in points[b].numpy().astype(np.float64):
            ix = min(max(int(np.floor((p[0] + 1.0) / 0.5)), 0), 3)
            iy = min(max(int(np.floor((p[1] + 1.0) / 0.5)), 0), 3)
            iz = min(max(int(np.floor(p[2] / 0.5)), 0), 3)
            sums[b, iz, iy, ix] += p
            counts[b, iz, iy, ix] += 1
    means = sums / np.maximum(counts, 1)[..., None]
    np.testing.assert_allclose(grid[:, :5].permute(0, 2, 3, 4, 1), means, atol=1e-5)
    np.testing.assert_allclose(grid[:, 5], np.log1p(counts), atol=1e-6)


@pytest.mark.parametrize(
    "conf",
    [
        TINY_POINT,
        {**TINY_POINT, "neighbors": 4},
        {**TINY_POINT, "neighbors": 4, "far_neighbors": 2},
        TINY_VOXEL,
    ],
)
@pytest.mark.parametrize("channels", [3, 5, 6])
def test_regressors_shapes_gradients_and_initial_value(conf, channels):
    torch.manual_seed(0)
    model = build_cloud_model({**conf, "input_channels": channels, "target": "focal"})
    points = torch.rand(2, 40, channels) + torch.tensor(
        [0, 0, 0.5] + [0] * (channels - 3)
    )
    batch = {"points": points, "target": torch.tensor([0.8, 1.2])}
    pred = model(batch)
    assert pred["value"].shape == (2,)
    # An untrained model predicts "no correction" (initial_scale = 1 for a ratio).
    assert torch.allclose(pred["value"], torch.ones(2), atol=0.05)
    losses, metrics = model.loss(pred, batch)
    losses["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert set(metrics) == {"abs_error", "rel_error"}
    shift = build_cloud_model({**conf, "input_channels": channels, "target": "shift"})
    assert torch.allclose(shift(batch)["value"], torch.zeros(2), atol=0.05)


def test_log_space_ratio_is_positive_and_its_loss_compares_logarithms():
    torch.manual_seed(0)
    model = build_cloud_model({**TINY_POINT, "log_space": True, "initial_scale": 2.0})
    pred = model({"points": torch.rand(3, 20, 3)})
    assert torch.allclose(pred["value"], torch.full((3,), 2.0), atol=0.05)
    target = torch.tensor([1.0, 4.0, 0.5])
    losses, _ = model.loss(pred, {"target": target})
    expected = (pred["value"].log() - target.log()).abs().mean()
    torch.testing.assert_close(losses["total"], expected)
    with pytest.raises(UserError, match="log_space applies to the focal and scale"):
        build_cloud_model({**TINY_POINT, "log_space": True, "target": "shift"})


@pytest.mark.parametrize("neighbors", [0, 4])
def test_pointnet_ignores_point_order(neighbors):
    torch.manual_seed(0)
    model = build_cloud_model({**TINY_POINT, "target": "shift", "neighbors": neighbors})
    model.eval()
    points = torch.rand(2, 30, 3)
    order = torch.randperm(30)
    with torch.no_grad():
        a = model({"points": points})["value"]
        b = model({"points": points[:, order]})["value"]
    torch.testing.assert_close(a, b)


def test_bad_model_configs_are_named():
    with pytest.raises(UserError, match="model.name 'pointnt'"):
        build_cloud_model({"name": "pointnt"})
    with pytest.raises(UserError, match="model.target 'depth'"):
        build_cloud_model({**TINY_POINT, "target": "depth"})
    with pytest.raises(UserError, match="far_neighbors needs model.neighbors > 0"):
        build_cloud_model({**TINY_POINT, "far_neighbors": 2})
    with pytest.raises(UserError, match="unknown config key 'model.voxel_size'"):
        build_cloud_model({**TINY_POINT, "voxel_size": 0.1})
    model = build_cloud_model(TINY_POINT)
    pred = model({"points": torch.rand(2, 10, 3)})
    with pytest.raises(UserError, match=r"target of shape \(2, 1\)"):
        model.loss(pred, {"target": torch.ones(2, 1)})
    with pytest.raises(UserError, match="input_channels=3"):
        model({"points": torch.rand(1, 10, 5)})
