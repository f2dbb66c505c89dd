"""Per-impostor false-positive rates and AUROCs, the hard-negative gate and n_neg on synthetic scores."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from darkhaloscope.constants import IMPOSTOR_CLASSES
from darkhaloscope.evaluation import gates as G
from darkhaloscope.evaluation.report import impostor_metrics, val_thresholds


def _table(labels, scores, impostor=None) -> pa.Table:
    cols = {"label": np.asarray(labels, np.int64), "score": np.asarray(scores, np.float64)}
    if impostor is not None:
        cols["impostor"] = np.asarray(impostor).astype(str)
    return pa.table(cols)


def test_per_class_fpr_and_auroc_known_answer():
    # 100 positives scoring 0.80..0.99; 1000 ordinary negatives scoring < 0.5; rings 0.90 (half above
    # the threshold 0.895), pairs all 0.1, spirals all 0.999 (above every positive)
    pos = np.linspace(0.80, 0.99, 100)
    neg = np.linspace(0.0, 0.49, 1000)
    ring = np.r_[np.full(10, 0.90), np.full(10, 0.85)]
    pair, spiral = np.full(30, 0.1), np.full(5, 0.999)
    y = np.r_[np.ones(100), np.zeros(1000 + 20 + 30 + 5)]
    s = np.r_[pos, neg, ring, pair, spiral]
    imp = np.r_[["none"] * 1100, ["ring"] * 20, ["pair"] * 30, ["spiral"] * 5]
    out = impostor_metrics(_table(y, s, imp), {"fpr1e-2": 0.895})
    assert out["eval_n_neg"] == 1055 and out["min_resolvable_fpr"] == pytest.approx(1 / 1055)
    assert out["impostor_ring_n"] == 20 and out["impostor_ring_n_fp@fpr1e-2"] == 10
    assert out["impostor_ring_fpr@fpr1e-2"] == pytest.approx(0.5)
    assert out["impostor_pair_fpr@fpr1e-2"] == 0.0 and out["impostor_pair_auroc"] == pytest.approx(1.0)
    assert out["impostor_spiral_fpr@fpr1e-2"] == 1.0 and out["impostor_spiral_auroc"] == pytest.approx(0.0)
    # ring vs positives: 0.90 beats positives below 0.90 (53 of 100 are >= 0.9 ... computed directly)
    exp_ring = np.mean([(p > r) + 0.5 * (p == r) for p in pos for r in ring])
    assert out["impostor_ring_auroc"] == pytest.approx(exp_ring)
    for c in ("merger", "edge_on", "clumpy"):  # absent classes: counted 0, rates None
        assert out[f"impostor_{c}_n"] == 0 and out[f"impostor_{c}_fpr@fpr1e-2"] is None
        assert out[f"impostor_{c}_auroc"] is None
    hard = np.r_[ring, pair, spiral]
    exp_hard = np.mean([(p > h) + 0.5 * (p == h) for p in pos for h in hard])
    assert out["impostor_n"] == 55 and out["hard_negative_auroc"] == pytest.approx(exp_hard)


def test_thresholds_from_val_and_no_impostor_column():
    rng = np.random.default_rng(0)
    val = _table(np.r_[np.ones(500), np.zeros(5000)], np.r_[rng.uniform(0.3, 1, 500), rng.uniform(0, 0.7, 5000)])
    thr = val_thresholds(val)
    test = _table(np.r_[np.ones(50), np.zeros(200)], np.r_[np.full(50, 0.9), np.full(200, 0.2)])
    out = impostor_metrics(test, thr)  # a set made before the impostor column: no impostors
    assert all(out[f"impostor_{c}_n"] == 0 for c in IMPOSTOR_CLASSES)
    assert out["hard_negative_auroc"] is None and out["eval_n_neg"] == 200


def test_hard_negative_gate_threshold_and_not_computable():
    g = {"core_lr_auroc_max": 0.65, "radial_lr_auroc_max": 0.55, "core_masked_drop_max": 0.1,
         "hard_negative_auroc_min": 0.70}
    base = {"gate_core_lr_auroc": 0.5, "gate_radial_lr_auroc": 0.5, "gate_core_masked_drop": 0.0}
    ok = G.check({**base, "gate_hard_negative_auroc": 0.70}, g)
    assert ok["gate_hard_negative_auroc_passed"] and ok["gates_passed"]
    assert ok["gate_hard_negative_auroc_threshold"] == 0.70
    bad = G.check({**base, "gate_hard_negative_auroc": 0.69}, g)
    assert not bad["gate_hard_negative_auroc_passed"] and not bad["gates_passed"]
    assert any("gate_hard_negative_auroc failed: 0.690 (needs >= 0.7" in line for line in G.failed_gate_lines(bad))
    none = G.check({**base, "gate_hard_negative_auroc": None}, g)
    assert not none["gate_hard_negative_auroc_passed"]
