"""Hard negatives (mined ids from the parent split, repeated per epoch) and exclude_bricks."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import _stamps as S
from darkhaloscope.model.loader import StampDataset, StampIndex, make_loader
from darkhaloscope.model.preprocess import NormConfig
from darkhaloscope.model.train import Setup, add_hard_negatives


@pytest.fixture()
def root(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "parent").mkdir()
    S.make_stamp_file(tmp_path / "train" / "part-00000.parquet", sample_ids=0, is_control=[0, 1] * 6,
                      columns={"brickname": np.array(["a"] * 6 + ["bad"] * 6)}, rng=1, row_group_size=4)
    S.make_stamp_file(tmp_path / "parent" / "part-00000.parquet", sample_ids=100, is_control=[1] * 10,
                      columns={"brickname": np.array(["p"] * 10)}, rng=2, row_group_size=4)
    return tmp_path


def _setup(repeat, exclude=()):
    from darkhaloscope.params import load_params

    p = load_params()
    p["train"].update(hard_negative_repeat=repeat, exclude_bricks=list(exclude))
    return Setup.from_params(p)


def test_exclude_bricks_drops_and_counts(root):
    idx = StampIndex.build([str(root / "train" / "part-00000.parquet")], exclude_bricks=("bad",))
    assert idx.counts["excluded_brick"] == 6
    assert sorted(idx.sample_ids.tolist()) == list(range(6))


def test_hard_negatives_repeated_exactly_per_epoch(root, tmp_path):
    hn_path = tmp_path / "hn.parquet"
    pq.write_table(pa.table({"sample_id": pa.array([101, 105, 107], pa.int64())}), hn_path)
    setup = _setup(repeat=3)
    base = StampIndex.build([str(root / "train" / "part-00000.parquet")])
    idx, n = add_hard_negatives(base, setup, str(root), str(hn_path))
    assert n == 3
    assert idx.n_samples == 12 + 3 * 3 and idx.n_negative == 6 + 9
    ds = StampDataset(idx, 5, NormConfig(), shuffle=True, augment=False, seed=3, rank=0, world_size=1)
    seen = np.concatenate([sid.numpy() for _, _, _, sid in make_loader(ds, 0)])
    ids, counts = np.unique(seen, return_counts=True)
    got = dict(zip(ids.tolist(), counts.tolist()))
    assert {k: got[k] for k in (101, 105, 107)} == {101: 3, 105: 3, 107: 3}
    assert all(got[k] == 1 for k in range(12))
    assert not any(k in got for k in (100, 102, 103, 104, 106, 108, 109))
    # metadata reads follow the same order as the ids
    bricks = idx.read_kept_columns(["brickname"])["brickname"]
    assert len(bricks) == idx.n_samples and list(bricks[-9:]) == ["p"] * 9


def test_no_hard_negatives_file_is_a_no_op(root, tmp_path):
    base = StampIndex.build([str(root / "train" / "part-00000.parquet")])
    idx, n = add_hard_negatives(base, _setup(2), str(root), str(tmp_path / "missing.parquet"))
    assert n == 0 and idx is base


def test_exclude_bricks_naming_no_brick_warns_and_is_reported(root, caplog):
    f = [str(root / "train" / "part-00000.parquet")]
    with caplog.at_level("WARNING", logger="darkhaloscope.model.loader"):
        idx = StampIndex.build(f, exclude_bricks=("bad", "1500p05"))
    assert idx.counts["excluded_brick"] == 6  # the real one still excludes
    assert "1500p05" in caplog.text and "exclude nothing" in caplog.text and "bad'" not in caplog.text
    assert idx.summary()["exclude_bricks_unmatched"] == ["1500p05"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="darkhaloscope.model.loader"):
        ok = StampIndex.build(f, exclude_bricks=("bad",))
    assert caplog.text == "" and "exclude_bricks_unmatched" not in ok.summary()
