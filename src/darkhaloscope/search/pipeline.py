"""Stage ``search`` as one call: :func:`run_search`.

1. The members of ``search.models`` (:mod:`~darkhaloscope.search.ensemble`) score the val and
   test stamps (the current model's scores are stage score's ``data/scores``); each is
   Platt-calibrated on val, the ensemble's probability too.
2. The population is planned and scored in resumable parts (:mod:`~darkhaloscope.search.scan`).
3. Ensemble scores, ranks, the known-lens cross-match and the candidate catalogue
   (:mod:`~darkhaloscope.search.catalogue`), every scored galaxy in ``scores/part-*.parquet``.
4. The inspection page of the ``search.top_k`` best ranked (:mod:`~darkhaloscope.search.inspect`).

Outputs, under ``out_dir`` (the stage makes it atomic): ``candidates.{parquet,fits,csv}``,
``scores/``, ``inspect/``; the returned report becomes ``metrics/search.json``. The report
depends only on the inputs and params: whether parts were resumed, and the throughput, are
logged, not reported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from darkhaloscope.search import catalogue as C
from darkhaloscope.search import ensemble as EN
from darkhaloscope.search import scan as S
from darkhaloscope.search.inspect import write_page
from darkhaloscope.stamps.format import list_stamp_files
from darkhaloscope.stamps.sets import stamp_set_root

log = logging.getLogger(__name__)


def calibrate(members, root: str, scores_dir: str, current: str = EN.CURRENT_MODEL) -> dict:
    """Val calibration of every member and ensemble, the test split's member logits (aligned), and
    ``given``: {split: per member (sample ids, logits)} of every val / test row scored."""
    out, given = {}, {}
    for split in ("val", "test"):
        path = os.path.join(scores_dir, f"{split}.parquet")
        table = pq.read_table(path) if os.path.isfile(path) else None
        tables = EN.member_split_scores(members, list_stamp_files(root, split), table, current)
        given[split] = [(t.column("sample_id").to_numpy(), t.column("logit").to_numpy()) for t in tables]
        _, y, logits, left = EN.align(tables, f"search.models on the {split} split")
        if len(np.unique(y)) < 2:
            raise ValueError(f"search: the {split} split's scored rows hold one class only; Platt scaling and the "
                             f"purity need lenses and non-lenses")
        out[split] = (y, logits, left)
    platt = EN.fit_calibrations(out["val"][0], out["val"][1])
    ens_platt = EN.fit_ensemble_calibration(out["val"][0], out["val"][1], platt)
    return {"platt": platt, "ens_platt": ens_platt, "test": out["test"][:2], "given": given,
            "rows_left_out": {"val": int(out["val"][2]), "test": int(out["test"][2])}}


def population_counts(pl: S.Plan, parts: list[str]) -> dict:
    """The plan's bookkeeping plus what scoring kept and dropped (from the parts' summaries)."""
    out = dict(pl.counts)
    dropped = {r: 0 for r in S.DROP_REASONS}
    per_source = {}
    cut = {"rows": 0, "cutout_ok": 0, "fail_reasons": {}}
    meta_imputed = None
    for u, path in zip(pl.units, parts):
        _, summ = S.read_part(path, ["sample_id"])
        for r in S.DROP_REASONS:
            dropped[r] += int(summ.get(r, 0))
        d = per_source.setdefault(u.source, {"units": 0, "rows_read": 0, "scored": 0})
        d["units"] += 1
        d["rows_read"] += int(summ.get("rows_read", 0))
        d["scored"] += int(summ.get("kept", 0))
        if "cut" in summ:
            cut["rows"] += summ["cut"]["rows"]
            cut["cutout_ok"] += summ["cut"]["cutout_ok"]
            for k, v in summ["cut"]["fail_reasons"].items():
                cut["fail_reasons"][k] = cut["fail_reasons"].get(k, 0) + v
        mi = summ.get("meta_imputed", [])
        meta_imputed = mi if meta_imputed is None else [a + b for a, b in zip(meta_imputed, mi)]
    out.update(scored=sum(d["scored"] for d in per_source.values()), dropped=dropped, per_source=per_source,
               cut=cut, meta_imputed=meta_imputed or [])
    return out


def page_stamps(page: pa.Table, page_parts: np.ndarray, pl: S.Plan, params: dict, meta_cols, work_dir: str):
    """Raw stamps (rank order) of the page's candidates and the first model's metadata columns:
    read back from the stamp files, or cut again under Spark for galaxies the search cut."""
    n = page.num_rows
    stamps = np.zeros((n, 3, 64, 64), np.float32)
    meta = {c: np.full(n, np.nan) for c in meta_cols}
    sids = page.column("sample_id").to_numpy()
    for ui in np.unique(page_parts):
        unit = pl.units[int(ui)]
        rows = np.flatnonzero(page_parts == ui)
        if unit.source == "cut":
            stash = S.stash_path(params["search"]["work_dir"], unit)
            if os.path.isfile(stash):
                st, cols = S.read_stamps([stash], sids[rows], meta_cols, missing_ok=True)
            else:
                st = np.zeros((len(rows), 3, 64, 64), np.float32)
                cols = {"_found": np.zeros(len(rows), bool), **{c: np.full(len(rows), np.nan) for c in meta_cols}}
            miss = ~cols.pop("_found")
            if miss.any():  # not among the unit's best-scored (an ensemble), or no stash: cut them again
                want = set(int(v) for v in sids[rows][miss])
                log.info("cutting %d page candidate(s) of %s again", len(want), unit.name)
                with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
                    files, _ = S.cut_galaxies([r for r in unit.rows if r["sample_id"] in want], params, tmp)
                    st2, cols2 = S.read_stamps(files, sids[rows][miss], meta_cols)
                st[miss] = st2
                for c in meta_cols:
                    cols[c][miss] = cols2[c]
        else:
            st, cols = S.read_stamps(unit.files, sids[rows], meta_cols)
        stamps[rows] = st
        for c in meta_cols:
            meta[c][rows] = cols[c]
    return stamps, (np.column_stack([meta[c] for c in meta_cols]) if meta_cols else None)


def run_search(params: dict, parent_path: str, scores_dir: str, out_dir: str, progress: bool = True,
               current: str = EN.CURRENT_MODEL) -> dict:
    """Run the search into ``out_dir`` (see the module docstring); returns the metrics report."""
    s = params["search"]
    work_dir = s["work_dir"]
    os.makedirs(work_dir, exist_ok=True)
    root = stamp_set_root(params)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        members = EN.resolve_members(s["models"], tmp)
        cal = calibrate(members, root, scores_dir, current)
        pl = S.plan(params, root, parent_path)
        scorer = S.Scorer.load([m.path for m in members], [m.sha256 for m in members], s["batch_size"])
        t0 = time.perf_counter()
        # the val / test galaxies' evaluation negatives take the logits the calibration already has
        parts, done = S.run_units(pl, scorer, params, work_dir, progress, stash_k=int(s["top_k"]),
                                  given_logits=cal["given"])
        dt = time.perf_counter() - t0
        pop = population_counts(pl, parts)
        if done["scored"]:
            log.info("scored %d part(s) in %.1f s on %s (%d stamps in all)", done["scored"], dt,
                     scorer.layout()["device"], pop["scored"])
        matcher = C.KnownMatcher(C.known_lens_reference(params), s["match_radius_arcsec"])
        first = C.first_pass(parts, len(members), matcher)
        ranked = C.rank_population(first, cal["platt"], cal["ens_platt"], s["combine"])
        selected = (ranked["ensemble"] >= float(s["min_score"])) | (ranked["rank"] <= int(s["top_k"]))
        cands = C.second_pass(parts, first, ranked, selected, matcher.ref, os.path.join(out_dir, "scores"))
        yt, lt = cal["test"]
        test_scores = EN.combine(lt, cal["platt"], s["combine"],
                                 reference=first["logits"] if s["combine"] == "rank_mean" else None)
        purity = C.purity_at(yt, test_scores, float(s["min_score"]), float(s["prevalence"]), len(ranked["rank"]),
                             seed=params["seed"])
        rep = C.report(first, ranked, selected, cands, matcher.ref, purity, params)
        meta = {"combine": s["combine"], "minscore": float(s["min_score"]), "topk": int(s["top_k"])}
        paths = C.write_catalogue(cands, out_dir, members, meta)
        with open(paths[0], "rb") as fh:
            cat_id = hashlib.sha256(fh.read()).hexdigest()[:16]
        sel_rows = np.flatnonzero(selected)
        part_of = dict(zip(ranked["rank"][sel_rows].tolist(), first["part"][sel_rows].tolist()))
        page = cands.filter(pc.less_equal(cands.column("rank"), int(s["top_k"])))
        page_parts = np.array([part_of[int(r)] for r in page.column("rank").to_numpy()], np.int64)
        pre0 = scorer.models[0][1]
        stamps, meta0 = page_stamps(page, page_parts, pl, params, list(pre0.meta_cols), tmp)
        page_rep = write_page(os.path.join(out_dir, "inspect"), page, stamps, meta0, members[0].path, len(members),
                              cat_id)
    models = [{"index": m.index, "ref": m.ref, "sha256": m.sha256, "platt_a": a, "platt_b": b,
               "is_current_model": EN.is_current(m, current)} for m, (a, b) in zip(members, cal["platt"])]
    return {"models": models, "ensemble_platt": list(cal["ens_platt"]), "population": pop,
            "calibration_rows_left_out": cal["rows_left_out"], **rep, "page": page_rep, "catalogue_id": cat_id}


__all__ = ["calibrate", "page_stamps", "population_counts", "run_search"]
