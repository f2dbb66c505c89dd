"""The offline inspection page of a search: ``<out>/index.html``, ``candidates.js``, ``img/``.

One self-contained directory (no server, no network; open ``index.html`` from disk). Per
candidate (the ``search.top_k`` best ranked):

- the g/r/z colour composite as the Legacy Surveys viewer renders it (:func:`viewer_rgb`: the
  asinh stretch of legacypipe's ``sdss_rgb`` with the DR2+ band scales, z red, r green, g blue),
  north up and east left;
- the residual after the azimuthal-median model
  (:func:`darkhaloscope.model.preprocess.radial_median_residual`, each band's symmetric light
  subtracted), the same stretch;
- the Grad-CAM saliency of the first model of ``search.models`` for the lens logit
  (:func:`darkhaloscope.evaluation.saliency.grad_cam`, inputs from the checkpoint's own recipe)
  over the composite;
- the catalogue values and a link to the Legacy Surveys viewer at its position.

Grading is by keyboard (``j``/``k`` move, ``a`` ``b`` ``c`` ``x`` grade, ``n`` note, ``e``
export), kept in the browser's localStorage per catalogue, and exported as a CSV with the columns
:data:`darkhaloscope.model.mining.GRADE_COLUMNS` (only graded or annotated candidates), which
``mine.grades`` reads.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Sequence

import numpy as np
import pyarrow as pa

from darkhaloscope.model.mining import GRADE_COLUMNS, GRADE_MEANING, GRADES
from darkhaloscope.model.preprocess import radial_median_residual
from darkhaloscope.outputs import atomic_file

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "template", "index.html")
#: legacypipe's DR2+ viewer scales: band -> (RGB plane, scale), offset m and softening Q
VIEWER_SCALES = {"g": (2, 6.0), "r": (1, 3.4), "z": (0, 2.2)}
VIEWER_M = 0.03
VIEWER_Q = 20.0
VIEWER_URL = ("https://www.legacysurvey.org/viewer?ra={ra:.6f}&dec={dec:.6f}&layer=ls-dr10&zoom=16"
              "&mark={ra:.6f},{dec:.6f}")
SALIENCY_ALPHA = 0.55
#: candidates whose Grad-CAM is computed together (the maps do not depend on it on the CPU)
CAM_BATCH = 16


def viewer_rgb(stamp: np.ndarray, bands: Sequence[str] = ("g", "r", "z")) -> np.ndarray:
    """uint8 (H, W, 3) image of a (3, H, W) stamp in nanomaggies, as the Legacy Surveys viewer shows it:
    ``I = mean_b max(0, x_b s_b + m)``, each plane ``(x_b s_b + m) asinh(Q I) / (sqrt(Q) I)``, clipped
    to [0, 1]; rows flipped so that north (increasing pixel y) is up."""
    x = np.nan_to_num(np.asarray(stamp, np.float64))
    planes = [np.maximum(0.0, x[i] * VIEWER_SCALES[b][1] + VIEWER_M) for i, b in enumerate(bands)]
    inten = sum(planes) / len(planes)
    f = np.arcsinh(VIEWER_Q * inten) / np.sqrt(VIEWER_Q)
    inten = inten + (inten == 0.0) * 1e-6
    rgb = np.zeros(x.shape[1:] + (3,), np.float64)
    for i, b in enumerate(bands):
        rgb[:, :, VIEWER_SCALES[b][0]] = (x[i] * VIEWER_SCALES[b][1] + VIEWER_M) * f / inten
    rgb = np.clip(rgb, 0.0, 1.0)[::-1]
    return np.round(rgb * 255.0).astype(np.uint8)


def residual_stamp(stamp: np.ndarray) -> np.ndarray:
    """(3, H, W) float32: each band minus its azimuthal median profile (nanomaggies)."""
    c, h, w = stamp.shape
    return radial_median_residual(np.asarray(stamp, np.float32).reshape(c, h * w), h, w).reshape(c, h, w)


def saliency_overlay(stamp: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): the viewer composite blended with the inferno colour map of ``cam`` ((H, W) in [0, 1])."""
    import matplotlib

    base = viewer_rgb(stamp).astype(np.float64) / 255.0
    heat = matplotlib.colormaps["inferno"](np.clip(cam, 0.0, 1.0)[::-1])[..., :3]
    out = (1.0 - SALIENCY_ALPHA) * base + SALIENCY_ALPHA * heat
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_png(arr: np.ndarray, path: str) -> None:
    """A PNG of a uint8 (H, W, 3) array; the same array gives the same bytes (no timestamp)."""
    from PIL import Image

    with atomic_file(path) as tmp:
        Image.fromarray(arr, mode="RGB").save(tmp, format="PNG", optimize=False)


def saliency_maps(ckpt_path: str, stamps: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
    """(B, H, W) Grad-CAM maps of the lens logit for raw stamps, with the checkpoint's own recipe
    (a 6-channel model sees the blank control half a candidate gets; missing metadata is imputed)."""
    import torch

    from darkhaloscope.evaluation.saliency import grad_cam
    from darkhaloscope.model.checkpoint import model_from_checkpoint

    model, pre = model_from_checkpoint(ckpt_path)
    out = []
    for a in range(0, len(stamps), CAM_BATCH):
        m = None if meta is None else meta[a:a + CAM_BATCH]
        impute = m is not None and not np.isfinite(m).all()
        x, ms = pre.apply(stamps[a:a + CAM_BATCH], None, m, impute_meta=impute)
        out.append(grad_cam(model, torch.from_numpy(x), torch.from_numpy(ms) if ms.shape[1] else None))
    return np.concatenate(out) if out else np.zeros((0,) + stamps.shape[2:])


def _num(v):
    if v is None:
        return None
    if isinstance(v, float):
        return v if np.isfinite(v) else None
    return v


def page_records(cands: pa.Table, n_models: int) -> list[dict]:
    """The page's per-candidate values (ids as strings: int64 exceeds a JavaScript number)."""
    cols = {c: cands.column(c).to_pylist() for c in cands.column_names}
    out = []
    for i in range(cands.num_rows):
        r = {k: cols[k][i] for k in cols}
        out.append({
            "rank": int(r["rank"]), "source": r["source"], "sample_id": str(r["sample_id"]), "row_id": str(r["row_id"]),
            "split": r["split"], "brickname": r["brickname"], "objid": str(r["objid"]), "ra": r["ra"], "dec": r["dec"],
            "ensemble_score": _num(r["ensemble_score"]), "probability": _num(r["probability"]),
            "member_probs": [_num(r[f"prob_{j}"]) for j in range(n_models)],
            "known_name": r["known_name"], "known_grade": r["known_grade"],
            "known_sep_arcsec": _num(r["known_sep_arcsec"]),
            "viewer_url": VIEWER_URL.format(ra=r["ra"], dec=r["dec"]),
            "img_rgb": f"img/{int(r['rank']):06d}_rgb.png", "img_residual": f"img/{int(r['rank']):06d}_residual.png",
            "img_saliency": f"img/{int(r['rank']):06d}_saliency.png",
        })
    return out


def write_page(out_dir: str, cands: pa.Table, stamps: np.ndarray, meta: np.ndarray | None, ckpt_path: str,
               n_models: int, catalogue_id: str, title_note: str = "") -> dict:
    """Write the page for the candidates ``cands`` (rows in rank order) and their raw ``stamps``
    ((n, 3, 64, 64) nanomaggies, same order; ``meta``: the first model's metadata columns or None).
    Returns {'candidates', 'images'}."""
    os.makedirs(os.path.join(out_dir, "img"), exist_ok=True)
    recs = page_records(cands, n_models)
    cams = saliency_maps(ckpt_path, stamps, meta) if len(stamps) else np.zeros((0,) + stamps.shape[2:])
    for rec, st, cam in zip(recs, stamps, cams):
        write_png(viewer_rgb(st), os.path.join(out_dir, rec["img_rgb"]))
        write_png(viewer_rgb(residual_stamp(st)), os.path.join(out_dir, rec["img_residual"]))
        write_png(saliency_overlay(st, cam), os.path.join(out_dir, rec["img_saliency"]))
    data = {"catalogue_id": catalogue_id, "grades": list(GRADES), "grade_meaning": GRADE_MEANING,
            "columns": list(GRADE_COLUMNS), "note": title_note, "candidates": recs}
    with atomic_file(os.path.join(out_dir, "candidates.js")) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write("// written by darkhaloscope.search.inspect: the candidates of the page (see index.html)\n")
        fh.write("window.DHS_SEARCH = ")
        json.dump(data, fh, sort_keys=True, indent=1, allow_nan=False)
        fh.write(";\n")
    with atomic_file(os.path.join(out_dir, "index.html")) as tmp:
        shutil.copyfile(TEMPLATE, tmp)
    return {"candidates": len(recs), "images": 3 * len(recs)}


__all__ = ["VIEWER_URL", "page_records", "residual_stamp", "saliency_maps", "saliency_overlay", "viewer_rgb",
           "write_page", "write_png"]
