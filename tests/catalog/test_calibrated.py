"""The calibrated injected population (manifest.population calibrated; issue 14, item 3)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from test_manifest import parent_table

from darkhaloscope.catalog.manifest import CUT_COLUMNS, build_manifest, source_mag_prior
from darkhaloscope.params import ParamsError, validate


@pytest.fixture
def cp(params):
    p = copy.deepcopy(params)
    p["manifest"].update(population="calibrated", control_type="unpaired", control_frac=0.3, replicates=2,
                         n_total_per_split={"train": 10**6, "val": 10**6, "test": 10**6})
    return validate(p)


def test_source_prior_follows_the_number_counts():
    lo, hi, slope = 22.0, 25.5, 0.33
    m = np.array([source_mag_prior(u, lo, hi, slope) for u in (np.arange(20000) + 0.5) / 20000])
    assert m.min() >= lo and m.max() <= hi
    # dN/dm ~ 10^(slope m): the counts in the faintest and brightest 0.5 mag bins differ by 10^(slope*3)
    faint, bright = ((m > hi - 0.5).sum(), (m < lo + 0.5).sum())
    assert faint / bright == pytest.approx(10 ** (slope * 3.0), rel=0.03)
    assert source_mag_prior(0.25, 22.0, 24.0, 0.0) == pytest.approx(22.5)


def test_calibrated_draws_are_continuous_host_independent_and_carry_their_cuts(cp):
    parent = parent_table(3000, seed=5)
    man, summ = build_manifest(parent, cp)
    assert summ["population"] == "calibrated" and summ["grid"] is None
    inj = man.column("is_control").to_numpy() == 0
    col = {c: man.column(c).to_numpy()[inj] for c in ("theta_e_arcsec", "src_mag_r", "host_mag_r", "src_dmag",
                                                      "src_reff_arcsec", *CUT_COLUMNS)}
    cal = cp["manifest"]["calibrated"]
    te = col["theta_e_arcsec"]
    assert te.min() >= cal["theta_e_arcsec"][0] and te.max() <= cal["theta_e_arcsec"][1]
    assert len(np.unique(te)) == len(te)  # continuous, not a grid
    assert col["src_mag_r"].min() >= cal["src_mag_r"][0] and col["src_mag_r"].max() <= cal["src_mag_r"][1]
    # the source magnitude does not follow the host's (the seeds' grids set it to host + dmag)
    assert abs(np.corrcoef(col["src_mag_r"], col["host_mag_r"])[0, 1]) < 0.1
    np.testing.assert_allclose(col["src_dmag"], col["src_mag_r"] - col["host_mag_r"])
    assert (col["min_magnification"] == cal["min_magnification"]).all()
    assert (col["min_arc_snr"] == cal["min_arc_snr"]).all()
    ctrl = ~inj
    for c in CUT_COLUMNS:
        assert (man.column(c).to_numpy()[ctrl] == 0).all()
    r = col["src_reff_arcsec"]
    assert r.min() >= cal["src_reff_arcsec"][0] and r.max() <= cal["src_reff_arcsec"][1]
    assert set(man.column("config_id").to_numpy(zero_copy_only=False)[inj]) == {"calibrated"}


def test_seeds_grid_rows_have_no_cuts_and_bad_ranges_are_refused(params):
    p = validate(copy.deepcopy(params))
    assert p["manifest"]["population"] == "seeds_grid"
    man, summ = build_manifest(parent_table(200), p)
    assert summ["population"] == "seeds_grid" and summ["grid"] == p["manifest"]["grid"]
    for c in CUT_COLUMNS:
        assert (man.column(c).to_numpy() == 0).all()
    bad = copy.deepcopy(params)
    bad["manifest"]["calibrated"]["theta_e_arcsec"] = [2.0, 1.0]
    with pytest.raises(ParamsError, match="manifest.calibrated.theta_e_arcsec"):
        validate(bad)
