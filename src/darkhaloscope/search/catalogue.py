"""The candidate catalogue: ensemble scores, ranks, the known-lens cross-match, purity, metrics.

From the scored parts (:mod:`darkhaloscope.search.scan`), in two passes over them (memory:
the logits and a few numbers per scored galaxy, never the stamps; the columns of the kept
candidates):

1. every scored row's member logits and its nearest known lens: the ensemble score
   (:func:`darkhaloscope.search.ensemble.combine`), the calibrated probability, the rank
   (1 = most lens-like; ties broken by the probability, then by source and row id, so the
   order is total and the bytes reproducible) and the candidate selection: every row with an
   ensemble score of at least ``search.min_score``, and the ``search.top_k`` best ranked ones
   regardless;
2. each part again, written with its new columns into ``scores/`` (every scored galaxy, in
   parts), the candidates collected.

The candidate catalogue (``candidates.parquet``, ``.fits``, ``.csv``: the same rows and columns,
sorted by rank; units in :data:`UNITS`) and the report that becomes ``metrics/search.json``
(:func:`report`): galaxies scored, candidates kept, the known lenses among them per grade, the
rank of every known lens, and the purity expected at ``search.prevalence`` from the test
split's ROC at the ``min_score`` cut.

Known lenses (:func:`known_lens_reference`): with ``survey.known_lenses: lenscat``, every entry
of lenscat (name, grading, type, reference); otherwise the survey's own list (on the mock
``known_lenses.fits``; optional columns GRADE / GRADING, TYPE, REF / REFERENCE are used when
present, the reference is otherwise the list's file name).
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from darkhaloscope import metrics as M
from darkhaloscope.outputs import atomic_file
from darkhaloscope.search import ensemble as EN
from darkhaloscope.search.scan import ID_COLUMNS, read_part

SOURCE_CODES = {"parent": 0, "cut": 1, "known": 2, "control": 3}
#: catalogue columns besides ID_COLUMNS and the per-model ones, with their units
UNITS = {"ra": "deg", "dec": "deg", "ensemble_score": "see search.combine", "probability": "P(lens) at val balance",
         "known_sep_arcsec": "arcsec", "rank": "1 = most lens-like"}
KNOWN_COLUMNS = ("known_name", "known_grade", "known_type", "known_reference", "known_sep_arcsec")


# ----------------------------------------------------------------------------- known lenses


def known_lens_reference(params: dict) -> dict:
    """{'name', 'ra', 'dec', 'grade', 'type', 'reference'} of the known lenses the candidates are
    matched with, and 'source' (``lenscat`` or the survey list's file)."""
    sv = params["survey"]
    if sv["known_lenses"] == "lenscat":
        import lenscat

        from darkhaloscope.survey.known_lenses import read_lenscat

        cat = read_lenscat()
        ref = np.char.strip(np.asarray(lenscat.catalog["ref"]).astype(str))
        return {"name": cat["name"], "ra": cat["ra"], "dec": cat["dec"], "grade": cat["grading"], "type": cat["type"],
                "reference": ref, "source": "lenscat"}
    from astropy.io import fits

    from darkhaloscope.survey import fs
    from darkhaloscope.survey.known_lenses import read_known_lenses

    base = read_known_lenses(sv["root"], sv["known_lenses"])
    n = len(base["ra"])
    extra = {"grade": np.full(n, "", dtype=object), "type": np.full(n, "", dtype=object),
             "reference": np.full(n, sv["known_lenses"], dtype=object)}
    with fits.open(io.BytesIO(fs.read_bytes(fs.join(sv["root"], sv["known_lenses"]))), memmap=False) as hdul:
        tab = next(h.data for h in hdul if isinstance(h, fits.BinTableHDU))
        names = {c.upper(): c for c in tab.columns.names}
        for key, cols in (("grade", ("GRADE", "GRADING")), ("type", ("TYPE",)), ("reference", ("REF", "REFERENCE"))):
            col = next((names[c] for c in cols if c in names), None)
            if col is not None:
                extra[key] = np.char.strip(np.asarray(tab[col]).astype(str)).astype(object)
    return {"name": np.asarray(base["name"]).astype(str), "ra": base["ra"], "dec": base["dec"],
            **{k: np.asarray(v).astype(str) for k, v in extra.items()}, "source": sv["known_lenses"]}


class KnownMatcher:
    """Nearest known lens of sky positions (BallTree, haversine), within a radius (arcsec)."""

    def __init__(self, ref: dict, radius_arcsec: float):
        from sklearn.neighbors import BallTree

        self.ref, self.radius = ref, float(radius_arcsec)
        self.tree = (BallTree(np.radians(np.column_stack([ref["dec"], ref["ra"]])), metric="haversine")
                     if len(ref["ra"]) else None)

    def nearest(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index of the nearest known lens within the radius or -1 (int32), separation arcsec (float64; NaN))."""
        n = len(ra)
        if self.tree is None or n == 0:
            return np.full(n, -1, np.int32), np.full(n, np.nan)
        dist, idx = self.tree.query(np.radians(np.column_stack([dec, ra])), k=1)
        sep = np.degrees(dist[:, 0]) * 3600.0
        near = sep <= self.radius
        return np.where(near, idx[:, 0], -1).astype(np.int32), np.where(near, sep, np.nan)


# ----------------------------------------------------------------------------- ranking


def rank_order(ens: np.ndarray, prob: np.ndarray, source_code: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Row indices from rank 1 down: ensemble score desc, probability desc, source, key (row id) asc."""
    return np.lexsort((key, source_code, -prob, -ens))


def first_pass(parts: Sequence[str], n_models: int, matcher: KnownMatcher) -> dict:
    """Per scored row (parts in order, rows in part order): logits (N, k) float32, source code,
    key (row id; sample id for a known-lens cutout), part and row index, nearest known lens."""
    cols = ["source", "sample_id", "row_id", "ra", "dec"] + [f"logit_{j}" for j in range(n_models)]
    acc = {k: [] for k in ("logits", "code", "key", "part", "row", "kl", "sep")}
    for i, path in enumerate(parts):
        t, _ = read_part(path, cols)
        src = np.asarray(t.column("source").to_pylist(), dtype=object)
        code = np.array([SOURCE_CODES[s] for s in src], np.int8)
        key = np.where(code == SOURCE_CODES["known"], t.column("sample_id").to_numpy(), t.column("row_id").to_numpy())
        acc["logits"].append(np.column_stack([t.column(f"logit_{j}").to_numpy() for j in range(n_models)])
                             .astype(np.float32).reshape(t.num_rows, n_models))
        acc["code"].append(code)
        acc["key"].append(key.astype(np.int64))
        acc["part"].append(np.full(t.num_rows, i, np.int32))
        acc["row"].append(np.arange(t.num_rows, dtype=np.int64))
        kl, sep = matcher.nearest(t.column("ra").to_numpy(), t.column("dec").to_numpy())
        acc["kl"].append(kl)
        acc["sep"].append(sep)
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in acc.items()}
    if not len(parts) or not len(out["logits"]):
        out["logits"] = np.zeros((0, n_models), np.float32)
    return out


def rank_population(first: dict, platt, ens_platt, method: str) -> dict:
    """Ensemble score, probability, per-model calibrated probability and rank of every scored row."""
    L = first["logits"]
    if not len(L):
        raise ValueError("search: no galaxy was scored (every row dropped or no stamps found); see the counts above")
    ens = EN.combine(L, platt, method)
    prob = EN.ensemble_probability(L, platt, ens_platt)
    order = rank_order(ens, prob, first["code"], first["key"])
    rank = np.empty(len(L), np.int64)
    rank[order] = np.arange(1, len(L) + 1)
    return {"ensemble": ens, "probability": prob, "member_prob": EN.calibrated(L, platt), "rank": rank,
            "order": order}


# ----------------------------------------------------------------------------- writing


def second_pass(parts: Sequence[str], first: dict, ranked: dict, selected: np.ndarray, ref: dict,
                scores_dir: str) -> pa.Table:
    """Write every part with its ensemble columns into ``scores_dir``; return the selected rows by rank."""
    os.makedirs(scores_dir, exist_ok=True)
    k = first["logits"].shape[1]
    cands, empty = [], None
    for i, path in enumerate(parts):
        t, _ = read_part(path)
        m = first["part"] == i
        t = t.replace_schema_metadata(None)
        for j in range(k):
            t = t.append_column(f"prob_{j}", pa.array(ranked["member_prob"][m, j], pa.float64()))
        t = t.append_column("ensemble_score", pa.array(ranked["ensemble"][m], pa.float64()))
        t = t.append_column("probability", pa.array(ranked["probability"][m], pa.float64()))
        t = t.append_column("rank", pa.array(ranked["rank"][m], pa.int64()))
        kl = first["kl"][m]
        for c, src in (("known_name", "name"), ("known_grade", "grade"), ("known_type", "type"),
                       ("known_reference", "reference")):
            vals = np.asarray(ref[src]).astype(str)
            t = t.append_column(c, pa.array([vals[x] if x >= 0 else "" for x in kl], pa.string()))
        t = t.append_column("known_sep_arcsec", pa.array(first["sep"][m], pa.float64()))
        t = t.drop_columns(["name"])
        with atomic_file(os.path.join(scores_dir, os.path.basename(path))) as tmp:
            pq.write_table(t, tmp, compression="zstd", row_group_size=65536)
        sel = np.flatnonzero(selected[m])
        empty = t.slice(0, 0) if empty is None else empty
        if len(sel):
            cands.append(t.take(sel))
    c = pa.concat_tables(cands) if cands else empty
    c = c.take(np.argsort(c.column("rank").to_numpy(), kind="stable"))
    front = ["rank"] + [x for x in ID_COLUMNS if x != "name"]
    return c.select(front + [x for x in c.column_names if x not in front])


def write_catalogue(table: pa.Table, out_dir: str, models: Sequence[EN.Member], meta: dict) -> list[str]:
    """``candidates.parquet``, ``.fits`` and ``.csv`` of the same rows; returns their paths."""
    md = {b"dhs_models": "\n".join(f"{m.index} {m.ref} sha256:{m.sha256}" for m in models).encode(),
          **{k.encode(): str(v).encode() for k, v in meta.items()}}
    paths = [os.path.join(out_dir, f"candidates.{ext}") for ext in ("parquet", "fits", "csv")]
    with atomic_file(paths[0]) as tmp:
        pq.write_table(table.replace_schema_metadata(md), tmp, compression="zstd", row_group_size=65536)
    _write_fits(table, paths[1], models, meta)
    _write_csv(table, paths[2])
    return paths


def _write_fits(table: pa.Table, path: str, models, meta: dict) -> None:
    from astropy.io import fits

    cols = []
    for name in table.column_names:
        v = table.column(name).to_numpy(zero_copy_only=False)
        if v.dtype.kind in "OUS":
            s = np.asarray(v).astype(str)
            width = max(1, max((len(x.encode()) for x in s), default=1))
            cols.append(fits.Column(name=name.upper(), format=f"{width}A", array=np.char.encode(s, "utf-8")))
        elif v.dtype.kind == "f":
            cols.append(fits.Column(name=name.upper(), format="D", array=v.astype(np.float64),
                                    unit="deg" if name in ("ra", "dec") else ("arcsec" if name.endswith("arcsec")
                                                                              else None)))
        else:
            cols.append(fits.Column(name=name.upper(), format="K", array=v.astype(np.int64)))
    hdu = fits.BinTableHDU.from_columns(cols, name="CANDIDATES")
    for m in models:  # the entry of search.models and its checkpoint's sha256
        hdu.header[f"MODEL{m.index}"] = m.ref[:60]
        hdu.header[f"SHA{m.index}"] = m.sha256
    for k, v in meta.items():
        hdu.header[k.upper()[:8]] = v
    with atomic_file(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(v)
    return str(v)


def _write_csv(table: pa.Table, path: str) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(table.column_names)
        cols = [table.column(c).to_pylist() for c in table.column_names]
        for row in zip(*cols):
            w.writerow([_fmt(v) for v in row])


# ----------------------------------------------------------------------------- metrics


def purity_at(labels: np.ndarray, scores: np.ndarray, threshold: float, prevalence: float, n_scored: int,
              n_boot: int = 200, seed: int = 0) -> dict:
    """The purity expected among galaxies scoring >= ``threshold`` at lens ``prevalence``, from a
    labelled split (test): ``pi TPR / (pi TPR + (1 - pi) FPR)``, with the counts, a stratified
    bootstrap interval, a pessimistic bound from the Wilson intervals (lowest TPR, highest FPR),
    and the lenses / non-lenses expected above the cut among ``n_scored`` galaxies."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    pi = float(prevalence)

    def purity(yy, ss):
        yy = np.asarray(yy).astype(bool)  # the bootstrap hands labels as 0/1 integers
        tpr = (ss[yy] >= threshold).mean()
        fpr = (ss[~yy] >= threshold).mean()
        den = pi * tpr + (1 - pi) * fpr
        return None if den == 0 else float(pi * tpr / den)

    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tp, fp = int((s[y] >= threshold).sum()), int((s[~y] >= threshold).sum())
    tpr, fpr = tp / n_pos, fp / n_neg
    lo, hi = M.bootstrap_ci(y.astype(np.int64), s, purity, n_boot=n_boot, seed=seed)
    tlo, _ = M.wilson_interval(tp, n_pos)
    _, fhi = M.wilson_interval(fp, n_neg)
    est = purity(y, s)
    wl = pi * tlo / (pi * tlo + (1 - pi) * fhi) if pi * tlo + (1 - pi) * fhi > 0 else None
    return {"prevalence": pi, "threshold": float(threshold), "test_n_pos": n_pos, "test_n_neg": n_neg,
            "test_tpr": tpr, "test_tpr_n_tp": tp, "test_fpr": fpr, "test_fpr_n_fp": fp,
            "purity": est, "purity_ci_lo": None if math.isnan(lo) else lo,
            "purity_ci_hi": None if math.isnan(hi) else hi,
            "purity_wilson_lo": wl,
            "expected_lenses_above_min_score": n_scored * pi * tpr,
            "expected_non_lenses_above_min_score": n_scored * (1 - pi) * fpr}


def known_lens_ranks(first: dict, ranked: dict, ref: dict, selected: np.ndarray, top_k: int) -> list[dict]:
    """Every known lens with a scored row within the match radius: its nearest scored row's rank."""
    kl, sep = first["kl"], first["sep"]
    out = []
    for j in np.unique(kl[kl >= 0]):
        rows = np.flatnonzero(kl == j)
        best = rows[np.lexsort((ranked["rank"][rows], sep[rows]))[0]]
        out.append({"name": str(ref["name"][j]), "grade": str(ref["grade"][j]), "type": str(ref["type"][j]),
                    "rank": int(ranked["rank"][best]), "ensemble_score": float(ranked["ensemble"][best]),
                    "probability": float(ranked["probability"][best]), "sep_arcsec": float(sep[best]),
                    "source": {v: k for k, v in SOURCE_CODES.items()}[int(first["code"][best])],
                    "in_candidates": bool(selected[best]), "on_page": bool(ranked["rank"][best] <= top_k)})
    return sorted(out, key=lambda r: (r["rank"], r["name"]))


def report(first: dict, ranked: dict, selected: np.ndarray, cands: pa.Table | None, ref: dict, purity: dict,
           params: dict) -> dict:
    """The catalogue part of metrics/search.json."""
    s = params["search"]
    ranks = known_lens_ranks(first, ranked, ref, selected, int(s["top_k"]))
    per_grade: dict[str, int] = {}
    if cands is not None:
        for name, grade in zip(cands.column("known_name").to_pylist(), cands.column("known_grade").to_pylist()):
            if name:
                per_grade[grade or "no_grade"] = per_grade.get(grade or "no_grade", 0) + 1
    n = len(ranked["rank"])
    return {"galaxies_scored": int(n), "candidates": int(selected.sum()),
            "candidates_above_min_score": int((ranked["ensemble"] >= float(s["min_score"])).sum()),
            "min_score": float(s["min_score"]), "top_k": int(s["top_k"]), "combine": s["combine"],
            "known_lens_list": ref["source"], "known_lenses_listed": int(len(ref["ra"])),
            "known_lenses_scored": len(ranks), "known_lenses_not_scored": int(len(ref["ra"]) - len(ranks)),
            "match_radius_arcsec": float(s["match_radius_arcsec"]),
            "known_lenses_in_candidates": int(sum(r["in_candidates"] for r in ranks)),
            "candidates_near_known_lens": int(sum(per_grade.values())),
            "candidates_near_known_lens_per_grade": dict(sorted(per_grade.items())),
            "known_lens_ranks": ranks, "purity": purity}


__all__ = ["KnownMatcher", "first_pass", "known_lens_reference", "known_lens_ranks", "purity_at", "rank_order",
           "rank_population", "report", "second_pass", "write_catalogue"]
