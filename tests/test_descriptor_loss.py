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
from utils.errors import UserError

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


def port_sparse_loss(d0, d1, anchors, matches, negatives, far, lamda_d=1.0):
    """pytorch-superpoint's batch_descriptor_loss_sparse on given samples (dist='cos'):
    per image lamda_d * mean(max(0, 1 - a.p)) + sum(h) / (count(h > 0) + 1) with
    h = max(0, a.n - 0.2) (non_match_descriptor_loss, invert=True, M=0.2); mean over
    the batch."""
    losses = []
    for k in range(len(d0)):
        flat0, flat1 = d0[k].flatten(1).t(), d1[k].flatten(1).t()  # (cells, D)
        # The loss renormalises its bilinear positive sample (the port does not): at a
        # cell centre the value is unchanged, the gradient loses its radial part.
        a, p = flat0[anchors[k]], F.normalize(flat1[matches[k]], dim=-1)
        match_loss = torch.clamp(1.0 - (a * p).sum(-1), min=0).mean()
        h = (a[:, None] * flat1[negatives[k]]).sum(-1)[far[k]]
        h = torch.clamp(h - 0.2, min=0)
        num_hard_negatives = len(torch.nonzero(h))
        losses.append(lamda_d * match_loss + h.sum() / (num_hard_negatives + 1))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("average", ["violators", "all"])
def test_sparse_negative_average_equals_the_port_formula(average):
    """Image k moves k + 1 cells to the right: matches are whole cells (8 then 6
    anchors), so the samples can be replayed from the generator (per image a
    permutation of the matchable cells, then the negatives). ``violators`` is the port's
    negative term, value and gradient; it is the default. Catches a mean over all
    negatives as the default, a missing + 1, a count of every sampled negative, and
    terms pooled over the batch instead of averaged per image."""
    d0, d1, _, _ = random_inputs(6)
    d0.requires_grad_(True)
    d1.requires_grad_(True)
    H = torch.eye(3, dtype=torch.float64).repeat(B, 1, 1)
    H[:, 0, 2] = torch.tensor([8.0, 16.0])
    kwargs = {"num_positives": 8, "num_negatives": 6, "negative_distance": 8.0}
    if average == "all":
        kwargs["negative_average"] = "all"
    loss = sparse_descriptor_loss(
        d0, d1, H, None, generator=torch.Generator().manual_seed(3), **kwargs
    )
    gen = torch.Generator().manual_seed(3)
    ys, xs = torch.meshgrid(torch.arange(HC), torch.arange(WC), indexing="ij")
    centers = torch.stack([xs, ys], -1).reshape(-1, 2).double() * 8 + 3.5
    anchors, matches, negatives, far = [], [], [], []
    for k in range(B):
        candidates = torch.tensor(
            [i * WC + j for i in range(HC) for j in range(WC - k - 1)]
        )
        pick = candidates[torch.randperm(len(candidates), generator=gen)[:8]]
        anchors.append(pick)
        matches.append(pick + k + 1)
        negatives.append(torch.randint(0, HC * WC, (len(pick), 6), generator=gen))
        warped = centers[pick] + torch.tensor([8.0 * (k + 1), 0.0], dtype=torch.float64)
        far.append((centers[negatives[-1]] - warped[:, None]).norm(dim=-1) > 8.0)
    assert [len(a) for a in anchors] == [8, 6]
    if average == "violators":
        expected = port_sparse_loss(d0, d1, anchors, matches, negatives, far)
    else:
        terms = []
        for k in range(B):
            flat0, flat1 = d0[k].flatten(1).t(), d1[k].flatten(1).t()
            a, p = flat0[anchors[k]], F.normalize(flat1[matches[k]], dim=-1)
            h = (a[:, None] * flat1[negatives[k]]).sum(-1)[far[k]] - 0.2
            terms.append((1 - (a * p).sum(-1)).clamp(min=0).mean() + h.relu().mean())
        expected = torch.stack(terms).mean()
    hinges = torch.cat(
        [
            (d0[k].flatten(1).t()[a][:, None] * d1[k].flatten(1).t()[n]).sum(-1)[f]
            for k, (a, n, f) in enumerate(zip(anchors, negatives, far))
        ]
    )
    assert 0 < (hinges > 0.2).sum() < len(hinges)  # easy and hard negatives
    # The loss runs in float32.
    torch.testing.assert_close(loss.float(), expected.float(), rtol=0, atol=1e-6)
    for ours, theirs in zip(
        torch.autograd.grad(loss, (d0, d1)), torch.autograd.grad(expected, (d0, d1))
    ):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_sparse_rejects_an_unknown_negative_average():
    d0, d1, H, _ = random_inputs(7, torch.float32)
    with pytest.raises(UserError, match="sparse_negative_average.*'mean'"):
        sparse_descriptor_loss(d0, d1, H, negative_average="mean")


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
