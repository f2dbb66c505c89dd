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


def predict(model, loader, device, amp_dtype, progress: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample_ids, labels, float32 logits) over a loader, in loader order; ``progress``: the
    description of a tqdm bar counting stamps (its total: the samples this rank's dataset yields)."""
    from tqdm import tqdm

    model.eval()
    ids, ys, logits = [], [], []
    ds = loader.dataset
    total = ds.rank_samples(ds.epoch, loader.num_workers) if hasattr(ds, "rank_samples") else None
    bar = tqdm(total=total, desc=progress, unit="stamp", disable=progress is None, leave=False, mininterval=10)
    with torch.no_grad(), bar:
        for x, y, meta, sid in loader:
            bar.update(len(sid))
            x, meta = x.to(device, non_blocking=True), meta.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(x, meta if meta.shape[1] else None)
            logits.append(out.float().cpu().numpy())
            ys.append(y.numpy())
            ids.append(sid.numpy())
    return np.concatenate(ids), np.concatenate(ys).astype(np.int8), np.concatenate(logits).astype(np.float32)


def predict_arrays(model, pre, stamps: np.ndarray, ctrl: np.ndarray | None = None, meta: np.ndarray | None = None,
                   *, batch_size: int = 256, device=None, amp_dtype=None, impute_meta: bool = False) -> np.ndarray:
    """float32 logits of raw stamps (B, 3, H, W) nanomaggies, with the model's own recipe ``pre``
    (:meth:`~darkhaloscope.model.preprocess.Preprocess.apply`), ``batch_size`` stamps at a time
    (memory: one batch of network inputs). ``ctrl``/``meta`` as ``Preprocess.apply`` takes them.
    Device and autocast default to :func:`device_and_amp`."""
    if device is None:
        device, amp_dtype = device_and_amp()
    model.eval()
    model.to(device)
    out = []
    with torch.no_grad():
        for a in range(0, len(stamps), int(batch_size)):
            b = a + int(batch_size)
            x, m = pre.apply(stamps[a:b], None if ctrl is None else ctrl[a:b],
                             None if meta is None else meta[a:b], impute_meta=impute_meta)
            xt, mt = torch.from_numpy(x).to(device), torch.from_numpy(m).to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logit = model(xt, mt if mt.shape[1] else None)
            out.append(logit.float().cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float64 sigmoid of float32 logits (no bf16 ties)."""
    z = logits.astype(np.float64)
    return np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))


__all__ = ["device_and_amp", "predict", "predict_arrays", "sigmoid"]
