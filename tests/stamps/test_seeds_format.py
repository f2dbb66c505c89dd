"""Tests of the seeds' Phase 4c format reader and converter (darkhaloscope.stamps.seeds).

The fixture writes a small dataset in exactly the seeds' layout: Hive directories
``region_split=train|val|test/`` of gzip parquet files with Spark-like names and
bookkeeping files, a binary ``stamp_npz`` column of ``np.savez_compressed`` blobs
(float32 (64, 64) ``image_g/_r/_z``), r-only rows, failed rows (zero ``image_r``,
``cutout_ok = 0``), and in the paired variant ``ctrl_stamp_npz``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from darkhaloscope.stamps import seeds as S
from darkhaloscope.model.loader import StampDataset, StampIndex, make_loader
from darkhaloscope.model.preprocess import NormConfig, normalize
from darkhaloscope.stamps.format import list_stamp_files, stamps_and_valid, write_stamp_file

N_ROWS = {"train": (14, 11), "val": (9,), "test": (8,)}  # rows per file


def _blob(arrays: dict) -> bytes:
    bio = io.BytesIO()
    np.savez_compressed(bio, **arrays)
    return bio.getvalue()


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def _make_seeds(root, paired: bool = False, seed: int = 0) -> dict:
    """Write a seeds-layout dataset under ``root``; return the truth per (split, src_file, row)."""
    rng = np.random.default_rng(seed)
    truth = {}
    for split, sizes in N_ROWS.items():
        d = root / f"region_split={split}"
        d.mkdir(parents=True)
        (d / "_SUCCESS").write_text("")
        for f, n in enumerate(sizes):
            kind = np.array(["ok"] * n, dtype=object)
            kind[2] = "r_only"
            kind[5] = "failed"
            if split == "train" and f == 0:
                kind[7] = "r_only"
                kind[9] = "dup"  # same identity values as row 8
            if paired:
                kind[4] = "no_ctrl"
            is_ctrl = (np.arange(n) % 2).astype(np.int32)
            if split == "train" and f == 0:
                is_ctrl[9] = is_ctrl[8]
            theta = np.where(is_ctrl == 1, 0.0, rng.uniform(0.5, 2.5, n))
            psf = rng.uniform(0.9, 1.6, n)
            psf[4] = 0.0  # a positive whose theta_e_over_psf becomes NaN
            ra = rng.uniform(150, 151, n)
            dec = rng.uniform(0, 1, n)
            brick = np.array([f"150{f}p00{i % 3}" for i in range(n)], dtype=object)
            if split == "train" and f == 0:  # row 9 repeats row 8's identity
                ra[9], dec[9], brick[9], theta[9] = ra[8], dec[8], brick[8], theta[8]
            blobs, ctrl_blobs = [], []
            for i in range(n):
                img = (rng.normal(0.0, 0.01, (3, 64, 64)) + rng.uniform(0, 1)).astype(np.float32)
                ctrl = (img - rng.uniform(0, 0.05, (3, 64, 64))).astype(np.float32)
                if kind[i] == "r_only":
                    blobs.append(_blob({"image_r": img[1]}))
                elif kind[i] == "failed":
                    img = np.zeros((3, 64, 64), np.float32)
                    blobs.append(_blob({"image_r": img[1]}))
                else:
                    blobs.append(_blob({"image_g": img[0], "image_r": img[1], "image_z": img[2]}))
                if kind[i] == "no_ctrl":
                    ctrl_blobs.append(None)
                else:
                    ctrl_blobs.append(_blob({"image_g": ctrl[0], "image_r": ctrl[1], "image_z": ctrl[2]}))
                rel = f"region_split={split}/part-{f:05d}-3f2a9c.c000.gz.parquet"
                truth[(split, rel, i)] = {"kind": kind[i], "img": img, "ctrl": ctrl, "is_control": int(is_ctrl[i]),
                                          "theta": theta[i], "psf": psf[i], "brick": brick[i], "ra": ra[i]}
            cols = {
                "brickname": pa.array(brick.tolist(), pa.string()),
                "ra": ra, "dec": dec,
                "is_control": is_ctrl,
                "cutout_ok": (kind != "failed").astype(np.int32),
                "theta_e_arcsec": theta,
                "src_dmag": rng.uniform(0, 2, n), "src_reff_arcsec": rng.uniform(0.1, 0.5, n),
                "src_e": rng.uniform(0, 0.5, n), "shear": rng.uniform(0, 0.1, n),
                "psfsize_r": psf, "psfdepth_r": rng.uniform(100, 1000, n),
                "arc_snr": np.where(is_ctrl == 1, 0.0, rng.uniform(5, 50, n)),
                "stamp_npz": pa.array(blobs, pa.binary()),
            }
            if split == "train" and f == 0:
                cols["src_dmag"][9], cols["src_reff_arcsec"][9] = cols["src_dmag"][8], cols["src_reff_arcsec"][8]
                cols["src_e"][9], cols["shear"][9] = cols["src_e"][8], cols["shear"][8]
            if paired:
                cols["ctrl_stamp_npz"] = pa.array(ctrl_blobs, pa.binary())
            pq.write_table(pa.table(cols), root / rel, compression="gzip", row_group_size=6)
            (d / f".part-{f:05d}-3f2a9c.c000.gz.parquet.crc").write_text("crc")
    return truth


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds") / "v4_sota"
    return root, _make_seeds(root)


@pytest.fixture(scope="module")
def seeds_paired(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds_paired") / "v5_cosmos_paired"
    return root, _make_seeds(root, paired=True, seed=1)


@pytest.fixture(scope="module")
def converted(seeds, tmp_path_factory):
    root, _ = seeds
    dst = tmp_path_factory.mktemp("conv") / "stamps"
    report = S.convert_seeds_to_stamps(root, dst)
    return dst, report


def _expect(truth, split):
    rows = {k: v for k, v in truth.items() if k[0] == split}
    failed = sum(v["kind"] == "failed" for v in rows.values())
    r_only = sum(v["kind"] == "r_only" for v in rows.values())
    return len(rows), failed, r_only


# ----------------------------------------------------------------------------- layout


def test_layout_detection(seeds, converted, tmp_path):
    root, _ = seeds
    dst, _ = converted
    assert S.is_seeds_layout(root)
    assert not S.is_seeds_layout(dst)  # ours
    assert not S.is_seeds_layout(tmp_path / "nope")
    (tmp_path / "region_split=train").mkdir()
    assert not S.is_seeds_layout(tmp_path)  # no parquet files
    assert S.seeds_splits(root) == ["test", "train", "val"]
    files = S.list_seeds_files(root, "train")
    assert [os.path.basename(f) for f in files] == [
        "part-00000-3f2a9c.c000.gz.parquet", "part-00001-3f2a9c.c000.gz.parquet"]  # no _SUCCESS, no .crc
    with pytest.raises(FileNotFoundError, match="region_split=known"):
        S.list_seeds_files(root, "known")


# ----------------------------------------------------------------------------- reading


def test_read_split_values_and_counts(seeds):
    root, truth = seeds
    rows = S.read_seeds_split(root, "train")
    n, failed, r_only = _expect(truth, "train")
    assert rows.n == n and rows.ctrl_stamps is None
    t = rows.columns
    for i in range(n):
        src, r = t.column("src_file")[i].as_py(), t.column("src_row")[i].as_py()
        tr = truth[("train", src, r)]
        got = rows.stamps[i]
        if tr["kind"] == "r_only":
            np.testing.assert_array_equal(_bits(got[1]), _bits(tr["img"][1]))  # bit-exact
            assert np.isnan(got[[0, 2]]).all()
            assert t.column("band_mask")[i].as_py() == 0b010
        elif tr["kind"] == "failed":
            assert not got[1].any() and np.isnan(got[[0, 2]]).all()
            assert t.column("cutout_ok")[i].as_py() == 0
        else:
            np.testing.assert_array_equal(_bits(got), _bits(tr["img"]))  # bit-exact
            assert t.column("band_mask")[i].as_py() == 0b111
        # derived columns
        q = t.column("theta_e_over_psf")[i].as_py()
        if tr["psf"] > 0:
            assert q == pytest.approx(tr["theta"] / tr["psf"], rel=1e-12)
        else:
            assert np.isnan(q)
        assert t.column("brickname")[i].as_py() == tr["brick"]
    c = rows.counts
    assert c["rows"] == n and c["cutout_not_ok"] == failed and c["r_only"] == r_only + failed
    assert c["r_only_cutout_ok"] == r_only and c["nonfinite_stamp_cutout_ok"] == r_only
    assert c["missing_bands"] == r_only + failed and c["stamp_npz_null"] == 0
    assert c[S.DUPLICATE_COUNT] == 1  # row 9 of the first file repeats row 8's identity
    # ids: int64, non-negative, unique (the duplicated identity row too), stable
    sid = t.column("sample_id").to_numpy()
    assert sid.dtype == np.int64 and (sid >= 0).all() and len(set(sid.tolist())) == n
    np.testing.assert_array_equal(S.read_seeds_split(root, "train").columns.column("sample_id").to_numpy(), sid)
    # a galaxy id groups the duplicated rows
    rid = t.column("row_id").to_numpy()
    assert rid[8] == rid[9] and len(set(rid.tolist())) == n - 1
    # the row iterator agrees
    it = list(S.iter_seeds_rows(root, "train"))
    assert [r["sample_id"] for r in it] == sid.tolist()
    np.testing.assert_array_equal(_bits(np.stack([r["stamp"] for r in it])), _bits(rows.stamps))


def test_sample_ids_do_not_depend_on_file_layout(seeds, tmp_path):
    """Re-spreading a split's rows over other files keeps every sample_id."""
    root, _ = seeds
    files = S.list_seeds_files(root, "train")
    whole = pa.concat_tables([pq.read_table(f) for f in files])
    other = tmp_path / "other"
    (other / "region_split=train" / "sub=1").mkdir(parents=True)
    pq.write_table(whole.slice(0, 5), other / "region_split=train" / "a.parquet")
    pq.write_table(whole.slice(5), other / "region_split=train" / "sub=1" / "b.parquet")
    a = S.read_seeds_split(root, "train")
    b = S.read_seeds_split(other, "train")
    np.testing.assert_array_equal(a.columns.column("sample_id").to_numpy(), b.columns.column("sample_id").to_numpy())
    np.testing.assert_array_equal(_bits(a.stamps), _bits(b.stamps))


def test_decode_errors(tmp_path):
    stamp, mask = S.decode_stamp_npz(None)
    assert mask == 0 and np.isnan(stamp).all()
    with pytest.raises(ValueError, match="npz"):
        S.decode_stamp_npz(b"not a zip")
    with pytest.raises(ValueError, match="shape"):
        S.decode_stamp_npz(_blob({"image_r": np.zeros((32, 32), np.float32)}))
    d = tmp_path / "region_split=train"
    d.mkdir()
    ok = _blob({"image_r": np.zeros((64, 64), np.float32)})
    base = {"brickname": ["b"], "ra": [1.0], "dec": [2.0], "is_control": [0], "cutout_ok": [1]}
    pq.write_table(pa.table({**base, "stamp_npz": pa.array([b"junk"], pa.binary())}), d / "p.parquet")
    with pytest.raises(ValueError, match=r"p\.parquet: row 0 column 'stamp_npz'"):
        S.read_seeds_split(tmp_path, "train")
    pq.write_table(pa.table(base), d / "p.parquet")
    with pytest.raises(ValueError, match=r"p\.parquet.*stamp_npz"):
        S.read_seeds_split(tmp_path, "train")
    pq.write_table(pa.table({**{k: v for k, v in base.items() if k != "ra"},
                             "stamp_npz": pa.array([ok], pa.binary())}), d / "p.parquet")
    with pytest.raises(ValueError, match=r"p\.parquet.*'ra'"):
        S.read_seeds_split(tmp_path, "train")


# ----------------------------------------------------------------------------- conversion


def test_convert_round_trip_and_report(seeds, converted):
    root, truth = seeds
    dst, report = converted
    assert json.loads((dst / S.MANIFEST_NAME).read_text())["splits"] == json.loads(json.dumps(report["splits"]))
    for split, sizes in N_ROWS.items():
        files = list_stamp_files(dst, split)
        assert [os.path.basename(f) for f in files] == [f"part-{i:05d}.parquet" for i in range(len(sizes))]
        n, failed, r_only = _expect(truth, split)
        counts = report["splits"][split]["counts"]
        assert counts["rows"] == n and counts["cutout_not_ok"] == failed
        assert counts[S.DUPLICATE_COUNT] == (1 if split == "train" else 0)
        assert counts["r_only_cutout_ok"] == r_only == counts["nonfinite_stamp_cutout_ok"]
        for f in files:
            t = pq.read_table(f)
            st, valid = stamps_and_valid(t.column("stamp"))
            assert valid.all() and "ctrl_stamp" not in t.column_names
            for i in range(t.num_rows):
                tr = truth[(split, t.column("src_file")[i].as_py(), t.column("src_row")[i].as_py())]
                if tr["kind"] == "r_only":
                    np.testing.assert_array_equal(_bits(st[i, 1]), _bits(tr["img"][1]))
                    assert np.isnan(st[i, [0, 2]]).all()
                elif tr["kind"] == "failed":
                    assert not st[i, 1].any()
                else:
                    np.testing.assert_array_equal(_bits(st[i]), _bits(tr["img"]))  # bit-exact round trip
            assert t.schema.field("is_control").type == pa.int8()  # contract types
            assert t.schema.field("cutout_ok").type == pa.int8()
    # one output file per split, same rows, same ids
    one = S.convert_seeds_to_stamps(root, dst.parent / "one", files_per_split=1)
    assert [f["file"] for f in one["splits"]["train"]["files"]] == ["part-00000.parquet"]
    a = pa.concat_tables([pq.read_table(f) for f in list_stamp_files(dst, "train")])
    b = pq.read_table(list_stamp_files(dst.parent / "one", "train")[0])
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    for c in a.column_names:  # (NaN-aware: theta_e_over_psf has NaNs)
        np.testing.assert_array_equal(a.column(c).to_numpy(), b.column(c).to_numpy())


def test_convert_deterministic_with_workers(seeds, converted):
    root, _ = seeds
    dst, _ = converted
    par = dst.parent / "par"
    S.convert_seeds_to_stamps(root, par, workers=1)  # (the fixture used every core)
    for split in N_ROWS:
        for fa, fb in zip(list_stamp_files(dst, split), list_stamp_files(par, split), strict=True):
            assert open(fa, "rb").read() == open(fb, "rb").read()


def test_index_and_dataset_on_converted(seeds, converted):
    root, truth = seeds
    dst, _ = converted
    files = list_stamp_files(dst, "train")
    idx = StampIndex.build(files)
    n, failed, r_only = _expect(truth, "train")
    assert idx.counts["cutout_not_ok"] == failed
    assert idx.counts["nonfinite_stamp"] == r_only  # the r-only rows, counted
    assert idx.n_samples == n - failed - r_only and idx.n_rows_read == n
    # evaluation mode: file order, values = normalize(the seeds' images)
    cfg = NormConfig("outer", 16, (-5.0, 20.0))
    ds = StampDataset(idx, 4, cfg, meta_cols=["psfsize_r"], shuffle=False, augment=False)
    by_sid = {}
    t = pa.concat_tables([pq.read_table(f, columns=["sample_id", "src_file", "src_row"]) for f in files])
    for s, f, r in zip(*(t.column(c).to_pylist() for c in ("sample_id", "src_file", "src_row"))):
        by_sid[s] = truth[("train", f, r)]
    seen = []
    for x, y, meta, sid in make_loader(ds, 0):
        want = np.stack([by_sid[int(s)]["img"] for s in sid])
        np.testing.assert_array_equal(x.numpy(), normalize(want, cfg))
        np.testing.assert_array_equal(y.numpy(), [1 - by_sid[int(s)]["is_control"] for s in sid])
        np.testing.assert_allclose(meta[:, 0].numpy(), [by_sid[int(s)]["psf"] for s in sid], rtol=1e-6)
        seen += sid.tolist()
    np.testing.assert_array_equal(seen, idx.sample_ids)
    # training mode: every kept sample exactly once
    ds = StampDataset(idx, 4, cfg, shuffle=True, augment=True, seed=2)
    ids = np.concatenate([b[3].numpy() for b in make_loader(ds, 0)])
    assert sorted(ids.tolist()) == sorted(idx.sample_ids.tolist())
    # curriculum threshold on the derived theta_e_over_psf works (psfsize_r = 0 -> NaN -> dropped, counted)
    idx2 = StampIndex.build(files, min_theta_over_psf=0.01)
    assert idx2.counts["below_min_theta_over_psf"] >= 1


def test_paired_variant_six_channels(seeds_paired, tmp_path):
    root, truth = seeds_paired
    dst = tmp_path / "paired"
    report = S.convert_seeds_to_stamps(root, dst)
    c = report["splits"]["train"]["counts"]
    assert c["ctrl_stamp_npz_null"] == len(N_ROWS["train"])  # one null ctrl per file
    files = list_stamp_files(dst, "train")
    t = pq.read_table(files[0])
    ctrl, cvalid = stamps_and_valid(t.column("ctrl_stamp"), name="ctrl_stamp")
    assert (~cvalid).sum() == 1
    for i in np.flatnonzero(cvalid):
        tr = truth[("train", t.column("src_file")[i].as_py(), t.column("src_row")[i].as_py())]
        np.testing.assert_array_equal(_bits(ctrl[i]), _bits(tr["ctrl"]))
    idx = StampIndex.build(files, require_ctrl=True)
    n, failed, r_only = _expect(truth, "train")
    no_ctrl = sum(v["kind"] == "no_ctrl" for k, v in truth.items() if k[0] == "train")
    assert idx.counts["cutout_not_ok"] == failed and idx.counts["missing_ctrl"] == no_ctrl
    assert idx.counts["nonfinite_stamp"] == r_only
    assert idx.n_samples == n - failed - no_ctrl - r_only
    cfg = NormConfig("full")
    ds = StampDataset(idx, 5, cfg, input_channels=6)
    t = pa.concat_tables([pq.read_table(f, columns=["sample_id", "src_file", "src_row"]) for f in files])
    by_sid = {s: truth[("train", f, r)] for s, f, r in
              zip(*(t.column(c).to_pylist() for c in ("sample_id", "src_file", "src_row")))}
    n_seen = 0
    for x, y, _, sid in ds:
        assert x.shape[1:] == (6, 64, 64) and x.dtype == torch.float32
        img = np.stack([by_sid[int(s)]["img"] for s in sid])
        ctl = np.stack([by_sid[int(s)]["ctrl"] for s in sid])
        np.testing.assert_array_equal(x[:, :3].numpy(), normalize(img, cfg))
        np.testing.assert_array_equal(x[:, 3:].numpy(), normalize(ctl, cfg))
        n_seen += len(sid)
    assert n_seen == idx.n_samples


# ----------------------------------------------------------------------------- resolve / CLI


def test_resolve_stamp_root(seeds, tmp_path, monkeypatch):
    root, _ = seeds
    ours = tmp_path / "ours"
    write_stamp_file(ours / "train" / "part-00000.parquet",
                     {"sample_id": [1, 2], "is_control": [0, 1], "cutout_ok": [1, 1]},
                     np.zeros((2, 3, 64, 64), np.float32))
    assert S.resolve_stamp_root(ours, tmp_path / "cache") == os.fspath(ours)  # our layout: unchanged
    assert not (tmp_path / "cache").exists()

    cache = tmp_path / "cache"
    got = S.resolve_stamp_root(root, cache)
    assert got == os.path.abspath(cache) and len(list_stamp_files(got, "val")) == 1
    stamp = (cache / S.MANIFEST_NAME).stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(S, "convert_seeds_to_stamps", boom)
    assert S.resolve_stamp_root(root, cache) == os.path.abspath(cache)  # current: skipped
    assert (cache / S.MANIFEST_NAME).stat().st_mtime_ns == stamp
    monkeypatch.undo()

    # a changed source file makes it convert again
    src = tmp_path / "src"
    import shutil

    shutil.copytree(root, src)
    S.resolve_stamp_root(src, tmp_path / "cache2")
    f = S.list_seeds_files(src, "val")[0]
    t = pq.read_table(f)
    pq.write_table(t.slice(1), f, compression="gzip")
    assert not S.conversion_is_current(src, tmp_path / "cache2")
    S.resolve_stamp_root(src, tmp_path / "cache2")
    assert pq.read_metadata(list_stamp_files(tmp_path / "cache2", "val")[0]).num_rows == t.num_rows - 1
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old" in p or p.endswith(".lock")]

    # never replaces a directory that is not a conversion
    with pytest.raises(FileExistsError, match="not a seeds conversion"):
        S.resolve_stamp_root(root, ours)
    # default cache location
    monkeypatch.setenv("DHS_SEEDS_CACHE", str(tmp_path / "envcache"))
    assert S.default_cache_dir(root) == str(tmp_path / "envcache")
    monkeypatch.delenv("DHS_SEEDS_CACHE")
    assert S.default_cache_dir("/x/stamps/") == "/x/stamps_converted"


def test_cli(seeds, tmp_path, capsys):
    root, truth = seeds
    dst = tmp_path / "cli"
    assert S.main([str(root), str(dst), "--files-per-split", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train"]["rows"] == _expect(truth, "train")[0]
    assert [os.path.basename(f) for f in list_stamp_files(dst, "train")] == ["part-00000.parquet"]
    assert S.main([str(root), str(dst), "--files-per-split", "1"]) == 0
    assert "already a current conversion" in capsys.readouterr().out


def test_no_standard_split_is_an_error(tmp_path):
    d = tmp_path / "region_split=holdout"
    d.mkdir()
    pq.write_table(pa.table({"brickname": ["b"], "ra": [1.0], "dec": [2.0], "is_control": [0], "cutout_ok": [1],
                             "stamp_npz": pa.array([_blob({"image_r": np.zeros((64, 64), np.float32)})])}),
                   d / "p.parquet")
    assert S.is_seeds_layout(tmp_path)
    with pytest.raises(ValueError, match="holdout"):
        S.convert_seeds_to_stamps(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_training_and_scoring_accept_the_seeds_layout(seeds, tmp_path, monkeypatch):
    """train.train converts a seeds root once (into seeds_cache) and trains on it; scoring reads the result."""
    import copy

    import darkhaloscope.model.score as score_mod
    import darkhaloscope.model.train as train_mod
    from darkhaloscope.params import load_params, validate
    from darkhaloscope.model.score import score_files

    cpu = lambda: (torch.device("cpu"), None)  # noqa: E731
    monkeypatch.setattr(train_mod, "device_and_amp", cpu)
    monkeypatch.setattr(score_mod, "device_and_amp", cpu)
    root, truth = seeds
    p = copy.deepcopy(load_params(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "params.yaml")))
    p["loss"] = "bce"
    p["train"].update(arch="small_cnn", width=8, batch_size=8, num_workers=0, meta_cols=["psfsize_r"],
                      monitor="auroc", curriculum=[{"name": "main", "epochs": 1, "lr": 1e-3,
                                                    "min_theta_over_psf": 0.0, "min_arc_snr": 0.0}])
    p = validate(p, "test params")
    cache = tmp_path / "cache"
    res = train_mod.train(p, str(root), str(tmp_path / "model"), progress=False, seeds_cache=str(cache))
    st = res["stages"][0]
    n, failed, r_only = _expect(truth, "train")
    assert st["train_index"]["rows_read"] == n
    assert st["train_index"]["dropped"]["cutout_not_ok"] == failed
    assert st["train_index"]["dropped"]["nonfinite_stamp"] == r_only
    assert S.conversion_is_current(root, cache)
    table, summary = score_files(str(tmp_path / "model" / "best.pt"), list_stamp_files(cache, "test"))
    n, failed, r_only = _expect(truth, "test")
    assert table.num_rows == summary["kept"] == n - failed - r_only


# ----------------------------------------------------------------------------- inflaters


def _inflater_or_skip(name: str):
    try:
        return S._load_inflater(name)
    except OSError as exc:
        pytest.skip(f"{name} not loadable here: {exc}")


def _odd_blobs() -> dict[str, bytes]:
    """Ordinary blobs and corrupt ones (each inflater must agree with np.load on every one)."""
    rng = np.random.default_rng(3)
    img = (rng.normal(0.0, 0.01, (3, 64, 64)) + 0.5).astype(np.float32)
    img.view(np.uint32)[0, 0, :3] = [0x7FC00001, 0x80000000, 0x00000001]  # a NaN payload, -0.0, a denormal
    good = _blob({"image_g": img[0], "image_r": img[1], "image_z": img[2]})
    out = {"float32": good, "r_only": _blob({"image_r": img[1]}),
           "float64": _blob({"image_g": img[0].astype(np.float64), "image_r": img[1], "image_z": img[2]}),
           "truncated": good[:-40]}
    body = bytearray(good)
    body[200] ^= 0xFF  # inside the first member's deflate stream
    out["flipped_byte"] = bytes(body)
    body = bytearray(good)
    body[14] ^= 0x01  # the first local header's CRC-32 (the central directory's is still right)
    out["local_crc"] = bytes(body)
    return out


def _outcome(fn, blob) -> tuple:
    try:
        arr, mask = fn(blob)
    except ValueError:
        return ("error",)
    return ("ok", _bits(arr).tobytes(), mask)


@pytest.mark.parametrize("name", ["zlib", "libdeflate"])
def test_each_inflater_gives_np_loads_arrays_and_decisions(name, monkeypatch):
    """The fast decoder with either inflater: the same arrays (bit for bit) and the same accept / reject
    decisions as np.load, and the ordinary blobs are decoded by the fast path itself."""
    monkeypatch.setattr(S, "_INFLATER", _inflater_or_skip(name))
    blobs = _odd_blobs()
    want = {k: _outcome(S.decode_stamp_npz_reference, b) for k, b in blobs.items()}
    assert [k for k, w in want.items() if w[0] == "error"] == ["truncated", "flipped_byte"]
    for k, b in blobs.items():
        assert _outcome(S.decode_stamp_npz, b) == want[k], k
        assert _outcome(S.decode_stamp_npz, memoryview(b)) == want[k], k
    ordinary = ("float32", "r_only", "float64")
    monkeypatch.setattr(S, "decode_stamp_npz_reference", lambda *a, **k: pytest.fail("deferred to np.load"))
    for k in ordinary:
        assert _outcome(S.decode_stamp_npz, blobs[k]) == want[k], k


def test_libdeflate_inflater_is_thread_safe(monkeypatch):
    """Each thread inflates into its own buffer: decoding from 8 threads at once gives the sequential arrays
    (with one buffer shared by the threads, one or two of these 480 decodes came out wrong)."""
    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        _decode_from_threads(monkeypatch)
    finally:
        sys.setswitchinterval(interval)


def _decode_from_threads(monkeypatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(S, "_INFLATER", _inflater_or_skip("libdeflate"))
    rng = np.random.default_rng(5)
    blobs = [_blob({f"image_{b}": (rng.normal(0, 0.01, (64, 64)) + i).astype(np.float32) for b in "grz"})
             for i in range(24)]
    want = [_bits(S.decode_stamp_npz_reference(b)[0]).tobytes() for b in blobs]
    with ThreadPoolExecutor(8) as ex:
        for _ in range(20):
            got = list(ex.map(lambda b: _bits(S.decode_stamp_npz(b)[0]).tobytes(), blobs))
            assert got == want


def test_conversion_bytes_do_not_depend_on_the_inflater(seeds, converted, tmp_path, monkeypatch):
    root, _ = seeds
    dst, _ = converted  # (made with the default inflater, libdeflate where it loads)
    for name in ("zlib", "libdeflate"):
        try:
            monkeypatch.setattr(S, "_INFLATER", S._load_inflater(name))
        except OSError:
            continue
        out = tmp_path / name
        S.convert_seeds_to_stamps(root, out, workers=2, progress=False)
        for split in N_ROWS:
            for fa, fb in zip(list_stamp_files(dst, split), list_stamp_files(out, split), strict=True):
                assert Path(fa).read_bytes() == Path(fb).read_bytes(), (name, fb)


# ----------------------------------------------------------------------------- Ctrl-C

SLOW_INFLATE = """
import sys, time
sys.path.insert(0, {src!r})
from darkhaloscope.stamps import seeds as S
_inner = S._INFLATER

class _Slow:  # so that the conversion is still running when the test presses Ctrl-C
    name = "slow"
    def inflate(self, *a):
        time.sleep(0.02)
        return _inner.inflate(*a)

S._INFLATER = _Slow()
"""
CLI_CHILD = SLOW_INFLATE + """
sys.exit(S.main([{src_root!r}, {dst!r}, "--workers", "2", "--no-progress"]))
"""
STAGE_CHILD = SLOW_INFLATE + """
sys.path.insert(0, {stages!r})
import _common

def main(p):
    S.resolve_stamp_root({src_root!r}, {dst!r}, workers=2, progress=False)

_common.run("train", main)
"""


def _ctrl_c_during_conversion(script: str, dst) -> tuple[int, str]:
    """Run ``script`` in its own process group, press Ctrl-C (SIGINT to the group, as a terminal does)
    once its conversion writes into the temporary directory; (exit status, stderr)."""
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ)
    env.pop("DHS_TRACEBACK", None)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        t0 = time.monotonic()
        while not list(dst.parent.glob(dst.name + ".tmp-*")):
            assert proc.poll() is None, f"ended (rc {proc.returncode}) before converting: {proc.stderr.read()}"
            assert time.monotonic() - t0 < 120, "the conversion did not start within 120 s"
            time.sleep(0.01)
        time.sleep(0.3)  # the workers are decoding
        assert proc.poll() is None, "the conversion ended before Ctrl-C"
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with pytest.raises(ProcessLookupError):  # no worker process outlived it
        os.killpg(proc.pid, 0)
    return proc.returncode, err


def _src_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")


def test_ctrl_c_in_the_cli_exits_130_with_one_line(seeds, tmp_path):
    root, _ = seeds
    dst = tmp_path / "out"
    rc, err = _ctrl_c_during_conversion(CLI_CHILD.format(src=_src_dir(), src_root=str(root), dst=str(dst)), dst)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[seeds_format] ")]  # (log lines)
    assert rc == 130 and lines == ["seeds_format: error: interrupted (nothing was written)"], err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not dst.exists() and not list(tmp_path.glob("out.tmp-*"))


def test_ctrl_c_in_a_stage_converting_seeds_data_exits_130_with_one_line(seeds, tmp_path):
    """Stage train converting a seeds root (resolve_stamp_root): Ctrl-C ends it through stages/_common.run
    with status 130 and one line; no cache, temporary directory or lock file is left."""
    root, _ = seeds
    dst = tmp_path / "cache"
    stages = os.path.join(os.path.dirname(_src_dir()), "stages")
    rc, err = _ctrl_c_during_conversion(
        STAGE_CHILD.format(src=_src_dir(), stages=stages, src_root=str(root), dst=str(dst)), dst)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[train] seeds ")]  # (log lines)
    assert rc == 130, err
    assert lines == ["[train] interrupted (Ctrl-C / SIGINT): stopped; outputs being written were discarded"], err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not dst.exists() and not list(tmp_path.glob("cache.tmp-*"))
    assert not os.path.exists(S.lock_path(dst))
