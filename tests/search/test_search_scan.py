"""The search's population plan, streaming reader, scorer and resumable parts (darkhaloscope.search.scan)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import _searchdata as SD
import _stamps as S
from darkhaloscope.model.checkpoint import model_from_checkpoint
from darkhaloscope.model.inference import predict_arrays
from darkhaloscope.model.score import score_files
from darkhaloscope.search import scan

pytestmark = pytest.mark.usefixtures("cpu_only")


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setattr(scan.inference, "device_and_amp", lambda: (torch.device("cpu"), None))


@pytest.fixture()
def data(tmp_path):
    return SD.stamp_set(tmp_path / "set")


def _scorer(paths, batch_size=1024):
    from darkhaloscope.search.ensemble import file_sha256

    return scan.Scorer.load(paths, [file_sha256(p) for p in paths], batch_size)


def _file_unit(path, name="parent-00000", include=None):
    return scan.Unit(name, "parent", [str(path)], include, 0, "id-" + name)


def test_stream_blocks_counts_every_dropped_row(tmp_path):
    st = S.noise_stamps(10, 1)
    st[3, 1, 5, 5] = np.nan
    a = S.make_stamp_file(tmp_path / "a.parquet", sample_ids=np.arange(10), cutout_ok=[1, 0, 1, 1, 0, 1, 1, 1, 1, 1],
                          stamps=st, row_group_size=3).path
    b = S.make_stamp_file(tmp_path / "b.parquet", sample_ids=[8, 9, 10, 11], row_group_size=3).path
    counts = {"rows_read": 0, **{r: 0 for r in scan.DROP_REASONS}}
    blocks = list(scan.stream_blocks([a, b], None, ["sample_id"], 4, counts))
    assert [len(x.stamps) for x in blocks] == [4, 4, 1]
    got = np.concatenate([x.cols["sample_id"] for x in blocks]).tolist()
    assert got == [0, 2, 5, 6, 7, 8, 9, 10, 11]  # b's 8 and 9 repeat a's
    assert counts == {"rows_read": 14, "cutout_not_ok": 2, "nonfinite_stamp": 1, "duplicate_sample_id": 2}
    np.testing.assert_array_equal(blocks[0].stamps[1], st[2])
    # include_ids: only those rows are looked at (and counted)
    counts = {"rows_read": 0, **{r: 0 for r in scan.DROP_REASONS}}
    blocks = list(scan.stream_blocks([a], np.array([1, 2, 6]), ["sample_id"], 100, counts))
    assert blocks[0].cols["sample_id"].tolist() == [2, 6] and counts["rows_read"] == 3 and counts["cutout_not_ok"] == 1


def test_stream_blocks_carries_every_row_once_in_file_order(tmp_path):
    files = [S.make_stamp_file(tmp_path / f"{k}.parquet", sample_ids=100 * k, n=7, row_group_size=2).path
             for k in range(3)]
    counts = {"rows_read": 0, **{r: 0 for r in scan.DROP_REASONS}}
    ids = np.concatenate([b.cols["sample_id"] for b in scan.stream_blocks(files, None, ["sample_id"], 5, counts)])
    assert ids.tolist() == [100 * k + i for k in range(3) for i in range(7)]


def test_cpu_logits_do_not_depend_on_batch_size_block_or_threads(tmp_path, data, monkeypatch):
    ck = SD.checkpoint(tmp_path / "m.pt")
    unit = _file_unit(data["parent"][0])
    ref, summ = scan.score_unit(unit, _scorer([ck], 1024), {}, {}, str(tmp_path))
    assert summ["kept"] == 15 and ref.num_rows == 15
    threads = torch.get_num_threads()
    try:
        for block, bs, nt in ((7, 1, 1), (256, 3, 2), (1, 64, 1)):
            monkeypatch.setattr(scan, "CPU_BLOCK", block)
            torch.set_num_threads(nt)
            t, _ = scan.score_unit(unit, _scorer([ck], bs), {}, {}, str(tmp_path))
            assert t.column("logit_0").to_numpy().tobytes() == ref.column("logit_0").to_numpy().tobytes()
    finally:
        torch.set_num_threads(threads)
    # the model's own recipe: the same logits as stage score's scorer, up to the batch layout
    sf, _ = score_files(ck, [data["parent"][0]])
    by_id = dict(zip(sf.column("sample_id").to_pylist(), sf.column("logit").to_pylist()))
    np.testing.assert_allclose(ref.column("logit_0").to_numpy(),
                               [by_id[i] for i in ref.column("sample_id").to_pylist()], atol=1e-5)


def test_a_paired_model_scores_candidates_with_a_blank_control(tmp_path):
    ck = SD.checkpoint(tmp_path / "p.pt", channels=6)
    w = S.make_stamp_file(tmp_path / "x.parquet", 9, sample_ids=0, is_control=[1] * 9, stamps="ring", ctrl="copy",
                          columns={"row_id": np.arange(9), "brickname": np.array(["b"] * 9), "objid": np.arange(9),
                                   "ra": np.ones(9), "dec": np.ones(9)})
    t, _ = scan.score_unit(_file_unit(w.path), _scorer([ck]), {}, {}, str(tmp_path))
    model, pre = model_from_checkpoint(ck)
    blank = predict_arrays(model, pre, w.stamps, None, batch_size=64)
    with_ctrl = predict_arrays(model, pre, w.stamps, w.ctrl, batch_size=64)
    np.testing.assert_allclose(t.column("logit_0").to_numpy(), blank, atol=1e-5)
    assert not np.allclose(blank, with_ctrl, atol=1e-5)


def test_a_metadata_model_imputes_missing_metadata_and_counts_it(tmp_path, data):
    ck = SD.checkpoint(tmp_path / "meta.pt", meta_cols=("psfsize_r",))
    t, summ = scan.score_unit(scan.Unit("known-00000", "known", [data["known"]], None, 3, "k"),
                              _scorer([ck]), {}, {}, str(tmp_path))
    assert summ["meta_imputed"] == [3] and np.isfinite(t.column("logit_0").to_numpy()).all()
    assert t.column("split").to_pylist() == ["known"] * 3 and t.column("row_id").to_pylist() == [-1] * 3


def test_plan_covers_the_parent_sample_and_counts_what_it_leaves(tmp_path, data, shipped_params_raw):
    p = SD.params(shipped_params_raw)
    root = str(tmp_path / "set")
    pl = scan.plan(p, root, f"{root}/parent.parquet")
    assert [u.name for u in pl.units] == ["parent-00000", "parent-00001", "known-00000"]
    c = pl.counts
    assert c["parent_sample"] == 40 and c["parent_sample_in_stamp_set"] == 30
    assert c["not_cut"] == 10 and c["to_cut"] == 0
    assert c["known_rows"] == 3 and c["known_duplicates"] == 1  # the first lies on galaxy 0
    assert pl.units[-1].n_rows == 2 and pl.units[-1].include_ids.tolist() == [1, 2]
    assert pl.splits[1000] == "train" and pl.splits[1001] == "val"
    # cutting the rest: one unit per group of whole bricks, the rows stage stamps would cut
    p["search"].update(cut_missing=True, cut_group_size=4)
    pl = scan.plan(p, root, f"{root}/parent.parquet")
    cuts = [u for u in pl.units if u.source == "cut"]
    assert sum(u.n_rows for u in cuts) == 10 and pl.counts["to_cut"] == 10 and pl.counts["not_cut"] == 0
    assert all(len({r["brickname"] for r in u.rows}) == 1 for u in cuts)
    from darkhaloscope.hashing import hash_int63

    r = cuts[0].rows[0]
    assert r["sample_id"] == hash_int63(p["seed"], r["row_id"], "parent") and r["is_control"] == 1
    assert pl.counts["known_duplicates"] == 1


def test_controls_of_the_eval_splits_stand_in_for_cutting_and_take_known_logits(tmp_path, data, shipped_params_raw,
                                                                                  monkeypatch):
    """Galaxies without a parent-split cutout that the stamp set holds un-injected (a control row of
    train / val / test) are scored from there, once each, instead of cut; logits already known for
    those rows are taken (and fingerprinted) instead of a forward pass."""
    root = str(tmp_path / "set")
    gal = data["gal"]
    # galaxies 31, 32 and 34 (not in the parent split) as controls; 33 only injected; 31 twice
    rows = [31, 32, 33, 34, 31]
    cols = {c: gal[c][rows] for c in ("row_id", "brickname", "objid", "ra", "dec")}
    cols["sample_id"] = np.array([7001, 7002, 7003, 7004, 7005])
    cols["is_control"] = np.array([1, 1, 0, 1, 1], np.int8)
    S.make_stamp_file(f"{root}/val/part-00001.parquet", columns=cols, stamps="noise", rng=3)
    p = SD.params(shipped_params_raw, cut_missing=True, cut_group_size=4)
    pl = scan.plan(p, root, f"{root}/parent.parquet")
    ctrl = [u for u in pl.units if u.source == "control"]
    assert [u.name for u in ctrl] == ["val-00001"] and ctrl[0].split == "val"
    assert ctrl[0].include_ids.tolist() == [7001, 7002, 7004] and ctrl[0].n_rows == 3
    c = pl.counts
    assert c["parent_sample_in_controls"] == 3 and c["parent_sample_in_parent_split"] == 30
    assert c["parent_sample_in_stamp_set"] == 33 and c["to_cut"] == 7
    assert c["control_files_without_ids"] == 2  # the synthetic val / test files carry no galaxy ids
    cut_ids = {r["row_id"] for u in pl.units if u.source == "cut" for r in u.rows}
    assert len(cut_ids) == 7 and not cut_ids & {1031, 1032, 1034}
    # scoring: the given logits (7001, 7004) are taken, the other row runs through the model
    ck = SD.checkpoint(tmp_path / "m.pt")
    scorer = _scorer([ck])
    ref, summ0 = scan.score_unit(ctrl[0], scorer, p, pl.splits, str(tmp_path))
    seen = []
    fwd = scorer.forward
    monkeypatch.setattr(scorer, "forward", lambda j, x, m: seen.append(len(x)) or fwd(j, x, m))
    given = scan.given_for(ctrl[0], {"val": [(np.array([7004, 7001, 9999]), np.float32([4.5, 1.5, 9.0]))]}, 1)
    t, summ = scan.score_unit(ctrl[0], scorer, p, pl.splits, str(tmp_path), given=given)
    assert seen == [1] and summ["logits_given"] == [2] and summ0["logits_given"] == [0]
    got = dict(zip(t.column("sample_id").to_pylist(), t.column("logit_0").to_pylist()))
    assert got[7001] == 1.5 and got[7004] == 4.5
    assert got[7002] == dict(zip(ref.column("sample_id").to_pylist(), ref.column("logit_0").to_pylist()))[7002]
    assert set(t.column("source").to_pylist()) == {"control"} and t.column("split").to_pylist() == ["val", "test", "val"]  # the sky splits
    assert scan.unit_fingerprint(ctrl[0], scorer, given) != scan.unit_fingerprint(ctrl[0], scorer)
    # only control units of that split take them
    assert scan.given_for(pl.units[0], {"val": [given[0]]}, 1) == [None]
    assert scan.given_for(ctrl[0], {"test": [given[0]]}, 1) == [None]
    # through run_units: taken by a 3-channel model, never by a 6-channel one (scoring showed it the control)
    raw = {"val": [(np.array([7004, 7001]), np.float32([4.5, 1.5]))]}
    for k, (channels, n_given) in enumerate(((3, 2), (6, 0))):
        cp = SD.checkpoint(tmp_path / f"c{channels}.pt", channels=channels)
        paths, _ = scan.run_units(scan.Plan([ctrl[0]], {}, pl.splits), _scorer([cp]), p, str(tmp_path / f"w{k}"),
                                  progress=False, given_logits=raw)
        assert scan.read_part(paths[0])[1]["logits_given"] == [n_given], channels


def test_a_parent_row_of_another_sample_is_scored_and_counted(tmp_path, shipped_params_raw):
    data = SD.stamp_set(tmp_path / "set")
    gal = pq.read_table(tmp_path / "set" / "parent.parquet")
    pq.write_table(gal.slice(1), tmp_path / "set" / "parent.parquet")  # galaxy 0 is not in this sample
    pl = scan.plan(SD.params(shipped_params_raw), str(tmp_path / "set"), str(tmp_path / "set" / "parent.parquet"))
    assert pl.counts["stamp_set_parent_not_in_sample"] == 1 and pl.units[0].n_rows == 15
    assert data["parent"]


def test_group_by_brick_keeps_bricks_whole():
    b = np.array(["b", "a", "c", "a", "b", "b", "c"])
    groups = scan.group_by_brick(b, 3)
    assert [sorted(set(b[g])) for g in groups] == [["a"], ["b"], ["c"]]
    assert sorted(np.concatenate(groups).tolist()) == list(range(7))
    assert [g.tolist() for g in scan.group_by_brick(b, 5)] == [[0, 1, 3, 4, 5], [2, 6]]
    assert [g.tolist() for g in scan.group_by_brick(b, 1)] == [[1, 3], [0, 4, 5], [2, 6]]  # a brick is never split


def _parts_bytes(paths):
    return {os.path.basename(p): open(p, "rb").read() for p in paths}


def test_a_killed_run_resumes_and_ends_with_the_bytes_of_an_uninterrupted_run(tmp_path, data, shipped_params_raw,
                                                                              monkeypatch):
    p = SD.params(shipped_params_raw)
    root = str(tmp_path / "set")
    ck = SD.checkpoint(tmp_path / "m.pt")
    pl = scan.plan(p, root, f"{root}/parent.parquet")
    clean, _ = scan.run_units(pl, _scorer([ck]), p, str(tmp_path / "clean"), progress=False)
    ref = _parts_bytes(clean)

    real = scan.score_unit
    calls = []

    def dies_on_the_second(unit, *a, **k):
        calls.append(unit.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(unit, *a, **k)

    work = str(tmp_path / "work")
    monkeypatch.setattr(scan, "score_unit", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        scan.run_units(pl, _scorer([ck]), p, work, progress=False)
    assert sorted(os.listdir(os.path.join(work, "parts"))) == ["parent-00000.parquet"]  # nothing half-written
    monkeypatch.setattr(scan, "score_unit", real)
    paths, done = scan.run_units(pl, _scorer([ck]), p, work, progress=False)
    assert done == {"resumed": 1, "scored": 2}
    assert _parts_bytes(paths) == ref
    # nothing to do the next time
    assert scan.run_units(pl, _scorer([ck]), p, work, progress=False)[1] == {"resumed": 3, "scored": 0}


def test_parts_from_other_models_data_or_a_damaged_file_are_redone(tmp_path, data, shipped_params_raw):
    p = SD.params(shipped_params_raw)
    root = str(tmp_path / "set")
    ck, ck2 = SD.checkpoint(tmp_path / "m.pt"), SD.checkpoint(tmp_path / "m2.pt", seed=1)
    work = str(tmp_path / "work")
    pl = scan.plan(p, root, f"{root}/parent.parquet")
    paths, _ = scan.run_units(pl, _scorer([ck]), p, work, progress=False)
    before = _parts_bytes(paths)
    # another model: every part is redone
    assert scan.run_units(pl, _scorer([ck2]), p, work, progress=False)[1] == {"resumed": 0, "scored": 3}
    paths, done = scan.run_units(pl, _scorer([ck]), p, work, progress=False)
    assert done["scored"] == 3 and _parts_bytes(paths) == before
    # a damaged part, and a rewritten stamp file (other rows): only those units are redone
    with open(paths[1], "r+b") as fh:
        fh.truncate(100)
    g = pq.read_table(data["parent"][0])
    shutil.copy(data["parent"][0], tmp_path / "keep.parquet")
    S.make_stamp_file(data["parent"][0], columns={c: g.column(c).to_numpy() for c in
                                                  ("sample_id", "row_id", "brickname", "objid", "ra", "dec")},
                      is_control=np.ones(g.num_rows, np.int8), stamps="noise", rng=99, row_group_size=4)
    pl = scan.plan(p, root, f"{root}/parent.parquet")
    paths, done = scan.run_units(pl, _scorer([ck]), p, work, progress=False)
    assert done == {"resumed": 1, "scored": 2}
    assert _parts_bytes(paths)["parent-00001.parquet"] == before["parent-00001.parquet"]
    assert _parts_bytes(paths)["parent-00000.parquet"] != before["parent-00000.parquet"]


def test_a_unit_no_longer_planned_loses_its_part(tmp_path, data, shipped_params_raw):
    p = SD.params(shipped_params_raw)
    root = str(tmp_path / "set")
    ck = SD.checkpoint(tmp_path / "m.pt")
    work = str(tmp_path / "work")
    pl = scan.plan(p, root, f"{root}/parent.parquet")
    scan.run_units(pl, _scorer([ck]), p, work, progress=False)
    pl.units = pl.units[:1]
    scan.run_units(pl, _scorer([ck]), p, work, progress=False)
    assert os.listdir(os.path.join(work, "parts")) == ["parent-00000.parquet"]


def test_read_stamps_returns_rows_in_the_asked_order(tmp_path):
    w = S.make_stamp_file(tmp_path / "a.parquet", 9, sample_ids=20, columns={"psfsize_r": np.arange(9) / 10},
                          row_group_size=2)
    st, cols = scan.read_stamps([w.path], np.array([27, 21, 24]), ["psfsize_r", "nope"])
    np.testing.assert_array_equal(st, w.stamps[[7, 1, 4]])
    assert cols["psfsize_r"].tolist() == [0.7, 0.1, 0.4] and np.isnan(cols["nope"]).all()
    with pytest.raises(ValueError, match="in none of"):
        scan.read_stamps([w.path], np.array([5]))


def test_a_cut_unit_stashes_its_best_stamps_for_the_page(tmp_path, monkeypatch, shipped_params_raw):
    """Cutting is stage stamps' Spark job (tested end to end); here a stand-in writes the cut file."""
    from darkhaloscope.search import pipeline

    ck, ck2 = SD.checkpoint(tmp_path / "m.pt"), SD.checkpoint(tmp_path / "m2.pt", seed=4)
    w = S.make_stamp_file(tmp_path / "cut.parquet", 20, sample_ids=300, is_control=[1] * 20, stamps="ring", rng=2,
                          columns={"row_id": np.arange(20), "brickname": np.array(["b"] * 20), "objid": np.arange(20),
                                   "ra": np.ones(20), "dec": np.ones(20)})
    cuts = []

    def fake_cut(rows, params, out_dir):
        cuts.append(sorted(r["sample_id"] for r in rows))
        return [w.path], {"rows": len(rows), "cutout_ok": len(rows), "fail_reasons": {}}

    monkeypatch.setattr(scan, "cut_galaxies", fake_cut)
    rows = [{"sample_id": 300 + i} for i in range(20)]
    unit = scan.Unit("cut-00000", "cut", [], None, 20, "c", rows)
    work = str(tmp_path / "work")
    t, summ = scan.score_unit(unit, _scorer([ck, ck2]), {}, {}, work, stash_k=3)
    assert summ["cut"]["rows"] == 20 and t.num_rows == 20
    stash = pq.read_table(scan.stash_path(work, unit))
    want = set()
    for j in (0, 1):
        lg = t.column(f"logit_{j}").to_numpy()
        want |= set(t.column("sample_id").to_numpy()[np.argsort(-lg, kind="stable")[:3]].tolist())
    assert set(stash.column("sample_id").to_pylist()) == want and 3 <= stash.num_rows <= 6
    # the page reads them from the stash; a candidate not there is cut again
    p = SD.params(shipped_params_raw, work_dir=work)
    pl = scan.Plan([unit], {}, {})
    ids = sorted(want)[:2] + [next(i for i in range(300, 320) if i not in want)]
    page = pa.table({"sample_id": pa.array(ids, pa.int64())})
    cuts.clear()
    st, _ = pipeline.page_stamps(page, np.zeros(3, np.int64), pl, p, [], str(tmp_path))
    assert cuts == [[ids[2]]]
    np.testing.assert_array_equal(st, w.stamps[np.array(ids) - 300])
