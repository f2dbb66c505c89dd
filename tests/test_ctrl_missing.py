"""6-channel paired input without a control (the seeds' Gen5-Prime Q7): the control half is blanked."""

import numpy as np
import pytest

from darkhaloscope.model.loader import StampDataset, StampIndex, _unit_hash, make_loader
from darkhaloscope.model.preprocess import NormConfig
from darkhaloscope.stamps.format import write_stamp_file


def _write(path, n, with_ctrl, seed=0):
    rng = np.random.default_rng(seed)
    st = rng.normal(size=(n, 3, 64, 64)).astype(np.float32)
    cols = {"sample_id": np.arange(n, dtype=np.int64), "is_control": np.array([0, 1] * (n // 2), np.int8),
            "cutout_ok": np.ones(n, np.int8)}
    ct = (st + rng.normal(size=st.shape).astype(np.float32)) if with_ctrl else None
    write_stamp_file(path, cols, st, ct)
    return st, ct


def _batches(ds):
    xs = [x.numpy() for x, _, _, _ in make_loader(ds, 0)]
    return np.concatenate(xs)


def test_rows_without_ctrl_column_get_blank_control(tmp_path):
    st, _ = _write(tmp_path / "a.parquet", 8, with_ctrl=False)
    idx = StampIndex.build([str(tmp_path / "a.parquet")], require_ctrl=False)
    with pytest.raises(ValueError, match="missing_ctrl"):
        StampDataset(idx, 4, NormConfig(), input_channels=6)
    x = _batches(StampDataset(idx, 4, NormConfig(), input_channels=6, missing_ctrl="zeros", rank=0, world_size=1))
    assert x.shape == (8, 6, 64, 64)
    assert (x[:, 3:] == 0).all() and np.abs(x[:, :3]).sum() > 0


def test_ctrl_dropout_blanks_the_hashed_fraction(tmp_path):
    _write(tmp_path / "b.parquet", 400, with_ctrl=True)
    idx = StampIndex.build([str(tmp_path / "b.parquet")], require_ctrl=True)
    ds = StampDataset(idx, 50, NormConfig(), input_channels=6, ctrl_dropout=0.25, seed=9, rank=0, world_size=1)
    x = _batches(ds)
    blank = (x[:, 3:] == 0).reshape(len(x), -1).all(axis=1)
    expect = _unit_hash(np.arange(400), 9, 0) < 0.25
    assert (blank == expect).all()
    assert 0.18 < blank.mean() < 0.32
    ds.set_epoch(1)
    blank1 = (_batches(ds)[:, 3:] == 0).reshape(400, -1).all(axis=1)
    assert (blank1 != blank).any()  # a different draw each epoch
    ds0 = StampDataset(idx, 50, NormConfig(), input_channels=6, rank=0, world_size=1)
    assert not (_batches(ds0)[:, 3:] == 0).reshape(400, -1).all(axis=1).any()
