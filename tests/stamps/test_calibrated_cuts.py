"""Stage stamps applies the calibrated population's acceptance cuts (manifest.calibrated) row by row."""

from __future__ import annotations

import pytest
from test_stamps_cutout import BRICK, coadd_root, injected_row, sky  # noqa: F401  (coadd_root: a fixture)

from darkhaloscope.stamps.cutout import REJECTED, process_brick
from darkhaloscope.stamps.spark import split_failures


def test_rows_below_their_cuts_are_flagged_not_dropped(coadd_root, inj):  # noqa: F811
    ra, dec = sky(120.0, 80.0)
    (free,) = process_brick(BRICK, [injected_row(ra, dec, 2)], str(coadd_root), inj)
    mu, snr = free["magnification"], free["arc_snr"]
    assert free["cutout_ok"] == 1 and mu > 1 and snr > 1
    rows = [injected_row(ra, dec, 3, min_magnification=mu * 0.99, min_arc_snr=snr * 0.99),   # passes both
            injected_row(ra, dec, 4, min_magnification=mu * 1.01, min_arc_snr=0.0),         # fails mu
            injected_row(ra, dec, 5, min_magnification=0.0, min_arc_snr=snr * 1.01)]         # fails S/N
    out = {r["sample_id"]: r for r in process_brick(BRICK, rows, str(coadd_root), inj)}
    assert out[3]["cutout_ok"] == 1 and out[3]["fail_reason"] == ""
    for sid in (4, 5):
        assert out[sid]["cutout_ok"] == 0 and out[sid]["fail_reason"] == REJECTED
        assert out[sid]["magnification"] == pytest.approx(mu) and out[sid]["arc_snr"] == pytest.approx(snr)


def test_rejections_are_counted_but_not_losses():
    stats = [{"split": "val", "rows": 10, "fail_reasons": {REJECTED: 6, "off_brick_edge": 2}, "nonfinite_stamps": 0,
              "first_failures": []}]
    (f,) = split_failures(stats)
    assert f["lost"] == 0 and f["frac"] == 0.0
