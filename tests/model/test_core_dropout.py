"""Core dropout (train.core_dropout): a training augmentation that replaces the central pixels of a
fraction of the samples by normalised sky noise, so a model cannot lean on the host's core."""

from __future__ import annotations

import numpy as np
import pytest

from _stamps import make_stamp_file
from darkhaloscope.model.loader import StampDataset, StampIndex
from darkhaloscope.model.preprocess import NormConfig, core_dropout

YY, XX = np.mgrid[0:64, 0:64]
INNER = np.hypot(YY - 32, XX - 32) < 5


def test_core_dropout_touches_only_the_selected_cores():
    x = np.full((4, 6, 64, 64), 50.0, np.float32)
    rows = np.array([True, False, True, False])
    core_dropout(x, rows, 5, np.random.default_rng(0))
    assert (x[~rows] == 50.0).all()
    assert (x[:, :, ~INNER] == 50.0).all()
    core = x[rows][:, :, INNER]
    assert np.abs(core).max() < 8 and abs(core.mean()) < 0.2 and 0.8 < core.std() < 1.2  # N(0, 1) sky
    y = np.full((4, 6, 64, 64), 50.0, np.float32)
    core_dropout(y, rows, 5, np.random.default_rng(0))
    np.testing.assert_array_equal(x, y)  # deterministic given the generator


def _batches(files, p, seed=3):
    idx = StampIndex.build(files)
    ds = StampDataset(idx, 32, NormConfig("outer"), shuffle=True, augment=False, seed=seed, rank=0, world_size=1,
                      core_dropout_p=p, core_dropout_radius=5)
    return {int(s): x.numpy() for xb, _, _, sb in ds for x, s in zip(xb, sb)}


def test_loader_applies_it_to_a_fraction_of_training_samples(tmp_path):
    f = make_stamp_file(tmp_path / "train" / "part-00000.parquet", 400, stamps="ring", rng=1).path
    plain, dropped = _batches([f], 0.0), _batches([f], 0.3)
    assert plain.keys() == dropped.keys()
    changed = [s for s in plain if not np.array_equal(plain[s], dropped[s])]
    assert 0.2 < len(changed) / len(plain) < 0.4  # about core_dropout_p of the samples
    for s in plain:
        np.testing.assert_array_equal(plain[s][:, ~INNER], dropped[s][:, ~INNER])  # outside the core: untouched
    assert _batches([f], 0.3).keys() == dropped.keys()
    again = _batches([f], 0.3)
    assert all(np.array_equal(again[s], dropped[s]) for s in dropped)  # same seed, same batches


def test_bad_values_refused(tmp_path):
    f = make_stamp_file(tmp_path / "train" / "part-00000.parquet", 8).path
    with pytest.raises(ValueError, match="core_dropout_p must be in"):
        StampDataset(StampIndex.build([f]), 4, NormConfig("outer"), core_dropout_p=1.0)


def test_params_validate_core_dropout():
    import copy

    from _tinyrepo import shipped_params
    from darkhaloscope.params import ParamsError, validate

    for key, value in (("core_dropout", 1.0), ("core_dropout", -0.1), ("core_dropout_radius", 0), ("core_dropout_radius", 40)):
        p = copy.deepcopy(shipped_params())
        p["train"][key] = value
        with pytest.raises(ParamsError, match=f"train.{key}"):
            validate(p)
    p = copy.deepcopy(shipped_params())
    p["train"]["norm_method"] = "residual"
    validate(p)
