"""Tests of darkhaloscope.metrics against scikit-learn and hand-built cases.

Conventions: labels 1 = lens (positive), 0 = non-lens; higher score = more lens-like.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from darkhaloscope import metrics as M

FPR_TARGETS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.3, 0.5, 1.0)
TPR_TARGETS = (0.0, 0.01, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)


def _data(kind: str, seed: int, n: int = 4000):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(np.int64)
    y[:2] = [1, 0]
    s = rng.normal(size=n) + 1.2 * y
    if kind == "continuous":
        pass
    elif kind == "round2":
        s = np.round(1 / (1 + np.exp(-s)), 2)
    elif kind == "three":
        # scores from {0, 0.5, 1}, weakly informative
        s = np.where(rng.random(n) < 0.3 + 0.3 * y, 1.0, np.where(rng.random(n) < 0.5, 0.5, 0.0))
    elif kind == "binary":
        s = (rng.random(n) < 0.2 + 0.6 * y).astype(np.float64)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return y, s


KINDS = ["continuous", "round2", "three", "binary"]


def _ref_tpr_at_fpr(fpr, tpr, t):
    return float(tpr[fpr <= t].max())


def _ref_fpr_at_tpr(fpr, tpr, t):
    return float(fpr[tpr >= t].min())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_matches_sklearn(kind, seed):
    y, s = _data(kind, seed)
    fpr, tpr, thr = M.roc_curve(y, s)
    f2, t2, th2 = skm.roc_curve(y, s, drop_intermediate=False)
    assert fpr.dtype == np.float64 and tpr.dtype == np.float64 and thr.dtype == np.float64
    np.testing.assert_array_equal(fpr, f2)
    np.testing.assert_array_equal(tpr, t2)
    np.testing.assert_array_equal(thr, th2)
    assert fpr[0] == 0 and tpr[0] == 0 and thr[0] == np.inf
    assert len(thr) == len(np.unique(s)) + 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_auprc_match_sklearn(kind, seed):
    y, s = _data(kind, seed)
    assert M.auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert M.auprc(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 3])
def test_rates_match_sklearn_reference(kind, seed):
    y, s = _data(kind, seed)
    f2, t2, th2 = skm.roc_curve(y, s, drop_intermediate=False)
    curve = M.compute_roc(y, s)
    # also query exactly at every 7th attained FPR / TPR value (boundary cases)
    fpr_targets = list(FPR_TARGETS) + list(f2[::7])
    tpr_targets = list(TPR_TARGETS) + list(t2[::7])
    for t in fpr_targets:
        ref = _ref_tpr_at_fpr(f2, t2, t)
        assert M.tpr_at_fpr(y, s, t) == ref
        assert curve.tpr_at_fpr(t) == ref
        pt = curve.rate_at("tpr@fpr", t)
        assert pt.value == ref and pt.n_tp == round(ref * pt.n_pos)
        assert pt.n_fp / pt.n_neg <= t
        # threshold realises the point
        thr = M.threshold_at_fpr(y, s, t)
        called = s >= thr
        assert int(np.sum(called & (y == 1))) == pt.n_tp
        assert int(np.sum(called & (y == 0))) == pt.n_fp
    for t in tpr_targets:
        ref = _ref_fpr_at_tpr(f2, t2, t)
        assert M.fpr_at_tpr(y, s, t) == ref
        pt = M.rate_at(y, s, "fpr@tpr", t)
        assert pt.value == ref and pt.n_fp == round(ref * pt.n_neg)
        assert pt.n_tp / pt.n_pos >= t


def test_ties_use_last_point_of_run():
    # one tied group containing 2 positives and 1 negative, above everything else
    y = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.9, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1])
    fpr, tpr, thr = M.roc_curve(y, s)
    np.testing.assert_array_equal(thr[:2], [np.inf, 0.9])
    assert (fpr[1], tpr[1]) == (0.2, 2 / 3)  # after the whole tied run
    assert M.tpr_at_fpr(y, s, 0.2) == 1.0  # the positive at 0.5 comes for free
    assert M.tpr_at_fpr(y, s, 0.19) == 0.0  # the run cannot be split
    assert M.threshold_at_fpr(y, s, 0.19) == math.inf


def test_seed_case_single_top_positive():
    """62,910 positives / 65,090 negatives; one positive above all negatives."""
    rng = np.random.default_rng(42)
    n_pos, n_neg = 62910, 65090
    s_pos = np.concatenate([[10.0], rng.uniform(-3.0, -1.0, n_pos - 1)])
    s_neg = rng.uniform(0.0, 1.0, n_neg)
    y = np.concatenate([np.ones(n_pos, np.int64), np.zeros(n_neg, np.int64)])
    s = np.concatenate([s_pos, s_neg])
    perm = rng.permutation(y.size)
    y, s = y[perm], s[perm]

    assert M.tpr_at_fpr(y, s, 1e-4) == 1 / 62910
    pt = M.rate_at(y, s, "tpr@fpr", 1e-4)
    assert pt.n_tp == 1 and pt.n_pos == 62910 and pt.n_neg == 65090
    assert pt.n_fp == 6  # floor(1e-4 * 65090)
    f2, t2, _ = skm.roc_curve(y, s, drop_intermediate=False)
    assert _ref_tpr_at_fpr(f2, t2, 1e-4) == 1 / 62910

    t0 = M.tpr0(y, s)
    assert t0.value == 1 / 62910 and t0.n_tp == 1 and t0.n_fp == 0
    assert float(t0) == t0.value

    out = M.summary(y, s, n_boot=50, seed=0)
    assert out["tpr@fpr1e-4"] == 1 / 62910
    assert out["tpr@fpr1e-4_n_tp"] == 1
    assert out["tpr0"] == 1 / 62910 and out["tpr0_n_tp"] == 1
    assert out["tpr10_n_tp"] == 1
    assert out["n_pos"] == 62910 and out["n_neg"] == 65090
    assert out["tpr@fpr1e-4_ci_lo"] <= 1 / 62910 <= out["tpr@fpr1e-4_ci_hi"]


def test_errors():
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"2 NaN and 0 infinite"):
        M.roc_curve(y, [0.1, np.nan, np.nan, 0.3])
    with pytest.raises(ValueError, match=r"0 NaN and 1 infinite"):
        M.auroc(y, [0.1, np.inf, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"0 positive"):
        M.roc_curve([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"0 negative"):
        M.tpr_at_fpr([1, 1, 1], [0.1, 0.2, 0.3], 1e-3)
    with pytest.raises(ValueError, match="different lengths"):
        M.roc_curve([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 \\(non-lens\\) or 1"):
        M.roc_curve([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="target_tpr"):
        M.fpr_at_tpr(y, [0.1, 0.2, 0.3, 0.4], 1.5)
    with pytest.raises(ValueError, match="target_fpr"):
        M.tpr_at_fpr(y, [0.1, 0.2, 0.3, 0.4], -0.1)
    with pytest.raises(ValueError, match=">= 1"):
        M.tpr_at_n_fp(y, [0.1, 0.2, 0.3, 0.4], 0)


def test_label_dtypes_accepted():
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.8, 0.3, 0.2, 0.9, 0.5])
    ref = M.auroc(y, s)
    assert M.auroc(y.astype(bool), s) == ref
    assert M.auroc(y.astype(np.float32), s) == ref
    assert M.auroc(list(y), list(s)) == ref
    assert M.auroc(y[:, None], s[:, None]) == ref
    assert ref == pytest.approx(skm.roc_auc_score(y, s))


def test_tpr0_tpr10_hand_built():
    # negatives: 10 of them at 0.95, 0.9, ..., 0.5 (10th highest = 0.5)
    neg = np.round(np.arange(0.95, 0.49, -0.05), 2)
    assert neg.size == 10
    pos = np.array([0.99, 0.97, 0.92, 0.5, 0.3])
    y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    s = np.r_[pos, neg]
    t0 = M.tpr0(y, s)
    assert t0.value == 2 / 5 and t0.n_tp == 2 and t0.n_fp == 0 and t0.n_pos == 5
    t10 = M.tpr_at_n_fp(y, s, 10)
    # strictly above 0.5 (the tied positive at 0.5 does not count)
    assert t10.value == 3 / 5 and t10.n_tp == 3 and t10.n_fp == 9
    t2 = M.tpr_at_n_fp(y, s, 2)  # strictly above the 2nd-highest negative, 0.9
    assert t2.value == 3 / 5 and t2.n_fp == 1
    # more FPs allowed than negatives exist -> everything
    assert M.tpr_at_n_fp(y, s, 11).value == 1.0
    # ties among negatives: the first "fewer than 2 FP" point must exclude both tied
    y2 = np.array([1, 0, 0, 1, 0])
    s2 = np.array([0.9, 0.8, 0.8, 0.7, 0.1])
    assert M.tpr_at_n_fp(y2, s2, 2).value == 0.5
    assert M.tpr_at_n_fp(y2, s2, 3).value == 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_tpr_at_n_fp_brute_force(kind):
    y, s = _data(kind, 7, n=500)
    pos, neg = s[y == 1], np.sort(s[y == 0])[::-1]
    for n in (1, 2, 5, 10, 50):
        ref = np.mean(pos > neg[n - 1]) if n <= neg.size else 1.0
        assert M.tpr_at_n_fp(y, s, n).value == pytest.approx(ref, abs=0)


def test_ece_and_platt():
    rng = np.random.default_rng(0)
    n = 200_000
    p = rng.random(n)
    y = (rng.random(n) < p).astype(np.int64)
    assert M.ece(y, p) < 0.02
    # over-confident: logit scaled by 3
    logit = np.log(p / (1 - p))
    p_bad = 1 / (1 + np.exp(-3 * logit))
    e_bad = M.ece(y, p_bad)
    assert e_bad > 0.1
    a, b = M.fit_platt(3 * logit, y)
    assert isinstance(a, float) and isinstance(b, float)
    assert a == pytest.approx(1 / 3, rel=0.03) and b == pytest.approx(0.0, abs=0.03)
    p_cal = M.apply_platt(3 * logit, a, b)
    assert M.ece(y, p_cal) < 0.02 < e_bad
    # ECE by hand on a tiny example: bins [0, .5), [.5, 1] with n_bins=2
    assert M.ece([0, 1, 1, 1], [0.2, 0.4, 0.6, 0.8], n_bins=2) == pytest.approx(
        0.5 * abs(0.3 - 0.5) + 0.5 * abs(0.7 - 1.0)
    )
    rows = M.reliability_table([0, 1, 1, 1], [0.2, 0.4, 0.6, 0.8], n_bins=2)
    assert [r["n"] for r in rows] == [2, 2] and rows[1]["frac_pos"] == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.ece([0, 1], [0.5, 1.5])


def test_platt_separable_is_finite():
    s = np.array([-2.0, -1.0, 1.0, 2.0])
    a, b = M.fit_platt(s, [0, 0, 1, 1])
    assert math.isfinite(a) and math.isfinite(b) and a > 0
    p = M.apply_platt(s, a, b)
    assert np.all(p[2:] > 0.9) and np.all(p[:2] < 0.1)


def test_binary_score_frac():
    s = np.array([0.0, 1e-4, 0.5, 0.9995, 1.0, 0.3, 0.002, 0.7])
    assert M.binary_score_frac(s) == 4 / 8
    assert M.binary_score_frac(s, eps=0.01) == 5 / 8


def test_bootstrap_ci_deterministic_and_contains_estimate():
    y, s = _data("continuous", 11, n=3000)
    est = M.auroc(y, s)
    ci1 = M.bootstrap_ci(y, s, "auroc", n_boot=200, seed=5)
    ci2 = M.bootstrap_ci(y, s, "auroc", n_boot=200, seed=5)
    ci3 = M.bootstrap_ci(y, s, "auroc", n_boot=200, seed=6)
    assert ci1 == ci2 and ci1 != ci3
    assert ci1[0] < est < ci1[1]
    assert 0.005 < ci1[1] - ci1[0] < 0.1
    for name in ("tpr@fpr1e-2", "fpr@tpr0.9", "auprc"):
        lo, hi = M.bootstrap_ci(y, s, name, n_boot=200, seed=1)
        est = M.compute_roc(y, s).metric(name)
        assert lo <= est <= hi and lo < hi


@pytest.mark.parametrize("stratified", [True, False])
def test_bootstrap_fast_path_equals_generic(stratified):
    """Pre-sorted weighted resampling gives the same replicates as resampling arrays."""
    y, s = _data("round2", 3, n=600)
    for name, fn in (("auroc", M.auroc), ("tpr@fpr1e-1", lambda a, b: M.tpr_at_fpr(a, b, 0.1))):
        fast = M.bootstrap_ci(y, s, name, n_boot=40, seed=9, stratified=stratified)
        slow = M.bootstrap_ci(y, s, fn, n_boot=40, seed=9, stratified=stratified)
        assert fast == pytest.approx(slow, abs=1e-12)
    dist = M.bootstrap_distribution(y, s, ["auprc"], n_boot=40, seed=9, stratified=stratified)
    assert dist["auprc"].shape == (40,) and np.isfinite(dist["auprc"]).all()
    slow = M.bootstrap_ci(y, s, M.auprc, n_boot=40, seed=9, stratified=stratified)
    assert np.percentile(dist["auprc"], [2.5, 97.5]) == pytest.approx(slow, abs=1e-12)


SUMMARY_KEYS = ["auroc", "auprc", "n_pos", "n_neg"]
for _name in [
    "tpr@fpr1e-5", "tpr@fpr1e-4", "tpr@fpr1e-3", "tpr@fpr1e-2",
    "fpr@tpr0.5", "fpr@tpr0.7", "fpr@tpr0.8", "fpr@tpr0.85",
    "fpr@tpr0.9", "fpr@tpr0.95", "fpr@tpr0.99",
]:  # fmt: skip
    SUMMARY_KEYS += [_name, f"{_name}_n_tp", f"{_name}_n_fp", f"{_name}_ci_lo", f"{_name}_ci_hi"]
SUMMARY_KEYS += ["tpr0", "tpr0_n_tp", "tpr10", "tpr10_n_tp"]


def test_summary_keys_types_and_json():
    y, s = _data("round2", 5, n=5000)
    out = M.summary(y, s, n_boot=50, seed=0)
    assert list(out) == SUMMARY_KEYS
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    for k, v in out.items():
        assert type(v) in (int, float), (k, type(v))
        assert math.isfinite(v)
        if k.endswith(("_n_tp", "_n_fp")) or k in ("n_pos", "n_neg"):
            assert type(v) is int, k
    assert out["auroc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    f2, t2, _ = skm.roc_curve(y, s, drop_intermediate=False)
    assert out["fpr@tpr0.85"] == _ref_fpr_at_tpr(f2, t2, 0.85)
    assert out["tpr@fpr1e-2"] == _ref_tpr_at_fpr(f2, t2, 1e-2)
    assert out["fpr@tpr0.85_n_fp"] == round(out["fpr@tpr0.85"] * out["n_neg"])
    for k in SUMMARY_KEYS:
        if k.endswith("_ci_lo"):
            assert out[k] <= out[k[: -len("_ci_lo")]] <= out[k[: -2] + "hi"], k
    # deterministic
    assert M.summary(y, s, n_boot=50, seed=0) == out
    # without bootstrap: same keys, intervals None, still JSON-safe
    out0 = M.summary(y, s, n_boot=0)
    assert list(out0) == SUMMARY_KEYS and out0["fpr@tpr0.9_ci_lo"] is None
    json.dumps(out0, allow_nan=False)


def test_metric_name():
    assert [M.metric_name("tpr@fpr", t) for t in (1e-5, 1e-4, 1e-3, 1e-2)] == [
        "tpr@fpr1e-5", "tpr@fpr1e-4", "tpr@fpr1e-3", "tpr@fpr1e-2"
    ]  # fmt: skip
    assert M.metric_name("tpr_at_fpr", 2.5e-3) == "tpr@fpr2.5e-3"
    assert [M.metric_name("fpr@tpr", t) for t in (0.5, 0.85, 0.99)] == [
        "fpr@tpr0.5", "fpr@tpr0.85", "fpr@tpr0.99"
    ]  # fmt: skip
    assert M.metric_name("tpr@nfp", 1) == "tpr0" and M.metric_name("tpr@nfp", 10) == "tpr10"
    with pytest.raises(ValueError):
        M.metric_name("precision", 0.5)


@pytest.mark.parametrize("n", [300, 50_000])
def test_roc_points_for_plot(n):
    y, s = _data("continuous", 2, n=n)
    pts = M.roc_points_for_plot(y, s, max_points=500)
    assert 2 < len(pts) <= 500
    json.dumps(pts, allow_nan=False)
    for p in pts:
        assert set(p) == {"fpr", "tpr", "threshold"}
        assert all(type(v) is float and math.isfinite(v) for v in p.values())
    assert (pts[0]["fpr"], pts[0]["tpr"]) == (0.0, 0.0)
    assert (pts[-1]["fpr"], pts[-1]["tpr"]) == (1.0, 1.0)
    assert pts[0]["threshold"] > s.max()
    fprs = np.array([p["fpr"] for p in pts])
    assert np.all(np.diff(fprs) >= 0)
    kept = {(p["fpr"], p["tpr"]) for p in pts}
    curve = M.compute_roc(y, s)
    for t in (1e-4, 1e-3, 1e-2):
        pt = curve.rate_at("tpr@fpr", t)
        assert (pt.fpr, pt.tpr) in kept
    if n > 1000:  # downsampled: low-FPR region still resolved
        assert np.sum((fprs >= 1e-4) & (fprs <= 1e-2)) >= 50


def test_wilson_interval():
    lo, hi = M.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2365931, abs=1e-6) and hi == pytest.approx(0.7634069, abs=1e-6)
    lo, hi = M.wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611251, abs=1e-6)


def test_stratified_table():
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.2, 0.8, 0.7, 0.1, 0.5, 0.3, 0.6])
    theta = np.array([0.5, 0.7, 1.5, 2.0, np.nan, np.nan, np.nan, np.nan])
    edges = [0.0, 1.0, 2.0, 3.0, 4.0]
    rows = M.stratified_table(y, s, theta, edges, {"hi": 0.75, "lo": 0.65, "none": math.inf})
    # bins [0,1) [1,2) [2,3) [3,4]; the NaN positive is left out, negatives ignored
    assert [r["n_pos_bin"] for r in rows] == [2, 1, 1, 0]
    assert rows[0]["hi_n_detected"] == 1 and rows[0]["hi_completeness"] == 0.5
    assert rows[1]["hi_n_detected"] == 1 and rows[1]["lo_n_detected"] == 1
    # theta = 2.0 falls in [2, 3); its score 0.7 is below 0.75 but above 0.65
    assert rows[2]["hi_n_detected"] == 0 and rows[2]["lo_n_detected"] == 1
    assert rows[2]["lo_completeness"] == 1.0
    lo, hi = M.wilson_interval(1, 2)
    assert (rows[0]["hi_ci_lo"], rows[0]["hi_ci_hi"]) == (lo, hi)
    assert rows[3]["hi_completeness"] is None and rows[3]["hi_ci_lo"] is None
    assert rows[0]["none_threshold"] is None and rows[0]["none_n_detected"] == 0
    # the upper edge of the last bin is included
    rows = M.stratified_table(y, s, np.r_[4.0, theta[1:]], edges, {"hi": 0.75})
    assert [r["n_pos_bin"] for r in rows] == [1, 1, 1, 1]
    rows = M.stratified_table(y, s, theta, edges, {"hi": 0.75})
    assert rows[0]["bin_mid"] == 0.5
    json.dumps(rows, allow_nan=False)


def test_per_group_auroc():
    y = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    s = np.array([0.9, 0.1, 0.2, 0.8, 0.7, 0.6, 0.5, 0.4])
    g = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    rows = M.per_group_auroc(y, s, g)
    assert [r["group"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[0] == {"group": "a", "n_pos": 1, "n_neg": 1, "auroc": 1.0}
    assert rows[1]["auroc"] == 0.0
    assert rows[2]["auroc"] is None and rows[2]["n_neg"] == 0
    assert rows[3]["auroc"] is None and rows[3]["n_pos"] == 0
    rows = M.per_group_auroc(y, s, np.array([1, 1, 1, 1, 2, 2, 2, 2]))
    assert type(rows[0]["group"]) is int
    assert rows[0]["auroc"] == pytest.approx(skm.roc_auc_score(y[:4], s[:4]))
    json.dumps(rows, allow_nan=False)


@pytest.mark.parametrize("frac_pos", [0.03, 0.97])
def test_class_imbalance_both_merge_directions(frac_pos):
    rng = np.random.default_rng(13)
    n = 3000
    y = (rng.random(n) < frac_pos).astype(np.int64)
    s = np.round(rng.normal(size=n) + y, 1)
    fpr, tpr, thr = M.roc_curve(y, s)
    f2, t2, th2 = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(fpr, f2)
    np.testing.assert_array_equal(tpr, t2)
    np.testing.assert_array_equal(thr, th2)
    fast = M.bootstrap_ci(y, s, "auroc", n_boot=20, seed=1)
    slow = M.bootstrap_ci(y, s, M.auroc, n_boot=20, seed=1)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_per_group_auroc_unorderable_groups():
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.1, 0.2, 0.8])
    rows = M.per_group_auroc(y, s, np.array([None, None, "x", "x"], dtype=object))
    assert [r["group"] for r in rows] == [None, "x"]
    assert [r["auroc"] for r in rows] == [1.0, 0.0]
