"""Tests of the one preprocessing recipe (darkhaloscope.model.preprocess.Preprocess)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from darkhaloscope.model import (
    MetaScaler,
    NormConfig,
    Preprocess,
    StampDataset,
    StampIndex,
    build_model,
    load_checkpoint,
    make_loader,
    model_from_checkpoint,
    normalize,
    save_checkpoint,
)
from darkhaloscope.stamps.format import write_stamp_file

COLS = ("psfsize_r", "psfdepth_r")


def _stamps(n: int, seed: int) -> np.ndarray:
    """(n, 3, 64, 64) float32 nanomaggies: sky noise plus a central blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64] - 32
    blob = np.exp(-(yy**2 + xx**2) / 18.0).astype(np.float32)
    return (rng.normal(0, 0.01, (n, 3, 64, 64)) + rng.uniform(0.1, 2, (n, 3, 1, 1)) * blob).astype(np.float32)


def _scaler() -> MetaScaler:
    return MetaScaler(list(COLS), [1.3, 400.0], [0.2, 150.0])


def test_three_channels_equal_normalize():
    st = _stamps(7, 0)
    pre = Preprocess(NormConfig("outer", 16, (-5.0, 20.0)))
    x, meta = pre.apply(st)
    np.testing.assert_array_equal(x, normalize(st, NormConfig("outer", 16, (-5.0, 20.0))))
    assert x.dtype == np.float32 and x.flags.c_contiguous
    assert meta.shape == (7, 0) and meta.dtype == np.float32
    # a 3-channel model ignores controls
    np.testing.assert_array_equal(pre.apply(st, _stamps(7, 1), ctrl_valid=np.zeros(7, bool))[0], x)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        pre.apply(st[:, :2])


def test_six_channels_blank_exactly_the_rows_without_a_control():
    st, ct = _stamps(6, 2), _stamps(6, 3)
    cfg = NormConfig("full")
    pre = Preprocess(cfg, 6)
    valid = np.array([True, False, True, True, False, True])
    x, _ = pre.apply(st, ct, ctrl_valid=valid)
    assert x.shape == (6, 6, 64, 64) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, :3], normalize(st, cfg))  # the halves are normalised on their own
    np.testing.assert_array_equal(x[valid, 3:], normalize(ct, cfg)[valid])
    assert (x[~valid, 3:] == 0).all() and not (x[valid, 3:] == 0).all(axis=(1, 2, 3)).any()
    # every control given: nothing blank; no control at all: every control half blank
    np.testing.assert_array_equal(pre.apply(st, ct)[0][:, 3:], normalize(ct, cfg))
    none, _ = pre.apply(st)
    np.testing.assert_array_equal(none[:, :3], x[:, :3])
    assert (none[:, 3:] == 0).all()


def test_metadata_imputation_and_scaling():
    st = _stamps(4, 4)
    pre = Preprocess(NormConfig(), 3, COLS, _scaler())
    raw = np.array([[1.5, 250.0], [np.nan, 700.0], [1.1, np.inf], [0.9, 100.0]])
    _, m = pre.apply(st, meta=raw, impute_meta=True)
    want = ((np.where(np.isfinite(raw), raw, [[1.3, 400.0]]) - [1.3, 400.0]) / [0.2, 150.0]).astype(np.float32)
    np.testing.assert_array_equal(m, want)
    assert m[1, 0] == 0.0 and m[2, 1] == 0.0  # imputed: the training mean, 0 after standardisation
    assert m.dtype == np.float32 and m.flags.c_contiguous
    _, m_ok = pre.apply(st[[0, 3]], meta=raw[[0, 3]])  # finite rows: scaled, no imputation needed
    np.testing.assert_array_equal(m_ok, want[[0, 3]])
    with pytest.raises(ValueError, match="psfsize_r"):  # not asked to impute: the scaler refuses NaN
        pre.apply(st, meta=raw)
    with pytest.raises(ValueError, match="metadata columns"):
        pre.apply(st)
    with pytest.raises(ValueError, match="meta_scaler"):
        Preprocess(NormConfig(), 3, COLS).apply(st, meta=raw, impute_meta=True)


def test_round_trip_through_a_saved_checkpoint(tmp_path):
    pre = Preprocess(NormConfig("outer", 12.0, (-4.0, 9.0)), 6, COLS, _scaler())
    d = pre.to_dict()
    assert list(d) == ["norm", "meta_cols", "meta_scaler", "input_channels"]  # the order training writes
    assert json.loads(json.dumps(d)) == d  # plain values
    torch.manual_seed(0)
    model = build_model("small_cnn", 6, 0.0, len(COLS), 4)
    path = str(tmp_path / "best.pt")
    save_checkpoint(path, model, extra={**d, "epoch": 0})
    back = Preprocess.from_checkpoint(load_checkpoint(path))
    assert back.to_dict() == d and back.norm == pre.norm and back.meta_cols == COLS and back.paired
    _, via_model = model_from_checkpoint(path)
    assert via_model.to_dict() == d
    st, ct, raw = _stamps(3, 5), _stamps(3, 6), np.array([[1.0, 300.0], [np.nan, 500.0], [1.6, 90.0]])
    for a, b in zip(pre.apply(st, ct, raw, np.array([1, 0, 1], bool), impute_meta=True),
                    back.apply(st, ct, raw, np.array([1, 0, 1], bool), impute_meta=True)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="input_channels"):
        Preprocess(NormConfig(), 4)
    with pytest.raises(ValueError, match="NormConfig"):
        Preprocess(NormConfig().to_dict())


def test_loader_batches_equal_apply(tmp_path):
    """The loader's fast path (batches gathered from the mapped file) gives what apply gives."""
    n = 24
    st, ct = _stamps(n, 7), _stamps(n, 8)
    valid = np.arange(n) % 3 != 1
    rng = np.random.default_rng(9)
    raw = np.stack([rng.uniform(0.9, 1.7, n), rng.uniform(100, 900, n)], axis=1)
    raw[::5, 0] = np.nan  # rows without a catalogue entry
    cols = {"sample_id": np.arange(n, dtype=np.int64), "is_control": np.arange(n) % 2, "cutout_ok": np.ones(n),
            COLS[0]: raw[:, 0], COLS[1]: raw[:, 1]}
    path = write_stamp_file(tmp_path / "part-00000.parquet", cols, st, ct, 10, ctrl_valid=valid)
    idx = StampIndex.build([path], require_both_classes=False)
    pre = Preprocess(NormConfig("outer"), 6, COLS, _scaler())
    ds = StampDataset(idx, 8, pre.norm, pre.input_channels, pre.meta_cols, pre.meta_scaler, shuffle=True,
                      seed=3, rank=0, world_size=1, missing_ctrl="zeros", missing_meta="mean")
    seen = 0
    for x, _, meta, sid in make_loader(ds, 0):
        s = sid.numpy()
        want_x, want_m = pre.apply(st[s], np.where(valid[s, None, None, None], ct[s], 0), raw[s], valid[s],
                                   impute_meta=True)
        np.testing.assert_array_equal(x.numpy(), want_x)
        np.testing.assert_array_equal(meta.numpy(), want_m)
        seen += len(s)
    assert seen == n and ds.pre.to_dict() == pre.to_dict()
