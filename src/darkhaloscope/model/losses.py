"""Training losses on logits: binary cross-entropy and focal loss.

Both take logits of shape (B,) and targets in [0, 1] of shape (B,). Label
smoothing (``build_loss(..., label_smoothing=eps)``) replaces the targets by
``y * (1 - eps) + 0.5 * eps`` before either loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

LOSSES = ("bce", "focal")
_REDUCTIONS = ("mean", "sum", "none")


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


class FocalLoss(nn.Module):
    """Binary focal loss on logits (Lin et al. 2017, eq. 5).

    ``FL = alpha_t * (1 - p_t)**gamma * CE`` with ``CE`` the binary
    cross-entropy with logits (numerically stable), ``p_t = exp(-CE)`` (which is
    ``p`` for y = 1 and ``1 - p`` for y = 0, and extends to soft targets) and
    ``alpha_t = alpha * y + (1 - alpha) * (1 - y)``. With gamma = 0 and
    alpha = 0.5 it is half the BCE. Computed in float32 even under autocast.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "mean"):
        super().__init__()
        if not (0.0 <= float(alpha) <= 1.0):
            raise ValueError(f"focal alpha must be in [0, 1], got {alpha!r}")
        if not float(gamma) >= 0.0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(_REDUCTIONS)}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
        x = logits.float()
        y = targets.to(x.dtype)
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        # 1 - p_t = 1 - exp(-CE) = -expm1(-CE): accurate when p_t is near 1.
        one_minus_pt = -torch.expm1(-ce)
        if self.gamma == 0.0:
            mod = torch.ones_like(ce)
        else:
            # Floor keeps d/dx (.)**gamma finite for gamma < 1 at p_t == 1.
            mod = one_minus_pt.clamp_min(1e-30).pow(self.gamma)
        alpha_t = self.alpha * y + (1.0 - self.alpha) * (1.0 - y)
        return _reduce(alpha_t * mod * ce, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


class BCEWithLogits(nn.Module):
    """``BCEWithLogitsLoss`` with a scalar ``pos_weight`` (a buffer, so it follows ``.to``)."""

    def __init__(self, pos_weight: float = 1.0, reduction: str = "mean"):
        super().__init__()
        if not float(pos_weight) > 0.0:
            raise ValueError(f"pos_weight must be > 0, got {pos_weight!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(_REDUCTIONS)}")
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight), dtype=torch.float32))
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
        x = logits.float()
        return F.binary_cross_entropy_with_logits(
            x, targets.to(x.dtype), pos_weight=self.pos_weight, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"pos_weight={float(self.pos_weight)}, reduction={self.reduction!r}"


def smooth_targets(targets: torch.Tensor, eps: float) -> torch.Tensor:
    """Label smoothing: ``y * (1 - eps) + 0.5 * eps`` (1 -> 1 - eps/2, 0 -> eps/2)."""
    return targets * (1.0 - eps) + 0.5 * eps


class SmoothedLoss(nn.Module):
    """Apply label smoothing to the targets, then the wrapped loss."""

    def __init__(self, base: nn.Module, eps: float):
        super().__init__()
        self.base = base
        self.eps = float(eps)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.base(logits, smooth_targets(targets.float(), self.eps))

    def extra_repr(self) -> str:
        return f"label_smoothing={self.eps}"


def build_loss(
    name: str,
    *,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    label_smoothing: float = 0.0,
    pos_weight: float = 1.0,
) -> nn.Module:
    """The training loss ``loss(logits (B,), targets (B,)) -> scalar`` (mean over the batch).

    ``bce``: BCE with logits and ``pos_weight``; ``focal``: :class:`FocalLoss`
    with ``focal_alpha``/``focal_gamma`` (class balance is set by alpha, so a
    ``pos_weight`` other than 1 is refused). ``label_smoothing`` eps in [0, 1)
    maps targets to ``y * (1 - eps) + 0.5 * eps`` for both.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    eps = float(label_smoothing)
    if not (0.0 <= eps < 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if name == "bce":
        base: nn.Module = BCEWithLogits(pos_weight=pos_weight)
    else:
        if float(pos_weight) != 1.0:
            raise ValueError(
                f"pos_weight={pos_weight!r} is only used by the bce loss; the focal loss "
                "weights the classes with focal_alpha (set pos_weight to 1.0)"
            )
        base = FocalLoss(alpha=focal_alpha, gamma=focal_gamma)
    return SmoothedLoss(base, eps) if eps > 0.0 else base


__all__ = ["LOSSES", "BCEWithLogits", "FocalLoss", "SmoothedLoss", "build_loss", "smooth_targets"]
