"""Evaluation metrics for the lens finder, built for very low false-positive rates.

Conventions used by every function in this module
-------------------------------------------------
* ``labels``: 1 (or ``True``) = lens / positive, 0 (or ``False``) = non-lens /
  negative.  Any other value is an error.
* ``scores``: higher = more lens-like.  They can be logits, probabilities or any
  monotone score; only their order matters, except for the calibration helpers
  (``ece``, ``binary_score_frac``), which need probabilities in [0, 1].
* A sample is *called positive* at threshold ``t`` if ``score >= t``.
* Scores must be finite: NaN or +-inf raise ``ValueError`` (a NaN cannot be
  ranked, and an inf usually means a numerical failure upstream).

The ROC curve
-------------
Scores are sorted in descending order and one ROC point is emitted per
*distinct* score, after all samples tied at that score have been counted (a run
of tied scores is one threshold: a classifier cannot separate them).  The curve
starts at the origin (0, 0) with threshold ``+inf`` (nothing called positive).
This is exactly ``sklearn.metrics.roc_curve(labels, scores,
drop_intermediate=False)``.  Every rate metric below is read off this curve:

* ``tpr_at_fpr(t)``: the largest TPR among ROC points whose FPR <= t.  Its
  counts / threshold refer to the *last* such point (lowest threshold that
  still respects the FPR budget).
* ``fpr_at_tpr(t)``: the smallest FPR among ROC points whose TPR >= t.  Its
  counts / threshold refer to the *first* such point.
* ``tpr_at_n_fp(n)`` ("TPR_n", Metcalf et al. 2019 lens-finding challenge): the
  recall with fewer than ``n`` false positives, i.e. the fraction of positives
  scoring strictly above the n-th highest negative.  ``tpr0`` is n=1 (positives
  above every negative), ``tpr10`` is n=10.

All rates come with the integer counts behind them (``RatePoint``) so that a
report can say "1/62910" rather than "0.0%".  For repeated queries on the same
data build the curve once with :func:`compute_roc` (one sort) and query the
returned :class:`RocCurve`; the module-level functions each rebuild it.

JSON outputs (:func:`summary`, :func:`roc_points_for_plot`,
:func:`stratified_table`, :func:`per_group_auroc`) contain only plain Python
``int``/``float``/``str``/``None`` values, all finite; an undefined value is
``None`` (documented per function).

Only numpy is used (no torch, no I/O).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "RatePoint",
    "RocCurve",
    "compute_roc",
    "roc_curve",
    "tpr_at_fpr",
    "fpr_at_tpr",
    "threshold_at_fpr",
    "rate_at",
    "metric_name",
    "auroc",
    "auprc",
    "tpr0",
    "tpr_at_n_fp",
    "bootstrap_ci",
    "bootstrap_distribution",
    "ece",
    "reliability_table",
    "fit_platt",
    "apply_platt",
    "binary_score_frac",
    "summary",
    "roc_points_for_plot",
    "stratified_table",
    "wilson_interval",
    "per_group_auroc",
    "DEFAULT_FPR_TARGETS",
    "DEFAULT_TPR_TARGETS",
]

from darkhaloscope.constants import FPR_TARGETS as DEFAULT_FPR_TARGETS  # noqa: E402
from darkhaloscope.constants import TPR_TARGETS as DEFAULT_TPR_TARGETS  # noqa: E402

_Z95 = 1.959963984540054  # two-sided 95% standard-normal quantile


# ---------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------


def _as_labels(labels: Any) -> np.ndarray:
    """Validate labels (1 = lens, 0 = non-lens) and return a 1-D bool array."""
    y = np.asarray(labels)
    if y.ndim != 1:
        if y.ndim == 2 and 1 in y.shape:
            y = y.ravel()
        else:
            raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.dtype == np.bool_:
        return y
    if y.dtype.kind not in "iuf":
        raise ValueError(f"labels must be 0/1 or bool (1 = lens), got dtype {y.dtype}")
    is1 = y == 1
    bad = ~(is1 | (y == 0))
    if bad.any():
        vals = np.unique(y[bad])[:5]
        raise ValueError(
            f"labels must be 0 (non-lens) or 1 (lens); found {int(bad.sum())} other "
            f"value(s), e.g. {vals.tolist()}"
        )
    return is1


def _as_scores(scores: Any, name: str = "scores") -> np.ndarray:
    """Validate scores (finite) and return a 1-D float64 array."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        if s.ndim == 2 and 1 in s.shape:
            s = s.ravel()
        else:
            raise ValueError(f"{name} must be 1-D, got shape {s.shape}")
    if not np.isfinite(s).all():
        n_nan = int(np.isnan(s).sum())
        n_inf = int(np.isinf(s).sum())
        raise ValueError(
            f"{name} must be finite: found {n_nan} NaN and {n_inf} infinite value(s) "
            f"out of {s.size}"
        )
    return s


def _check_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(labels)
    s = _as_scores(scores)
    if y.shape[0] != s.shape[0]:
        raise ValueError(
            f"labels and scores have different lengths ({y.shape[0]} vs {s.shape[0]})"
        )
    n_pos = int(np.count_nonzero(y))
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            "ROC metrics need both classes: got "
            f"{n_pos} positive(s) (label 1, lens) and {n_neg} negative(s) (label 0)"
        )
    return y, s


# ---------------------------------------------------------------------------
# core: sorted merge of the two classes
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Merged:
    """Both classes merged in ascending score order (ties: positives first).

    ``starts`` are the indices where a new distinct score begins; ``pos_slot``
    / ``neg_slot`` map each positive / negative, in the order of
    ``np.flatnonzero(labels)`` / ``np.flatnonzero(~labels)``, to its position
    in the merged order (only when built with ``keep_order=True``).
    """

    values: np.ndarray
    is_pos: np.ndarray
    starts: np.ndarray
    pos_slot: np.ndarray | None
    neg_slot: np.ndarray | None


def _merge(y: np.ndarray, s: np.ndarray, keep_order: bool = False) -> _Merged:
    pos = s[y]
    neg = s[~y]
    n_pos, n_neg = pos.shape[0], neg.shape[0]
    if keep_order:
        op = np.argsort(pos, kind="stable")
        on = np.argsort(neg, kind="stable")
        ps, ns = pos[op], neg[on]
    else:
        ps, ns = np.sort(pos), np.sort(neg)
    n = n_pos + n_neg
    is_pos = np.zeros(n, dtype=bool)
    values = np.empty(n, dtype=np.float64)
    # merge two sorted arrays: query the smaller class into the larger one
    if n_pos <= n_neg:
        pslot = np.searchsorted(ns, ps, side="left")
        pslot += np.arange(n_pos)
        is_pos[pslot] = True
        nslot = np.flatnonzero(~is_pos)
    else:
        nslot = np.searchsorted(ps, ns, side="right")
        nslot += np.arange(n_neg)
        is_pos[nslot] = True  # temporarily mark negatives
        pslot = np.flatnonzero(~is_pos)
        is_pos = ~is_pos
    values[pslot] = ps
    values[nslot] = ns
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(values[1:], values[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    pos_slot = neg_slot = None
    if keep_order:
        pos_slot = np.empty(n_pos, dtype=np.int64)
        pos_slot[op] = pslot
        neg_slot = np.empty(n_neg, dtype=np.int64)
        neg_slot[on] = nslot
    return _Merged(values, is_pos, starts, pos_slot, neg_slot)


# ---------------------------------------------------------------------------
# ROC curve object
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RatePoint:
    """One operating point of the ROC curve with the counts behind it.

    ``value`` is the requested metric (a TPR for ``tpr@fpr`` / ``tpr0`` /
    ``tpr10``, an FPR for ``fpr@tpr``); ``tpr = n_tp / n_pos`` and
    ``fpr = n_fp / n_neg`` describe the same point.  ``threshold`` realises the
    point (called positive if ``score >= threshold``); it is ``+inf`` for the
    origin (nothing called positive).  ``float(point)`` gives ``value``.
    """

    name: str
    value: float
    tpr: float
    fpr: float
    n_tp: int
    n_pos: int
    n_fp: int
    n_neg: int
    threshold: float

    def __float__(self) -> float:
        return self.value

    def as_dict(self) -> dict[str, Any]:
        """Plain-Python dict; ``threshold`` is ``None`` when it is +inf."""
        return {
            "name": self.name,
            "value": self.value,
            "tpr": self.tpr,
            "fpr": self.fpr,
            "n_tp": self.n_tp,
            "n_pos": self.n_pos,
            "n_fp": self.n_fp,
            "n_neg": self.n_neg,
            "threshold": self.threshold if math.isfinite(self.threshold) else None,
        }


class RocCurve:
    """Tie-corrected ROC curve as integer counts (see the module docstring).

    ``tps[i]`` / ``fps[i]`` are the numbers of positives / negatives with
    ``score >= thresholds[i]``; index 0 is the origin (threshold ``+inf``).
    Build it with :func:`compute_roc`.  Counts may also be bootstrap-weighted
    (then consecutive points can coincide, which no metric here minds).
    """

    def __init__(self, tps: np.ndarray, fps: np.ndarray, thresholds: np.ndarray):
        self.tps = tps
        self.fps = fps
        self.thresholds = thresholds
        self.n_pos = int(tps[-1])
        self.n_neg = int(fps[-1])

    @cached_property
    def fpr(self) -> np.ndarray:
        return self.fps / self.n_neg

    @cached_property
    def tpr(self) -> np.ndarray:
        return self.tps / self.n_pos

    def __len__(self) -> int:
        return self.tps.shape[0]

    # -- points ------------------------------------------------------------
    def _point(self, name: str, i: int, value: float) -> RatePoint:
        n_tp, n_fp = int(self.tps[i]), int(self.fps[i])
        return RatePoint(
            name=name,
            value=float(value),
            tpr=n_tp / self.n_pos,
            fpr=n_fp / self.n_neg,
            n_tp=n_tp,
            n_pos=self.n_pos,
            n_fp=n_fp,
            n_neg=self.n_neg,
            threshold=float(self.thresholds[i]),
        )

    def _idx_tpr_at_fpr(self, target_fpr: float) -> int:
        t = float(target_fpr)
        if not (t >= 0.0) or math.isinf(t):
            raise ValueError(f"target_fpr must be a finite number >= 0, got {target_fpr!r}")
        return int(np.searchsorted(self.fpr, t, side="right")) - 1

    def _idx_fpr_at_tpr(self, target_tpr: float) -> int:
        t = float(target_tpr)
        if not (0.0 <= t <= 1.0):
            raise ValueError(f"target_tpr must be in [0, 1], got {target_tpr!r}")
        return int(np.searchsorted(self.tpr, t, side="left"))

    def _idx_n_fp(self, n: int) -> int:
        if int(n) != n or n < 1:
            raise ValueError(f"n (number of false positives, exclusive) must be an integer >= 1, got {n!r}")
        return int(np.searchsorted(self.fps, int(n) - 1, side="right")) - 1

    def tpr_at_fpr(self, target_fpr: float) -> float:
        """Largest TPR among ROC points with FPR <= ``target_fpr``."""
        return float(self.tpr[self._idx_tpr_at_fpr(target_fpr)])

    def fpr_at_tpr(self, target_tpr: float) -> float:
        """Smallest FPR among ROC points with TPR >= ``target_tpr``."""
        return float(self.fpr[self._idx_fpr_at_tpr(target_tpr)])

    def threshold_at_fpr(self, target_fpr: float) -> float:
        """Score threshold of the :meth:`tpr_at_fpr` point (``+inf`` = call nothing)."""
        return float(self.thresholds[self._idx_tpr_at_fpr(target_fpr)])

    def tpr_at_n_fp(self, n: int) -> float:
        """Fraction of positives scoring strictly above the n-th highest negative."""
        return float(self.tpr[self._idx_n_fp(n)])

    def rate_at(self, kind: str, target: float) -> RatePoint:
        """The :class:`RatePoint` for ``kind`` in {"tpr@fpr", "fpr@tpr", "tpr@nfp"}."""
        k = _canonical_kind(kind)
        name = metric_name(k, target)
        if k == "tpr@fpr":
            i = self._idx_tpr_at_fpr(target)
            return self._point(name, i, self.tpr[i])
        if k == "fpr@tpr":
            i = self._idx_fpr_at_tpr(target)
            return self._point(name, i, self.fpr[i])
        i = self._idx_n_fp(target)
        return self._point(name, i, self.tpr[i])

    # -- areas -------------------------------------------------------------
    def auroc(self) -> float:
        """Trapezoid area under the tie-corrected ROC (= ``roc_auc_score``).

        Computed exactly in integer arithmetic, then divided once.
        """
        tps, fps = self.tps, self.fps
        area2 = int(np.dot(np.diff(fps), tps[1:] + tps[:-1]))
        return area2 / (2.0 * self.n_pos * self.n_neg)

    def auprc(self) -> float:
        """Average precision, sum_k (R_k - R_{k-1}) P_k (= ``average_precision_score``)."""
        dtp = np.diff(self.tps)
        m = dtp > 0
        tp = self.tps[1:][m]
        prec = tp / (tp + self.fps[1:][m])
        return float(np.sum(dtp[m] * prec) / self.n_pos)

    def metric(self, name: str) -> float:
        """Evaluate a metric by name: ``auroc``, ``auprc``, ``tpr0``, ``tpr10``,
        ``tpr@fpr1e-4``, ``fpr@tpr0.9``, ... (see :func:`metric_name`)."""
        return _metric_fn(name)(self)


def _curve_from_runs(run_pos_asc: np.ndarray, run_neg_asc: np.ndarray, thr_asc: np.ndarray) -> RocCurve:
    m = run_pos_asc.shape[0]
    tps = np.zeros(m + 1, dtype=np.int64)
    fps = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(run_pos_asc[::-1], out=tps[1:])
    np.cumsum(run_neg_asc[::-1], out=fps[1:])
    thresholds = np.empty(m + 1, dtype=np.float64)
    thresholds[0] = np.inf
    thresholds[1:] = thr_asc[::-1]
    return RocCurve(tps, fps, thresholds)


def compute_roc(labels: Any, scores: Any) -> RocCurve:
    """Sort once and return the tie-corrected :class:`RocCurve` (counts).

    Raises ``ValueError`` for non-finite scores, non-0/1 labels, length mismatch
    or a missing class.  O(n log n): two ``np.sort`` calls (one per class) and
    a ``searchsorted`` merge.
    """
    y, s = _check_inputs(labels, scores)
    mg = _merge(y, s)
    n = s.shape[0]
    n_pos = int(np.count_nonzero(y))
    n_neg = n - n_pos
    starts_desc = mg.starts[::-1]
    # cp[i] = number of positives in merged slots < i
    cp = np.empty(n + 1, dtype=np.int64)
    cp[0] = 0
    np.cumsum(mg.is_pos, out=cp[1:])
    before = cp[starts_desc]  # positives scoring below each distinct value
    m = before.shape[0]
    tps = np.zeros(m + 1, dtype=np.int64)
    fps = np.zeros(m + 1, dtype=np.int64)
    # tps = positives with score >= v; fps = negatives with score >= v
    np.subtract(n_pos, before, out=tps[1:])
    np.subtract(starts_desc, before, out=fps[1:])
    np.subtract(n_neg, fps[1:], out=fps[1:])
    thresholds = np.empty(m + 1, dtype=np.float64)
    thresholds[0] = np.inf
    np.take(mg.values, starts_desc, out=thresholds[1:])
    return RocCurve(tps, fps, thresholds)


# ---------------------------------------------------------------------------
# module-level metric functions
# ---------------------------------------------------------------------------


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tie-corrected ROC curve ``(fpr, tpr, thresholds)`` as float64 arrays.

    labels: 1 = lens (positive), 0 = non-lens; scores: higher = more lens-like.
    One point per distinct score, taken after all samples tied at that score
    are counted, in order of decreasing threshold; the first point is the
    origin (0, 0) with threshold ``+inf``.  Identical to
    ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``.
    Raises ``ValueError`` on NaN/inf scores, length mismatch or a missing class.
    """
    c = compute_roc(labels, scores)
    return c.fpr, c.tpr, c.thresholds


def tpr_at_fpr(labels: Any, scores: Any, target_fpr: float) -> float:
    """Largest TPR among ROC points whose FPR <= ``target_fpr`` (labels 1 = lens)."""
    return compute_roc(labels, scores).tpr_at_fpr(target_fpr)


def fpr_at_tpr(labels: Any, scores: Any, target_tpr: float) -> float:
    """Smallest FPR among ROC points whose TPR >= ``target_tpr`` (labels 1 = lens)."""
    return compute_roc(labels, scores).fpr_at_tpr(target_tpr)


def threshold_at_fpr(labels: Any, scores: Any, target_fpr: float) -> float:
    """Score threshold realising :func:`tpr_at_fpr` (positive if ``score >= threshold``).

    It is the score of the last ROC point with FPR <= ``target_fpr``, so applying
    it to the same data reproduces exactly that point's TP/FP counts.  Returns
    ``math.inf`` when even the highest-scoring tied group holds too many
    negatives (nothing may be called positive).
    """
    return compute_roc(labels, scores).threshold_at_fpr(target_fpr)


def rate_at(labels: Any, scores: Any, kind: str, target: float) -> RatePoint:
    """A rate with its counts: ``kind`` is ``"tpr@fpr"`` (target FPR),
    ``"fpr@tpr"`` (target TPR) or ``"tpr@nfp"`` (target = n, see
    :func:`tpr_at_n_fp`).  Returns a :class:`RatePoint` (n_tp, n_pos, n_fp,
    n_neg, threshold)."""
    return compute_roc(labels, scores).rate_at(kind, target)


def auroc(labels: Any, scores: Any) -> float:
    """Area under the tie-corrected ROC (trapezoid); equals ``roc_auc_score``."""
    return compute_roc(labels, scores).auroc()


def auprc(labels: Any, scores: Any) -> float:
    """Average precision (step integral of the PR curve, no interpolation);
    equals ``sklearn.metrics.average_precision_score``."""
    return compute_roc(labels, scores).auprc()


def tpr_at_n_fp(labels: Any, scores: Any, n: int) -> RatePoint:
    """Recall with fewer than ``n`` false positives ("TPR_n").

    ``value`` = fraction of positives scoring strictly above the n-th highest
    negative (all positives if there are fewer than n negatives); ``n_tp`` is
    their number and ``n_fp`` (< n) the negatives above that bound.  TPR10 is
    ``n=10``; TPR0 is ``n=1`` (see :func:`tpr0`).
    """
    return compute_roc(labels, scores).rate_at("tpr@nfp", n)


def tpr0(labels: Any, scores: Any) -> RatePoint:
    """Recall before the first false positive: fraction of positives scoring
    strictly above the highest-scoring negative (``tpr_at_n_fp(n=1)``)."""
    return tpr_at_n_fp(labels, scores, 1)


# ---------------------------------------------------------------------------
# metric names
# ---------------------------------------------------------------------------

_KIND_ALIASES = {
    "tpr@fpr": "tpr@fpr",
    "tpr_at_fpr": "tpr@fpr",
    "fpr@tpr": "fpr@tpr",
    "fpr_at_tpr": "fpr@tpr",
    "tpr@nfp": "tpr@nfp",
    "tpr_at_n_fp": "tpr@nfp",
}


def _canonical_kind(kind: str) -> str:
    try:
        return _KIND_ALIASES[kind]
    except KeyError:
        raise ValueError(f"unknown metric kind {kind!r}; use one of {sorted(set(_KIND_ALIASES))}") from None


def _fmt_sci(x: float) -> str:
    mant, exp = f"{float(x):e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def metric_name(kind: str, target: float) -> str:
    """Canonical metric name used as a key in :func:`summary`.

    * ``metric_name("tpr@fpr", 1e-4) == "tpr@fpr1e-4"`` (FPR targets in
      scientific notation: ``1e-5``, ``1e-4``, ``1e-3``, ``1e-2``, ``2.5e-3``)
    * ``metric_name("fpr@tpr", 0.85) == "fpr@tpr0.85"`` (TPR targets as ``%g``)
    * ``metric_name("tpr@nfp", 1) == "tpr0"``, ``metric_name("tpr@nfp", 10) ==
      "tpr10"`` (lens-finding-challenge convention: TPR0 = zero FPs = fewer
      than 1, TPR_n = fewer than n FPs).

    ``kind`` may also be spelled ``tpr_at_fpr`` / ``fpr_at_tpr`` / ``tpr_at_n_fp``.
    """
    k = _canonical_kind(kind)
    if k == "tpr@fpr":
        return f"tpr@fpr{_fmt_sci(target)}"
    if k == "fpr@tpr":
        return f"fpr@tpr{float(target):g}"
    n = int(target)
    return "tpr0" if n == 1 else f"tpr{n}"


def _metric_fn(name: str) -> Callable[[RocCurve], float]:
    if name == "auroc":
        return RocCurve.auroc
    if name == "auprc":
        return RocCurve.auprc
    if name.startswith("tpr@fpr"):
        t = float(name[len("tpr@fpr"):])
        return lambda c: c.tpr_at_fpr(t)
    if name.startswith("fpr@tpr"):
        t = float(name[len("fpr@tpr"):])
        return lambda c: c.fpr_at_tpr(t)
    if name.startswith("tpr") and name[3:].isdigit():
        n = max(int(name[3:]), 1)
        return lambda c: c.tpr_at_n_fp(n)
    raise ValueError(
        f"unknown metric name {name!r}; use auroc, auprc, tprN, tpr@fpr<t> or fpr@tpr<t>"
    )


# ---------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------


def bootstrap_distribution(
    labels: Any,
    scores: Any,
    metrics: Sequence[str],
    n_boot: int = 200,
    seed: int = 0,
    stratified: bool = True,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of named metrics (see :meth:`RocCurve.metric`).

    Sorts once; each replicate draws resample counts (``Generator.integers`` +
    ``bincount``) and rebuilds the ROC counts from the pre-sorted order in O(n),
    so all metrics of a replicate share one curve.  ``stratified=True``
    resamples the ``n_pos`` positives and the ``n_neg`` negatives separately
    (class sizes fixed); otherwise ``n`` samples are drawn from all.  A
    replicate in which a class is missing (possible only when not stratified)
    gives NaN.  Deterministic for a given ``seed``, and uses the same random
    draws as :func:`bootstrap_ci` with a callable, so both give identical
    replicates.  Returns ``{name: float64 array of length n_boot}``.
    """
    y, s = _check_inputs(labels, scores)
    fns = [(m, _metric_fn(m)) for m in metrics]
    mg = _merge(y, s, keep_order=True)
    n_pos = mg.pos_slot.shape[0]
    n_neg = mg.neg_slot.shape[0]
    n = n_pos + n_neg
    starts = mg.starts
    thr_asc = mg.values[starts]
    rng = np.random.default_rng(seed)
    out = {m: np.full(int(n_boot), np.nan) for m in metrics}
    if not stratified:
        # sample index (original order) -> merged slot
        slot_of = np.empty(n, dtype=np.int64)
        slot_of[np.flatnonzero(y)] = mg.pos_slot
        slot_of[np.flatnonzero(~y)] = mg.neg_slot
    wpos = np.zeros(n, dtype=np.int64)
    wneg = np.zeros(n, dtype=np.int64)
    for b in range(int(n_boot)):
        if stratified:
            cp = np.bincount(rng.integers(0, n_pos, n_pos), minlength=n_pos)
            cn = np.bincount(rng.integers(0, n_neg, n_neg), minlength=n_neg)
            wpos[mg.pos_slot] = cp
            wneg[mg.neg_slot] = cn
        else:
            c = np.bincount(rng.integers(0, n, n), minlength=n)
            w = np.zeros(n, dtype=np.int64)
            w[slot_of] = c
            np.multiply(w, mg.is_pos, out=wpos)
            np.subtract(w, wpos, out=wneg)
        run_pos = np.add.reduceat(wpos, starts)
        run_neg = np.add.reduceat(wneg, starts)
        curve = _curve_from_runs(run_pos, run_neg, thr_asc)
        if curve.n_pos == 0 or curve.n_neg == 0:
            continue
        for m, fn in fns:
            out[m][b] = fn(curve)
    return out


def _percentile_ci(vals: np.ndarray, alpha: float) -> tuple[float, float]:
    v = np.asarray(vals, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lo), float(hi))


def bootstrap_ci(
    labels: Any,
    scores: Any,
    fn: str | Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 200,
    seed: int = 0,
    stratified: bool = True,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval ``(lo, hi)`` of a metric.

    ``fn`` is either a metric name (``"auroc"``, ``"auprc"``, ``"tpr0"``,
    ``"tpr10"``, ``"tpr@fpr1e-4"``, ``"fpr@tpr0.9"``; fast path, one sort in
    total, see :func:`bootstrap_distribution`) or a callable
    ``fn(labels, scores) -> float`` called on each resample (generic path).
    ``stratified=True`` resamples positives (label 1) and negatives (label 0)
    separately.  Deterministic for a given ``seed`` (``numpy.random.Generator``);
    for the same seed the two paths draw the same resamples.  Replicates that
    miss a class (non-stratified only) or where ``fn`` returns None/NaN are
    ignored; if none is left the result is ``(nan, nan)``.  The percentile
    interval need not contain the point estimate for very skewed metrics.
    """
    if isinstance(fn, str):
        vals = bootstrap_distribution(labels, scores, [fn], n_boot, seed, stratified)[fn]
        return _percentile_ci(vals, alpha)
    y, s = _check_inputs(labels, scores)
    pos_idx = np.flatnonzero(y)
    neg_idx = np.flatnonzero(~y)
    n_pos, n_neg, n = pos_idx.size, neg_idx.size, y.size
    rng = np.random.default_rng(seed)
    vals = np.full(int(n_boot), np.nan)
    for b in range(int(n_boot)):
        if stratified:
            idx = np.concatenate(
                [pos_idx[rng.integers(0, n_pos, n_pos)], neg_idx[rng.integers(0, n_neg, n_neg)]]
            )
        else:
            idx = rng.integers(0, n, n)
            k = int(np.count_nonzero(y[idx]))
            if k == 0 or k == n:
                continue
        v = fn(y[idx].astype(np.int64), s[idx])
        if v is not None:
            vals[b] = float(v)
    return _percentile_ci(vals, alpha)


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------


def _check_probs(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(labels)
    p = _as_scores(probs, "probs")
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"labels and probs have different lengths ({y.shape[0]} vs {p.shape[0]})")
    if p.size == 0:
        raise ValueError("empty input")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(
            f"probs must lie in [0, 1] (got range [{p.min():.4g}, {p.max():.4g}]); "
            "apply a sigmoid to logits first"
        )
    return y, p


def reliability_table(labels: Any, probs: Any, n_bins: int = 15) -> list[dict[str, Any]]:
    """Per-bin calibration table on ``n_bins`` equal-width bins of [0, 1].

    Bin k is [k/n_bins, (k+1)/n_bins) (the last bin includes 1).  Each row:
    ``bin_lo``, ``bin_hi``, ``n``, ``mean_prob``, ``frac_pos`` (the last two
    ``None`` for an empty bin).  labels: 1 = lens; probs: P(lens).
    """
    y, p = _check_probs(labels, probs)
    k = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    cnt = np.bincount(k, minlength=n_bins)
    sp = np.bincount(k, weights=p, minlength=n_bins)
    sy = np.bincount(k, weights=y.astype(np.float64), minlength=n_bins)
    rows = []
    for i in range(n_bins):
        c = int(cnt[i])
        rows.append(
            {
                "bin_lo": i / n_bins,
                "bin_hi": (i + 1) / n_bins,
                "n": c,
                "mean_prob": float(sp[i] / c) if c else None,
                "frac_pos": float(sy[i] / c) if c else None,
            }
        )
    return rows


def ece(labels: Any, probs: Any, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins on [0, 1]:
    ``sum_b (n_b / N) * |mean prob_b - fraction of lenses_b|``.

    labels: 1 = lens; probs: predicted P(lens) in [0, 1] (raises otherwise).
    """
    y, p = _check_probs(labels, probs)
    k = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    sp = np.bincount(k, weights=p, minlength=n_bins)
    sy = np.bincount(k, weights=y.astype(np.float64), minlength=n_bins)
    # sum_b n_b/N |sp_b/n_b - sy_b/n_b| = sum_b |sp_b - sy_b| / N
    return float(np.abs(sp - sy).sum() / p.size)


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def apply_platt(s: Any, a: float, b: float) -> np.ndarray:
    """Platt-calibrated probability ``sigmoid(a * s + b)`` (numerically stable)."""
    z = a * np.asarray(s, dtype=np.float64) + b
    return np.exp(_log_sigmoid(z))


def fit_platt(
    logits_or_scores: Any,
    labels: Any,
    max_iter: int = 100,
    tol: float = 1e-10,
    ridge: float = 1e-8,
) -> tuple[float, float]:
    """Fit Platt scaling ``P(lens | s) = sigmoid(a * s + b)`` by maximum likelihood.

    labels: 1 = lens.  Best fed logits (or any unbounded score).  Damped Newton
    iterations in numpy on standardised scores; a tiny L2 penalty ``ridge`` on
    the standardised slope keeps ``a`` finite for perfectly separable data.
    Returns plain floats ``(a, b)``; use with :func:`apply_platt`.
    """
    s = _as_scores(logits_or_scores, "logits_or_scores")
    y = _as_labels(labels).astype(np.float64)
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"scores and labels have different lengths ({s.shape[0]} vs {y.shape[0]})")
    if y.size == 0 or y.min() == y.max():
        raise ValueError("fit_platt needs both classes (label 1 = lens and label 0)")
    mu = float(s.mean())
    sd = float(s.std())
    if sd == 0.0:
        sd = 1.0
    x = (s - mu) / sd
    n = x.size

    def loss(w: np.ndarray) -> float:
        z = w[0] * x + w[1]
        # -mean[y log sig(z) + (1-y) log sig(-z)]
        return float(-(y * _log_sigmoid(z) + (1 - y) * _log_sigmoid(-z)).mean() + 0.5 * ridge * w[0] ** 2)

    pbar = y.mean()
    w = np.array([0.0, math.log(pbar / (1 - pbar))])
    f = loss(w)
    for _ in range(max_iter):
        z = w[0] * x + w[1]
        p = np.exp(_log_sigmoid(z))
        r = p - y
        g = np.array([np.dot(r, x) / n + ridge * w[0], r.mean()])
        q = p * (1 - p)
        h = np.array(
            [[np.dot(q, x * x) / n + ridge, np.dot(q, x) / n], [np.dot(q, x) / n, q.mean()]]
        )
        h += 1e-12 * np.eye(2)
        step = np.linalg.solve(h, g)
        t = 1.0
        while True:
            w_new = w - t * step
            f_new = loss(w_new)
            if f_new <= f + 1e-4 * t * float(np.dot(g, -step)) or t < 1e-10:
                break
            t *= 0.5
        converged = abs(f - f_new) <= tol * max(1.0, abs(f)) and np.max(np.abs(t * step)) < 1e-8
        w, f = w_new, f_new
        if converged:
            break
    a = w[0] / sd
    b = w[1] - w[0] * mu / sd
    return float(a), float(b)


def binary_score_frac(scores: Any, eps: float = 1e-3) -> float:
    """Fraction of probability scores within ``eps`` of 0 or 1.

    Used for a calibration-collapse warning (e.g. when > 0.5: the model's
    outputs are saturated and thresholds at very low FPR become ill-defined).
    """
    s = _as_scores(scores)
    if s.size == 0:
        raise ValueError("empty scores")
    return float(np.count_nonzero((s <= eps) | (s >= 1.0 - eps)) / s.size)


# ---------------------------------------------------------------------------
# summary & plotting helpers
# ---------------------------------------------------------------------------


def _none_if_nan(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def summary(
    labels: Any,
    scores: Any,
    fpr_targets: Sequence[float] = DEFAULT_FPR_TARGETS,
    tpr_targets: Sequence[float] = DEFAULT_TPR_TARGETS,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """All evaluation metrics as a flat, JSON-safe dict (labels 1 = lens).

    Keys, in order: ``auroc``, ``auprc``, ``n_pos``, ``n_neg``; for every FPR
    target ``name = metric_name("tpr@fpr", t)`` (e.g. ``tpr@fpr1e-4``) and every
    TPR target ``name = metric_name("fpr@tpr", t)`` (e.g. ``fpr@tpr0.85``):
    ``name``, ``name_n_tp``, ``name_n_fp``, ``name_ci_lo``, ``name_ci_hi``;
    then ``tpr0``, ``tpr0_n_tp``, ``tpr10``, ``tpr10_n_tp``.

    Counts refer to the ROC point defining the rate (see module docstring).
    The intervals are stratified percentile-bootstrap 95% intervals
    (``n_boot`` replicates, ``seed``).  Values are Python ``float``/``int``;
    ``*_ci_lo``/``*_ci_hi`` are ``None`` when ``n_boot == 0``.  Everything is
    finite, so ``json.dumps(..., allow_nan=False)`` works.
    """
    y, s = _check_inputs(labels, scores)
    curve = compute_roc(y, s)
    out: dict[str, Any] = {
        "auroc": curve.auroc(),
        "auprc": curve.auprc(),
        "n_pos": curve.n_pos,
        "n_neg": curve.n_neg,
    }
    names = [metric_name("tpr@fpr", t) for t in fpr_targets] + [
        metric_name("fpr@tpr", t) for t in tpr_targets
    ]
    points = [curve.rate_at("tpr@fpr", t) for t in fpr_targets] + [
        curve.rate_at("fpr@tpr", t) for t in tpr_targets
    ]
    boot = (
        bootstrap_distribution(y, s, names, n_boot=n_boot, seed=seed, stratified=True)
        if n_boot > 0
        else {}
    )
    for name, pt in zip(names, points):
        out[name] = pt.value
        out[f"{name}_n_tp"] = pt.n_tp
        out[f"{name}_n_fp"] = pt.n_fp
        lo, hi = _percentile_ci(boot[name], 0.05) if n_boot > 0 else (math.nan, math.nan)
        out[f"{name}_ci_lo"] = _none_if_nan(lo)
        out[f"{name}_ci_hi"] = _none_if_nan(hi)
    for n in (1, 10):
        pt = curve.rate_at("tpr@nfp", n)
        out[pt.name] = pt.value
        out[f"{pt.name}_n_tp"] = pt.n_tp
    return out


def roc_points_for_plot(labels: Any, scores: Any, max_points: int = 2000) -> list[dict[str, float]]:
    """ROC points ``[{"fpr", "tpr", "threshold"}, ...]`` for a DVC plot JSON.

    If the curve has more than ``max_points`` points it is downsampled on a
    log-FPR grid (from 1/n_neg to 1) plus a denser grid on FPR 1e-5..1e-2;
    for each grid FPR the last point with FPR <= it (the ``tpr_at_fpr`` point)
    and the next one are kept, as are the first/last points and the points at
    FPR 1e-5, 1e-4, 1e-3, 1e-2.  Thresholds are always finite: the origin's
    ``+inf`` is replaced by ``max(scores) + 1``.  Points are in increasing FPR.
    """
    if max_points < 32:
        raise ValueError(f"max_points must be >= 32, got {max_points}")
    c = compute_roc(labels, scores)
    fpr, tpr, thr = c.fpr, c.tpr, c.thresholds.copy()
    thr[0] = thr[1] + 1.0
    m = fpr.shape[0]
    if m <= max_points:
        idx = np.arange(m)
    else:
        k = (max_points - 16) // 4
        lo = math.log10(1.0 / c.n_neg)
        grid = np.concatenate(
            [
                [0.0],
                np.logspace(min(lo, -5.0), 0.0, k),
                np.logspace(-5.0, -2.0, k),
                np.asarray(DEFAULT_FPR_TARGETS),
            ]
        )
        last = np.searchsorted(fpr, grid, side="right") - 1
        idx = np.unique(np.concatenate([[0, m - 1], last, np.minimum(last + 1, m - 1)]))
    return [
        {"fpr": float(fpr[i]), "tpr": float(tpr[i]), "threshold": float(thr[i])} for i in idx
    ]


def wilson_interval(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (95% by default)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    p = k / n
    z2 = z * z
    den = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def stratified_table(
    labels: Any,
    scores: Any,
    strata_values: Any,
    bins: Sequence[float],
    thresholds: Mapping[str, float],
) -> list[dict[str, Any]]:
    """Completeness (TPR) of the positives per bin of a stratifying column.

    labels: 1 = lens; scores: higher = more lens-like; ``strata_values``: one
    value per sample (e.g. theta_E, theta_E/PSF, arc S/N); only positives are
    binned (negatives have no theta_E; their values are ignored and may be NaN).
    ``bins`` are increasing edges; bin i is [bins[i], bins[i+1]) and the last
    bin also includes its upper edge.  Positives with NaN or out-of-range values
    are left out.  ``thresholds`` maps a name to a score threshold, typically
    ``{"fpr1e-3": threshold_at_fpr(val_labels, val_scores, 1e-3), ...}``
    computed on the whole negative set; a positive is detected if
    ``score >= threshold``.

    Returns one row per bin: ``bin_lo``, ``bin_hi``, ``bin_mid``, ``n_pos_bin``
    and, for each threshold name ``t``: ``t_threshold`` (None if infinite),
    ``t_n_detected``, ``t_completeness`` and its Wilson 95% interval
    ``t_ci_lo``/``t_ci_hi`` (these three None when the bin is empty).
    """
    y = _as_labels(labels)
    s = _as_scores(scores)
    v = np.asarray(strata_values, dtype=np.float64).ravel()
    if not (y.shape[0] == s.shape[0] == v.shape[0]):
        raise ValueError(
            f"labels, scores and strata_values differ in length ({y.shape[0]}, {s.shape[0]}, {v.shape[0]})"
        )
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0) or not np.isfinite(edges).all():
        raise ValueError("bins must be at least two finite, strictly increasing edges")
    vp, sp = v[y], s[y]
    ok = np.isfinite(vp) & (vp >= edges[0]) & (vp <= edges[-1])
    vp, sp = vp[ok], sp[ok]
    nb = edges.size - 1
    b = np.minimum(np.searchsorted(edges, vp, side="right") - 1, nb - 1)
    n_in = np.bincount(b, minlength=nb)
    rows = []
    det = {name: np.bincount(b[sp >= float(t)], minlength=nb) for name, t in thresholds.items()}
    for i in range(nb):
        n = int(n_in[i])
        row: dict[str, Any] = {
            "bin_lo": float(edges[i]),
            "bin_hi": float(edges[i + 1]),
            "bin_mid": float(0.5 * (edges[i] + edges[i + 1])),
            "n_pos_bin": n,
        }
        for name, t in thresholds.items():
            k = int(det[name][i])
            row[f"{name}_threshold"] = float(t) if math.isfinite(float(t)) else None
            row[f"{name}_n_detected"] = k
            if n > 0:
                lo, hi = wilson_interval(k, n)
                row[f"{name}_completeness"] = k / n
                row[f"{name}_ci_lo"] = lo
                row[f"{name}_ci_hi"] = hi
            else:
                row[f"{name}_completeness"] = None
                row[f"{name}_ci_lo"] = None
                row[f"{name}_ci_hi"] = None
        rows.append(row)
    return rows


def _py(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def per_group_auroc(labels: Any, scores: Any, groups: Any) -> list[dict[str, Any]]:
    """AUROC per group (e.g. per survey region or brick class).

    Returns one dict per distinct group (sorted): ``{"group", "n_pos", "n_neg",
    "auroc"}``, with ``auroc`` None when the group lacks a class.  labels: 1 =
    lens; scores: higher = more lens-like.
    """
    y = _as_labels(labels)
    s = _as_scores(scores)
    g = np.asarray(groups).ravel()
    if not (y.shape[0] == s.shape[0] == g.shape[0]):
        raise ValueError(
            f"labels, scores and groups differ in length ({y.shape[0]}, {s.shape[0]}, {g.shape[0]})"
        )
    try:
        uniq, inv = np.unique(g, return_inverse=True)
    except TypeError:  # unorderable mix (e.g. None and str)
        keys = [str(x) for x in g]
        uniq_s, inv = np.unique(np.asarray(keys), return_inverse=True)
        first = {}
        for x, k in zip(g, keys):
            first.setdefault(k, x)
        uniq = [first[k] for k in uniq_s]
    inv = np.asarray(inv).ravel()
    rows = []
    for i, grp in enumerate(uniq):
        m = inv == i
        yi, si = y[m], s[m]
        n_pos = int(np.count_nonzero(yi))
        n_neg = int(yi.size - n_pos)
        a = compute_roc(yi, si).auroc() if n_pos and n_neg else None
        rows.append({"group": _py(grp), "n_pos": n_pos, "n_neg": n_neg, "auroc": a})
    return rows
