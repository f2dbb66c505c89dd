"""Checkpoints that carry everything scoring needs: the architecture and weights, and the
preprocessing recipe (:class:`~darkhaloscope.model.preprocess.Preprocess`: normalisation,
input channels, metadata columns and their scaling) — so scoring cannot use a preprocessing
different from training's (the original scored with another normalisation than it trained
with). Consumers ask the checkpoint for the recipe: :func:`model_from_checkpoint` returns
(model, Preprocess), ``Preprocess.from_checkpoint(load_checkpoint(path))`` the recipe alone."""

from __future__ import annotations

import os
import sys

import torch

from darkhaloscope.model.nets import build_model
from darkhaloscope.model.preprocess import Preprocess

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


def model_from_checkpoint(ck: dict | str):
    """(model in eval mode on CPU, Preprocess) from a checkpoint dict or path."""
    if isinstance(ck, str):
        ck = load_checkpoint(ck)
    cfg = ck["model_config"]
    model = build_model(cfg["arch"], cfg["input_channels"], cfg["dropout"], cfg["n_meta"], cfg["width"],
                        cfg.get("stem") or "adapted")  # checkpoints before train.stem: adapted
    model.load_state_dict(ck["model_state"])
    model.eval()
    return model, Preprocess.from_checkpoint(ck)
