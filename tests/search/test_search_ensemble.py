"""Ensembles of the search: calibration, the combined score and evaluate's metrics (darkhaloscope.search.ensemble)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

import _searchdata as SD
from darkhaloscope import metrics as M
from darkhaloscope.model.score import score_files
from darkhaloscope.search import ensemble as EN

pytestmark = pytest.mark.usefixtures("cpu_only")


def test_normalised_ranks_are_mid_ranks():
    assert EN.normalised_ranks(np.array([1.0, 2.0, 2.0, 3.0])).tolist() == [0.125, 0.5, 0.5, 0.875]
    ref = np.array([0.0, 1.0, 2.0, 3.0])
    assert EN.normalised_ranks(np.array([-1.0, 1.0, 10.0]), ref).tolist() == [0.0, 0.375, 1.0]


def test_mean_prob_is_the_mean_of_the_calibrated_members():
    logits = np.array([[0.0, 2.0], [-1.0, 1.0]], np.float32)
    platt = [(2.0, 0.5), (1.0, -1.0)]
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    want = [(sig(0.5) + sig(1.0)) / 2, (sig(-1.5) + sig(0.0)) / 2]
    np.testing.assert_allclose(EN.combine(logits, platt, "mean_prob"), want, rtol=1e-12)


def test_rank_mean_ignores_how_each_member_scales_its_logits():
    rng = np.random.default_rng(0)
    L = rng.normal(size=(50, 2)).astype(np.float32)
    warped = np.column_stack([L[:, 0] * 7 + 3, np.exp(L[:, 1])]).astype(np.float32)
    a = EN.combine(L, [(1, 0)] * 2, "rank_mean")
    b = EN.combine(warped, [(5, 1)] * 2, "rank_mean")
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="search.combine"):
        EN.combine(L, [(1, 0)] * 2, "median")


def test_one_member_probability_is_its_calibration():
    rng = np.random.default_rng(1)
    y = (rng.uniform(size=400) < 0.5).astype(np.int8)
    lv = (rng.normal(size=(400, 1)) + 1.5 * y[:, None]).astype(np.float32)
    platt = EN.fit_calibrations(y, lv)
    ens = EN.fit_ensemble_calibration(y, lv, platt)
    np.testing.assert_allclose(ens, (1.0, 0.0), atol=1e-6)
    np.testing.assert_allclose(EN.ensemble_probability(lv, platt, ens), M.apply_platt(lv[:, 0], *platt[0]), atol=1e-9)


def _two_members(n=4000, seed=0):
    """Two members that each see half of a lens's evidence: their mean sees it all."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int8)
    a, b = rng.normal(size=n), rng.normal(size=n)
    L = np.column_stack([a + 1.6 * y, b + 1.6 * y]).astype(np.float32)
    return y, L


def test_ensemble_metrics_next_to_each_member_with_counts_and_intervals():
    val, test = _two_members(seed=1), _two_members(seed=2)
    out = EN.ensemble_test_metrics(val, test, "mean_prob", n_boot=50, seed=3)
    assert out["ensemble_members"] == 2
    for pre in ("ensemble", "member_0", "member_1"):
        for k in ("auroc", "auroc_ci_lo", "auroc_ci_hi", "n_pos", "n_neg", "tpr@fpr1e-3", "tpr@fpr1e-3_n_tp",
                  "tpr@fpr1e-3_n_fp", "tpr@fpr1e-3_ci_lo", "tpr@fpr1e-3_ci_hi", "tpr@fpr1e-2"):
            assert f"{pre}_{k}" in out, f"{pre}_{k}"
    y, L = test
    ens = EN.combine(L, EN.fit_calibrations(*val), "mean_prob")
    assert out["ensemble_auroc"] == pytest.approx(M.auroc(y, ens))
    assert out["member_1_tpr@fpr1e-2"] == pytest.approx(M.tpr_at_fpr(y, L[:, 1], 1e-2))
    assert out["ensemble_auroc"] > max(out["member_0_auroc"], out["member_1_auroc"])
    best = out["ensemble_best_member"]
    assert out["ensemble_best_member_tpr@fpr1e-3"] == out[f"member_{best}_tpr@fpr1e-3"]
    assert out["ensemble_minus_best_member_tpr@fpr1e-3"] == pytest.approx(
        out["ensemble_tpr@fpr1e-3"] - out[f"member_{best}_tpr@fpr1e-3"])
    assert out["ensemble_beats_best_member@fpr1e-3"] is (out["ensemble_minus_best_member_tpr@fpr1e-3"] > 0)
    lo, hi = out["ensemble_minus_best_member_tpr@fpr1e-3_ci_lo"], out["ensemble_minus_best_member_tpr@fpr1e-3_ci_hi"]
    assert lo <= hi
    json.dumps(out, allow_nan=False)


def test_an_ensemble_of_a_member_and_noise_does_not_beat_the_member():
    rng = np.random.default_rng(5)
    y = (np.arange(3000) % 2).astype(np.int8)
    good = rng.normal(size=3000) + 3.0 * y
    L = np.column_stack([good, rng.normal(size=3000)]).astype(np.float32)
    out = EN.ensemble_test_metrics((y, L), (y, L), "rank_mean", n_boot=30, seed=0)
    assert out["ensemble_best_member"] == 0
    assert out["ensemble_auroc"] < out["member_0_auroc"]
    assert out["ensemble_beats_best_member@fpr1e-3"] is False


def test_align_keeps_the_rows_every_member_scored_and_counts_the_rest():
    t0 = pa.table({"sample_id": [3, 1, 2], "label": pa.array([1, 0, 1], pa.int8()), "logit": pa.array([.3, .1, .2],
                                                                                                      pa.float32())})
    t1 = pa.table({"sample_id": [2, 3, 4], "label": pa.array([1, 1, 0], pa.int8()), "logit": pa.array([2., 3., 4.],
                                                                                                      pa.float32())})
    ids, y, L, left = EN.align([t0, t1], "val")
    assert ids.tolist() == [2, 3] and y.tolist() == [1, 1] and left == 2
    np.testing.assert_allclose(L, [[0.2, 2.0], [0.3, 3.0]])
    bad = t1.set_column(1, "label", pa.array([0, 1, 0], pa.int8()))
    with pytest.raises(ValueError, match="disagree"):
        EN.align([t0, bad], "val")


def test_one_model_reports_one_member_only(shipped_params_raw):
    p = dict(shipped_params_raw)
    assert EN.evaluation_metrics(p, None, None, "/nonexistent") == {"ensemble_members": 1}


def test_members_resolve_and_refuse_a_repeated_model(tmp_path, monkeypatch):
    a = SD.checkpoint(tmp_path / "a.pt")
    b = SD.checkpoint(tmp_path / "b.pt", seed=1)
    m = EN.resolve_members([a, b], str(tmp_path))
    assert [x.index for x in m] == [0, 1] and m[0].sha256 == EN.file_sha256(a) != m[1].sha256
    (tmp_path / "c.pt").write_bytes((tmp_path / "a.pt").read_bytes())
    with pytest.raises(ValueError, match=r"search.models\[1\].*same checkpoint bytes as search.models\[0\]"):
        EN.resolve_members([a, str(tmp_path / "c.pt")], str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"search.models\[1\] 'gen9': neither a file nor a revision"):
        EN.resolve_members([a, "gen9"], str(tmp_path))


def test_evaluation_metrics_score_every_member_on_val_and_test(tmp_path, shipped_params_raw, monkeypatch):
    data = SD.stamp_set(tmp_path / "set")
    a = SD.checkpoint(tmp_path / "a.pt")
    b = SD.checkpoint(tmp_path / "b.pt", seed=1)
    monkeypatch.chdir(tmp_path)
    os.makedirs("data/model")
    os.replace(a, "data/model/best.pt")
    p = SD.params(shipped_params_raw, models=["data/model/best.pt", str(b)])
    val, _ = score_files("data/model/best.pt", [data["val"]])
    test, _ = score_files("data/model/best.pt", [data["test"]])
    calls = []
    real = EN.member_split_scores

    def spy(members, files, current_table, current=EN.CURRENT_MODEL):
        calls.append([EN.is_current(m, current) for m in members])
        return real(members, files, current_table, current)

    monkeypatch.setattr(EN, "member_split_scores", spy)
    out = EN.evaluation_metrics(p, val, test, str(tmp_path / "set"), n_boot=20, seed=1)
    assert calls == [[True, False], [True, False]]  # the current model's scores are stage score's
    assert out["ensemble_members"] == 2 and out["ensemble_rows_left_out"] == 0
    assert out["ensemble_n_pos"] == out["member_1_n_pos"] == 24
    t1, _ = score_files(str(b), [data["test"]])
    assert out["member_1_auroc"] == pytest.approx(M.auroc(t1.column("label").to_numpy(), t1.column("logit").to_numpy()))
