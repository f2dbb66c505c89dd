"""6-channel paired input without a control (the seeds' Gen5-Prime Q7): the control half is blanked."""

import numpy as np
import pytest

import _stamps as S
from darkhaloscope.model.loader import StampDataset, StampIndex, _unit_hash, make_loader
from darkhaloscope.model.preprocess import NormConfig


def _batches(ds):
    xs = [x.numpy() for x, _, _, _ in make_loader(ds, 0)]
    return np.concatenate(xs)


def test_rows_without_ctrl_column_get_blank_control(tmp_path):
    S.make_stamp_file(tmp_path / "a.parquet", 8)
    idx = StampIndex.build([str(tmp_path / "a.parquet")], require_ctrl=False)
    with pytest.raises(ValueError, match="missing_ctrl"):
        StampDataset(idx, 4, NormConfig(), input_channels=6)
    x = _batches(StampDataset(idx, 4, NormConfig(), input_channels=6, missing_ctrl="zeros", rank=0, world_size=1))
    assert x.shape == (8, 6, 64, 64)
    assert (x[:, 3:] == 0).all() and np.abs(x[:, :3]).sum() > 0


def test_ctrl_dropout_blanks_the_hashed_fraction(tmp_path):
    S.make_stamp_file(tmp_path / "b.parquet", 400, ctrl="noise")
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
