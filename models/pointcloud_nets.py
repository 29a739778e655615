"""Point-cloud regressors of the LeReS point-cloud module, pure PyTorch (any device).

LeReS and Train-3D used sparse point-voxel CNNs from a CUDA-only extension; these two
networks need nothing beyond ``torch``:

* :class:`PointNetRegressor` (``name: pointnet``): a shared per-point MLP (linear
  layers with batch norm), max- and mean-pooled over the points, then an MLP head;
* :class:`VoxelNetRegressor` (``name: voxelnet``): points scattered into a dense grid of
  ``voxel_size`` cells (each cell holds the mean of its points' channels and the log of
  its point count; points outside ``grid_extent`` are clamped to the border cells), a
  strided 3D CNN, global pooling and an MLP head.

Each predicts one scalar, the ``target`` of the config (``shift``, ``focal`` ratio or
``scale``; one target per model, as in Train-3D), as ``initial + head(features)``, where
``initial`` is ``initial_scale`` for the ratios and 0 for the shift (with ``log_space``, a
ratio is ``initial_scale * exp(head(features))`` and its loss compares logarithms, so
errors count relatively and the prediction stays positive), so an untrained model
predicts "no correction".
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from geometry.camera import CLOUD_INPUT_CHANNELS
from models.base_model import BaseModel
from utils.errors import UserError

TARGETS = ("shift", "focal", "scale")


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class CloudRegressor(BaseModel):
    """Shared contract: ``points (B, N, C)`` in, ``value (B,)`` out, L1 loss on ``target``."""

    default_conf: dict[str, Any] = {
        "name": None,
        "target": "focal",  # shift | focal | scale
        "input_channels": 3,  # 3: xyz, 5: xyz + normalised uv, 6: xyz + surface normal
        # Prediction of the untrained model for the focal/scale ratios (the shift starts
        # at 0): the output is this plus the head's output.
        "initial_scale": 1.0,
        # Ratio targets (focal, scale) regressed as logarithms: L1 on log ratios.
        "log_space": False,
        "head": [128, 64],
    }
    default_loss_conf: dict[str, Any] = {"type": "l1"}  # l1 | smooth_l1 | l2

    def _init(self, conf: dict[str, Any]) -> None:
        if conf["target"] not in TARGETS:
            raise UserError(f"model.target '{conf['target']}' is not one of {TARGETS}")
        if conf["input_channels"] not in CLOUD_INPUT_CHANNELS:
            raise UserError(
                f"model.input_channels must be one of {sorted(CLOUD_INPUT_CHANNELS)}, "
                f"got {conf['input_channels']}"
            )
        if self.loss_conf["type"] not in ("l1", "smooth_l1", "l2"):
            raise UserError(
                f"loss.type '{self.loss_conf['type']}' is not one of l1, smooth_l1, l2"
            )
        width = self._init_features(conf)
        self.head = _mlp([width, *conf["head"], 1])
        last = self.head[-1]
        nn.init.normal_(last.weight, std=1e-3)
        nn.init.zeros_(last.bias)
        if conf["target"] != "shift" and conf["initial_scale"] <= 0:
            raise UserError(
                f"model.initial_scale must be > 0, got {conf['initial_scale']}"
            )
        if conf["log_space"] and conf["target"] == "shift":
            raise UserError(
                "model.log_space applies to the focal and scale ratios only"
            )
        initial = 0.0 if conf["target"] == "shift" else float(conf["initial_scale"])
        self.register_buffer("initial", torch.tensor(initial), persistent=False)

    def _init_features(self, conf: dict[str, Any]) -> int:
        raise NotImplementedError

    def features(self, points: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` points to ``(B, F)`` global features."""
        raise NotImplementedError

    def _forward(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Predict the correction.

        Args:
            data: ``points (B, N, C)`` float (``C = input_channels``; the first three are
                ``xyz``).

        Returns:
            ``value (B,)``: the predicted shift, focal ratio or scale.
        """
        points = data["points"]
        if points.dim() != 3 or points.shape[-1] != self.conf["input_channels"]:
            raise UserError(
                f"points of shape {tuple(points.shape)} do not fit a model with "
                f"input_channels={self.conf['input_channels']} (expected (B, N, C))"
            )
        value = self.head(self.features(points)).squeeze(-1).float()
        if self.conf["log_space"]:
            return {"value": self.initial * torch.exp(value)}
        return {"value": value + self.initial}

    def loss(
        self, pred: dict[str, torch.Tensor], data: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Regression loss of ``pred['value'] (B,)`` against ``data['target'] (B,)``."""
        value, target = pred["value"].float(), data["target"].float()
        if target.shape != value.shape:  # a (B, 1) target would broadcast to (B, B)
            raise UserError(
                f"target of shape {tuple(target.shape)} does not match the predictions' "
                f"{tuple(value.shape)}"
            )
        kind = self.loss_conf["type"]
        if self.conf["log_space"]:
            value, target = torch.log(value), torch.log(target.clamp_min(1e-6))
        if kind == "l1":
            term = (value - target).abs().mean()
        elif kind == "smooth_l1":
            term = nn.functional.smooth_l1_loss(value, target, beta=0.05)
        else:
            term = ((value - target) ** 2).mean()
        return {"total": term, kind: term}, self.metrics(pred, data)

    def metrics(
        self, pred: dict[str, torch.Tensor], data: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """``abs_error`` and, for ratio targets, ``rel_error`` (means over the batch)."""
        value, target = pred["value"].detach().float(), data["target"].float()
        error = (value - target).abs()
        metrics = {"abs_error": error.mean()}
        if self.conf["target"] != "shift":
            metrics["rel_error"] = (error / target.abs().clamp_min(1e-6)).mean()
        return metrics


def neighbor_edges(points: torch.Tensor, k: int, far: int = 0) -> torch.Tensor:
    """Edge features of each point with its ``k`` nearest neighbours (by ``xyz``) and
    ``far`` partners anywhere in the cloud.

    Args:
        points: ``(B, N, C)``; the first three channels are ``x, y, z``.
        k: nearest neighbours per point (``k < N``).
        far: partners by position in the cloud: point ``i`` pairs with points
            ``(i + round((j + 1) N / (far + 1))) mod N``, ``j < far``. Clouds are random
            samples of a depth map in random order, so these are random points of the
            scene (and the output depends on the order of the points).

    Returns:
        ``(B, N, k + far, 2C)``: the point's channels and each partner's offset from it,
        the input of an EdgeConv layer (Wang et al., DGCNN). Near partners show local
        surface shape; far ones pair surfaces across the scene (a wall with the floor),
        whose angles a wrong focal length changes.
    """
    batch, num, channels = points.shape
    xyz = points[..., :3].float()
    nearest = torch.cdist(xyz, xyz).topk(k + 1, dim=-1, largest=False).indices[..., 1:]
    index = torch.arange(num, device=points.device)
    steps = [round((j + 1) * num / (far + 1)) for j in range(far)]
    spread = torch.stack([(index + step) % num for step in steps], -1) if far else None
    chosen = (
        nearest
        if spread is None
        else torch.cat([nearest, spread.expand(batch, -1, -1)], -1)
    )
    offset = torch.arange(batch, device=points.device)[:, None, None] * num
    neighbours = points.reshape(batch * num, channels)[chosen + offset]
    centre = points[:, :, None, :].expand(-1, -1, chosen.shape[-1], -1)
    return torch.cat([centre, neighbours - centre], -1)


class PointNetRegressor(CloudRegressor):
    """PointNet-style regressor on sampled points (see module docstring).

    With ``neighbors > 0`` the first layer is an EdgeConv over each point's nearest
    neighbours (max over them), so the per-point features carry local shape; with
    ``far_neighbors > 0`` it also reads that many partners anywhere in the cloud
    (:func:`neighbor_edges`), so they carry relations across the scene; the prediction
    then depends on the order of the points (random samples in random order).
    """

    default_conf = {
        "name": "pointnet",
        "widths": [64, 128, 256],
        "neighbors": 0,
        "far_neighbors": 0,
    }

    def _init_features(self, conf: dict[str, Any]) -> int:
        layers: list[nn.Module] = []
        channels = conf["input_channels"]
        for key in ("neighbors", "far_neighbors"):
            if conf[key] < 0:
                raise UserError(f"model.{key} must be >= 0, got {conf[key]}")
        if conf["far_neighbors"] > 0 and conf["neighbors"] == 0:
            raise UserError("model.far_neighbors needs model.neighbors > 0 (EdgeConv)")
        if conf["neighbors"] > 0:
            channels *= 2
        for width in conf["widths"]:
            # Linear on (B * N, C) rows: the same 1x1 convolution, but a plain GEMM,
            # several times faster than Conv1d in fp32 on CPU.
            layers += [
                nn.Linear(channels, width, bias=False),
                nn.BatchNorm1d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.encoder = nn.Sequential(*layers)
        return 2 * channels

    def features(self, points: torch.Tensor) -> torch.Tensor:
        batch, num, channels = points.shape
        k = min(self.conf["neighbors"], num - 1)
        if k > 0:
            far = min(self.conf["far_neighbors"], num - 1 - k)
            edges = neighbor_edges(points, k, far).reshape(-1, 2 * channels)
            per_point = self.encoder[:3](edges).reshape(batch * num, k + far, -1)
            per_point = per_point.amax(1)
            per_point = self.encoder[3:](per_point)
        else:
            per_point = self.encoder(points.reshape(batch * num, channels))
        per_point = per_point.reshape(batch, num, -1)
        return torch.cat([per_point.amax(1), per_point.mean(1)], -1)


def voxelize(
    points: torch.Tensor, voxel_size: float, extent: list[float]
) -> torch.Tensor:
    """Scatter points into a dense grid of per-cell means and log point counts.

    Args:
        points: ``(B, N, C)``; the first three channels are ``x, y, z``.
        voxel_size: cell side.
        extent: ``[ex, ey, ez]``: the grid spans ``[-ex, ex] x [-ey, ey] x [0, ez]``;
            points outside fall in the border cells.

    Returns:
        ``(B, C + 1, Dz, Dy, Dx)`` float: mean channels of each cell's points (0 when
        empty) and ``log(1 + count)``.
    """
    batch, num, channels = points.shape
    ex, ey, ez = extent
    dims = [math.ceil(2 * ex / voxel_size), math.ceil(2 * ey / voxel_size)]
    dims.append(math.ceil(ez / voxel_size))
    dx, dy, dz = dims
    p = points.float()
    ix = ((p[..., 0] + ex) / voxel_size).floor().long().clamp(0, dx - 1)
    iy = ((p[..., 1] + ey) / voxel_size).floor().long().clamp(0, dy - 1)
    iz = (p[..., 2] / voxel_size).floor().long().clamp(0, dz - 1)
    cells = dz * dy * dx
    offset = torch.arange(batch, device=points.device)[:, None] * cells
    flat = (offset + (iz * dy + iy) * dx + ix).reshape(-1)
    sums = torch.zeros(batch * cells, channels, device=points.device)
    sums.index_add_(0, flat, p.reshape(-1, channels))
    counts = torch.zeros(batch * cells, device=points.device)
    counts.index_add_(0, flat, torch.ones_like(flat, dtype=counts.dtype))
    means = sums / counts.clamp_min(1.0)[:, None]
    grid = torch.cat([means, torch.log1p(counts)[:, None]], 1)
    return grid.reshape(batch, dz, dy, dx, channels + 1).permute(0, 4, 1, 2, 3)


class VoxelNetRegressor(CloudRegressor):
    """Dense-voxel 3D CNN regressor (see module docstring)."""

    default_conf = {
        "name": "voxelnet",
        "voxel_size": 0.1,
        "grid_extent": [2.0, 2.0, 2.0],
        "widths": [16, 32, 64, 128],
    }

    def _init_features(self, conf: dict[str, Any]) -> int:
        if conf["voxel_size"] <= 0:
            raise UserError(f"model.voxel_size must be > 0, got {conf['voxel_size']}")
        if len(conf["grid_extent"]) != 3 or min(conf["grid_extent"]) <= 0:
            raise UserError("model.grid_extent must be three positive numbers")
        layers: list[nn.Module] = []
        channels = conf["input_channels"] + 1
        for i, width in enumerate(conf["widths"]):
            layers += [
                nn.Conv3d(channels, width, 3, stride=1 if i == 0 else 2, padding=1),
                nn.BatchNorm3d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.encoder = nn.Sequential(*layers)
        return 2 * channels

    def features(self, points: torch.Tensor) -> torch.Tensor:
        grid = voxelize(points, self.conf["voxel_size"], self.conf["grid_extent"])
        maps = self.encoder(grid.to(points.dtype))
        return torch.cat([maps.amax((2, 3, 4)), maps.mean((2, 3, 4))], -1)


NETWORKS = {"pointnet": PointNetRegressor, "voxelnet": VoxelNetRegressor}


def build_cloud_model(
    conf: dict[str, Any], loss_conf: dict[str, Any] | None = None
) -> CloudRegressor:
    """The regressor named by ``conf['name']`` (``pointnet`` | ``voxelnet``), random init."""
    name = conf.get("name")
    if name not in NETWORKS:
        raise UserError(f"model.name '{name}' is not one of {sorted(NETWORKS)}")
    return NETWORKS[name](conf, loss_conf)
