"""Descriptor losses: dense == brute-force loop == naive tensor, sparse gradients, accuracy."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geometry.homography import sample_homography, warp_points
from losses.descriptor import (
    correspondence_mask,
    dense_descriptor_loss,
    dense_descriptor_loss_loop,
    matching_accuracy,
    sparse_descriptor_loss,
)

B, D, HC, WC = 2, 8, 3, 4
SHAPE = (HC * 8, WC * 8)


def random_inputs(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    d0 = F.normalize(torch.randn(B, D, HC, WC, generator=gen, dtype=dtype), dim=1)
    d1 = F.normalize(torch.randn(B, D, HC, WC, generator=gen, dtype=dtype), dim=1)
    rng = np.random.default_rng(seed)
    H = np.stack(
        [sample_homography(SHAPE, rng, {"patch_ratio": 0.9}) for _ in range(B)]
    )
    valid = (torch.rand(B, *SHAPE, generator=gen) > 0.01).float()
    return d0, d1, torch.from_numpy(H), valid


def naive_dense(d0, d1, H, valid, lambda_d, mp, mn):
    """The B x Hc x Wc x Hc x Wc x D formulation, differentiable, tiny inputs only."""
    ys, xs = torch.meshgrid(torch.arange(HC), torch.arange(WC), indexing="ij")
    centers = torch.stack([xs, ys], -1).reshape(-1, 2).double() * 8 + 3.5
    warped = warp_points(centers[None].expand(B, -1, -1), H.double())
    s = (warped[:, :, None] - centers[None, None]).norm(dim=-1) <= 7.5
    a = d0.reshape(B, D, -1).transpose(1, 2)[:, :, None, :]
    b = d1.reshape(B, D, -1).transpose(1, 2)[:, None, :, :]
    dot = (a * b).sum(-1)  # materialises B x N x N x D above
    loss = torch.where(s, lambda_d * F.relu(mp - dot), F.relu(dot - mn))
    cells = F.pixel_unshuffle(valid[:, None], 8).amin(1).reshape(B, 1, -1)
    return (loss * cells).sum() / (cells.sum() * HC * WC)


@pytest.mark.parametrize("seed", [0, 1])
def test_dense_equals_brute_force_loop(seed):
    d0, d1, H, valid = random_inputs(seed)
    kwargs = {"lambda_d": 3.0, "positive_margin": 0.9, "negative_margin": -0.1}
    fast = dense_descriptor_loss(d0, d1, H, valid, chunk_size=1, **kwargs)
    slow = dense_descriptor_loss_loop(d0, d1, H, valid, **kwargs)
    assert correspondence_mask(H, HC, WC).any()
    assert abs(float(fast) - float(slow)) < 1e-5


def test_dense_gradient_equals_naive_formulation():
    d0, d1, H, valid = random_inputs(2, torch.float32)
    d0.requires_grad_(True)
    d1.requires_grad_(True)
    fast = dense_descriptor_loss(d0, d1, H, valid, lambda_d=5.0, chunk_size=1)
    g0, g1 = torch.autograd.grad(fast, (d0, d1))
    naive = naive_dense(d0, d1, H, valid, 5.0, 1.0, 0.2)
    n0, n1 = torch.autograd.grad(naive, (d0, d1))
    torch.testing.assert_close(fast, naive.float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g0, n0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g1, n1, atol=1e-6, rtol=1e-5)


def test_dense_chunking_does_not_change_the_result():
    d0, d1, H, valid = random_inputs(3, torch.float32)
    a = dense_descriptor_loss(d0, d1, H, valid, chunk_size=1)
    b = dense_descriptor_loss(d0, d1, H, valid, chunk_size=8)
    torch.testing.assert_close(a, b)


def test_identity_correspondences_are_the_diagonal():
    eye = torch.eye(3, dtype=torch.float64).expand(1, 3, 3)
    assert torch.equal(correspondence_mask(eye, HC, WC)[0], torch.eye(HC * WC).bool())


def test_sparse_gradients_finite_and_perfect_descriptors_give_zero():
    d0, d1, H, valid = random_inputs(4, torch.float32)
    d0.requires_grad_(True)
    d1.requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    loss = sparse_descriptor_loss(
        d0, d1, H, valid, num_positives=5, num_negatives=4, generator=gen
    )
    loss.backward()
    assert torch.isfinite(loss.detach()) and float(loss.detach()) > 0
    assert torch.isfinite(d0.grad).all() and torch.isfinite(d1.grad).all()
    assert d0.grad.abs().sum() > 0 and d1.grad.abs().sum() > 0
    eye = torch.eye(3, dtype=torch.float64).expand(B, 3, 3)
    zero = sparse_descriptor_loss(
        d0.detach(), d0.detach(), eye, None, negative_margin=1.0, generator=gen
    )
    assert float(zero) < 1e-6


def test_sparse_without_any_valid_cell_is_zero_and_differentiable():
    d0, d1, H, _ = random_inputs(5, torch.float32)
    d0.requires_grad_(True)
    loss = sparse_descriptor_loss(d0, d1, H, torch.zeros(B, *SHAPE))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.equal(d0.grad, torch.zeros_like(d0))


def test_matching_accuracy_known_answers():
    d0, _, _, _ = random_inputs(6, torch.float32)
    eye = torch.eye(3, dtype=torch.float64).expand(B, 3, 3)
    assert float(matching_accuracy(d0, d0, eye)) == 1.0
    flipped = torch.flip(d0, dims=(3,))
    assert float(matching_accuracy(d0, flipped, eye)) < 0.5
