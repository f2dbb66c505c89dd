"""Phase 3 driver: read the sweeps, apply the LRG cuts, de-duplicate, assign sky splits."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from darkhaloscope.catalog import selection
from darkhaloscope.constants import SPLITS, nmgy_to_mag
from darkhaloscope.survey import fs
from darkhaloscope.survey.known_lenses import match_within, read_known_lenses
from darkhaloscope.errors import SurveyError
from darkhaloscope.survey.sweeps import read_sweeps

# sweep columns carried into the parent sample (lower-cased)
CARRY = ("RA", "DEC", "TYPE", "BRICKNAME", "OBJID", "FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1",
         "MW_TRANSMISSION_G", "MW_TRANSMISSION_R", "MW_TRANSMISSION_Z", "MW_TRANSMISSION_W1", "EBV",
         "NOBS_G", "NOBS_R", "NOBS_Z", "PSFSIZE_G", "PSFSIZE_R", "PSFSIZE_Z",
         "PSFDEPTH_G", "PSFDEPTH_R", "PSFDEPTH_Z", "SHAPE_R", "SHAPE_E1", "SHAPE_E2", "SERSIC", "MASKBITS")
DUP_RADIUS_ARCSEC = 0.2  # two catalogue rows closer than this are one galaxy


def build_parent(params: dict) -> tuple[pa.Table, dict]:
    """Return (parent table sorted by row_id, summary dict of counts)."""
    sv, sel = params["survey"], params["selection"]
    paths = fs.glob(sv["root"], sv["sweep_glob"])
    if not paths:
        raise SurveyError(f"no sweep files match {fs.join(sv['root'], sv['sweep_glob'])}: check survey.root and "
                          f"survey.sweep_glob in params.yaml (sweeps are FITS tables, e.g. sweep/sweep-*.fits)")
    cat, _ = read_sweeps(paths)
    n_in = len(cat["RA"])
    variant = sel["variant"]
    steps = selection.cut_steps(cat, variant, sel["deredden"], sel["variants"])
    counts = selection.cumulative_counts(steps, n_in)
    keep = np.ones(n_in, bool)
    for s in steps.values():
        keep &= s
    idx = np.flatnonzero(keep)

    # de-duplicate: identical (BRICKNAME, OBJID), then positions closer than DUP_RADIUS_ARCSEC
    bn = cat["BRICKNAME"][idx].astype(str)
    ob = cat["OBJID"][idx].astype(np.int64)
    rid = selection.row_ids(bn, ob)
    order = np.argsort(rid, kind="stable")
    idx, rid = idx[order], rid[order]
    _, first = np.unique(rid, return_index=True)
    n_dup_id = len(idx) - len(first)
    idx, rid = idx[np.sort(first)], rid[np.sort(first)]
    n_dup_pos = 0
    if len(idx) > 1:
        from sklearn.neighbors import BallTree

        pos = np.radians(np.column_stack([cat["DEC"][idx], cat["RA"][idx]]))
        tree = BallTree(pos, metric="haversine")
        pairs = tree.query_radius(pos, r=np.radians(DUP_RADIUS_ARCSEC / 3600.0))
        drop = np.zeros(len(idx), bool)
        for i, nb in enumerate(pairs):  # keep the lowest row_id of each close group
            if not drop[i]:
                drop[nb[nb > i]] = True
        n_dup_pos = int(drop.sum())
        idx, rid = idx[~drop], rid[~drop]

    cols = {c.lower(): cat[c][idx] for c in CARRY}
    cols["type"] = cols["type"].astype(str)
    cols["brickname"] = cols["brickname"].astype(str)
    cols["objid"] = cols["objid"].astype(np.int64)
    for b in ("g", "r", "z", "w1"):
        cols[f"mag_{b}"] = nmgy_to_mag(cols[f"flux_{b}"])
    sp = sel["split"]
    hp = selection.healpix_index(cols["ra"], cols["dec"], sp["nside"])
    split = selection.region_split(hp, sp["nside"], sp["seed"], sp["fractions"])
    known = read_known_lenses(sv["root"], sv["known_lenses"])
    near, sep = match_within(cols["ra"], cols["dec"], known["ra"], known["dec"],
                             params["manifest"]["known_lens_radius_arcsec"])
    table = pa.table({"row_id": rid, **cols, "healpix": hp, "split": split,
                      "near_known_lens": near, "known_lens_sep_arcsec": np.minimum(sep, 1e6)})
    summary = {
        "variant": variant,
        "deredden": bool(sel["deredden"]),
        "n_sweep_files": len(paths),
        "cuts": counts,
        "duplicates_removed": {"same_brick_objid": int(n_dup_id), f"within_{DUP_RADIUS_ARCSEC}_arcsec": n_dup_pos},
        "n_parent": int(len(rid)),
        "splits": {s: int((split == s).sum()) for s in SPLITS},
        "healpix_regions": {s: int(len(np.unique(hp[split == s]))) for s in SPLITS},
        "near_known_lens": int(near.sum()),
    }
    return table, summary
