"""Lens impostors of the mock survey: their rates, their light, the side table and its join."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from astropy.io import fits

from darkhaloscope.catalog.parent import impostor_column
from darkhaloscope.constants import IMPOSTOR_CLASSES, NO_IMPOSTOR, PIXEL_SCALE
from darkhaloscope.errors import SurveyError
from darkhaloscope.survey import impostors as I
from darkhaloscope.survey.mock import IMPOSTOR_TABLE, MockSurvey


def _within_binomial(k: int, n: int, p: float, z: float = 5.0) -> bool:
    """|k - n p| within z standard deviations of a Binomial(n, p) (false-alarm rate ~6e-7 per check)."""
    return abs(k - n * p) <= z * np.sqrt(n * p * (1 - p)) + 1e-9


def test_assign_classes_at_their_rates():
    frac = {"ring": 0.02, "spiral": 0.05, "merger": 0.01, "edge_on": 0.03, "clumpy": 0.0, "pair": 0.10}
    n = 200_000
    cls = I.assign_classes(np.random.default_rng(1), n, frac)
    for c, p in frac.items():
        k = int((cls == c).sum())
        assert _within_binomial(k, n, p), (c, k, n * p)
    assert (cls == "clumpy").sum() == 0
    assert _within_binomial(int((cls == NO_IMPOSTOR).sum()), n, 1 - sum(frac.values()))


def test_assign_classes_rejects_bad_fractions():
    with pytest.raises(ValueError, match="lacks pair"):
        I.assign_classes(np.random.default_rng(0), 5, {c: 0.1 for c in IMPOSTOR_CLASSES if c != "pair"})
    with pytest.raises(ValueError, match="summing to <= 1"):
        I.assign_classes(np.random.default_rng(0), 5, {c: 0.2 for c in IMPOSTOR_CLASSES})


def test_mock_impostors_at_the_shipped_rates(shipped_params_raw):
    """The mock's own per-brick draws, over many bricks of the shipped survey.mock: every class of
    survey.mock.impostor_frac appears among the LRGs at its rate (binomial tolerance), never among
    other objects nor on a brick's known lens."""
    mock = copy.deepcopy(shipped_params_raw["survey"]["mock"])
    frac = mock["impostor_frac"]
    assert set(frac) == set(IMPOSTOR_CLASSES) and all(frac[c] > 0 for c in IMPOSTOR_CLASSES)
    survey = MockSurvey(mock)
    n_lrg, n_blue = int(mock["n_lrg_per_brick"]), int(mock["n_blue_per_brick"])
    obj = {"kind": np.array(["lrg"] * n_lrg + ["blue"] * n_blue + ["companion"] * 3), "x": np.zeros(n_lrg + n_blue + 3)}
    counts, n = dict.fromkeys(IMPOSTOR_CLASSES, 0), 0
    for index in range(300):
        lens_row = 0 if index % 2 else None
        cls = survey.impostor_classes(index, obj, lens_row)
        assert (cls[n_lrg:] == NO_IMPOSTOR).all()
        if lens_row is not None:
            assert cls[0] == NO_IMPOSTOR
        lrg = cls[:n_lrg] if lens_row is None else cls[1:n_lrg]
        n += len(lrg)
        for c in IMPOSTOR_CLASSES:
            counts[c] += int((lrg == c).sum())
    for c in IMPOSTOR_CLASSES:
        assert _within_binomial(counts[c], n, frac[c]), (c, counts[c], n * frac[c])


@pytest.mark.parametrize("cls", IMPOSTOR_CLASSES)
def test_feature_light_is_a_unit_image_where_it_should_be(cls):
    x = np.arange(2 * I.HALF_BOX + 1) - I.HALF_BOX
    r = np.hypot(*np.meshgrid(x, x, indexing="ij")) * PIXEL_SCALE  # arcsec from the host
    fracs = []
    for seed in range(5):
        unit, dmag, gr, rz = I.feature_light(np.random.default_rng(seed), cls, 0.0, 0.0)
        assert unit.shape == r.shape and np.isclose(unit.sum(), 1.0) and (unit >= 0).all()
        assert np.isfinite([dmag, gr, rz]).all()
        fracs.append(unit[(r >= 0.8) & (r <= 3.6)].sum())
    if cls != "edge_on":  # an edge-on disc crosses the LRG itself; every other feature lies at 1-3 arcsec
        assert min(fracs) > 0.6, fracs


def test_impostor_light_only_around_impostors(tiny_mock):
    """Same survey with and without impostors: identical catalogue and identical pixels but within
    reach of an impostor (its box plus the PSF), where the extra flux is positive."""
    base = {**copy.deepcopy(tiny_mock), "n_lrg_per_brick": 20}
    with_imp = {**base, "impostor_frac": {c: 0.1 for c in IMPOSTOR_CLASSES}}
    a, b = MockSurvey(base).render_brick(0), MockSurvey(with_imp).render_brick(0)
    assert (a["impostor"] == NO_IMPOSTOR).all()
    assert (b["impostor"] != NO_IMPOSTOR).sum() >= 3
    for k in a["cat"]:
        np.testing.assert_array_equal(a["cat"][k], b["cat"][k])
    n = base["brick_size_pix"]
    reach = np.zeros((n, n), dtype=bool)
    cat = b["cat"]
    xs, ys = b["wcs"].all_world2pix(cat["RA"], cat["DEC"], 0)
    for x, y in zip(xs[b["impostor"] != NO_IMPOSTOR], ys[b["impostor"] != NO_IMPOSTOR]):
        h = I.HALF_BOX + 17
        xi, yi = round(float(x)), round(float(y))
        reach[max(0, yi - h):yi + h + 1, max(0, xi - h):xi + h + 1] = True
    for band in "grz":
        d = b["images"][band] - a["images"][band]
        assert np.abs(d[~reach]).max() < 1e-9
        assert d[reach].sum() > 0


def test_side_table_written_and_joined(tiny_mock, tmp_path):
    mock = {**copy.deepcopy(tiny_mock), "n_lrg_per_brick": 20,
            "impostor_frac": {c: 0.08 for c in IMPOSTOR_CLASSES}}
    root = tmp_path / "survey"
    summary = MockSurvey(mock).write(root)
    with fits.open(root / IMPOSTOR_TABLE) as h:
        tab = h[1].data
        bricks = np.char.strip(tab["BRICKNAME"].astype(str))
        ids, cls = tab["OBJID"].astype(np.int64), np.char.strip(tab["IMPOSTOR"].astype(str))
    assert summary["impostors"] == {c: int((cls == c).sum()) for c in IMPOSTOR_CLASSES}
    assert len(cls) == sum(summary["impostors"].values()) > 0
    # the join: listed rows get their class, others "none"
    q_brick = np.r_[bricks, ["1500p005"]]
    q_id = np.r_[ids, [10_000]]
    got = impostor_column(str(root), IMPOSTOR_TABLE, q_brick, q_id)
    assert got.tolist() == cls.tolist() + [NO_IMPOSTOR]
    assert (impostor_column(str(root), "", q_brick, q_id) == NO_IMPOSTOR).all()
    # a survey without the table (a real DR10 release): every galaxy "none"
    assert (impostor_column(str(root), "nope.fits", q_brick, q_id) == NO_IMPOSTOR).all()
    bad = fits.BinTableHDU.from_columns([fits.Column(name="BRICKNAME", format="8A", array=np.array([b"x"])),
                                         fits.Column(name="OBJID", format="J", array=np.array([1])),
                                         fits.Column(name="IMPOSTOR", format="8A", array=np.array([b"blob"]))])
    fits.HDUList([fits.PrimaryHDU(), bad]).writeto(tmp_path / "bad.fits")
    with pytest.raises(SurveyError, match="blob"):
        impostor_column(str(tmp_path), "bad.fits", q_brick, q_id)
