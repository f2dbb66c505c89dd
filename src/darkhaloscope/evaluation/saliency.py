"""Grad-CAM saliency (Selvaraju et al. 2017) on the last convolutional feature map."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def grad_cam(model, x: torch.Tensor, meta: torch.Tensor | None = None) -> np.ndarray:
    """(B, H, W) maps in [0, 1]: ReLU of the gradient-weighted last conv activations, upsampled.

    The target is the lens logit; where it is high the model's evidence for "lens" lies.
    """
    acts: list[torch.Tensor] = []

    def hook(_, __, out):
        if out.dim() == 4:
            out.retain_grad()
            acts.append(out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        model.eval()
        x = x.clone().requires_grad_(False)
        with torch.enable_grad():
            logits = model(x, meta)
            if not acts:
                raise RuntimeError("grad_cam: the model has no Conv2d layer")
            a = acts[-1]
            logits.sum().backward()
            w = a.grad.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((w * a).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    cam = cam.detach().cpu().numpy()
    mx = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(mx > 0, cam / np.where(mx > 0, mx, 1), 0.0)
