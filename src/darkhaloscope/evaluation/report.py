"""Phase 5 evaluation: eval.json, stratified completeness, shortcut audit, known lenses, galleries.

Conventions: labels 1 = lens (injected or known), 0 = control; scores are
sigmoid(float32 logit) in float64. Test-set rates come with their counts and
bootstrap 95% intervals (see :func:`darkhaloscope.metrics.summary`).
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pyarrow as pa
import torch

from darkhaloscope import metrics as M
from darkhaloscope.constants import IMPOSTOR_CLASSES, NO_IMPOSTOR
from darkhaloscope.model import Preprocess, model_from_checkpoint
from darkhaloscope.plotting import rgb, save_figure
from darkhaloscope.evaluation import gates as G
from darkhaloscope.evaluation.gates import cv_logistic_scores
from darkhaloscope.evaluation.saliency import grad_cam
from darkhaloscope.stamps.format import stamps_from_arrow

THETA_BINS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5001)   # arcsec (the seeds' --theta_bins)
RES_BINS = (0.0, 0.5, 0.7, 0.9, 1.1, 1.4, 2.0, 5.0)           # theta_E / PSF FWHM (seeds' --res_bins, widened)
SNR_BINS = (0.0, 3.0, 5.0, 7.0, 10.0, 20.0, 50.0, 1e9)        # peak arc S/N per pixel
CORE_RADIUS = 4.0  # pixels: the "central core" aperture of the shortcut audit


def _col(t: pa.Table, name: str) -> np.ndarray:
    return t.column(name).to_numpy(zero_copy_only=False)


def calibration(val: pa.Table, test: pa.Table) -> dict:
    """ECE on test before and after Platt scaling fitted on val logits."""
    a, b = M.fit_platt(_col(val, "logit"), _col(val, "label"))
    y, s = _col(test, "label"), _col(test, "score")
    return {"ece": M.ece(y, s), "ece_platt": M.ece(y, M.apply_platt(_col(test, "logit"), a, b)),
            "platt_a": float(a), "platt_b": float(b)}


def val_thresholds(val: pa.Table, targets=(1e-3, 1e-4, 1e-2)) -> dict:
    """Score thresholds realising tpr@fpr targets on val: {'fpr1e-3': t, ...}."""
    y, s = _col(val, "label"), _col(val, "score")
    return {M.metric_name("tpr@fpr", t).split("@")[1]: float(M.threshold_at_fpr(y, s, t)) for t in targets}


def known_lens_recall(known: pa.Table, thresholds: dict) -> dict:
    """Recall of the known lenses at val-derived thresholds (the seeds' anchor baseline)."""
    s = _col(known, "score") if known.num_rows else np.zeros(0)
    out = {"known_n": int(len(s))}
    for name, t in thresholds.items():
        k = int((s >= t).sum()) if math.isfinite(t) else 0
        out[f"known_recall@{name}"] = k / len(s) if len(s) else None
        out[f"known_recall@{name}_n_found"] = k
    return out


def stratified_rows(test: pa.Table, thresholds: dict) -> list[dict]:
    """Completeness per theta_E, theta_E/PSF and arc-S/N bin at the given thresholds."""
    y, s = _col(test, "label"), _col(test, "score")
    rows = []
    for col, bins in (("theta_e_arcsec", THETA_BINS), ("theta_e_over_psf", RES_BINS), ("arc_snr", SNR_BINS)):
        if col not in test.column_names:
            continue
        for r in M.stratified_table(y, s, _col(test, col).astype(float), bins, thresholds):
            rows.append({"stratum": col, **r})
    return rows


def write_csv(rows: list[dict], path: str) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in keys})


def trivial_features(stamps: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Per stamp (B, 3, H, W) in nanomaggies: core flux (r <= 4 pixels) and total flux per band
    (nanomaggies), and the fraction of pixels the model's normalisation (``pre``, the checkpoint's
    recipe) clips."""
    n, c, h, w = stamps.shape
    yy, xx = np.mgrid[0:h, 0:w]
    core = ((yy - h // 2) ** 2 + (xx - w // 2) ** 2) <= CORE_RADIUS**2
    feats = [stamps[:, :, core].sum(axis=2), stamps.reshape(n, c, -1).sum(axis=2)]
    z = pre.normalize(stamps)
    lo, hi = pre.norm.clip
    clipped = ((z <= lo) | (z >= hi)).reshape(n, -1).mean(axis=1, keepdims=True)
    return np.concatenate(feats + [clipped], axis=1)


def shortcut_auroc(labels: np.ndarray, feats: np.ndarray, seed: int = 0) -> float | None:
    """Cross-validated AUROC of a logistic regression on trivial features (positives vs controls).

    Near 0.5: the trivial features do not separate the classes; near 1: a
    classifier could score well without looking at arc morphology.
    """
    p = cv_logistic_scores(feats, labels, seed=seed)
    return None if p is None else M.auroc(labels, p)


def impostor_metrics(test: pa.Table, thresholds: dict) -> dict:
    """Per lens-impostor class of the test split: its count, false-positive rate at each val-derived
    threshold and the AUROC of the test positives against that class; the same against every
    impostor together (``hard_negative_auroc``, the value of ``gate_hard_negative_auroc``); and the
    evaluation set's negatives count with the smallest resolvable FPR (1 / n_neg).

    ``test``: score table (label 1 = lens, score, optional ``impostor`` column; without it there
    are no impostors); ``thresholds``: :func:`val_thresholds`. Rates of a class absent from the
    split, and AUROCs without positives, are None.
    """
    y, s = _col(test, "label"), _col(test, "score")
    imp = (_col(test, "impostor").astype(str) if "impostor" in test.column_names
           else np.full(len(y), NO_IMPOSTOR))
    n_neg = int((y == 0).sum())
    pos = s[y == 1]
    out = {"eval_n_neg": n_neg, "min_resolvable_fpr": 1.0 / n_neg if n_neg else None}

    def auroc_vs(neg):
        if not len(pos) or not len(neg):
            return None
        return float(M.auroc(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))

    for c in IMPOSTOR_CLASSES:
        sc = s[(y == 0) & (imp == c)]
        out[f"impostor_{c}_n"] = len(sc)
        for name, t in thresholds.items():
            n_fp = int((sc >= t).sum()) if math.isfinite(t) else 0
            out[f"impostor_{c}_fpr@{name}"] = n_fp / len(sc) if len(sc) else None
            out[f"impostor_{c}_n_fp@{name}"] = n_fp
        out[f"impostor_{c}_auroc"] = auroc_vs(sc)
    hard = s[(y == 0) & (imp != NO_IMPOSTOR)]
    out["impostor_n"] = len(hard)
    out["hard_negative_auroc"] = auroc_vs(hard)
    return out


def shortcut_gates(ckpt_path: str, rows: dict, labels: np.ndarray, g: dict, seed: int,
                   hard_negative_auroc: float | None = None, logits: np.ndarray | None = None) -> dict:
    """Every gate of :mod:`darkhaloscope.evaluation.gates` on test rows, with thresholds and flags.

    ``rows``: :func:`read_rows` output (``stamp`` (B, 3, H, W) nanomaggies, optional
    ``ctrl_stamp``, the model's meta columns) of the kept test rows; ``labels`` 1 = lens;
    ``g``: the params ``gates`` section; ``hard_negative_auroc``: the CNN's AUROC of positives
    against the test impostors (:func:`impostor_metrics`; None: not computable); ``logits``: the
    CNN's float32 logits of these rows unmasked, in row order (stage score's, so the unmasked AUROC
    is eval.json's ``auroc``; NaN for a row computed here; None: all computed here). Also reports the core and radial regressions' own
    tpr@fpr1e-2 / 1e-3 (``core_lr_*``, ``radial_lr_*``) and the masked CNN's AUROC and
    tpr@fpr1e-2 (``cnn_core_masked_*``), all on the same rows.
    """
    from darkhaloscope.model.inference import predict_arrays, sigmoid

    model, pre = model_from_checkpoint(ckpt_path)
    stamps, ctrl = rows["stamp"], rows.get("ctrl_stamp") if pre.paired else None
    meta = np.column_stack([rows[c] for c in pre.meta_cols]).astype(np.float64) if pre.meta_cols else None
    seen = pre.normalize(stamps)  # the stamp as the model sees it (its own normalisation)
    core = G.cv_logistic_scores(G.core_pixels(seen, int(g["core_size"])), labels, g["cv_folds"], seed)
    radial = G.cv_logistic_scores(G.radial_profiles(seen), labels, g["cv_folds"], seed)
    out = {**G.lr_rates(labels, core, "core_lr"), **G.lr_rates(labels, radial, "radial_lr")}

    def masked(x, s):
        return None if x is None else G.mask_core(x, float(g["mask_radius"]), float(g["mask_outer_radius"]), s)

    kw = {"impute_meta": True} if pre.meta_cols else {}
    if logits is None:
        logits = predict_arrays(model, pre, stamps, ctrl, meta, **kw)
    else:
        if len(logits) != len(labels):
            raise ValueError(f"shortcut_gates: {len(logits)} logits for {len(labels)} rows")
        logits = np.array(logits, np.float32)
        todo = np.flatnonzero(~np.isfinite(logits))  # rows stage score did not score: scored here
        if len(todo):
            logits[todo] = predict_arrays(model, pre, stamps[todo], None if ctrl is None else ctrl[todo],
                                          None if meta is None else meta[todo], **kw)
    s0 = sigmoid(logits)
    s1 = sigmoid(predict_arrays(model, pre, masked(stamps, seed), masked(ctrl, seed + 1), meta, **kw))
    base, drop_auc = M.auroc(labels, s0), M.auroc(labels, s1)
    t0, t1 = M.tpr_at_fpr(labels, s0, 1e-2), M.tpr_at_fpr(labels, s1, 1e-2)
    out.update({"cnn_core_masked_auroc": drop_auc, "cnn_core_masked_tpr@fpr1e-2": float(t1),
                "gate_core_masked_tpr@fpr1e-2_drop": float((t0 - t1) / t0) if t0 > 0 else None})
    values = {"gate_core_lr_auroc": out["core_lr_auroc"], "gate_radial_lr_auroc": out["radial_lr_auroc"],
              "gate_core_masked_drop": float((base - drop_auc) / base) if np.isfinite(base) and base > 0 else None,
              "gate_hard_negative_auroc": hard_negative_auroc}
    return {**G.check(values, g), **out}


def saliency_gallery(ckpt_path: str, stamps: np.ndarray, ctrl: np.ndarray | None, meta: np.ndarray | None,
                     titles: list[str], path: str) -> None:
    """Each stamp (colour composite) beside its Grad-CAM map for the lens logit.

    ``stamps`` (B, 3, H, W) and ``ctrl`` (their paired controls, or None) in nanomaggies and
    ``meta`` (B, n_meta) raw metadata (or None) become network inputs with the checkpoint's own
    recipe (:meth:`~darkhaloscope.model.preprocess.Preprocess.apply`): a 6-channel model without
    stored controls sees the blank control that scoring uses too.
    """
    import matplotlib.pyplot as plt

    model, pre = model_from_checkpoint(ckpt_path)
    n = max(1, len(stamps))
    fig, axes = plt.subplots(n, 2, figsize=(4.2, 2.1 * n), squeeze=False)
    if len(stamps):
        x, m = pre.apply(stamps, ctrl, meta)
        cams = grad_cam(model, torch.from_numpy(x), torch.from_numpy(m) if m.shape[1] else None)
        for i in range(len(stamps)):
            axes[i, 0].imshow(rgb(stamps[i]), origin="lower")
            axes[i, 1].imshow(rgb(stamps[i]), origin="lower")
            axes[i, 1].imshow(cams[i], origin="lower", cmap="inferno", alpha=0.55, vmin=0, vmax=1)
            axes[i, 0].set_ylabel(titles[i], fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("stamp", fontsize=8)
    axes[0, 1].set_title("Grad-CAM (lens logit)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def logits_of(table: pa.Table, ids, where: str) -> np.ndarray:
    """float32 ``logit`` of ``table`` (stage score's, sorted or not) for each sample id of ``ids``,
    in that order; NaN for an id the table does not hold (a row scoring dropped). ``where``
    names the table in the error for a table without ``sample_id`` / ``logit``."""
    missing = [c for c in ("sample_id", "logit") if c not in table.column_names]
    if missing:
        raise ValueError(f"{where}: column(s) {missing} missing (has {table.column_names})")
    sid = _col(table, "sample_id").astype(np.int64)
    lg = _col(table, "logit").astype(np.float32)
    order = np.argsort(sid, kind="stable")
    sid, lg = sid[order], lg[order]
    ids = np.asarray(ids, np.int64)
    pos = np.minimum(np.searchsorted(sid, ids), max(len(sid) - 1, 0))
    hit = (sid[pos] == ids) if len(sid) else np.zeros(len(ids), bool)
    return np.where(hit, lg[pos] if len(sid) else np.float32(np.nan), np.float32(np.nan)).astype(np.float32)


def read_rows(files: list[str], ids, columns=()) -> dict:
    """Stamps (and ctrl stamps, columns) of the given sample ids from stamp files."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    want = pa.array(np.asarray(ids, dtype=np.int64))
    parts = []
    for f in files:
        t = pq.read_table(f)
        parts.append(t.filter(pc.is_in(t.column("sample_id"), value_set=want)))
    t = pa.concat_tables(parts)
    order = {int(s): i for i, s in enumerate(np.asarray(ids))}
    t = t.take(np.argsort([order[int(s)] for s in _col(t, "sample_id")]))
    out = {"stamp": stamps_from_arrow(t.column("stamp"))}
    if "ctrl_stamp" in t.column_names and t.column("ctrl_stamp").null_count == 0:
        out["ctrl_stamp"] = stamps_from_arrow(t.column("ctrl_stamp"))
    for c in columns:
        out[c] = _col(t, c)
    return out
