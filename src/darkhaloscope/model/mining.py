"""Hard-negative mining: score non-injected parent galaxies with a previous generation's model,
keep the top K above a minimum score, and drop every candidate near a known lens.

Known lenses = the survey's own list plus, optionally, the lenscat package's catalogue of
known lenses (about 33k real systems), matched on the sphere with scikit-learn's BallTree
(haversine). Exclusions are counted by source, never silently dropped.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pyarrow as pa

from darkhaloscope.model.score import score_files
from darkhaloscope.survey.known_lenses import match_within, read_known_lenses, read_lenscat

MODEL_PATH_IN_REPO = "data/model/best.pt"


def resolve_model(ref: str, workdir: str) -> str:
    """A local checkpoint path for ``ref``: an existing path, or a git tag/rev of this repository.

    For a tag, ``data/model/best.pt`` at that revision is read through DVC (``dvc.api.open``),
    which finds it in the local cache or the configured remote.
    """
    if os.path.exists(ref):
        return ref
    import dvc.api

    out = os.path.join(workdir, f"model-{ref}.pt")
    try:
        with dvc.api.open(MODEL_PATH_IN_REPO, repo=".", rev=ref, mode="rb") as src, open(out, "wb") as dst:
            dst.write(src.read())
    except Exception as e:
        raise ValueError(f"mine.model {ref!r}: neither a file nor a revision with {MODEL_PATH_IN_REPO} "
                         f"available in the DVC cache or remote ({type(e).__name__}: {e})") from None
    return out


def mine(files: list[str], ckpt: str, top_k: int, min_score: float, radius_arcsec: float,
         known: dict, lenscat: dict | None) -> tuple[pa.Table, dict]:
    """Return (hard negatives sorted by score desc then sample_id, report of counts)."""
    table, summary = score_files(ckpt, files)
    neg = table.filter(pa.compute.equal(table.column("label"), 0))
    s = neg.column("score").to_numpy()
    ra, dec = neg.column("ra").to_numpy(), neg.column("dec").to_numpy()
    above = s >= min_score
    near_survey, _ = match_within(ra, dec, known["ra"], known["dec"], radius_arcsec)
    near_lenscat = (match_within(ra, dec, lenscat["ra"], lenscat["dec"], radius_arcsec)[0]
                    if lenscat is not None else np.zeros(len(s), bool))
    keep = above & ~near_survey & ~near_lenscat
    idx = np.flatnonzero(keep)
    order = np.lexsort((neg.column("sample_id").to_numpy()[idx], -s[idx]))
    idx = idx[order][: max(0, int(top_k))]
    out = neg.take(idx)
    report = {
        "n_scored": int(neg.num_rows), "index": summary, "min_score": float(min_score), "top_k": int(top_k),
        "n_above_min_score": int(above.sum()),
        "excluded_near_known_lens": {"survey_list": int((above & near_survey).sum()),
                                     "lenscat": int((above & near_lenscat & ~near_survey).sum())},
        "exclusion_radius_arcsec": float(radius_arcsec),
        "n_known_lenses": {"survey_list": int(len(known["ra"])),
                           "lenscat": int(len(lenscat["ra"])) if lenscat is not None else 0},
        "n_hard_negatives": int(out.num_rows),
        "score_of_last_kept": float(s[idx[-1]]) if len(idx) else None,
    }
    return out, report


def run_mining(params: dict, stamps_root: str) -> tuple[pa.Table, dict]:
    """The `mine` stage: empty output when ``mine.model`` is empty or ``top_k`` is 0."""
    from darkhaloscope.stamps.format import list_stamp_files

    m, sv = params["mine"], params["survey"]
    empty = pa.table({"sample_id": pa.array([], pa.int64()), "score": pa.array([], pa.float64())})
    if not m["model"] or int(m["top_k"]) <= 0:
        return empty, {"enabled": False, "n_hard_negatives": 0}
    known = read_known_lenses(sv["root"], sv["known_lenses"])
    lenscat = read_lenscat() if m["use_lenscat"] and sv["known_lenses"] != "lenscat" else None
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = resolve_model(m["model"], tmp)
        table, report = mine(list_stamp_files(stamps_root, "parent"), ckpt, m["top_k"], m["min_score"],
                             m["exclusion_radius_arcsec"], known, lenscat)
    report.update(enabled=True, model=m["model"])
    return table, report
