"""Stage search end to end on a tiny mock survey: the default `dvc repro` runs it and writes the
catalogue, the page and metrics/search.json; a SIGKILLed search resumes to the uninterrupted
bytes; an ensemble of two models is reported by stages evaluate and search."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

import _tinyrepo as T

pytestmark = pytest.mark.slow
OUTS = ("candidates.parquet", "candidates.fits", "candidates.csv", "inspect/index.html", "inspect/candidates.js")


def _tiny() -> dict:
    return T.full_params()


def _files(work: Path) -> dict:
    d = work / "data" / "search"
    out = {str(f.relative_to(work)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}
    out["metrics/search.json"] = (work / "metrics" / "search.json").read_bytes()
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    # the session's shared full run (tests/_tinyrepo.py), in this module's own copy
    shared, out = T.shared_full_repo(tmp_path_factory)
    assert "search" in T.ran_stages(out), out[-3000:]
    work = T.clone_repo(shared, tmp_path_factory.mktemp("search") / "repo")
    return work, _files(work)


def test_default_repro_runs_search_and_writes_catalogue_page_and_metrics(repo):
    work, ref = repo
    for f in OUTS:
        assert f"data/search/{f}" in ref, f
    m = json.loads(ref["metrics/search.json"])
    parent = pq.read_metadata(work / "data" / "parent" / "parent.parquet").num_rows
    pop = m["population"]
    assert pop["parent_sample"] == parent
    assert pop["parent_sample_in_stamp_set"] + pop["to_cut"] == parent and pop["not_cut"] == 0
    src = pop["per_source"]
    # every parent galaxy was looked at: the val / test ones in the stamp set's evaluation negatives, not cut again
    assert src["parent"]["rows_read"] + src["control"]["rows_read"] + src.get("cut", {}).get("rows_read", 0) == parent
    assert pop["parent_sample_in_controls"] == src["control"]["rows_read"] > 0
    assert pop["parent_sample_in_parent_split"] + pop["parent_sample_in_controls"] == pop["parent_sample_in_stamp_set"]
    read = sum(v["rows_read"] for v in src.values())
    assert m["galaxies_scored"] == pop["scored"] == read - sum(pop["dropped"].values())  # and nothing left uncounted
    # the mock's genuinely lensed LRGs: every one is scored and ranked
    n_known = _tiny()["survey"]["mock"]["n_known_lenses"]
    assert m["known_lenses_listed"] == n_known and len(m["known_lens_ranks"]) == n_known
    assert all(1 <= r["rank"] <= m["galaxies_scored"] for r in m["known_lens_ranks"])
    cands = pq.read_table(work / "data" / "search" / "candidates.parquet")
    assert cands.num_rows == m["candidates"] >= 12 and cands.column("rank").to_pylist()[:3] == [1, 2, 3]
    scores = pq.read_table(work / "data" / "search" / "scores")
    assert scores.num_rows == m["galaxies_scored"]
    for r in m["known_lens_ranks"]:
        row = scores.filter(pc.equal(scores.column("known_name"), r["name"])).sort_by("known_sep_arcsec")
        assert row.column("rank").to_pylist()[0] == r["rank"]
    js = (work / "data" / "search" / "inspect" / "candidates.js").read_text()
    assert js.count('"rank":') == 12
    assert json.loads((work / "metrics" / "eval.json").read_text())["ensemble_members"] == 1
    out = T.dvc(["repro"], work)
    assert T.ran_stages(out) == set(), out[-2000:]


def test_an_evaluation_negative_is_the_cutout_the_search_would_cut(repo, tmp_path, monkeypatch):
    """The search scores the val / test galaxies from their evaluation negatives in the stamp set
    instead of cutting them: those stamps are, byte for byte, what its own cutting makes."""
    from darkhaloscope.search import scan

    work, _ = repo
    p = yaml.safe_load((work / "params.yaml").read_text())
    files = sorted((work / "data" / "stamps" / "val").glob("part-*.parquet"))
    t = pq.read_table(files[0], columns=["sample_id", "row_id", "is_control"])
    ctrl = t.filter(pc.equal(t.column("is_control"), 1)).slice(0, 4)
    assert ctrl.num_rows == 4
    parent = pq.read_table(work / "data" / "parent" / "parent.parquet")
    sub = parent.filter(pc.is_in(parent.column("row_id"), value_set=ctrl.column("row_id")))
    rows = scan.cut_rows(sub, p["seed"])
    monkeypatch.chdir(work)  # survey.root is relative to the repository
    cut_files, summ = scan.cut_galaxies(rows, p, str(tmp_path / "cut"))
    assert summ["rows"] == 4
    got, _ = scan.read_stamps(cut_files, np.array([r["sample_id"] for r in rows]))
    by_row = dict(zip(ctrl.column("row_id").to_pylist(), ctrl.column("sample_id").to_pylist()))
    ref, _ = scan.read_stamps([str(f) for f in files], np.array([by_row[r["row_id"]] for r in rows]))
    assert got.tobytes() == ref.tobytes()


def test_a_killed_search_resumes_to_the_uninterrupted_bytes(repo, tmp_path):
    src, ref = repo
    work = T.clone_repo(src, tmp_path / "repo")
    shutil.rmtree(work / "data" / "search")
    shutil.rmtree(work / "data" / "search_work")
    (work / "metrics" / "search.json").unlink()
    parts = work / "data" / "search_work" / "parts"
    proc = T.spawn([sys.executable, "stages/search.py"], work, tmp_path / "search1.log")
    T.kill_when(proc, lambda: parts.is_dir() and any(parts.glob("*.parquet")), timeout=900)
    assert not (work / "data" / "search").exists(), "a killed search left a data/search that looks complete"
    done = sorted(p.name for p in parts.glob("*.parquet"))
    assert done and "cut-00000.parquet" not in done, done  # killed part-way: the parent split scored, not the cut
    res = T.stage_main(work, "search", timeout=1500, check=True)
    assert "resumed:" in res.stderr, res.stderr[-3000:]
    assert _files(work) == ref
    out = T.dvc(["status", "search"], work)
    assert "changed" not in out, out


def test_an_ensemble_is_reported_next_to_its_members(repo, tmp_path):
    import torch

    src, _ = repo
    work = T.clone_repo(src, tmp_path / "repo")
    from darkhaloscope.model.checkpoint import load_checkpoint

    ck = load_checkpoint(str(work / "data" / "model" / "best.pt"))
    g = torch.Generator().manual_seed(3)
    ck["model_state"] = {k: (v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v)
                         for k, v in ck["model_state"].items()}
    (work / "models").mkdir()
    torch.save(ck, work / "models" / "other.pt")
    p = yaml.safe_load((work / "params.yaml").read_text())
    p["search"]["models"] = ["data/model/best.pt", "models/other.pt"]
    T.write_params(work, p)
    T.stage_main(work, "evaluate", timeout=900, check=True)
    ev = json.loads((work / "metrics" / "eval.json").read_text())
    assert ev["ensemble_members"] == 2
    for k in ("ensemble_tpr@fpr1e-3", "ensemble_tpr@fpr1e-3_n_tp", "ensemble_tpr@fpr1e-3_ci_lo", "member_0_auroc",
              "member_1_tpr@fpr1e-3_ci_hi", "ensemble_beats_best_member@fpr1e-3",
              "ensemble_minus_best_member_tpr@fpr1e-3_ci_lo"):
        assert k in ev, k
    assert ev["member_0_auroc"] == pytest.approx(ev["auroc"])  # member 0 is the current model
    T.stage_main(work, "search", timeout=1500, check=True)
    m = json.loads((work / "metrics" / "search.json").read_text())
    assert [x["ref"] for x in m["models"]] == p["search"]["models"]
    assert [x["is_current_model"] for x in m["models"]] == [True, False]
    cands = pq.read_table(work / "data" / "search" / "candidates.parquet")
    assert {"logit_0", "logit_1", "prob_0", "prob_1"} <= set(cands.column_names)
