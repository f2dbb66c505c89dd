"""Shortcut gates (darkhaloscope.evaluation.gates, report.shortcut_gates) on synthetic data whose
answer is known, and the residual normalisation that removes the host's symmetric light."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from darkhaloscope.evaluation import gates as G
from darkhaloscope.evaluation import report as E
from darkhaloscope.model.preprocess import NormConfig, Preprocess, normalize, radial_median_residual

GATES = {"core_size": 10, "core_lr_auroc_max": 0.65, "radial_lr_auroc_max": 0.55, "mask_radius": 5,
         "mask_outer_radius": 16, "core_masked_drop_max": 0.10, "cv_folds": 5, "hard_negative_auroc_min": 0.70}
YY, XX = np.mgrid[0:64, 0:64]
R = np.hypot(YY - 32, XX - 32)
PHI = np.arctan2(YY - 32, XX - 32)


def _sample(n: int, signal, seed: int):
    """n stamps of unit noise; the first half (label 1) get ``signal(rng)`` added to every band."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, 3, 64, 64)).astype(np.float32)
    lab = (np.arange(n) < n // 2).astype(int)
    for i in np.flatnonzero(lab):
        x[i] += signal(rng)[None].astype(np.float32)
    return x, lab


def core_blob(rng):
    return 4.0 * np.exp(-0.5 * (R / 1.5) ** 2)


def arc_outside_core(rng):
    """An arc at r = 10-13 px over a random third of the circle (no flux within r = 7)."""
    r0, phi0 = rng.uniform(10, 13), rng.uniform(-np.pi, np.pi)
    dphi = np.angle(np.exp(1j * (PHI - phi0)))
    return 3.0 * np.exp(-0.5 * ((R - r0) / 1.0) ** 2) * (np.abs(dphi) < np.pi / 3)


def _core_auc(x, lab):
    return E.M.auroc(lab, G.cv_logistic_scores(G.core_pixels(normalize(x, NormConfig("outer")), 10), lab, 5, 0))


def _radial_auc(x, lab):
    return E.M.auroc(lab, G.cv_logistic_scores(G.radial_profiles(normalize(x, NormConfig("outer"))), lab, 5, 0))


def test_core_flux_signal_fails_the_core_gate():
    x, lab = _sample(200, core_blob, 0)
    auc = _core_auc(x, lab)
    assert auc > 0.95
    assert not G.check({"gate_core_lr_auroc": auc}, GATES)["gate_core_lr_auroc_passed"]


def test_arc_outside_the_core_passes_the_core_gate():
    x, lab = _sample(200, arc_outside_core, 1)
    auc = _core_auc(x, lab)
    assert auc < 0.65
    assert G.check({"gate_core_lr_auroc": auc}, GATES)["gate_core_lr_auroc_passed"]


def test_radial_gate_sees_a_symmetric_ring_but_not_noise():
    ring = lambda rng: 1.0 * np.exp(-0.5 * ((R - 9.0) / 1.5) ** 2)  # noqa: E731
    x, lab = _sample(200, ring, 2)
    assert _radial_auc(x, lab) > 0.9
    x, lab = _sample(200, lambda rng: np.zeros((64, 64)), 3)
    assert 0.35 < _radial_auc(x, lab) < 0.65


def test_radial_profiles_hand_check():
    x = np.zeros((1, 1, 64, 64), np.float32)
    x[0, 0] = np.rint(R)  # each pixel holds its own ring number
    prof = G.radial_profiles(x)
    assert prof.shape == (1, 32)
    np.testing.assert_allclose(prof[0], np.arange(32))


def test_core_pixels_cover_the_centre():
    x = np.zeros((1, 3, 64, 64), np.float32)
    x[0, :, 27:37, 27:37] = 1.0
    f = G.core_pixels(x, 10)
    assert f.shape == (1, 300) and f.sum() == 300
    with pytest.raises(ValueError, match="does not fit"):
        G.core_pixels(x, 65)


def test_mask_core_draws_from_the_stamps_own_outer_annulus():
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (3, 3, 64, 64)).astype(np.float32)
    x[:, :, R < 5] = 1000.0  # a bright core
    m = G.mask_core(x, 5, 16, seed=7)
    inner, outer = R < 5, R >= 16
    assert (m[:, :, ~inner] == x[:, :, ~inner]).all()  # nothing else touched
    for b in range(3):
        for c in range(3):
            assert np.isin(m[b, c, inner], x[b, c, outer]).all()
    assert (m[:, :, inner] < 100).all()
    np.testing.assert_array_equal(m, G.mask_core(x, 5, 16, seed=7))  # deterministic
    assert not np.array_equal(m, G.mask_core(x, 5, 16, seed=8))


def test_check_reports_values_thresholds_and_one_flag():
    rep = G.check({"gate_core_lr_auroc": 0.5, "gate_radial_lr_auroc": 0.5, "gate_core_masked_drop": 0.01,
                   "gate_hard_negative_auroc": 0.9}, GATES)
    assert rep["gates_passed"] and rep["gate_core_lr_auroc_threshold"] == 0.65
    assert not G.failed_gate_lines(rep)
    rep = G.check({"gate_core_lr_auroc": 0.9, "gate_radial_lr_auroc": None, "gate_core_masked_drop": 0.01,
                   "gate_hard_negative_auroc": 0.9}, GATES)
    assert not rep["gates_passed"] and rep["gate_radial_lr_auroc"] is None
    lines = G.failed_gate_lines(rep)
    assert len(lines) == 2 and "0.900 (needs < 0.65, gates.core_lr_auroc_max)" in lines[0]
    assert "not computable" in lines[1]


class _ApertureModel(nn.Module):
    """A 'CNN' whose logit is the mean normalised flux inside an aperture mask (64 x 64)."""

    def __init__(self, mask: np.ndarray):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)  # unused; models have parameters
        self.register_buffer("mask", torch.from_numpy(mask.astype(np.float32)))

    def forward(self, x, meta=None):
        return (x * self.mask).sum(dim=(1, 2, 3)) / self.mask.sum() * 3.0


@pytest.mark.parametrize("signal,aperture,fails", [(core_blob, R < 4, True), (arc_outside_core, (R > 9) & (R < 14), False)])
def test_core_masked_drop_through_shortcut_gates(monkeypatch, signal, aperture, fails):
    """A model that reads only the core loses its AUROC when the core is masked (gate fails); one
    that reads the arc annulus does not (gate passes)."""
    x, lab = _sample(160, signal, 5)
    pre = Preprocess(NormConfig("outer", 16, (-10.0, 10.0)), 3)
    monkeypatch.setattr(E, "model_from_checkpoint", lambda path: (_ApertureModel(aperture), pre))
    rep = E.shortcut_gates("unused.pt", {"stamp": x}, lab, GATES, seed=0)
    assert (not rep["gate_core_masked_drop_passed"]) == fails, rep
    if fails:
        assert rep["gate_core_masked_drop"] > 0.3 and rep["cnn_core_masked_auroc"] < 0.7
        assert not rep["gate_core_lr_auroc_passed"]
    else:
        assert abs(rep["gate_core_masked_drop"]) < 0.05 and rep["gate_core_lr_auroc_passed"]
    for k in ("core_lr_tpr@fpr1e-2", "core_lr_tpr@fpr1e-3", "radial_lr_auroc", "cnn_core_masked_tpr@fpr1e-2"):
        assert k in rep


def test_shortcut_gates_take_stage_score_logits_and_score_only_the_missing_rows(monkeypatch):
    """Given stage score's logits the unmasked pass is not recomputed (NaN rows are): the same gates
    as computing them all here; a wrong logit vector changes the masked drop, a wrong length is refused."""
    x, lab = _sample(160, core_blob, 5)
    pre = Preprocess(NormConfig("outer", 16, (-10.0, 10.0)), 3)
    model = _ApertureModel(R < 4)
    monkeypatch.setattr(E, "model_from_checkpoint", lambda path: (model, pre))
    ref = E.shortcut_gates("unused.pt", {"stamp": x}, lab, GATES, seed=0)
    from darkhaloscope.model.inference import predict_arrays

    lg = predict_arrays(model, pre, x, None, None)
    part = lg.copy()
    part[::3] = np.nan
    for given in (lg, part):
        assert E.shortcut_gates("unused.pt", {"stamp": x}, lab, GATES, seed=0, logits=given) == ref
    flipped = E.shortcut_gates("unused.pt", {"stamp": x}, lab, GATES, seed=0, logits=-lg)
    assert flipped["gate_core_masked_drop"] != ref["gate_core_masked_drop"]
    with pytest.raises(ValueError, match="159 logits for 160 rows"):
        E.shortcut_gates("unused.pt", {"stamp": x}, lab, GATES, seed=0, logits=lg[1:])


def test_logits_of_aligns_by_sample_id_with_nan_for_absent_ids():
    t = pa.table({"sample_id": pa.array([30, 10, 20], pa.int64()), "logit": pa.array([3.0, 1.0, 2.0], pa.float32())})
    got = E.logits_of(t, [20, 99, 10, 30], "scores/test.parquet")
    np.testing.assert_array_equal(got[[0, 2, 3]], np.float32([2.0, 1.0, 3.0]))
    assert np.isnan(got[1]) and got.dtype == np.float32
    assert np.isnan(E.logits_of(t.slice(0, 0), [1, 2], "x")).all()
    with pytest.raises(ValueError, match="scores/test.parquet: column.*logit"):
        E.logits_of(t.drop(["logit"]), [10], "scores/test.parquet")


# ----------------------------------------------------------------------------- residual normalisation


def _sersic_like(re_pix: float, n: float, q: float = 1.0) -> np.ndarray:
    """A symmetric (q = 1), pixel-integrated (4x4 sub-pixels) profile, peak-normalised."""
    sub = (np.arange(256) + 0.5) / 4 - 32.5  # pixel i spans [i - 32.5, i - 31.5): centred on pixel 32
    yy, xx = np.meshgrid(sub, sub, indexing="ij")
    rr = np.hypot(xx, yy / q)
    img = np.exp(-2.0 * n * ((rr / re_pix) ** (1.0 / n) - 1.0)).reshape(64, 4, 64, 4).mean(axis=(1, 3))
    return (img / img.max()).astype(np.float32)


@pytest.mark.parametrize("re_pix,n", [(2.0, 4.0), (4.0, 4.0), (6.0, 1.0), (1.5, 2.0), (10.0, 1.0)])
def test_residual_of_a_symmetric_profile_is_near_zero(re_pix, n):
    prof = 100.0 * _sersic_like(re_pix, n)
    res = radial_median_residual(prof.reshape(1, -1), 64, 64)
    assert np.abs(res).max() < 0.005 * prof.max()  # below 0.5% of the peak everywhere
    assert np.abs(res[0].reshape(64, 64)[R <= 6]).max() < 1e-5 * prof.max()  # exact where it is steepest


def test_residual_keeps_an_arc_and_the_recipe_uses_it():
    host = 50.0 * _sersic_like(3.0, 4.0)
    rng = np.random.default_rng(6)
    arc = arc_outside_core(rng).astype(np.float32)
    res = radial_median_residual((host + arc).reshape(1, -1), 64, 64).reshape(64, 64)
    on = arc > 0.5
    assert np.allclose(res[on], arc[on], atol=0.3)  # the arc survives
    noise = rng.normal(0, 0.1, (2, 3, 64, 64)).astype(np.float32)
    x = noise + host[None, None]
    z = normalize(x, NormConfig("residual", 16))
    zn = normalize(noise, NormConfig("outer", 16))
    assert np.abs(z[:, :, R < 5]).max() < 5.0  # no bright core left: within the noise's own range
    assert np.abs(z[:, :, R < 5]).max() < 1.5 * np.abs(zn[:, :, R < 5]).max() + 1.0
    assert normalize(x, NormConfig("outer", 16))[:, :, R < 3].min() == 10.0  # outer alone: clipped core
