"""Checkpoints that carry everything scoring needs: architecture, input channels,
normalisation, metadata columns and their scaling — so scoring cannot use a
preprocessing different from training's (the original scored with another
normalisation than it trained with)."""

from __future__ import annotations

import os
import sys

import torch

from darkhaloscope.model.loader import NormConfig
from darkhaloscope.model.nets import MetaScaler, build_model

FORMAT_VERSION = 1
REQUIRED = ("model_config", "model_state", "norm", "meta_cols", "input_channels")


def _canonical(obj):
    """A copy of the checkpoint's containers whose pickle bytes depend only on the values.

    Pickle writes an object seen before as a reference to it, so the bytes depend on which
    equal strings / dicts happen to be the same Python object - and that differs between a
    run that resumed from a checkpoint (its strings come from unpickling) and one that did
    not. Interning every string and rebuilding every dict, list and tuple makes a resumed
    run's checkpoints byte-identical to the uninterrupted run's. Tensors are kept as they are.
    """
    if type(obj) is str:
        return sys.intern(obj)
    if isinstance(obj, dict):
        out = type(obj)((_canonical(k), _canonical(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a module state_dict's version info
            out._metadata = obj._metadata
        return out
    if type(obj) is list:
        return [_canonical(v) for v in obj]
    if type(obj) is tuple:
        return tuple(_canonical(v) for v in obj)
    return obj


def save_checkpoint(path: str, model, extra: dict) -> None:
    """Write {model_config, model_state, **extra} atomically (temp file + rename).

    The same values give the same bytes, whether or not the run was resumed (see _canonical).
    """
    ck = {"format_version": FORMAT_VERSION, "model_config": dict(model.config),
          "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}
    tmp = path + ".tmp"
    torch.save(_canonical(ck), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (our own files, so full unpickling)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found") from None
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
    missing = [k for k in REQUIRED if k not in ck]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {', '.join(missing)} (not written by darkhaloscope.model.train?)")
    return ck


class Preprocess:
    """The checkpoint's own preprocessing: normalisation, channels, metadata scaling."""

    def __init__(self, ck: dict):
        self.norm = NormConfig.from_dict(ck["norm"])
        self.input_channels = int(ck["input_channels"])
        self.meta_cols = tuple(ck["meta_cols"])
        self.meta_scaler = MetaScaler.from_state(ck["meta_scaler"]) if ck.get("meta_scaler") else None

    def to_dict(self) -> dict:
        return {"norm": self.norm.to_dict(), "input_channels": self.input_channels,
                "meta_cols": list(self.meta_cols),
                "meta_scaler": self.meta_scaler.state_dict() if self.meta_scaler else None}


def model_from_checkpoint(ck: dict | str):
    """(model in eval mode on CPU, Preprocess) from a checkpoint dict or path."""
    if isinstance(ck, str):
        ck = load_checkpoint(ck)
    cfg = ck["model_config"]
    model = build_model(cfg["arch"], cfg["input_channels"], cfg["dropout"], cfg["n_meta"], cfg["width"])
    model.load_state_dict(ck["model_state"])
    model.eval()
    return model, Preprocess(ck)
