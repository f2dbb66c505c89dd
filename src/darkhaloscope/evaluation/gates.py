"""Shortcut gates: evidence that a finder learns arcs, not the host galaxy's flux.

A lens finder trained on injections can score well by looking at the wrong thing: with paired
controls the injected arc adds flux in the stamp's centre, so the core brightness alone
separates the classes (the original team found a logistic regression on the central 10x10
pixels reaching AUROC 0.95). Each gate is a number computed on the test split with a
threshold from params (``gates``), and a model should pass all of them:

- ``gate_core_lr_auroc`` (< ``core_lr_auroc_max``): k-fold cross-validated logistic regression
  on the central ``core_size`` x ``core_size`` pixels of every band of the stamps as the model
  sees them (its own normalisation). High: the core alone tells lenses from non-lenses.
- ``gate_radial_lr_auroc`` (< ``radial_lr_auroc_max``): the same on each band's azimuthally
  averaged radial profile (integer-radius rings). High: a symmetric brightness profile
  separates the classes, with no need for an arc's shape.
- ``gate_core_masked_drop`` (< ``core_masked_drop_max``): relative drop of the CNN's AUROC when
  the pixels within ``mask_radius`` of the centre are replaced by noise drawn from the same
  stamp's outer annulus (r >= ``mask_outer_radius``). Large: the model's decisions rest on
  the core.
- ``gate_hard_negative_auroc`` (>= ``hard_negative_auroc_min``): the CNN's AUROC of the test
  positives against the test split's lens impostors (rings, spirals, mergers, edge-on discs,
  blue clumps, close pairs: the parent's ``impostor`` column). Low: arc-like light that is not
  lensed fools it. Not computable (no impostors in the test split) counts as not passed.

Units: stamps are float32 nanomaggies (B, 3, H, W); radii and sizes in pixels from the stamp
centre (H // 2, W // 2). Physics-free and I/O-free: callers pass arrays.
"""

from __future__ import annotations

import numpy as np

from darkhaloscope import metrics as M

#: gate name -> (params key of its threshold, "max" if the value must stay below it, else "min")
GATES: dict[str, tuple[str, str]] = {
    "gate_core_lr_auroc": ("core_lr_auroc_max", "max"),
    "gate_radial_lr_auroc": ("radial_lr_auroc_max", "max"),
    "gate_core_masked_drop": ("core_masked_drop_max", "max"),
    "gate_hard_negative_auroc": ("hard_negative_auroc_min", "min"),
}


def core_pixels(x: np.ndarray, size: int) -> np.ndarray:
    """(B, C * size * size) features: the central ``size`` x ``size`` pixels of each channel of
    ``x`` (B, C, H, W), the block starting at H // 2 - size // 2 (so it covers the centre)."""
    x = np.asarray(x)
    h, w = x.shape[-2:]
    if not 1 <= size <= min(h, w):
        raise ValueError(f"core size {size} pixels does not fit a {h}x{w} stamp")
    y0, x0 = h // 2 - size // 2, w // 2 - size // 2
    return x[:, :, y0:y0 + size, x0:x0 + size].reshape(len(x), -1).astype(np.float64)


def radial_profiles(x: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(B, C * n_rings) features: each channel's mean in integer-radius rings ``round(r)`` about
    the centre, out to the largest ring that is complete inside the stamp (r <= min(H, W) // 2 - 1).

    Each ring is summed in pixel order by ``np.add.reduceat`` (no BLAS: the same bits on every CPU
    and thread count), ``chunk`` stamps at a time so the float64 copy stays small.
    """
    x = np.asarray(x)
    b, c, h, w = x.shape
    yy, xx = np.mgrid[0:h, 0:w]
    ring = np.rint(np.hypot(yy - h // 2, xx - w // 2)).astype(np.int64).ravel()
    n_rings = min(h, w) // 2
    order = np.flatnonzero(ring < n_rings)
    order = order[np.argsort(ring[order], kind="stable")]      # pixels grouped by ring, in pixel order
    starts = np.searchsorted(ring[order], np.arange(n_rings))
    counts = np.diff(np.append(starts, order.size)).astype(np.float64)
    out = np.empty((b, c, n_rings))
    for i0 in range(0, b, chunk):
        block = x[i0:i0 + chunk].reshape(-1, c, h * w)[:, :, order].astype(np.float64)
        out[i0:i0 + chunk] = np.add.reduceat(block, starts, axis=2) / counts
    return out.reshape(b, c * n_rings)


def cv_logistic_scores(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray | None:
    """Out-of-fold probabilities of a standardised logistic regression (stratified k-fold).

    None when a class has fewer than 5 rows (no meaningful cross-validation). The folds are
    shuffled with ``seed``, so the result is reproducible.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels).astype(int)
    n_min = int(min(labels.sum(), len(labels) - labels.sum()))
    if n_min < 5:
        return None
    feats = np.nan_to_num(np.asarray(features, dtype=np.float64))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=min(int(folds), n_min), shuffle=True, random_state=int(seed))
    return cross_val_predict(clf, feats, labels, cv=cv, method="predict_proba")[:, 1]


def mask_core(stamps: np.ndarray, radius: float, outer_radius: float, seed: int) -> np.ndarray:
    """A copy of ``stamps`` (B, C, H, W) whose pixels at r < ``radius`` are replaced, per stamp
    and band, by values drawn (with replacement) from the same stamp's pixels at r >=
    ``outer_radius``: the core becomes sky-like noise of that stamp. Draws come from
    ``numpy.random.default_rng(seed)``."""
    stamps = np.asarray(stamps)
    b, c, h, w = stamps.shape
    yy, xx = np.mgrid[0:h, 0:w]
    rr = np.hypot(yy - h // 2, xx - w // 2).ravel()
    inner, outer = np.flatnonzero(rr < radius), np.flatnonzero(rr >= outer_radius)
    if not inner.size or not outer.size:
        raise ValueError(f"mask radius {radius} / outer radius {outer_radius} pixels leave no pixel to "
                         f"mask or to draw from in a {h}x{w} stamp")
    rng = np.random.default_rng(int(seed))
    out = np.array(stamps, dtype=np.float32, copy=True).reshape(b * c, h * w)
    pick = outer[rng.integers(0, outer.size, size=(b * c, inner.size))]
    out[:, inner] = np.take_along_axis(out, pick, axis=1)
    return out.reshape(b, c, h, w)


def check(values: dict, thresholds: dict) -> dict:
    """The gate report: every value, its threshold and pass flag, and ``gates_passed``.

    ``values`` maps gate names (:data:`GATES`) to floats or None (not computable, e.g. too
    few rows: it counts as not passed); ``thresholds`` is the params ``gates`` section.
    """
    out: dict = {}
    passed = []
    for name, (key, kind) in GATES.items():
        v = values.get(name)
        t = float(thresholds[key])
        ok = v is not None and np.isfinite(v) and (v < t if kind == "max" else v >= t)
        out[name] = None if v is None else float(v)
        out[f"{name}_threshold"] = t
        out[f"{name}_passed"] = bool(ok)
        passed.append(bool(ok))
    out["gates_passed"] = all(passed)
    return out


def failed_gate_lines(report: dict) -> list[str]:
    """One WARN line per failed gate, naming its value and threshold."""
    lines = []
    for name, (key, kind) in GATES.items():
        if not report.get(f"{name}_passed"):
            v = report.get(name)
            rel = "<" if kind == "max" else ">="
            shown = "not computable" if v is None else f"{v:.3f}"
            lines.append(f"WARN gate {name} failed: {shown} (needs {rel} {report[f'{name}_threshold']}, "
                         f"gates.{key}): the model may be using a shortcut instead of the arc")
    return lines


def lr_rates(labels: np.ndarray, scores: np.ndarray | None, prefix: str) -> dict:
    """AUROC, tpr@fpr1e-2 and tpr@fpr1e-3 of a shortcut classifier's scores, keyed ``prefix_*``."""
    if scores is None:
        return {f"{prefix}_auroc": None, f"{prefix}_tpr@fpr1e-2": None, f"{prefix}_tpr@fpr1e-3": None}
    out = {f"{prefix}_auroc": M.auroc(labels, scores)}
    for t in (1e-2, 1e-3):
        out[f"{prefix}_{M.metric_name('tpr@fpr', t)}"] = float(M.tpr_at_fpr(labels, scores, t))
    return out


__all__ = ["GATES", "core_pixels", "radial_profiles", "cv_logistic_scores", "mask_core", "check",
           "failed_gate_lines", "lr_rates"]
