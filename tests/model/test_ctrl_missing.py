"""6-channel paired input without a control (the seeds' Gen5-Prime Q7): the control half is blanked,
and every such row is counted - per split, in the index summaries that end up in metrics/score.json
and metrics/train.json - whether its ``ctrl_stamp`` is null or its file has no such column (the
known lenses, unpaired stamps). A 6-channel training on unpaired stamps is one clear ParamsError."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import _stamps as S
import _tinyrepo as T
from darkhaloscope.model.checkpoint import model_from_checkpoint, save_checkpoint
from darkhaloscope.model.loader import StampDataset, StampIndex, _unit_hash, make_loader
from darkhaloscope.model.nets import build_model
from darkhaloscope.model.preprocess import NormConfig
from darkhaloscope.model.score import score_files, score_known_files
from darkhaloscope.model.train import train
from darkhaloscope.params import ParamsError, validate
from darkhaloscope.stamps.format import StampFile

TRACEBACK = "Traceback (most recent call last)"
pytestmark = pytest.mark.usefixtures("cpu_only")  # CPU float32 (tests/conftest.py)


def _batches(ds):
    xs = [x.numpy() for x, _, _, _ in make_loader(ds, 0)]
    return np.concatenate(xs)


def _blank_ids(ds) -> set:
    """Sample ids whose control half comes out all zeros (the "no control available" input)."""
    out = set()
    for x, _, _, sid in make_loader(ds, 0):
        blank = (x[:, 3:] == 0).reshape(len(x), -1).all(dim=1).numpy()
        out |= set(sid.numpy()[blank].tolist())
    return out


def _paired_file(path, n: int, sid0: int, null=(), cutout_bad=(), seed: int = 0, is_control=None, **kw):
    """A paired stamp file: noise stamps and controls; ``null`` rows (positions) have a null ctrl_stamp."""
    valid = np.ones(n, bool)
    valid[list(null)] = False
    ok = np.ones(n, np.int8)
    ok[list(cutout_bad)] = 0
    return S.make_stamp_file(path, n, sample_ids=sid0, is_control=is_control, cutout_ok=ok, stamps="ring",
                             ctrl="noise", ctrl_valid=valid, rng=seed, row_group_size=8, **kw).path


def _unpaired_file(path, n: int, sid0: int, seed: int = 0, **kw):
    return S.make_stamp_file(path, n, sample_ids=sid0, stamps="ring", rng=seed, row_group_size=8, **kw).path


def _checkpoint(path, channels: int) -> str:
    torch.manual_seed(0)
    save_checkpoint(str(path), build_model("small_cnn", channels, 0.0, 0, 4),
                    {"norm": NormConfig().to_dict(), "meta_cols": [], "input_channels": channels})
    return str(path)


# ============================================================================ loader


def test_rows_without_ctrl_column_get_blank_control(tmp_path):
    S.make_stamp_file(tmp_path / "a.parquet", 8)
    idx = StampIndex.build([str(tmp_path / "a.parquet")], require_ctrl=False)
    with pytest.raises(ValueError, match="missing_ctrl"):
        StampDataset(idx, 4, NormConfig(), input_channels=6)
    ds = StampDataset(idx, 4, NormConfig(), input_channels=6, missing_ctrl="zeros", rank=0, world_size=1)
    assert ds.n_without_ctrl == 8  # the index did not look at the controls: the dataset counts them
    x = _batches(ds)
    assert x.shape == (8, 6, 64, 64)
    assert (x[:, 3:] == 0).all() and np.abs(x[:, :3]).sum() > 0
    blank = StampIndex.build([str(tmp_path / "a.parquet")], blank_missing_ctrl=True)
    assert blank.summary()["kept_without_ctrl"] == 8 and blank.n_samples == 8


def test_index_counts_null_controls_exactly(tmp_path):
    """Null ctrl_stamp in some rows of a file that has the column: kept and counted (blank mode), or
    dropped and counted (require_ctrl); a null-control row that fails for another reason first is
    counted under that reason only; a control that is present but non-finite drops its row."""
    n = 24
    ctrl = S.noise_stamps(n, 5)
    ctrl[9, 1, 3, 3] = np.nan  # present but non-finite
    valid = np.ones(n, bool)
    valid[[1, 4, 7, 12, 23]] = False
    ok = np.ones(n, np.int8)
    ok[4] = 0  # also a failed cutout: counted as cutout_not_ok, not as a missing control
    f = S.make_stamp_file(tmp_path / "val" / "part-00000.parquet", n, cutout_ok=ok, ctrl=ctrl, ctrl_valid=valid,
                          row_group_size=8).path

    blank = StampIndex.build([f], blank_missing_ctrl=True)
    s = blank.summary()
    assert s["kept_without_ctrl"] == 4 and s["kept"] == 22
    assert s["dropped"]["cutout_not_ok"] == 1 and s["dropped"]["nonfinite_stamp"] == 1
    assert s["dropped"]["missing_ctrl"] == 0 and s["filters"]["blank_missing_ctrl"] is True
    ds = StampDataset(blank, 5, NormConfig(), input_channels=6, missing_ctrl="zeros", rank=0, world_size=1)
    assert ds.n_without_ctrl == 4
    assert _blank_ids(ds) == {1, 7, 12, 23}  # exactly the counted rows get the blank control half

    drop = StampIndex.build([f], require_ctrl=True)
    s = drop.summary()
    assert s["dropped"]["missing_ctrl"] == 4 and s["kept_without_ctrl"] == 0 and s["kept"] == 18
    assert StampDataset(drop, 5, NormConfig(), input_channels=6, rank=0, world_size=1).n_without_ctrl == 0

    plain = StampIndex.build([f])  # a 3-channel index does not look at the controls: no new key
    assert "kept_without_ctrl" not in plain.summary() and "blank_missing_ctrl" not in plain.summary()["filters"]
    with pytest.raises(ValueError, match="exclude each other"):
        StampIndex.build([f], require_ctrl=True, blank_missing_ctrl=True)


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


# ============================================================================ scoring


@pytest.fixture
def stamp_set(tmp_path):
    """val: one paired file with 3 null controls (one of them a failed cutout); test: a paired file
    with 2 null controls plus an unpaired file of 5 rows; known: 3 unpaired lenses."""
    root = tmp_path / "stamps"
    _paired_file(root / "val" / "part-00000.parquet", 16, 100, null=(2, 5, 11), cutout_bad=(5,), seed=1)
    _paired_file(root / "test" / "part-00000.parquet", 12, 200, null=(0, 9), seed=2)
    _unpaired_file(root / "test" / "part-00001.parquet", 5, 300, seed=3)
    _unpaired_file(root / "known" / "part-00000.parquet", 3, 400, seed=4, is_control=np.zeros(3, np.int8))
    return root


def test_score_summaries_count_rows_scored_without_ctrl(stamp_set, tmp_path, caplog):
    ck = _checkpoint(tmp_path / "six.pt", 6)
    val = sorted(str(p) for p in (stamp_set / "val").glob("*.parquet"))
    test = sorted(str(p) for p in (stamp_set / "test").glob("*.parquet"))
    known = sorted(str(p) for p in (stamp_set / "known").glob("*.parquet"))
    with caplog.at_level("INFO", logger="darkhaloscope.model.score"):
        vt, vs = score_files(ck, val)
    assert vs["kept"] == 15 and vs["dropped"]["cutout_not_ok"] == 1
    assert vs["kept_without_ctrl"] == 2  # rows 2 and 11 (row 5 failed its cutout: not scored at all)
    assert vs["files_scored_without_ctrl"] == 0 and vs["rows_in_files_without_ctrl"] == 0
    warn = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warn) == 1 and "2 of the 15 scored rows have a null ctrl_stamp" in warn[0], warn
    assert str(stamp_set / "val") in warn[0]

    _, ts = score_files(ck, test)
    assert ts["kept"] == 17 and ts["kept_without_ctrl"] == 2 + 5
    assert ts["files_scored_without_ctrl"] == 1 and ts["rows_in_files_without_ctrl"] == 5
    caplog.clear()
    with caplog.at_level("INFO", logger="darkhaloscope.model.score"):
        _, ks = score_known_files(ck, known)
    assert ks["kept"] == 3 and ks["kept_without_ctrl"] == 3  # the known lenses never have a control
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # expected: logged, not warned about

    # the rows counted are the rows scored with a blank control: their logits are the model's on a
    # blank control half, the others' on their own control
    model, pre = model_from_checkpoint(ck)
    model.eval()
    keep = pq.read_table(val[0], columns=["cutout_ok"]).column(0).to_numpy() == 1
    with StampFile(val[0]) as sf:
        stamps = np.concatenate([sf.stamps(i)[0] for i in range(sf.metadata.num_row_groups)])
        ctrl, valid = zip(*[sf.stamps(i, "ctrl_stamp") for i in range(sf.metadata.num_row_groups)])
    ctrl, valid = np.concatenate(ctrl), np.concatenate(valid)
    x, _ = pre.apply(stamps[keep], np.where(valid[keep, None, None, None], ctrl[keep], 0), None, valid[keep])
    with torch.no_grad():
        want = model(torch.from_numpy(x), None).numpy()
    np.testing.assert_allclose(vt.column("logit").to_numpy(), want, rtol=1e-5, atol=1e-6)
    blanked = x.copy()
    blanked[:, 3:] = 0
    with torch.no_grad():
        all_blank = model(torch.from_numpy(blanked), None).numpy()
    differs = ~np.isclose(want, all_blank, rtol=1e-5, atol=1e-6)
    assert (differs == valid[keep]).all()  # blank exactly where the control is missing

    # a 3-channel model's summaries are as before (no control bookkeeping at all)
    _, s3 = score_files(_checkpoint(tmp_path / "three.pt", 3), val)
    assert "kept_without_ctrl" not in s3 and "files_scored_without_ctrl" not in s3


def test_score_stage_reports_rows_without_ctrl_in_metrics(stamp_set, tmp_path):
    """The same counts through stages/score.py, in metrics/score.json (a copy of stages/ + src/)."""
    import shutil

    work = T.copy_sources(tmp_path / "repo", only=("stages/", "src/"))
    shutil.copytree(stamp_set, work / "data" / "stamps")
    (work / "data" / "model").mkdir(parents=True)
    _checkpoint(work / "data" / "model" / "best.pt", 6)
    T.write_params(work, T.tiny_params())
    res = T.stage_main(work, "score", timeout=300, check=True)
    report = json.loads((work / "metrics" / "score.json").read_text())
    assert {k: report[k]["kept_without_ctrl"] for k in ("val", "test", "known")} == {"val": 2, "test": 7, "known": 3}
    assert report["val"]["dropped"]["missing_ctrl"] == 0  # nothing dropped for it: scored blank, counted above
    assert "2 of the 15 scored rows have a null ctrl_stamp" in res.stderr


# ============================================================================ training


def _train_params(**train):
    p = T.tiny_params(epochs=1)
    p["train"].update(arch="small_cnn", width=4, batch_size=16, augment=False, monitor="auroc", seed=5)
    p["train"].update(train)
    return validate(p, "test params")


def test_training_counts_missing_controls_per_split(tmp_path):
    root = tmp_path / "stamps"
    _paired_file(root / "train" / "part-00000.parquet", 32, 0, null=(3, 8, 20, 31), seed=1)
    _paired_file(root / "val" / "part-00000.parquet", 16, 1000, null=(0, 7, 9), seed=2)
    # parent ids 30..39; 30 and 31 are train ids too (31's control is null in train: dropped there)
    _paired_file(root / "parent" / "part-00000.parquet", 10, 30, null=(1, 6), seed=3,
                 is_control=np.ones(10, np.int8))
    hn = tmp_path / "hard_negatives.parquet"
    pq.write_table(pa.table({"sample_id": pa.array(np.arange(30, 38), pa.int64())}), hn)  # rows 0..7 mined
    res = train(_train_params(input_channels=6, hard_negative_repeat=2), str(root), str(tmp_path / "model"),
                progress=False, hard_negatives=str(hn))
    (st,) = res["stages"]
    assert st["train_index"]["dropped"]["missing_ctrl"] == 4 and st["train_index"]["kept"] == 28
    assert st["val_index"]["dropped"]["missing_ctrl"] == 3 and st["val_index"]["kept"] == 13
    hni = st["hard_negative_index"]
    assert hni["dropped"]["missing_ctrl"] == 2 and hni["kept"] == 6  # ids 31 and 36
    assert hni["not_added_already_in_train"] == 1 and st["hard_negatives"] == 5  # id 30 is a train row
    for s in (st["train_index"], st["val_index"], hni):
        assert s["kept_without_ctrl"] == 0  # training drops them (counted above) instead of blanking
    assert st["history"][0]["train_samples"] == 28 + 2 * 5
    # the checkpoint carries the same per-split summaries
    from darkhaloscope.model.checkpoint import load_checkpoint

    ck = load_checkpoint(str(tmp_path / "model" / "main" / "best.pt"))
    assert ck["index_train"] == st["train_index"] and ck["index_hard_negatives"] == hni


def test_six_channels_on_unpaired_stamps_is_one_params_error(tmp_path):
    root = tmp_path / "stamps"
    _paired_file(root / "train" / "part-00000.parquet", 16, 0, seed=1)
    _unpaired_file(root / "val" / "part-00000.parquet", 8, 100, seed=2)  # val made unpaired
    out = tmp_path / "model"
    with pytest.raises(ParamsError) as e:
        train(_train_params(input_channels=6), str(root), str(out), progress=False)
    msg = str(e.value)
    assert msg.startswith("train.input_channels: 6 needs paired controls")
    assert f"the val stamps in {root / 'val'} have none (e.g. {root / 'val' / 'part-00000.parquet'})" in msg
    assert "manifest.control_type: paired" in msg and "train.input_channels: 3" in msg
    assert not out.exists()  # before any training work


def test_six_channels_on_unpaired_stamps_through_the_stage(tmp_path):
    """stages/train.py on the stamps of a `control_type: unpaired` run: one line, exit 1, nothing written."""
    work = T.copy_sources(tmp_path / "repo", only=("stages/", "src/"))
    for split, sid0 in (("train", 0), ("val", 100)):
        _unpaired_file(work / "data" / "stamps" / split / "part-00000.parquet", 8, sid0, seed=sid0)
    p = _train_params(input_channels=6)
    assert p["manifest"]["control_type"] == "unpaired"
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    res = T.stage_main(work, "train", timeout=300)
    assert res.returncode == 1 and TRACEBACK not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("[train] train.input_channels: 6 needs paired controls"), line
    assert "data/stamps/train" in line and "manifest.control_type: paired" in line
    assert not (work / "data" / "model").exists() and not (work / "metrics").exists()
