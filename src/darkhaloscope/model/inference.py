"""Running a model over a loader: the device, autocast, float32 logits and their sigmoid.

On CUDA the forward pass runs under bf16 autocast; on the CPU everything is float32 (and
deterministic). Logits are returned as float32 and scores are their sigmoid computed in
float64: a bf16 sigmoid would create ties.
"""

from __future__ import annotations

import os

import numpy as np
import torch


def device_and_amp() -> tuple[torch.device, torch.dtype | None]:
    """CUDA with bf16 autocast when available, else CPU float32 (LOCAL_RANK picks the GPU under torchrun)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))), torch.bfloat16
    return torch.device("cpu"), None


def predict(model, loader, device, amp_dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample_ids, labels, float32 logits) over a loader, in loader order."""
    model.eval()
    ids, ys, logits = [], [], []
    with torch.no_grad():
        for x, y, meta, sid in loader:
            x, meta = x.to(device, non_blocking=True), meta.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(x, meta if meta.shape[1] else None)
            logits.append(out.float().cpu().numpy())
            ys.append(y.numpy())
            ids.append(sid.numpy())
    return np.concatenate(ids), np.concatenate(ys).astype(np.int8), np.concatenate(logits).astype(np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float64 sigmoid of float32 logits (no bf16 ties)."""
    z = logits.astype(np.float64)
    return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


__all__ = ["device_and_amp", "predict", "sigmoid"]
