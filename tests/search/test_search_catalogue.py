"""The candidate catalogue, ranks, known-lens cross-match and purity (darkhaloscope.search.catalogue),
and the inspection page's files (darkhaloscope.search.inspect)."""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

import _searchdata as SD
import _stamps as S
from darkhaloscope.model.preprocess import radial_median_residual
from darkhaloscope.search import catalogue as C
from darkhaloscope.search import inspect as I
from darkhaloscope.search.ensemble import Member

pytestmark = pytest.mark.usefixtures("cpu_only")


def test_rank_order_is_total_and_breaks_ties_by_probability_then_source_then_id():
    ens = np.array([0.5, 0.9, 0.5, 0.5, 0.5])
    prob = np.array([0.4, 0.1, 0.6, 0.4, 0.4])
    code = np.array([1, 0, 0, 0, 1], np.int8)
    key = np.array([7, 3, 9, 8, 2], np.int64)
    assert C.rank_order(ens, prob, code, key).tolist() == [1, 2, 3, 4, 0]


def test_purity_from_the_test_roc_at_the_stated_prevalence():
    y = np.array([1] * 10 + [0] * 100)
    s = np.r_[np.linspace(0.5, 1.0, 10), np.linspace(0.0, 0.95, 100)]
    out = C.purity_at(y, s, 0.9, 1e-3, 1_000_000, n_boot=100, seed=0)
    tp, fp = int((s[:10] >= 0.9).sum()), int((s[10:] >= 0.9).sum())
    tpr, fpr = tp / 10, fp / 100
    assert (out["test_tpr_n_tp"], out["test_fpr_n_fp"]) == (tp, fp) and fp > 0
    assert out["purity"] == pytest.approx(1e-3 * tpr / (1e-3 * tpr + (1 - 1e-3) * fpr))
    assert out["purity_wilson_lo"] < out["purity"] and out["purity_ci_lo"] <= out["purity"] <= out["purity_ci_hi"]
    # the interval is the stratified bootstrap's: the same draws by hand
    rng = np.random.default_rng(0)
    pos, neg, vals = np.flatnonzero(y == 1), np.flatnonzero(y == 0), []
    for _ in range(100):
        i = np.r_[pos[rng.integers(0, 10, 10)], neg[rng.integers(0, 100, 100)]]
        t, f = (s[i][y[i] == 1] >= 0.9).mean(), (s[i][y[i] == 0] >= 0.9).mean()
        if 1e-3 * t + (1 - 1e-3) * f > 0:
            vals.append(1e-3 * t / (1e-3 * t + (1 - 1e-3) * f))
    assert (out["purity_ci_lo"], out["purity_ci_hi"]) == pytest.approx(tuple(np.percentile(vals, [2.5, 97.5])))
    assert out["expected_lenses_above_min_score"] == pytest.approx(1e6 * 1e-3 * tpr)
    nothing = C.purity_at(y, s, 2.0, 1e-3, 10, n_boot=10)
    assert nothing["purity"] is None and nothing["test_tpr_n_tp"] == 0


def test_known_matcher_reports_the_nearest_lens_within_the_radius():
    ref = {"ra": np.array([150.0, 150.01]), "dec": np.array([1.0, 1.0])}
    m = C.KnownMatcher(ref, 5.0)
    idx, sep = m.nearest(np.array([150.0, 150.0099, 151.0]), np.array([1.0 + 2 / 3600, 1.0, 1.0]))
    assert idx.tolist() == [0, 1, -1]
    assert sep[0] == pytest.approx(2.0, abs=1e-6) and np.isnan(sep[2])
    none = C.KnownMatcher({"ra": np.zeros(0), "dec": np.zeros(0)}, 5)
    assert none.nearest(np.ones(2), np.ones(2))[0].tolist() == [-1, -1]


def test_known_lens_ranks_take_the_nearest_scored_row():
    first = {"kl": np.array([0, 0, -1, 1], np.int32), "sep": np.array([3.0, 0.1, np.nan, 1.0]),
             "code": np.array([0, 2, 0, 1], np.int8)}
    ranked = {"rank": np.array([1, 9, 2, 4]), "ensemble": np.array([.9, .1, .8, .5]),
              "probability": np.array([.9, .1, .8, .5])}
    ref = {"name": np.array(["L0", "L1"]), "grade": np.array(["confident", ""]), "type": np.array(["galaxy", ""])}
    out = C.known_lens_ranks(first, ranked, ref, np.array([True, False, True, True]), top_k=5)
    assert [(r["name"], r["rank"], r["source"], r["in_candidates"], r["on_page"]) for r in out] == \
        [("L1", 4, "cut", True, True), ("L0", 9, "known", False, False)]


def _candidates(n=4):
    return pa.table({"rank": pa.array(np.arange(1, n + 1), pa.int64()), "source": ["parent", "cut", "known", "cut"][:n],
                     "sample_id": pa.array([2**62 + 1, 5, 6, 7][:n], pa.int64()),
                     "row_id": pa.array([11, 12, -1, 14][:n]),
                     "split": ["train", "val", "known", "test"][:n], "brickname": ["1500p005"] * n,
                     "objid": pa.array([1, 2, -1, 4][:n]), "ra": [150.0, 150.1, 150.2, 150.3][:n],
                     "dec": [0.5, 0.6, 0.7, 0.8][:n], "logit_0": pa.array([2.0, 1.0, 0.5, 0.1][:n], pa.float32()),
                     "prob_0": [0.9, 0.8, 0.7, 0.6][:n], "ensemble_score": [0.9, 0.8, 0.7, 0.6][:n],
                     "probability": [0.91, 0.81, 0.71, 0.61][:n], "known_name": ["", "MOCK-1, \"x\"", "", ""][:n],
                     "known_grade": ["", "confident", "", ""][:n], "known_type": [""] * n,
                     "known_reference": [""] * n, "known_sep_arcsec": [np.nan, 0.25, np.nan, np.nan][:n]})


def test_the_catalogue_formats_hold_the_same_rows_and_bytes_repeat(tmp_path):
    t = _candidates()
    members = [Member(0, "data/model/best.pt", "data/model/best.pt", "ab" * 32)]
    for d in ("a", "b"):
        os.makedirs(tmp_path / d)
        C.write_catalogue(t, str(tmp_path / d), members, {"combine": "mean_prob", "minscore": 0.9, "topk": 2})
    for ext in ("parquet", "fits", "csv"):
        a, b = (tmp_path / d / f"candidates.{ext}" for d in ("a", "b"))
        assert a.read_bytes() == b.read_bytes(), ext
    pqt = pq.read_table(tmp_path / "a" / "candidates.parquet")
    assert pqt.column("sample_id").to_pylist()[0] == 2**62 + 1
    with open(tmp_path / "a" / "candidates.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"] and rows[1]["known_name"] == 'MOCK-1, "x"'
    assert int(rows[0]["sample_id"]) == 2**62 + 1 and rows[0]["known_sep_arcsec"] == ""
    assert float(rows[1]["ra"]) == 150.1
    with fits.open(tmp_path / "a" / "candidates.fits") as h:
        d = h[1].data
        assert list(d["RANK"]) == [1, 2, 3, 4] and d["KNOWN_NAME"][1] == 'MOCK-1, "x"'
        assert h[1].header["MODEL0"] == "data/model/best.pt" and h[1].header["SHA0"] == "ab" * 32
        assert h[1].columns["RA"].unit == "deg" and int(d["SAMPLE_ID"][0]) == 2**62 + 1


def test_viewer_rgb_is_the_legacy_surveys_stretch_north_up():
    st = np.zeros((3, 8, 8), np.float32)
    img = I.viewer_rgb(st)
    f = np.arcsinh(I.VIEWER_Q * I.VIEWER_M) / np.sqrt(I.VIEWER_Q)  # blank sky: every plane = m asinh(Q m) / (sqrt(Q) m)
    assert img.dtype == np.uint8 and (img == round(f * 255)).all()
    st[1, 7, 2] = 1.0  # a pure r-band source at the top row (north): green, drawn in the image's first row
    img = I.viewer_rgb(st)
    assert img[0, 2, 1] == 255 and img[0, 2, 1] > img[0, 2, 0] and img[0, 2, 1] > img[0, 2, 2]
    st = np.zeros((3, 8, 8), np.float32)
    st[2, 0, 0] = st[0, 0, 1] = 0.3
    img = I.viewer_rgb(st)
    assert img[7, 0, 0] > img[7, 0, 2] and img[7, 1, 2] > img[7, 1, 0]  # z red, g blue


def test_the_residual_removes_a_symmetric_galaxy():
    yy, xx = np.mgrid[0:64, 0:64]
    gal = np.exp(-np.hypot(yy - 32, xx - 32) / 3.0).astype(np.float32)
    st = np.stack([gal, 2 * gal, 3 * gal])
    res = I.residual_stamp(st)
    assert np.abs(res).max() < 0.05 * 3 and res.dtype == np.float32
    np.testing.assert_array_equal(res[1], radial_median_residual(st[1].reshape(1, -1), 64, 64).reshape(64, 64))


def test_the_page_is_self_contained_and_reproducible(tmp_path):
    ck = SD.checkpoint(tmp_path / "m.pt")
    t = _candidates(3)
    stamps = S.ring_stamps(np.array([0, 1, 0]), rng=3)
    for d in ("a", "b"):
        rep = I.write_page(str(tmp_path / d), t, stamps, None, ck, 1, "cafe0123")
        assert rep == {"candidates": 3, "images": 9}
    files = sorted(os.path.relpath(os.path.join(dp, f), tmp_path / "a") for dp, _, fs in os.walk(tmp_path / "a")
                   for f in fs)
    assert files == ["candidates.js", "img/000001_residual.png", "img/000001_rgb.png", "img/000001_saliency.png",
                     "img/000002_residual.png", "img/000002_rgb.png", "img/000002_saliency.png",
                     "img/000003_residual.png", "img/000003_rgb.png", "img/000003_saliency.png", "index.html"]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    html = (tmp_path / "a" / "index.html").read_text()
    # nothing is fetched from elsewhere: every src / href of the page is local (the viewer links are in the data)
    assert not re.findall(r'(?:src|href)\s*=\s*"(?!candidates\.js)[a-z]+://', html)
    assert "@import" not in html and "url(" not in html
    js = (tmp_path / "a" / "candidates.js").read_text()
    data = json.loads(js[js.index("=") + 1: js.rindex(";")])
    c = data["candidates"][0]
    assert data["catalogue_id"] == "cafe0123" and data["grades"] == ["A", "B", "C", "X"]
    assert c["sample_id"] == str(2**62 + 1) and c["img_rgb"] == "img/000001_rgb.png"
    assert c["viewer_url"].startswith("https://www.legacysurvey.org/viewer?ra=150.000000&dec=0.500000")
    assert data["columns"][-2:] == ["grade", "note"]
    for rec in data["candidates"]:
        for k in ("img_rgb", "img_residual", "img_saliency"):
            assert os.path.isfile(tmp_path / "a" / rec[k])
