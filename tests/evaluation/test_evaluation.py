"""Tests of darkhaloscope.evaluation.report (shortcut audit, known-lens recall, stratified completeness)
and darkhaloscope.evaluation.saliency.grad_cam, on hand-made inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn as nn

from darkhaloscope.evaluation import report as E
from darkhaloscope.model.preprocess import NormConfig, Preprocess
from darkhaloscope.evaluation.saliency import grad_cam

# ----------------------------------------------------------------------------- shortcut audit


def test_shortcut_auroc_chance_on_independent_features():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 600)
    feats = rng.normal(size=(600, 7))
    auc = E.shortcut_auroc(labels, feats, seed=1)
    assert abs(auc - 0.5) < 0.08


def test_shortcut_auroc_perfect_when_a_feature_is_the_label():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    feats = np.column_stack([rng.normal(size=200), labels.astype(float), rng.normal(size=200)])
    assert E.shortcut_auroc(labels, feats) > 0.99
    # a feature that merely correlates gives something in between
    weak = np.column_stack([labels + rng.normal(0, 1.0, 200)])
    assert 0.65 < E.shortcut_auroc(labels, weak) < 0.95


def test_shortcut_auroc_needs_five_per_class():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert E.shortcut_auroc(labels, np.arange(10.0)[:, None]) is None


def test_trivial_features_hand_check():
    rng = np.random.default_rng(2)
    st = rng.normal(0.0, 1.0, (2, 3, 64, 64)).astype(np.float32)
    # stamp 0: clean values in band r (index 1) on and just off the core aperture (r <= 4 px)
    st[0, 1] = 0.0
    st[0, 1, 32, 32] = 5.0   # centre
    st[0, 1, 32, 36] = 2.0   # r = 4: inside
    st[0, 1, 35, 35] = 7.0   # r = 4.24: outside
    st[0, 1, 10, 10] = 3.0   # far away
    # stamp 1: 6 hugely bright pixels in band g: exactly these are clipped
    st[1, 0, 0, :6] = 1e4
    norm = NormConfig("full", 16, (-10.0, 10.0))
    f = E.trivial_features(st, Preprocess(norm))
    assert f.shape == (2, 7)  # core flux g,r,z; total flux g,r,z; clipped fraction
    yy, xx = np.mgrid[0:64, 0:64]
    core = (yy - 32) ** 2 + (xx - 32) ** 2 <= 16
    assert core.sum() == 49
    assert f[0, 1] == pytest.approx(7.0)
    assert f[0, 4] == pytest.approx(17.0)
    for b in range(3):
        assert f[1, b] == pytest.approx(st[1, b][core].sum(), rel=1e-5)
        assert f[1, 3 + b] == pytest.approx(st[1, b].sum(), rel=1e-5)
    assert f[1, 6] == pytest.approx(6 / (3 * 64 * 64))
    # stamp 0's band r has MAD 0: its non-zero pixels are clipped, nothing else in noise is
    assert f[0, 6] == pytest.approx(4 / (3 * 64 * 64))


# ----------------------------------------------------------------------------- known lenses


def test_known_lens_recall_hand_thresholds():
    known = pa.table({"score": [0.1, 0.5, 0.9, 0.95]})
    thr = {"fpr1e-2": 0.5, "fpr1e-3": 0.9, "fpr1e-4": math.inf}
    out = E.known_lens_recall(known, thr)
    assert out == {
        "known_n": 4,
        "known_recall@fpr1e-2": 0.75, "known_recall@fpr1e-2_n_found": 3,
        "known_recall@fpr1e-3": 0.5, "known_recall@fpr1e-3_n_found": 2,
        "known_recall@fpr1e-4": 0.0, "known_recall@fpr1e-4_n_found": 0,
    }
    empty = E.known_lens_recall(pa.table({"score": pa.array([], pa.float64())}), thr)
    assert empty["known_n"] == 0 and empty["known_recall@fpr1e-3"] is None


def test_val_thresholds_realise_the_fpr():
    neg = np.linspace(0.0, 0.999, 1000)
    val = pa.table({"label": np.r_[np.zeros(1000, np.int8), np.ones(10, np.int8)],
                    "score": np.r_[neg, np.full(10, 0.9995)]})
    thr = E.val_thresholds(val, targets=(1e-2, 1e-3))
    assert set(thr) == {"fpr1e-2", "fpr1e-3"}
    # 10 negatives (1e-2) score >= the fpr1e-2 threshold, 1 (1e-3) >= the fpr1e-3 one
    assert (neg >= thr["fpr1e-2"]).sum() == 10 and (neg >= thr["fpr1e-3"]).sum() == 1


# ----------------------------------------------------------------------------- stratified completeness


def test_stratified_rows_bins():
    # positives: theta_E 0.6 (x2), 1.1, 2.5 (the last edge is inclusive); one negative is ignored
    labels = np.array([1, 1, 1, 1, 0], np.int8)
    scores = np.array([0.9, 0.2, 0.95, 0.6, 0.99])
    test = pa.table({
        "label": labels, "score": scores,
        "theta_e_arcsec": [0.6, 0.6, 1.1, 2.5, 0.0],
        "theta_e_over_psf": [0.3, 0.6, 1.0, 3.0, 0.0],
        "arc_snr": [4.0, 2.0, 60.0, 8.0, 0.0],
    })
    rows = E.stratified_rows(test, {"fpr1e-3": 0.5})
    by = {s: [r for r in rows if r["stratum"] == s] for s in ("theta_e_arcsec", "theta_e_over_psf", "arc_snr")}
    assert [len(v) for v in by.values()] == [len(E.THETA_BINS) - 1, len(E.RES_BINS) - 1, len(E.SNR_BINS) - 1]
    th = by["theta_e_arcsec"]
    assert [r["bin_lo"] for r in th] == list(E.THETA_BINS[:-1])
    assert [r["n_pos_bin"] for r in th] == [2, 0, 1, 0, 0, 0, 1]
    assert th[0]["fpr1e-3_n_detected"] == 1 and th[0]["fpr1e-3_completeness"] == 0.5
    assert th[1]["fpr1e-3_completeness"] is None
    assert th[2]["fpr1e-3_completeness"] == 1.0 and th[6]["fpr1e-3_completeness"] == 1.0
    assert th[0]["fpr1e-3_ci_lo"] < 0.5 < th[0]["fpr1e-3_ci_hi"]
    res = by["theta_e_over_psf"]
    assert [r["n_pos_bin"] for r in res] == [1, 1, 0, 1, 0, 0, 1]
    snr = by["arc_snr"]
    assert [r["n_pos_bin"] for r in snr] == [1, 1, 0, 1, 0, 0, 1]
    assert snr[0]["fpr1e-3_n_detected"] == 0 and snr[1]["fpr1e-3_n_detected"] == 1
    # a missing stratum column is skipped, not an error
    rows2 = E.stratified_rows(test.drop_columns(["arc_snr"]), {"fpr1e-3": 0.5})
    assert {r["stratum"] for r in rows2} == {"theta_e_arcsec", "theta_e_over_psf"}


# ----------------------------------------------------------------------------- Grad-CAM


class BandBlobModel(nn.Module):
    """One 3x3 stride-2 conv: channel 0 averages band g, channel 1 averages band z.
    The logit is the sum of ReLU(channel 0) over a region: evidence only from band g there."""

    def __init__(self, region: tuple[slice, slice]):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, stride=2, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0 / 9
            self.conv.weight[1, 2] = 1.0 / 9
        self.mask = torch.zeros(32, 32)
        self.mask[region] = 1.0

    def forward(self, x, meta=None):
        a = torch.relu(self.conv(x))
        return (a[:, 0] * self.mask).sum(dim=(1, 2))


def blob(y: float, x: float, amp: float = 10.0, sigma: float = 1.5) -> np.ndarray:
    yy, xx = np.mgrid[0:64, 0:64]
    return amp * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / sigma**2)


def test_grad_cam_peaks_at_the_blob_the_logit_uses():
    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(0, 0.1, (2, 3, 64, 64))).astype(np.float32)
    x[0, 0] += blob(40, 20)   # sample 0: g-band blob inside the region the logit sums
    x[0, 2] += blob(12, 50)   # and a brighter z-band blob the logit ignores
    x[0, 2] += blob(12, 50)
    x[1, 0] += blob(24, 24)   # sample 1: g-band blob elsewhere in the region
    model = BandBlobModel((slice(8, 28), slice(4, 20)))  # conv pixels 8..27 x 4..19 = image 16..55 x 8..39
    cams = grad_cam(model, torch.from_numpy(x))
    assert cams.shape == (2, 64, 64)
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    assert np.allclose(cams.reshape(2, -1).max(axis=1), 1.0)
    for i, (by, bx) in enumerate([(40, 20), (24, 24)]):
        py, px = np.unravel_index(np.argmax(cams[i]), (64, 64))
        assert abs(py - by) <= 2 and abs(px - bx) <= 2, (i, py, px)
    assert cams[0, 12, 50] < 0.05  # the ignored z-band blob gets no saliency
    # hooks are removed and no gradient is left behind
    assert not model.conv._forward_hooks and model.conv.weight.grad is None


def test_grad_cam_is_zero_without_positive_evidence_and_needs_a_conv():
    model = BandBlobModel((slice(0, 32), slice(0, 32)))
    x = torch.zeros(1, 3, 64, 64)
    x[0, 2, 30:34, 30:34] = 5.0  # only the ignored band is bright: zero gradient weight
    cams = grad_cam(model, x)
    assert cams.shape == (1, 64, 64) and (cams == 0).all()

    class NoConv(nn.Module):
        def forward(self, x, meta=None):
            return x.sum(dim=(1, 2, 3))

    with pytest.raises(RuntimeError, match="no Conv2d"):
        grad_cam(NoConv(), x)


def test_grad_cam_on_a_real_small_cnn():
    from darkhaloscope.model.nets import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", 3, 0.0, 0, 8)
    x = torch.randn(3, 3, 64, 64)
    cams = grad_cam(model, x)
    assert cams.shape == (3, 64, 64) and np.isfinite(cams).all()
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    assert not model.training  # grad_cam puts the model in eval mode (BatchNorm running stats untouched)


def test_a_stamp_set_without_known_lenses_scores_and_reports_known_n_0(tmp_path):
    """No known/ directory (the seeds' data) or an empty one: an empty score table, known_n 0."""
    import _stamps as S
    from darkhaloscope.model.score import score_known_files

    table, summary = score_known_files("never-read.pt", [])
    assert table.num_rows == 0 and summary["kept"] == 0
    assert set(table.column_names) == {"sample_id", "label", "logit", "score"}
    empty = S.make_stamp_file(tmp_path / "known" / "part-00000.parquet", 0).path
    table, summary = score_known_files("never-read.pt", [empty])
    assert table.num_rows == 0 and summary["n_files"] == 1
    rec = E.known_lens_recall(table, {"fpr1e-3": 0.5})
    assert rec["known_n"] == 0 and rec["known_recall@fpr1e-3"] is None
