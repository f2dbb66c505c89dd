"""Synthetic inputs of the search tests: tiny checkpoints, a stamp set in our layout and its parent sample.

``stamp_set(root)`` writes ``<root>/{parent,known,val,test}/part-*.parquet`` through the tests'
stamp factory (tests/_stamps.py: noise stamps, a bright ring on the lenses) with the columns the
search reads (row_id, brickname, objid, ra, dec), and ``<root>/parent.parquet``: the parent
sample (:data:`darkhaloscope.search.scan.CUT_COLUMNS`) of which the parent split holds a part.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import _stamps as S
from darkhaloscope.model.checkpoint import save_checkpoint
from darkhaloscope.model.nets import MetaScaler, build_model
from darkhaloscope.model.preprocess import NormConfig

BRICKS = ("1500p005", "1510p005", "1520p005")


def checkpoint(path, channels: int = 3, seed: int = 0, meta_cols=(), width: int = 4) -> str:
    """A small_cnn checkpoint with random weights (``seed``) and the outer-annulus recipe."""
    torch.manual_seed(seed)
    model = build_model("small_cnn", channels, 0.0, len(meta_cols), width)
    extra = {"norm": NormConfig(method="outer", outer_radius=16).to_dict(), "meta_cols": list(meta_cols),
             "input_channels": channels}
    if meta_cols:
        extra["meta_scaler"] = MetaScaler(list(meta_cols), [1.2] * len(meta_cols), [0.3] * len(meta_cols)).state_dict()
    save_checkpoint(str(path), model, extra)
    return str(path)


def galaxies(n: int, seed: int = 0, row0: int = 1000) -> dict:
    """The parent-sample columns of ``n`` galaxies spread over :data:`BRICKS` (deg, AB mag, arcsec)."""
    rng = np.random.default_rng(seed)
    b = np.arange(n) % len(BRICKS)
    return {"row_id": np.arange(row0, row0 + n, dtype=np.int64), "ra": 150.0 + b + rng.uniform(-0.1, 0.1, n),
            "dec": 0.5 + rng.uniform(-0.1, 0.1, n), "brickname": np.array([BRICKS[i] for i in b]),
            "objid": np.arange(n, dtype=np.int64), "split": np.array(["train", "val", "test"])[np.arange(n) % 3],
            "mag_r": rng.uniform(18, 21, n), **{f"psfsize_{x}": rng.uniform(1.0, 1.6, n) for x in "grz"},
            **{f"psfdepth_{x}": rng.uniform(100, 1000, n) for x in "grz"}}


def stamp_set(root, n_parent: int = 40, in_split: int = 30, n_known: int = 3, n_eval: int = 48,
              seed: int = 0) -> dict:
    """Write the stamp set and parent sample; returns {'gal': the galaxies, 'parent': files, ...}.

    The first ``in_split`` galaxies have a cutout in the parent split (two files); the lenses
    among them (every 7th) carry a ring. ``n_known`` known-lens cutouts: the first duplicates
    galaxy 0's position, the others lie elsewhere. val and test: ``n_eval`` rows, half lenses."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    gal = galaxies(n_parent, seed)
    pq.write_table(pa.table(gal), f"{root}/parent.parquet")
    lens = (np.arange(n_parent) % 7 == 0)
    files = []
    half = in_split // 2
    for k, (a, b) in enumerate(((0, half), (half, in_split))):
        cols = {c: gal[c][a:b] for c in ("row_id", "brickname", "objid", "ra", "dec", "psfsize_r", "psfdepth_r")}
        cols["sample_id"] = 10_000 + np.arange(a, b)
        cols["is_control"] = np.ones(b - a, np.int8)
        st = S.ring_stamps((~lens[a:b]).astype(np.int8), rng=seed + k)
        files.append(S.make_stamp_file(f"{root}/parent/part-{k:05d}.parquet", columns=cols, stamps=st,
                                       row_group_size=4).path)
    kra = np.r_[gal["ra"][0], 160.0 + np.arange(n_known - 1)]
    kdec = np.r_[gal["dec"][0], np.full(n_known - 1, 1.5)]
    known = S.make_stamp_file(f"{root}/known/part-00000.parquet", sample_ids=0, is_control=np.zeros(n_known, np.int8),
                              columns={"row_id": np.zeros(n_known, np.int64),
                                       "brickname": np.array(["1600p015"] * n_known),
                                       "objid": np.zeros(n_known, np.int64), "ra": kra, "dec": kdec},
                              stamps="ring", rng=seed + 5).path
    ev = {}
    for j, split in enumerate(("val", "test")):
        ev[split] = S.make_stamp_file(f"{root}/{split}/part-00000.parquet", n_eval, sample_ids=50_000 + 1000 * j,
                                      columns={"brickname": np.array([BRICKS[0]] * n_eval)}, stamps="ring",
                                      rng=seed + 10 + j, row_group_size=16).path
    return {"gal": gal, "parent": files, "known": known, "lens": lens, **ev}


def params(shipped: dict, **search) -> dict:
    """The shipped params with ``search`` overrides (no cutting unless asked: Spark is slow)."""
    p = copy.deepcopy(shipped)
    p["search"].update({"cut_missing": False, **search})
    return p
