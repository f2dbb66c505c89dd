"""Stage search in one process on a synthetic stamp set (no Spark): the catalogue's selection, the
known-lens ranks, reproducible bytes, and an ensemble (darkhaloscope.search.pipeline)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from astropy.io import fits

import _searchdata as SD
from darkhaloscope.model.score import score_files
from darkhaloscope.outputs import write_parquet
from darkhaloscope.search import pipeline, scan

pytestmark = pytest.mark.usefixtures("cpu_only")


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setattr(scan.inference, "device_and_amp", lambda: (torch.device("cpu"), None))


@pytest.fixture()
def repo(tmp_path, monkeypatch, shipped_params_raw):
    """A working directory laid out like the repository: data/model/best.pt, data/scores, a survey with a
    known-lens list (galaxy 7's position and one far away), the synthetic stamp set."""
    data = SD.stamp_set(tmp_path / "set")
    monkeypatch.chdir(tmp_path)
    os.makedirs("data/model")
    SD.checkpoint("data/model/best.pt", width=8)
    os.makedirs("data/scores")
    for split in ("val", "test"):
        t, _ = score_files("data/model/best.pt", [data[split]])
        write_parquet(t, f"data/scores/{split}.parquet")
    os.makedirs("survey")
    g = data["gal"]
    fits.BinTableHDU.from_columns([
        fits.Column("NAME", "12A", array=["MOCK-7", "MOCK-far"]),
        fits.Column("RA", "D", array=[g["ra"][7], 200.0]), fits.Column("DEC", "D", array=[g["dec"][7], 10.0]),
        fits.Column("GRADE", "9A", array=["confident", "probable"])]).writeto("survey/known.fits")
    p = SD.params(shipped_params_raw, top_k=5, min_score=0.0, work_dir="work")
    p["survey"].update(root="survey", known_lenses="known.fits")
    p["stamp_set"].update(root=str(tmp_path / "set"), cache=str(tmp_path / "cache"))
    return p, data


def _run(p, out):
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    return pipeline.run_search(p, p["stamp_set"]["root"] + "/parent.parquet", "data/scores", out, progress=False)


def _bytes(d):
    return {os.path.relpath(os.path.join(a, f), d): open(os.path.join(a, f), "rb").read()
            for a, _, fs in os.walk(d) for f in fs}


def test_the_search_selects_ranks_and_cross_matches(repo):
    p, data = repo
    rep = _run(p, "out")
    # 30 parent-split galaxies + 2 known-lens cutouts (the third lies on galaxy 0); 10 galaxies not cut
    assert rep["galaxies_scored"] == 32 and rep["population"]["not_cut"] == 10
    assert rep["population"]["known_duplicates"] == 1
    cands = pq.read_table("out/candidates.parquet")
    assert cands.num_rows == rep["candidates"] == 32  # min_score 0 keeps everything
    assert cands.column("rank").to_pylist() == list(range(1, 33))
    ens = cands.column("ensemble_score").to_numpy()
    assert (np.diff(ens) <= 0).all()
    ranks = {r["name"]: r for r in rep["known_lens_ranks"]}
    assert set(ranks) == {"MOCK-7"} and rep["known_lenses_not_scored"] == 1
    row7 = cands.filter(pq.ParquetFile("out/candidates.parquet").read().column("row_id").to_numpy() == 1007)
    assert ranks["MOCK-7"]["rank"] == row7.column("rank")[0].as_py() and ranks["MOCK-7"]["grade"] == "confident"
    assert row7.column("known_name")[0].as_py() == "MOCK-7" and row7.column("known_sep_arcsec")[0].as_py() < 1e-6
    assert rep["candidates_near_known_lens_per_grade"] == {"confident": 1}
    # the page shows the top 5, with images; every scored galaxy is in scores/
    js = open("out/inspect/candidates.js").read()
    assert js.count('"rank":') == 5 and len(os.listdir("out/inspect/img")) == 15
    assert pq.read_table("out/scores").num_rows == 32
    json.dumps(rep, allow_nan=False)


def test_min_score_and_top_k_decide_the_rows(repo):
    p, _ = repo
    p["search"].update(min_score=0.0, top_k=0)
    _run(p, "out")
    ens = np.sort(pq.read_table("out/scores").column("ensemble_score").to_numpy())[::-1]
    t = float(ens[9])
    n_above = int((ens >= t).sum())
    for top_k, want in ((3, n_above), (20, 20)):
        p["search"].update(min_score=t, top_k=top_k)
        rep = _run(p, "out")
        assert rep["candidates"] == want and rep["candidates_above_min_score"] == n_above
        assert pq.read_table("out/candidates.parquet").column("rank").to_pylist() == list(range(1, want + 1))
    p["search"].update(min_score=float(np.nextafter(ens[0], 2.0)), top_k=0)  # above every score, no top_k
    rep = _run(p, "out")
    assert rep["candidates"] == 0 and pq.read_table("out/candidates.parquet").num_rows == 0
    assert rep["page"] == {"candidates": 0, "images": 0}
    assert rep["purity"]["test_tpr_n_tp"] == 0


def test_the_outputs_repeat_byte_for_byte_and_resume(repo):
    p, _ = repo
    a = _run(p, "a")
    b = _run(p, "b")  # the parts are reused (resume): the same bytes
    assert a == b and _bytes("a") == _bytes("b")
    shutil.rmtree("work")
    c = _run(p, "c")  # scored again from scratch
    assert a == c and _bytes("a") == _bytes("c")


def test_an_ensemble_of_two_models_ranks_by_the_combined_score(repo):
    p, _ = repo
    SD.checkpoint("other.pt", seed=3, width=8)
    for combine in ("mean_prob", "rank_mean"):
        p["search"].update(models=["data/model/best.pt", "other.pt"], combine=combine)
        rep = _run(p, "out")
        assert [m["is_current_model"] for m in rep["models"]] == [True, False]
        c = pq.read_table("out/candidates.parquet")
        p0, p1 = c.column("prob_0").to_numpy(), c.column("prob_1").to_numpy()
        if combine == "mean_prob":
            np.testing.assert_allclose(c.column("ensemble_score").to_numpy(), (p0 + p1) / 2)
        else:
            s = pq.read_table("out/scores")
            l0, l1 = (s.column(f"logit_{j}").to_numpy() for j in (0, 1))
            want = [((l0 < a).sum() + 0.5 * (l0 == a).sum() + (l1 < b).sum() + 0.5 * (l1 == b).sum()) / (2 * len(l0))
                    for a, b in zip(l0, l1)]
            np.testing.assert_allclose(s.column("ensemble_score").to_numpy(), want)
        assert rep["purity"]["threshold"] == 0.0
