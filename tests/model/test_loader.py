"""Tests of the training loader (darkhaloscope.model.loader)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import _stamps as S
from darkhaloscope.model.loader import DROP_REASONS, StampDataset, StampIndex, make_loader
from darkhaloscope.model.preprocess import NormConfig, augment, normalize, robust_stats
from darkhaloscope.stamps.format import list_stamp_files

THETA_MIN = 1.0
SNR_MIN = 5.0
N_FILES = 5
ROW_GROUP = 20


def _make_split(root, seed: int = 0):
    """5 files x 3 row groups (20, 20, 15..19 rows) with planted bad rows.

    Row categories (mutually exclusive): ok, cutout_bad (cutout_ok=0, and its stamp
    has a NaN so the cutout reason must win), nan (one NaN pixel in stamp), ctrl_nan
    (one NaN pixel in ctrl_stamp), no_ctrl (ctrl_stamp null), low_theta (positive with
    theta_e_over_psf < THETA_MIN), low_snr (positive with arc_snr < SNR_MIN). Controls
    always have theta = snr = 0, below both thresholds.
    """
    rng = np.random.default_rng(seed)
    truth = {}
    sid_base = 0
    for f in range(N_FILES):
        n = 2 * ROW_GROUP + 15 + f
        sid = sid_base + rng.permutation(n) * 7 + 3  # unique, not in row order
        sid_base += 7 * n + 100
        cat = rng.choice(
            ["ok"] * 12 + ["cutout_bad", "nan", "ctrl_nan", "no_ctrl", "low_theta", "low_snr"], size=n
        )
        is_ctrl = rng.integers(0, 2, n).astype(np.int8)
        is_ctrl[np.isin(cat, ["low_theta", "low_snr"])] = 0
        is_ctrl[:2] = (0, 1)  # both classes in every file
        cat[:2] = "ok"
        theta = np.where(is_ctrl == 1, 0.0, rng.uniform(THETA_MIN + 0.1, 3.0, n))
        snr = np.where(is_ctrl == 1, 0.0, rng.uniform(SNR_MIN + 1, 50.0, n))
        theta[cat == "low_theta"] = rng.uniform(0.1, THETA_MIN - 0.1, (cat == "low_theta").sum())
        snr[cat == "low_snr"] = rng.uniform(0.0, SNR_MIN - 0.5, (cat == "low_snr").sum())
        stamps = rng.normal(1.0, 0.5, (n, 3, 64, 64)).astype(np.float32)
        ctrl = rng.normal(1.0, 0.5, (n, 3, 64, 64)).astype(np.float32)
        for i in np.flatnonzero(np.isin(cat, ["nan", "cutout_bad"])):
            stamps[i, rng.integers(3), rng.integers(64), rng.integers(64)] = np.nan
        for i in np.flatnonzero(cat == "ctrl_nan"):
            ctrl[i, 2, 5, 7] = np.inf
        ctrl_valid = cat != "no_ctrl"
        cols = {
            "sample_id": sid,
            "row_id": sid // 7,
            "is_control": is_ctrl,
            "cutout_ok": (cat != "cutout_bad").astype(np.int8),
            "theta_e_arcsec": theta * 1.2,
            "theta_e_over_psf": theta,
            "arc_snr": snr,
            "brickname": np.array([f"b{f}"] * n),
            "psfsize_r": rng.uniform(0.9, 1.8, n),
            "psfdepth_r": rng.uniform(100, 1000, n),
        }
        S.make_stamp_file(root / "train" / f"part-{f:05d}.parquet", columns=cols, stamps=stamps, ctrl=ctrl,
                          ctrl_valid=ctrl_valid, row_group_size=ROW_GROUP)
        for i in range(n):
            truth[int(sid[i])] = (str(cat[i]), int(is_ctrl[i]), stamps[i], ctrl[i])
    return list_stamp_files(root, "train"), truth


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return _make_split(tmp_path_factory.mktemp("stamps"))


@pytest.fixture(scope="module")
def index(split):
    files, _ = split
    return StampIndex.build(files, min_theta_over_psf=THETA_MIN, min_arc_snr=SNR_MIN)


def _expected(truth, *, require_ctrl, curriculum):
    drop = {"cutout_bad": "cutout_not_ok", "nan": "nonfinite_stamp"}
    if require_ctrl:
        drop.update(no_ctrl="missing_ctrl", ctrl_nan="nonfinite_stamp")
    if curriculum:
        drop.update(low_theta="below_min_theta_over_psf", low_snr="below_min_arc_snr")
    counts = {r: 0 for r in DROP_REASONS}
    kept = set()
    for sid, (cat, _, _, _) in truth.items():
        if cat in drop:
            counts[drop[cat]] += 1
        else:
            kept.add(sid)
    return counts, kept


def _loader_ids(ds, num_workers, persistent=False):
    out = []
    for x, y, meta, sid in make_loader(ds, num_workers=num_workers, persistent_workers=persistent):
        assert x.dtype == torch.float32 and x.shape[1:] == (ds.input_channels, 64, 64)
        assert x.shape[0] <= ds.batch_size and y.shape == sid.shape == (x.shape[0],)
        out.append(sid.numpy())
    return np.concatenate(out)


# ----------------------------------------------------------------------------- index


@pytest.mark.parametrize("require_ctrl", [False, True])
@pytest.mark.parametrize("curriculum", [False, True])
def test_index_counts_every_drop(split, require_ctrl, curriculum):
    files, truth = split
    thr = dict(min_theta_over_psf=THETA_MIN, min_arc_snr=SNR_MIN) if curriculum else {}
    idx = StampIndex.build(files, require_ctrl=require_ctrl, **thr)
    counts, kept = _expected(truth, require_ctrl=require_ctrl, curriculum=curriculum)
    assert idx.counts == counts
    assert all(counts[r] > 0 for r in ("cutout_not_ok", "nonfinite_stamp"))
    assert set(idx.sample_ids.tolist()) == kept and idx.n_samples == len(kept)
    assert idx.n_rows_read == len(truth) == idx.n_samples + sum(idx.counts.values())
    np.testing.assert_array_equal(idx.labels, [1 - truth[s][1] for s in idx.sample_ids])
    s = idx.summary()
    assert s["kept"] == len(kept) and s["dropped"] == counts
    # curriculum thresholds never drop controls (all of them have theta = snr = 0)
    ctrl_ok = {s for s, (cat, c, _, _) in truth.items() if c == 1 and cat == "ok"}
    assert ctrl_ok <= set(idx.sample_ids.tolist())


def test_index_empty_split_errors(split, tmp_path):
    files, _ = split
    with pytest.raises(ValueError, match="no positive.*min_theta_over_psf.*part-00000"):
        StampIndex.build(files, min_theta_over_psf=1e9)
    with pytest.raises(ValueError, match="no files"):
        StampIndex.build([])
    # every row a bad cutout -> no row left
    n = 4
    p = S.make_stamp_file(tmp_path / "bad" / "part-00000.parquet", n, cutout_ok=np.zeros(n), stamps="zeros").path
    with pytest.raises(ValueError, match="no row is left.*cutout_not_ok': 4"):
        StampIndex.build([p])
    # only controls -> no positive left
    q = S.make_stamp_file(tmp_path / "ctrl" / "part-00000.parquet", n, is_control=np.ones(n), stamps="zeros").path
    with pytest.raises(ValueError, match="no positive"):
        StampIndex.build([q])


def test_index_missing_columns(split, tmp_path):
    files, _ = split
    n = 4
    p = S.make_stamp_file(tmp_path / "part-00000.parquet", n, stamps="ones").path
    assert StampIndex.build([p]).n_samples == n  # thresholds 0 need no curriculum columns
    with pytest.raises(ValueError, match=r"part-00000\.parquet.*'theta_e_over_psf'"):
        StampIndex.build([p], min_theta_over_psf=0.5)
    with pytest.raises(ValueError, match="'arc_snr'"):
        StampIndex.build([p], min_arc_snr=0.5)
    with pytest.raises(ValueError, match="'ctrl_stamp'.*manifest.control_type: paired"):
        StampIndex.build([p], require_ctrl=True)


# ----------------------------------------------------------------------------- duplicate sample ids


def _marked_file(path, sample_ids, mark: int, **kw):
    """A stamp file whose rows carry ``row_id = mark`` and stamps filled with ``mark`` (to tell copies apart)."""
    n = len(sample_ids)
    return S.make_stamp_file(path, sample_ids=np.asarray(sample_ids), columns={"row_id": np.full(n, mark)},
                             stamps=np.full((n, 3, 64, 64), float(mark), np.float32), **kw).path


def test_duplicate_sample_ids_across_files_keep_first_counted_and_warned(tmp_path, caplog):
    a = _marked_file(tmp_path / "s" / "part-00000.parquet", np.arange(0, 8), 1)
    b = _marked_file(tmp_path / "s" / "part-00001.parquet", np.arange(4, 12), 2)  # ids 4..7 repeat a's
    with caplog.at_level("WARNING", logger="darkhaloscope.model.loader"):
        idx = StampIndex.build([a, b])
    assert idx.n_rows_read == 16 and idx.n_samples == 12
    assert sorted(idx.sample_ids.tolist()) == list(range(12))
    assert idx.counts["duplicate_sample_id"] == 4
    assert idx.n_rows_read == idx.n_samples + sum(idx.counts.values())
    s = idx.summary()
    assert s["dropped"]["duplicate_sample_id"] == 4 and s["duplicate_sample_id_examples"] == [4, 5, 6, 7]
    # keep-first: ids 4..7 come from the first file (mark 1), 8..11 from the second
    mark = dict(zip(idx.sample_ids.tolist(), idx.read_kept_columns(["row_id"])["row_id"].tolist()))
    assert [mark[i] for i in range(12)] == [1] * 8 + [2] * 4
    warn = [r.getMessage() for r in caplog.records if "repeat a sample_id" in r.getMessage()]
    assert len(warn) == 1 and warn[0].startswith("WARN 4 stamp row(s) repeat a sample_id")
    assert b in warn[0] and a not in warn[0] and "[4, 5, 6, 7]" in warn[0] and "duplicate_sample_id" in warn[0]
    # the loader yields every id once
    ds = StampDataset(idx, 5, NormConfig("full"), rank=0, world_size=1)
    ids = np.concatenate([sid.numpy() for _, _, _, sid in make_loader(ds, 0)])
    assert sorted(ids.tolist()) == list(range(12))
    # an index without repeats has no duplicate_sample_id key at all (summaries and checkpoints unchanged)
    clean = StampIndex.build([a])
    assert "duplicate_sample_id" not in clean.counts and "duplicate_sample_id_examples" not in clean.summary()
    assert list(clean.counts) == list(DROP_REASONS)


def test_duplicate_sample_ids_within_a_file(tmp_path):
    """A file written by something else than write_stamp_file (which refuses repeats) may repeat ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = _marked_file(tmp_path / "g.parquet", np.arange(10, 16), 3, row_group_size=4)
    t = pq.read_table(good)
    path = tmp_path / "s" / "part-00000.parquet"
    path.parent.mkdir()
    pq.write_table(pa.concat_tables([t, t.slice(1, 2)]), path, row_group_size=4)  # ids 11, 12 again at the end
    idx = StampIndex.build([str(path)])
    assert idx.n_rows_read == 8 and idx.n_samples == 6 and idx.counts["duplicate_sample_id"] == 2
    assert idx.sample_ids.tolist() == list(range(10, 16))  # the first occurrences, in file order
    assert sum(ch.n for ch in idx.chunks) == 6


def test_duplicate_whose_first_copy_is_dropped_is_no_repeat(tmp_path):
    """Only rows that pass the filters count: a failed first copy leaves the second one in use."""
    a = _marked_file(tmp_path / "s" / "part-00000.parquet", [0, 1, 2, 3], 1, cutout_ok=np.array([1, 0, 1, 1]))
    b = _marked_file(tmp_path / "s" / "part-00001.parquet", [1, 2], 2, is_control=np.array([1, 0]))
    idx = StampIndex.build([a, b])
    assert idx.counts["cutout_not_ok"] == 1 and idx.counts["duplicate_sample_id"] == 1  # id 2 repeats, id 1 not
    mark = dict(zip(idx.sample_ids.tolist(), idx.read_kept_columns(["row_id"])["row_id"].tolist()))
    assert mark == {0: 1, 1: 2, 2: 1, 3: 1}


def test_with_extra_does_not_add_ids_already_used(tmp_path, caplog):
    a = _marked_file(tmp_path / "train" / "part-00000.parquet", np.arange(0, 6), 1)
    hn = _marked_file(tmp_path / "parent" / "part-00000.parquet", [4, 5, 20, 21], 2,
                      is_control=np.ones(4, np.int8))
    base = StampIndex.build([a])
    extra = StampIndex.build([hn], require_both_classes=False)
    with caplog.at_level("WARNING", logger="darkhaloscope.model.loader"):
        both = base.with_extra(extra, repeat=2)
    assert both.counts["duplicate_sample_id"] == 2
    assert both.sample_ids.tolist() == [0, 1, 2, 3, 4, 5, 20, 21, 20, 21]  # the mined rows, twice (repeat)
    assert any(hn in r.getMessage() and "[4, 5]" in r.getMessage() for r in caplog.records)
    mark = both.read_kept_columns(["row_id"])["row_id"].tolist()
    assert mark == [1] * 6 + [2] * 4


# ----------------------------------------------------------------------------- sharding


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("world, workers", [(2, 2), (1, 3)])
def test_exactly_once_across_ranks_and_workers(index, world, workers):
    ids = []
    for rank in range(world):
        ds = StampDataset(
            index, 16, NormConfig("outer"), shuffle=True, augment=True, seed=3, rank=rank, world_size=world
        )
        ids.append(_loader_ids(ds, workers))
    all_ids = np.concatenate(ids)
    assert len(all_ids) == len(set(all_ids.tolist())), "a sample was yielded more than once"
    assert set(all_ids.tolist()) == set(index.sample_ids.tolist())
    # every rank got work, and the shard plan matches what was yielded
    plan = ds.shard_sizes(0, workers)
    assert [len(i) for i in ids] == plan.sum(axis=1).tolist()
    assert (plan.sum(axis=1) > 0).all()


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("world, workers, drop_last, batch", [(1, 0, False, 16), (2, 2, False, 7), (1, 3, True, 5),
                                                              (2, 0, True, 16)])
def test_n_batches_is_what_the_loader_yields(index, world, workers, drop_last, batch):
    """The progress bars' totals: batches and samples per rank, exactly as yielded (shards never share a batch)."""
    for rank in range(world):
        ds = StampDataset(index, batch, NormConfig("outer"), shuffle=True, seed=3, rank=rank, world_size=world,
                          drop_last=drop_last)
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            sizes = [len(b[3]) for b in make_loader(ds, workers)]
            assert len(sizes) == ds.n_batches(epoch, workers), (rank, epoch)
            assert sum(sizes) == ds.rank_samples(epoch, workers)
            assert max(sizes) <= batch and (not drop_last or min(sizes) == batch)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_epoch_reaches_persistent_workers(index, context):
    ds = StampDataset(index, 16, NormConfig("outer"), shuffle=True, augment=True, seed=11)
    loader = make_loader(ds, num_workers=2, persistent_workers=True, multiprocessing_context=context)

    def run():
        xs, ids = [], []
        for x, _, _, sid in loader:
            xs.append(x)
            ids.append(sid.numpy())
        return torch.cat(xs), np.concatenate(ids)

    x0, e0 = run()
    ds.set_epoch(1)
    x1, e1 = run()
    assert loader._iterator is not None and loader._iterator._persistent_workers
    assert sorted(e0.tolist()) == sorted(e1.tolist()) == sorted(index.sample_ids.tolist())
    assert not np.array_equal(e0, e1), "epoch 1 repeated epoch 0's order"
    ds.set_epoch(0)
    x0b, e0b = run()
    np.testing.assert_array_equal(e0b, e0)
    assert torch.equal(x0b, x0)  # augmentation is reproducible too


def test_chunk_order_per_epoch(index):
    a = StampDataset(index, 16, NormConfig("full"), shuffle=True, seed=3, rank=0, world_size=2)
    b = StampDataset(index, 16, NormConfig("full"), shuffle=True, seed=3, rank=1, world_size=2)
    n = len(index.chunks)
    assert sorted(a.chunk_order(0).tolist()) == list(range(n))
    np.testing.assert_array_equal(a.chunk_order(4), b.chunk_order(4))  # same plan on every rank
    assert not np.array_equal(a.chunk_order(0), a.chunk_order(1))  # new plan each epoch
    assert not np.array_equal(a.chunk_order(0), np.arange(n))
    ev = StampDataset(index, 16, NormConfig("full"), shuffle=False)
    np.testing.assert_array_equal(ev.chunk_order(0), np.arange(n))
    np.testing.assert_array_equal(ev.chunk_order(7), np.arange(n))


def test_loader_does_not_touch_global_rng(index):
    ds = StampDataset(index, 32, NormConfig("outer"), shuffle=True, augment=True, seed=1)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for _ in make_loader(ds, num_workers=2):
        pass
    assert torch.equal(torch.get_rng_state(), before)


def test_shuffle_mixes_chunks(index):
    chunk_of = {}
    start = 0
    for ci, ch in enumerate(index.chunks):
        for s in index.sample_ids[start : start + ch.n]:
            chunk_of[int(s)] = ci
        start += ch.n
    assert min(ch.n for ch in index.chunks) > 8  # a batch fits in a chunk ...
    ds = StampDataset(index, 8, NormConfig("full"), shuffle=True, seed=0)
    mixed = [len({chunk_of[int(s)] for s in sid}) > 1 for _, _, _, sid in ds]
    assert np.mean(mixed) > 0.9  # ... yet batches draw from several chunks
    # without shuffling, batches are contiguous runs of the file
    ds = StampDataset(index, 8, NormConfig("full"))
    mixed = [len({chunk_of[int(s)] for s in sid}) > 1 for _, _, _, sid in ds]
    assert np.mean(mixed) < 0.6


# ----------------------------------------------------------------------------- batches


def test_eval_mode_file_order_and_content(split, index):
    _, truth = split
    ds = StampDataset(index, 25, NormConfig("outer"), shuffle=False, augment=False)
    batches = list(make_loader(ds, num_workers=0))
    ids = np.concatenate([b[3].numpy() for b in batches])
    np.testing.assert_array_equal(ids, index.sample_ids)  # file order, every kept row
    assert [b[0].shape[0] for b in batches] == [25] * (len(ids) // 25) + ([len(ids) % 25] if len(ids) % 25 else [])
    x, y, meta, sid = batches[1]
    raw = np.stack([truth[int(s)][2] for s in sid])
    np.testing.assert_array_equal(x.numpy(), normalize(raw, NormConfig("outer")))
    np.testing.assert_array_equal(y.numpy(), [1 - truth[int(s)][1] for s in sid])
    assert meta.shape == (x.shape[0], 0) and meta.dtype == torch.float32
    assert sid.dtype == torch.int64
    # deterministic: a second pass is identical
    again = list(make_loader(ds, num_workers=0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    # drop_last drops the short final batch
    dl = StampDataset(index, 25, NormConfig("outer"), drop_last=True)
    assert all(b[0].shape[0] == 25 for b in dl)


class _Scaler:
    def transform(self, m):
        return (m - 1.0) * 2.0


def test_six_channels_and_meta(split):
    files, truth = split
    idx = StampIndex.build(files, require_ctrl=True)
    cfg = NormConfig("full")
    with pytest.raises(ValueError, match="require_ctrl"):
        StampDataset(StampIndex.build(files), 8, cfg, input_channels=6)
    ds = StampDataset(
        idx, 8, cfg, input_channels=6, meta_cols=["psfsize_r", "psfdepth_r"], meta_scaler=_Scaler()
    )
    x, y, meta, sid = next(iter(ds))
    assert x.shape == (8, 6, 64, 64)
    stamp = np.stack([truth[int(s)][2] for s in sid])
    ctrl = np.stack([truth[int(s)][3] for s in sid])
    np.testing.assert_array_equal(x[:, :3].numpy(), normalize(stamp, cfg))  # halves normalised separately
    np.testing.assert_array_equal(x[:, 3:].numpy(), normalize(ctrl, cfg))
    kept = idx.read_kept_columns(["psfsize_r", "psfdepth_r"])
    want = np.stack([kept["psfsize_r"][:8], kept["psfdepth_r"][:8]], axis=1)
    np.testing.assert_allclose(meta.numpy(), ((want - 1.0) * 2.0).astype(np.float32))
    with pytest.raises(ValueError, match="input_channels"):
        StampDataset(idx, 8, cfg, input_channels=4)
    with pytest.raises(ValueError, match="rank"):
        StampDataset(idx, 8, cfg, rank=2, world_size=2)


# ----------------------------------------------------------------------------- normalisation


def _arc_batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 0.3, (4, 3, 64, 64)).astype(np.float32)
    yy, xx = np.mgrid[0:64, 0:64]
    rr = np.hypot(yy - 32, xx - 32)
    arc = ((rr > 6) & (rr < 12) & (xx > 30)).astype(np.float32) * 50.0  # well inside r < 16
    return x, x + arc


def test_outer_statistics_ignore_central_arc():
    x, x_arc = _arc_batch()
    outer, full = NormConfig("outer", 16), NormConfig("full")
    m0, s0 = robust_stats(x, outer)
    m1, s1 = robust_stats(x_arc, outer)
    np.testing.assert_array_equal(m0, m1)  # exactly unchanged
    np.testing.assert_array_equal(s0, s1)
    f0, g0 = robust_stats(x, full)
    f1, g1 = robust_stats(x_arc, full)
    assert (f1 > f0).all() and (g1 > g0).all()  # the arc leaks into full-stamp statistics
    # so the outer-normalised background pixels are identical with or without the arc
    yy, xx = np.mgrid[0:64, 0:64]
    bg = np.hypot(yy - 32, xx - 32) >= 16
    np.testing.assert_array_equal(normalize(x, outer)[..., bg], normalize(x_arc, outer)[..., bg])
    assert not np.array_equal(normalize(x, full)[..., bg], normalize(x_arc, full)[..., bg])


def test_normalize_formula_and_clip():
    x, x_arc = _arc_batch(1)
    cfg = NormConfig("full", clip=(-3.0, 4.0))
    out = normalize(x_arc, cfg)
    assert out.dtype == np.float32 and out.shape == x_arc.shape
    assert out.min() == -3.0 and out.max() == 4.0  # clipped (the arc saturates the top)
    b, c = 2, 1
    v = x_arc[b, c].astype(np.float64).ravel()
    med = np.median(v)
    mad = np.median(np.abs(v - med))
    ref = np.clip((x_arc[b, c] - med) / (1.4826 * mad + 1e-8), -3, 4)
    np.testing.assert_allclose(out[b, c], ref, rtol=1e-4, atol=1e-4)
    # each channel separately
    y = x.copy()
    y[:, 1] *= 100
    np.testing.assert_allclose(normalize(y, NormConfig("outer"))[:, 0], normalize(x, NormConfig("outer"))[:, 0])


def test_norm_config():
    cfg = NormConfig("outer", outer_radius=12, clip=(-5, 7))
    d = cfg.to_dict()
    assert d == {"method": "outer", "outer_radius": 12, "clip": [-5.0, 7.0]}
    assert NormConfig.from_dict(d) == cfg
    import json

    assert NormConfig.from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ValueError, match="full.*outer"):
        NormConfig("annulus")
    with pytest.raises(ValueError, match="unknown NormConfig keys"):
        NormConfig.from_dict({**d, "radius": 3})
    with pytest.raises(ValueError, match="clip"):
        NormConfig(clip=(3, -3))
    with pytest.raises(ValueError, match="no pixel"):
        normalize(np.zeros((1, 1, 8, 8), np.float32), NormConfig("outer", outer_radius=100))


# ----------------------------------------------------------------------------- augmentation


def _dihedral(img):
    out = []
    for t in (False, True):
        base = img.T if t else img
        for k in range(4):
            r = np.rot90(base, k)
            out += [r]
    return out


def test_augment_same_transform_for_all_channels():
    rng = np.random.default_rng(0)
    stamp = rng.normal(size=(64, 3, 64, 64)).astype(np.float32)
    x6 = np.concatenate([stamp, stamp], axis=1)  # ctrl == stamp
    y = augment(x6, np.random.default_rng(5))
    np.testing.assert_array_equal(y[:, :3], y[:, 3:])  # halves got the same transform
    # a non-symmetric pattern actually moves, and every output is one dihedral image
    pattern = np.zeros((64, 64), np.float32)
    pattern[3, 10] = 1.0
    pattern[40:44, 7] = 2.0
    xp = np.broadcast_to(pattern, (64, 6, 64, 64)).copy()
    yp = augment(xp, np.random.default_rng(7))
    seen = set()
    for i in range(64):
        assert all(np.array_equal(yp[i, 0], yp[i, c]) for c in range(1, 6))
        match = [j for j, d in enumerate(_dihedral(pattern)) if np.array_equal(yp[i, 0], d)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) == 8  # all 8 transforms occur, so the pattern moved
    # deterministic given the generator
    np.testing.assert_array_equal(augment(xp, np.random.default_rng(7)), yp)
    assert not np.array_equal(augment(xp, np.random.default_rng(8)), yp)


def test_loader_augmentation_keeps_paired_halves(tmp_path):
    p, _, s, _ = S.make_stamp_file(tmp_path / "part-00000.parquet", 24, rng=2, ctrl="copy", row_group_size=10)
    idx = StampIndex.build([p], require_ctrl=True)
    ds = StampDataset(idx, 8, NormConfig("outer"), input_channels=6, shuffle=True, augment=True, seed=4)
    moved = 0
    for x, _, _, sid in ds:
        assert torch.equal(x[:, :3], x[:, 3:])
        ref = normalize(s[sid.numpy()], NormConfig("outer"))
        moved += int(sum(not np.array_equal(x[i, :3].numpy(), ref[i]) for i in range(len(sid))))
    assert moved > 0



# ----------------------------------------------------------------------------- fast normalisation, layouts


def _reference_normalize(x: np.ndarray, cfg: NormConfig) -> np.ndarray:
    """The definition, by sorting each (sample, channel) row twice (the previous implementation)."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    if cfg.method == "outer":
        yy, xx = np.mgrid[0:h, 0:w]
        flat = flat[..., (np.hypot(yy - h // 2, xx - w // 2) >= cfg.outer_radius).ravel()]
    srt = np.sort(flat, axis=-1)
    n = srt.shape[-1]

    def middle(s):
        return s[..., n // 2].copy() if n % 2 else (s[..., n // 2 - 1] + s[..., n // 2]) * np.float32(0.5)

    med = middle(srt)
    med[np.isnan(srt[..., -1])] = np.nan
    dev = np.abs(srt - med[..., None])
    dev.sort(axis=-1)
    mad = middle(dev)
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.subtract(x, med[..., None, None], dtype=np.float32)
        out /= (np.float32(1.4826) * mad + np.float32(1e-8))[..., None, None]
    return np.clip(out, *cfg.clip)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_normalize_matches_the_sorting_definition():
    rng = np.random.default_rng(5)
    cases = [
        rng.normal(1.0, 0.5, (70, 3, 64, 64)).astype(np.float32),  # > one block of rows
        np.round(rng.normal(0, 3, (20, 3, 64, 64))).astype(np.float32),  # heavy ties
        rng.lognormal(0, 2, (20, 3, 64, 64)).astype(np.float32),  # skewed
        np.zeros((3, 3, 64, 64), np.float32) + 2.0,  # constant: MAD 0
        rng.normal(0, 1, (9, 6, 33, 33)).astype(np.float32),  # odd pixel counts, 6 channels
    ]
    bad = rng.normal(1e-3, 1e-3, (8, 3, 64, 64)).astype(np.float32)
    bad[1, 1, 5, 5] = np.nan
    bad[2, 0, 1, 1] = np.inf
    bad[3, 2, :, :40] = -np.inf
    bad[4, 1] = np.inf
    bad[5, 0, 0, :2] = 3e38  # a float32 sum that overflows
    cases.append(bad)
    for cfg in (NormConfig("full"), NormConfig("outer"), NormConfig("outer", 15.5), NormConfig("outer", 10, (-5, 20))):
        for x in cases:
            ref = _reference_normalize(x, cfg)
            got = normalize(x, cfg)
            # identical values, NaN where the definition gives NaN (a median of tied +0.0 and -0.0 may come
            # out as either zero: that only flips the sign of zero outputs)
            np.testing.assert_array_equal(got, ref)
            inplace = x.copy()
            assert normalize(inplace, cfg, out=inplace) is inplace  # in place, same values
            np.testing.assert_array_equal(inplace, got)
            np.testing.assert_array_equal(normalize(x[::-1], cfg), got[::-1])  # per sample: batch order irrelevant
    with pytest.raises(ValueError, match="out must be"):
        normalize(cases[0], NormConfig(), out=np.empty((1, 3, 64, 64), np.float32))


def test_legacy_list_layout_loads_identically(tmp_path):
    """Files written with the previous fixed_size_list<float32> stamp columns load exactly as before."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from darkhaloscope.stamps.format import legacy_stamp_arrow_type

    rng = np.random.default_rng(8)
    n = 30
    s = rng.normal(size=(n, 3, 64, 64)).astype(np.float32)
    c = rng.normal(size=(n, 3, 64, 64)).astype(np.float32)
    s[3, 0, 0, 0] = np.nan
    valid = np.ones(n, bool)
    valid[7] = False
    cols = {"sample_id": np.arange(n), "is_control": np.arange(n) % 2, "cutout_ok": np.ones(n, np.int8)}
    new = S.make_stamp_file(tmp_path / "new" / "part-00000.parquet", columns=cols, stamps=s, ctrl=c, ctrl_valid=valid,
                            row_group_size=8).path

    def lst(a, mask=None):
        return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), type=legacy_stamp_arrow_type(), mask=mask)

    old = tmp_path / "old" / "part-00000.parquet"
    old.parent.mkdir()
    pq.write_table(
        pa.table({**{k: pa.array(v) for k, v in cols.items()},
                  "stamp": lst(s), "ctrl_stamp": lst(c, pa.array(~valid))}),
        old, row_group_size=8, compression="none",
    )
    for kw, ch in (({}, 3), ({"require_ctrl": True}, 6)):
        ia, ib = StampIndex.build([new], **kw), StampIndex.build([str(old)], **kw)
        assert ia.counts == ib.counts and ia.n_samples == ib.n_samples
        for shuffle in (False, True):
            da = StampDataset(ia, 7, NormConfig("outer"), ch, shuffle=shuffle, augment=shuffle, seed=1)
            db = StampDataset(ib, 7, NormConfig("outer"), ch, shuffle=shuffle, augment=shuffle, seed=1)
            for a, b in zip(da, db, strict=True):
                assert all(torch.equal(u, v) for u, v in zip(a, b))
