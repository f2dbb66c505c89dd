"""Tests of darkhaloscope.model.losses: focal loss, BCE, label smoothing, pos_weight."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from darkhaloscope.model.losses import LOSSES, FocalLoss, build_loss, smooth_targets


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_focal_matches_hand_computation():
    logits = [2.0, -1.0, 0.5, -3.0]
    targets = [1.0, 0.0, 0.0, 1.0]
    alpha, gamma = 0.25, 2.0
    expected = []
    for x, y in zip(logits, targets):
        p = _sigmoid(x)
        if y == 1.0:
            p_t, ce, alpha_t = p, -math.log(p), alpha
        else:
            p_t, ce, alpha_t = 1.0 - p, -math.log(1.0 - p), 1.0 - alpha
        expected.append(alpha_t * (1.0 - p_t) ** gamma * ce)
    # Spot-check the first sample fully by hand: p = 0.880797, CE = 0.126928,
    # (1 - p)^2 = 0.014209, alpha_t = 0.25 -> 0.25 * 0.014209 * 0.126928.
    assert expected[0] == pytest.approx(0.25 * (1 - 0.8807970779778823) ** 2 * 0.12692801104297263, rel=1e-9)

    lx = torch.tensor(logits, dtype=torch.float64)
    ty = torch.tensor(targets, dtype=torch.float64)
    per = FocalLoss(alpha=alpha, gamma=gamma, reduction="none")(lx, ty)
    assert per.dtype == torch.float32
    assert per.tolist() == pytest.approx(expected, rel=1e-5)
    mean = FocalLoss(alpha=alpha, gamma=gamma)(lx, ty)
    assert mean.item() == pytest.approx(sum(expected) / 4, rel=1e-5)
    total = FocalLoss(alpha=alpha, gamma=gamma, reduction="sum")(lx, ty)
    assert total.item() == pytest.approx(sum(expected), rel=1e-5)


def test_focal_gamma0_alpha_half_is_half_bce():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, generator=g) * 4
    y = torch.rand(50, generator=g)  # soft targets as well
    y[:25] = (y[:25] > 0.5).float()
    fl = FocalLoss(alpha=0.5, gamma=0.0)(x, y)
    bce = F.binary_cross_entropy_with_logits(x, y)
    assert fl.item() == pytest.approx(0.5 * bce.item(), rel=1e-6)


def test_focal_downweights_easy_examples():
    fl = FocalLoss(alpha=0.5, gamma=2.0, reduction="none")
    bce = F.binary_cross_entropy_with_logits
    x = torch.tensor([4.0, -0.5])  # easy and hard positives
    y = torch.ones(2)
    ratio = fl(x, y) / (0.5 * bce(x, y, reduction="none"))
    assert ratio[0] < 1e-3 and ratio[1] > 0.3


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("name", ["bce", "focal"])
def test_gradient_finite_for_extreme_logits(name, gamma):
    loss_fn = build_loss(name, focal_gamma=gamma) if name == "focal" else build_loss(name, pos_weight=2.0)
    x = torch.tensor([100.0, -100.0, 100.0, -100.0], requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])  # two trivially right, two badly wrong
    loss = loss_fn(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()
    # the wrong ones get a real gradient, pushing the logit the right way
    assert x.grad[2] > 0 and x.grad[3] < 0


def test_label_smoothing_targets():
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    assert smooth_targets(y, 0.1).tolist() == pytest.approx([0.05, 0.95, 0.95, 0.05])
    x = torch.tensor([0.3, -1.2, 2.5, 4.0])
    ys = y * (1 - 0.1) + 0.5 * 0.1
    bce = build_loss("bce", label_smoothing=0.1)(x, y)
    assert bce.item() == pytest.approx(F.binary_cross_entropy_with_logits(x, ys).item(), rel=1e-6)
    assert bce.item() != pytest.approx(F.binary_cross_entropy_with_logits(x, y).item(), rel=1e-3)
    foc = build_loss("focal", focal_alpha=0.3, focal_gamma=1.5, label_smoothing=0.1)(x, y)
    ref = FocalLoss(alpha=0.3, gamma=1.5)(x, ys)
    assert foc.item() == pytest.approx(ref.item(), rel=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        build_loss("bce", label_smoothing=1.0)


def test_pos_weight_scales_positive_term_only():
    x = torch.tensor([0.3, -1.2, 2.5])
    ones, zeros = torch.ones(3), torch.zeros(3)
    plain = build_loss("bce")
    weighted = build_loss("bce", pos_weight=3.0)
    assert isinstance(weighted.pos_weight, torch.Tensor)
    assert weighted(x, ones).item() == pytest.approx(3.0 * plain(x, ones).item(), rel=1e-6)
    assert weighted(x, zeros).item() == pytest.approx(plain(x, zeros).item(), rel=1e-6)
    ref = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0))(x, ones)
    assert weighted(x, ones).item() == pytest.approx(ref.item(), rel=1e-6)
    with pytest.raises(ValueError, match="pos_weight"):
        build_loss("bce", pos_weight=0.0)
    with pytest.raises(ValueError, match="focal_alpha"):
        build_loss("focal", pos_weight=2.0)


def test_unknown_loss_names_valid_ones():
    assert LOSSES == ("bce", "focal")
    with pytest.raises(ValueError) as e:
        build_loss("mse")
    msg = str(e.value)
    assert "mse" in msg and "bce" in msg and "focal" in msg


def test_shape_mismatch_refused():
    # (B, 1) logits against (B,) targets would silently broadcast to (B, B)
    with pytest.raises(ValueError, match="shape"):
        build_loss("bce")(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        build_loss("focal")(torch.zeros(4, 1), torch.zeros(4))


def test_bad_focal_params_refused():
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        FocalLoss(reduction="max")


@pytest.mark.parametrize("name", ["bce", "focal"])
def test_losses_accept_bf16_logits(name):
    x = torch.tensor([0.3, -1.2, 2.5], dtype=torch.bfloat16)
    y = torch.tensor([1, 0, 1])  # integer labels are accepted
    out = build_loss(name)(x, y)
    assert out.dtype == torch.float32 and torch.isfinite(out)
