"""Tests of Phase 4c per-brick cutouts and injection (darkhaloscope.stamps.cutout.process_brick and
the darkhaloscope.lensing.Injector behind it).

A brick is built by hand: a TAN WCS from ``brick_wcs``, a pixel-integrated compact
Gaussian "point source" at a chosen sky position that is NOT on a pixel centre,
and constant invvar maps, written as DR10-layout coadd files under tmp_path.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from astropy.io import fits
from scipy import integrate
from scipy.special import erf

from darkhaloscope.errors import ParamsError
from darkhaloscope.lensing import Injector, convolve, fast, get_engine, psf, psf_kernel, render
from darkhaloscope.lensing.render import mag_to_nmgy
from darkhaloscope.stamps.cutout import (BrickCoadds, cut, cutout_origin, known_lens_rows, process_brick,
                                        psf_fwhm_used)
from darkhaloscope.stamps.pipeline import gallery_ids
from darkhaloscope.stamps.spark import output_files
from darkhaloscope.survey.bricks import brick_wcs, coadd_relpath

BRICK, RA_C, DEC_C, N = "1500p005", 150.0, 0.5, 200
BRICK2, RA_C2 = "1510p005", 151.0
FLUX = {"g": 50.0, "r": 100.0, "z": 150.0}  # point-source flux per band (nanomaggies)
IVAR = {"g": 400.0, "r": 900.0, "z": 100.0}  # constant invvar per band (1/nanomaggy^2)
PS_XY = (100.3, 90.8)                        # point-source position, 0-based brick pixels (col, row)
SIGMA = 1.0                                  # its Gaussian sigma (pixels)


def gaussian_image(n: int, x0: float, y0: float, sigma: float, flux: float) -> np.ndarray:
    """Pixel-integrated circular Gaussian of total ``flux`` centred on (x0, y0) (0-based col, row)."""
    e = np.arange(n + 1) - 0.5
    cx = np.diff(0.5 * (1 + erf((e - x0) / (np.sqrt(2) * sigma))))
    cy = np.diff(0.5 * (1 + erf((e - y0) / (np.sqrt(2) * sigma))))
    return flux * np.outer(cy, cx)


def write_coadds(root, brick, ra_c, dec_c, images: dict, invvar: dict, ext=".fits") -> None:
    wcs = brick_wcs(ra_c, dec_c, N)
    for band in images:
        for kind, data in (("image", images[band]), ("invvar", invvar[band])):
            path = root / coadd_relpath(brick, band, kind, ext)
            path.parent.mkdir(parents=True, exist_ok=True)
            hdr = wcs.to_header()
            if ext == ".fits.fz":
                hdu = fits.CompImageHDU(data.astype(np.float32), header=hdr, compression_type="GZIP_2",
                                        quantize_level=0.0)
                fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
            else:
                fits.PrimaryHDU(data.astype(np.float32), header=hdr).writeto(path)


@pytest.fixture
def coadd_root(tmp_path):
    """Brick 1500p005 (g, r, z; point source at PS_XY; a few masked pixels) and brick
    1510p005 with the z band missing."""
    images = {b: gaussian_image(N, *PS_XY, SIGMA, FLUX[b]) for b in "grz"}
    invvar = {b: np.full((N, N), IVAR[b]) for b in "grz"}
    for b in "grz":
        invvar[b][150:160, 150:152] = 0.0   # 20 masked pixels
    write_coadds(tmp_path, BRICK, RA_C, DEC_C, images, invvar)
    write_coadds(tmp_path, BRICK2, RA_C2, DEC_C, {b: np.zeros((N, N)) for b in "gr"},
                 {b: np.ones((N, N)) for b in "gr"}, ext=".fits.fz")
    return tmp_path


def sky(x: float, y: float, ra_c: float = RA_C) -> tuple[float, float]:
    ra, dec = brick_wcs(ra_c, DEC_C, N).all_pix2world([x], [y], 0)
    return float(ra[0]), float(dec[0])


def control_row(ra, dec, sample_id=1, **kw):
    row = {"sample_id": sample_id, "ra": ra, "dec": dec, "is_control": 1, "split": "train",
           "brickname": BRICK, "psfsize_g": 1.4, "psfsize_r": 1.2, "psfsize_z": 1.1}
    row.update(kw)
    return row


def injected_row(ra, dec, sample_id=2, **kw):
    row = control_row(ra, dec, sample_id, is_control=0)
    row.update(theta_e_arcsec=0.6, lens_q=1.0, lens_phi_deg=0.0, gamma1=0.0, gamma2=0.0,
               src_x_arcsec=0.0, src_y_arcsec=0.0, src_reff_arcsec=0.15, src_e=0.0, src_phi_deg=0.0,
               src_mag_r=20.0, src_gr=0.3, src_rz=0.2)
    row.update(kw)
    return row


def centroid(img: np.ndarray) -> tuple[float, float]:
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    s = img.sum()
    return float((img * xx).sum() / s), float((img * yy).sum() / s)


def test_cutout_origin_rounds_to_nearest_pixel():
    wcs = brick_wcs(RA_C, DEC_C, N)
    ra, dec = sky(*PS_XY)
    x0, y0, dx, dy = cutout_origin(wcs, ra, dec, 64)
    assert (x0, y0) == (100 - 32, 91 - 32)
    assert dx == pytest.approx(0.3, abs=1e-6) and dy == pytest.approx(-0.2, abs=1e-6)


def test_point_source_centred_in_control_stamp(coadd_root, inj):
    ra, dec = sky(*PS_XY)
    (res,) = process_brick(BRICK, [control_row(ra, dec)], str(coadd_root), inj)
    assert res["cutout_ok"] == 1 and res["fail_reason"] == ""
    stamp = res["stamp"]
    assert stamp.shape == (3, 64, 64) and stamp.dtype == np.float32
    dx, dy = res["x_offset_pix"], res["y_offset_pix"]
    assert dx == pytest.approx(0.3, abs=1e-6) and dy == pytest.approx(-0.2, abs=1e-6)
    for i, b in enumerate("grz"):
        assert np.unravel_index(np.argmax(stamp[i]), stamp[i].shape) == (32, 32)
        cx, cy = centroid(stamp[i].astype(np.float64))
        assert cx == pytest.approx(32 + dx, abs=0.05) and cy == pytest.approx(32 + dy, abs=0.05)
        assert stamp[i].sum() == pytest.approx(FLUX[b], rel=1e-5)   # band order g, r, z
    # a control is never injected
    assert res["magnification"] == 0.0 and res["arc_snr"] == 0.0 and res["theta_e_over_psf"] == 0.0
    assert res["bad_pixel_frac"] == 0.0


@pytest.mark.parametrize("xy", [(60.5 + 0.49, 120.0 - 0.49), (139.0, 40.2)])
def test_centring_for_other_subpixel_offsets(tmp_path, inj, xy):
    """Offsets close to +-0.5 px still peak at (32, 32) and centroid at 32 + offset."""
    images = {b: gaussian_image(N, *xy, SIGMA, 10.0) for b in "grz"}
    write_coadds(tmp_path, BRICK, RA_C, DEC_C, images, {b: np.ones((N, N)) for b in "grz"})
    (res,) = process_brick(BRICK, [control_row(*sky(*xy))], str(tmp_path), inj)
    dx, dy = res["x_offset_pix"], res["y_offset_pix"]
    assert dx == pytest.approx(xy[0] - round(xy[0]), abs=1e-6)
    assert dy == pytest.approx(xy[1] - round(xy[1]), abs=1e-6)
    r = res["stamp"][1].astype(np.float64)
    assert np.unravel_index(np.argmax(r), r.shape) == (32, 32)
    cx, cy = centroid(r)
    assert cx == pytest.approx(32 + dx, abs=0.05) and cy == pytest.approx(32 + dy, abs=0.05)


def sis_magnification_exponential(theta_e: float, reff: float) -> float:
    """Total magnification of a centred circular exponential source by an SIS (analytic).

    A source point at radius beta has |mu| summed over its images 2 theta_E / beta
    (beta < theta_E) or 1 + theta_E / beta (beta > theta_E); the exponential's radial
    light distribution is p(beta) = beta exp(-beta/h) / h^2 with h = reff / b_1.
    """
    h = reff / 1.678347
    p = lambda b: b * np.exp(-b / h) / h**2  # noqa: E731
    inner = integrate.quad(lambda b: p(b) * 2 * theta_e / b, 0, theta_e)[0]
    outer = integrate.quad(lambda b: p(b) * (1 + theta_e / b), theta_e, np.inf)[0]
    return inner + outer


def test_injected_arc_centred_on_lens_and_flux_conserved(coadd_root, inj):
    xy = (120.0 - 0.4, 80.0 + 0.35)             # dx = -0.4, dy = +0.35
    ra, dec = sky(*xy)
    row = injected_row(ra, dec)
    (res,) = process_brick(BRICK, [row], str(coadd_root), inj, want_clean=frozenset({2}))
    assert res["cutout_ok"] == 1
    dx, dy = res["x_offset_pix"], res["y_offset_pix"]
    assert dx == pytest.approx(-0.4, abs=1e-6) and dy == pytest.approx(0.35, abs=1e-6)
    arc = res["stamp"].astype(np.float64) - res["clean"].astype(np.float64)
    mu = res["magnification"]
    assert mu == pytest.approx(sis_magnification_exponential(0.6, 0.15), rel=0.01)
    f_r = mag_to_nmgy(20.0)
    fluxes = {"g": f_r * 10 ** (-0.4 * 0.3), "r": f_r, "z": f_r * 10 ** (0.4 * 0.2)}
    for i, b in enumerate("grz"):
        assert arc[i].sum() == pytest.approx(mu * fluxes[b], rel=0.01), b
        cx, cy = centroid(arc[i])
        assert cx == pytest.approx(32 + dx, abs=0.1) and cy == pytest.approx(32 + dy, abs=0.1), b
    assert res["arc_flux_r"] == pytest.approx(mu * f_r, rel=0.01)
    assert res["arc_snr"] == pytest.approx(arc[1].max() * np.sqrt(IVAR["r"]), rel=1e-4)
    assert res["theta_e_over_psf"] == pytest.approx(0.6 / 1.2)
    assert res["psf_fwhm_used_r"] == 1.2 and res["psf_fallback"] == ""


def test_off_edge_rows_fail(coadd_root, inj):
    rows = [control_row(*sky(10.0, 100.0), sample_id=1),      # 64-px cutout runs off the left edge
            control_row(*sky(100.0, 190.0), sample_id=2),     # off the top
            injected_row(*sky(-30.0, 100.0), sample_id=3),    # outside the brick entirely
            control_row(*sky(32.0, 32.0), sample_id=4)]       # just fits: columns 0..63
    out = process_brick(BRICK, rows, str(coadd_root), inj)
    assert [r["cutout_ok"] for r in out] == [0, 0, 0, 1]
    assert [r["fail_reason"] for r in out] == ["off_brick_edge"] * 3 + [""]
    for r in out[:3]:
        assert r["stamp"].shape == (3, 64, 64) and not r["stamp"].any()
        assert r["magnification"] == 0.0


def test_missing_band_is_named(coadd_root, inj):
    row = control_row(*sky(100.0, 100.0, RA_C2), brickname=BRICK2)
    (res,) = process_brick(BRICK2, [row], str(coadd_root), inj)
    assert res["cutout_ok"] == 0
    assert res["fail_reason"].startswith("missing_coadd:image-z (coadd/")
    assert ",invvar-z (coadd/" in res["fail_reason"] and "-invvar-z.fits.fz)" in res["fail_reason"]
    assert not res["stamp"].any()
    # the same brick with only g and r asked for is fine (and reads the .fits.fz files)
    (res2,) = process_brick(BRICK2, [row], str(coadd_root), inj, bands=("g", "r"))
    assert res2["cutout_ok"] == 1 and res2["stamp"].shape == (2, 64, 64)


def test_unreadable_coadd_reason(coadd_root, inj):
    path = coadd_root / coadd_relpath(BRICK, "r", "image", ".fits")
    path.write_bytes(b"not fits" * 50)
    (res,) = process_brick(BRICK, [control_row(*sky(*PS_XY))], str(coadd_root), inj)
    assert res["cutout_ok"] == 0
    assert res["fail_reason"].startswith("coadd_error:") and str(path) in res["fail_reason"]


def test_psfsize_zero_falls_back_to_r(coadd_root, inj):
    ra, dec = sky(110.0, 110.0)
    rows = [control_row(ra, dec, 1, psfsize_z=0.0),
            injected_row(ra, dec, 2, psfsize_z=0.0),
            control_row(ra, dec, 3, psfsize_g=0.0, psfsize_r=0.0),
            control_row(ra, dec, 4, psfsize_g=float("nan"))]
    out = process_brick(BRICK, rows, str(coadd_root), inj, want_clean=frozenset({2}))
    assert out[0]["psf_fallback"] == "z" and out[0]["psf_fwhm_used_z"] == 1.2
    assert out[0]["psf_fwhm_used_g"] == 1.4 and out[0]["psf_fwhm_used_r"] == 1.2
    # r unusable too: the configured fallback FWHM (1.3 arcsec)
    assert out[2]["psf_fallback"] == "gr"
    assert out[2]["psf_fwhm_used_g"] == inj["psf_fallback_fwhm"] == out[2]["psf_fwhm_used_r"]
    assert out[2]["psf_fwhm_used_z"] == 1.1
    assert out[3]["psf_fallback"] == "g" and out[3]["psf_fwhm_used_g"] == 1.2
    # the injected z arc really was convolved with the r-band PSF: same shape as the r arc
    inj_res = out[1]
    assert inj_res["psf_fallback"] == "z"
    arc = inj_res["stamp"].astype(np.float64) - inj_res["clean"].astype(np.float64)
    np.testing.assert_allclose(arc[2] / arc[2].sum(), arc[1] / arc[1].sum(), atol=1e-6)
    # while g (1.4") is broader than r (1.2"): a lower peak fraction
    assert (arc[0] / arc[0].sum()).max() < 0.95 * (arc[1] / arc[1].sum()).max()


def test_psf_fwhm_used_rules():
    assert psf_fwhm_used({"psfsize_g": 1.5, "psfsize_r": 1.2}, "g", 1.3) == (1.5, False)
    assert psf_fwhm_used({"psfsize_g": 0.0, "psfsize_r": 1.2}, "g", 1.3) == (1.2, True)
    assert psf_fwhm_used({"psfsize_g": -1.0, "psfsize_r": float("nan")}, "g", 1.3) == (1.3, True)
    assert psf_fwhm_used({}, "z", 0.9) == (0.9, True)


def test_bad_pixel_fraction_and_paired_ctrl_stamp(coadd_root, inj):
    # the stamp around (155, 130) covers the 10 x 2 masked block at rows 150-159, cols 150-151
    ra, dec = sky(155.0, 130.0)
    rows = [injected_row(ra, dec, 7), control_row(ra, dec, 8)]
    out = process_brick(BRICK, rows, str(coadd_root), inj, want_clean=frozenset({7}), paired=True)
    for r in out:
        assert r["bad_pixel_frac"] == pytest.approx(20 / 4096)
    np.testing.assert_array_equal(out[0]["ctrl_stamp"], out[0]["clean"])
    assert not np.array_equal(out[0]["stamp"], out[0]["ctrl_stamp"])
    np.testing.assert_array_equal(out[1]["ctrl_stamp"], out[1]["stamp"])
    assert "clean" not in out[1]


def test_known_lens_rows():
    known = {"name": np.array(["A", "B", "C"]), "ra": np.array([150.0, 10.0, 151.0]),
             "dec": np.array([0.5, 10.0, 0.5])}
    rows, n_nobrick = known_lens_rows(known, [BRICK, None, BRICK2])
    assert n_nobrick == 1
    assert [(r["name"], r["brickname"], r["sample_id"]) for r in rows] == [("A", BRICK, 0), ("C", BRICK2, 2)]
    assert all(r["is_control"] == 1 and r["split"] == "known" for r in rows)


# --------------------------------------------------------------------------
# the Injector (darkhaloscope.lensing.injector) behind process_brick
# --------------------------------------------------------------------------
def reference_stamp(row, clean, iv_r, dx, dy, fw, inj, engine):
    """The stamp and measurements from the injection's parts called directly: the sub-pixel phase images
    (fast: ``render_phase_images``; lenstronomy: ``ArcRenderer`` on the grid of phases), the phase PSF
    kernels of ``psf.phase_kernels`` (side from ``psf.kernel_size``) and the phase convolution."""
    ps, ss = float(inj["pixel_scale"]), int(inj["supersample"])
    s_c = psf.phase_factor(ss)
    cols = ("theta_e_arcsec", "lens_q", "lens_phi_deg", "gamma1", "gamma2", "src_x_arcsec", "src_y_arcsec",
            "src_reff_arcsec", "src_e", "src_phi_deg")
    kernels = [psf.phase_kernels(inj["psf_model"], f, float(inj["moffat_beta"]), ps, s_c,
                                 psf.kernel_size(inj["psf_model"], f, float(inj["moffat_beta"]), ps,
                                                 float(inj["psf_flux_frac"])), oversample=8) for f in fw]
    fluxes = render.source_band_fluxes(row["src_mag_r"], row["src_gr"], row["src_rz"])
    if engine == "fast":
        phases = fast.render_phase_images({k: row[c] for k, c in zip(fast.PARAM_KEYS, cols)}, [(32 + dx, 32 + dy)],
                                          64, ps, ss)
        arc = convolve.inject_phases_batch(phases, [fluxes], kernels)[0]
    else:
        cells = render.ArcRenderer(64 * s_c, ps / s_c, ss // s_c, max_supersample=32 // s_c)
        phases = render.phase_images(cells, s_c, *(row[c] for c in cols), center=(32 + dx, 32 + dy))[None]
        arc = render.inject_phases(phases[0], fluxes, kernels)
    stamp = clean.copy()
    stamp += arc
    return arc, stamp, {"magnification": float(phases[0].sum()), "arc_snr": render.arc_snr_peak(arc[1], iv_r),
                        "arc_snr_int": render.arc_snr_integrated(arc[1], iv_r), "arc_flux_r": float(arc[1].sum()),
                        "theta_e_over_psf": float(row["theta_e_arcsec"]) / fw[1]}


def previous_path_stamp(row, dx, dy, fw, inj, engine, size=33):
    """The arc of the injection before the sub-pixel phases: the unit image binned to pixels, convolved with
    a pixel-integrated 33-pixel kernel (the arc's peak came out 1-4% low)."""
    renderer = get_engine(engine, 64, float(inj["pixel_scale"]), int(inj["supersample"]))
    kernels = [psf_kernel(inj["psf_model"], f, float(inj["moffat_beta"]), float(inj["pixel_scale"]), size, 5)
               for f in fw]
    unit = renderer.lensed_unit_image(
        row["theta_e_arcsec"], row["lens_q"], row["lens_phi_deg"], row["gamma1"], row["gamma2"],
        row["src_x_arcsec"], row["src_y_arcsec"], row["src_reff_arcsec"], row["src_e"],
        row["src_phi_deg"], center=(32 + dx, 32 + dy), n_sersic=1.0)
    return unit, render.inject_bands(unit, render.source_band_fluxes(row["src_mag_r"], row["src_gr"],
                                                                     row["src_rz"]), kernels)


SOME_ROWS = [  # (brick x, y, injection overrides)
    ((120.0 - 0.4, 80.0 + 0.35), {}),
    ((70.2, 110.9), dict(theta_e_arcsec=1.3, lens_q=0.6, lens_phi_deg=40.0, gamma1=0.02, gamma2=-0.01,
                         src_x_arcsec=0.2, src_y_arcsec=-0.1, src_reff_arcsec=0.08, src_e=0.3, src_phi_deg=120.0)),
    ((140.7, 130.1), dict(theta_e_arcsec=0.9, lens_q=0.8, src_x_arcsec=-0.3, src_reff_arcsec=0.2, src_mag_r=21.5,
                          psfsize_z=0.0)),
]


@pytest.mark.parametrize("engine", ["lenstronomy", "fast"])
def test_injector_gives_the_reference_arcs(coadd_root, inj, engine):
    inj = {**inj, "engine": engine}
    rows = [injected_row(*sky(*xy), sample_id=10 + i, **kw) for i, (xy, kw) in enumerate(SOME_ROWS)]
    out = process_brick(BRICK, rows, str(coadd_root), inj, want_clean=frozenset(r["sample_id"] for r in rows))
    injector = Injector.from_params(inj)
    assert injector.engine == engine and injector.s_c == 4
    r = injector.renderer                                                      # the grid of 4 x 4 phases
    assert (r.n_pix, r.pixel_scale, r.supersample) == (64 * 4, 0.262 / 4, 1)
    co = BrickCoadds(str(coadd_root), BRICK)
    for row, res in zip(rows, out):
        assert res["cutout_ok"] == 1
        x0, y0, dx, dy = cutout_origin(co.wcs, row["ra"], row["dec"], 64)
        assert (dx, dy) == (res["x_offset_pix"], res["y_offset_pix"])
        fw = [res[f"psf_fwhm_used_{b}"] for b in "grz"]
        iv_r = cut(co.invvar["r"], x0, y0, 64)
        arc_ref, stamp_ref, info_ref = reference_stamp(row, res["clean"], iv_r, dx, dy, fw, inj, engine)
        np.testing.assert_array_equal(res["stamp"], stamp_ref)  # bit for bit
        assert {k: res[k] for k in info_ref} == info_ref
        arc, info = injector.inject(row, (32 + dx, 32 + dy), iv_r, fw)
        assert arc.dtype == np.float32 and arc.shape == (3, 64, 64)
        np.testing.assert_array_equal(arc, arc_ref)
        assert info == info_ref
        # against the previous bin-then-convolve path: the same lensed flux and arc flux (the physics did not
        # change), a higher peak (the second pixel box and the 33-pixel truncation are gone)
        unit_old, arc_old = previous_path_stamp(row, dx, dy, fw, inj, engine)
        assert info["magnification"] == pytest.approx(float(unit_old.sum()), rel=2e-3)
        assert arc[1].sum() == pytest.approx(float(arc_old[1].sum()), rel=5e-3)
        assert arc[1].max() > arc_old[1].max()
    # the batch call (one per brick, what process_brick makes) gives the same bytes as stamp by stamp
    centers = [(32 + r["x_offset_pix"], 32 + r["y_offset_pix"]) for r in out]
    fws = [[r[f"psf_fwhm_used_{b}"] for b in "grz"] for r in out]
    ivs = [np.full((64, 64), 50.0)] * len(rows)
    arcs, infos = injector.inject_batch(rows, centers, ivs, fws)
    for i in range(len(rows)):
        one, info = injector.inject(rows[i], centers[i], ivs[i], fws[i])
        np.testing.assert_array_equal(arcs[i], one)
        assert infos[i] == info


def test_injector_builds_psf_kernels_once_per_brick_and_band(coadd_root, inj, monkeypatch):
    import darkhaloscope.lensing.injector as injector_module

    built = []

    def counting_phase_kernels(model, fwhm, *args, **kw):
        built.append(fwhm)
        return psf.phase_kernels(model, fwhm, *args, **kw)

    monkeypatch.setattr(injector_module, "phase_kernels", counting_phase_kernels)
    ra, dec = sky(110.0, 110.0)
    rows = [injected_row(ra, dec, 1), injected_row(ra, dec, 2), control_row(ra, dec, 3),
            injected_row(ra, dec, 4, psfsize_z=0.0),   # z falls back to r (1.2"): one new kernel
            injected_row(ra, dec, 5)]
    injector = Injector.from_params(inj)
    process_brick(BRICK, rows, str(coadd_root), inj, injector=injector)
    assert sorted(built) == sorted([1.4, 1.2, 1.1, 1.2])  # (g, 1.4), (r, 1.2), (z, 1.1), (z, 1.2)
    # the same brick again: nothing new; another brick: its own kernels (one brick kept at a time)
    k = injector.psf_kernels(BRICK, [1.4, 1.2, 1.1])
    assert len(built) == 4 and [x is y for x, y in zip(k, injector.psf_kernels(BRICK, [1.4, 1.2, 1.1]))] == [1] * 3
    injector.psf_kernels(BRICK2, [1.4, 1.2, 1.1])
    assert len(built) == 7
    # FWHMs equal to 4 decimals in every band share the first set's kernels
    assert injector.psf_kernels(BRICK2, [1.40001, 1.2, 1.1])[0] is injector.psf_kernels(BRICK2, [1.4, 1.2, 1.1])[0]
    assert len(built) == 7


def test_injector_takes_the_engine_from_the_params(inj):
    import darkhaloscope.lensing.injector as injector_module

    with pytest.raises(ParamsError, match="engine"):
        Injector.from_params({k: v for k, v in inj.items() if k != "engine"})
    with pytest.raises(ValueError, match="engine must be one of"):
        Injector.from_params({**inj, "engine": "gpu"})
    assert Injector.from_params(inj).engine == inj["engine"] == "fast"
    assert Injector.from_params(inj).inject_phases is convolve.inject_phases_batch
    ref = Injector.from_params({**inj, "engine": "lenstronomy"}, bands=("g", "r"))
    assert ref.inject_phases is injector_module._reference_inject and ref.bands == ("g", "r") and ref.r == 1
    # a pickled copy (a Spark task's) is rebuilt from the parameters, with no kernels yet
    ref.psf_kernels(BRICK, [1.0, 1.1])
    copy = pickle.loads(pickle.dumps(ref))
    assert copy.renderer is ref.renderer and copy.bands == ("g", "r") and copy._sets == {}


def test_output_files_and_gallery_ids():
    assert output_files(("train", "parent", "known"), 2, True) == [
        ("train", 0, True), ("train", 1, True), ("parent", 0, True), ("parent", 1, True), ("known", 0, False)]
    rows = [{"sample_id": s, "split": sp, "is_control": c}
            for s, sp, c in ((9, "train", 0), (3, "train", 1), (5, "val", 0), (7, "train", 0), (8, "train", 0))]
    assert gallery_ids(rows, 2) == frozenset({7, 8})


def test_failed_stamps_are_warned_about_with_their_first_reasons():
    from darkhaloscope.stamps.spark import failure_warnings

    ok = {"split": "train", "rows": 10, "fail_reasons": {"off_brick_edge": 2}, "nonfinite_stamps": 0,
          "first_failures": []}
    assert failure_warnings([ok]) == []  # stamps over the brick edge are expected
    bad = {"split": "val", "rows": 8, "fail_reasons": {"coadd_error": 5, "off_brick_edge": 1}, "nonfinite_stamps": 2,
           "first_failures": ["coadd_error: x.fits.fz: not a FITS file"]}
    (line,) = failure_warnings([ok, bad])
    assert line.startswith("WARN split val: 5 of 8 stamps failed") and "2 have non-finite" in line
    assert "x.fits.fz: not a FITS file" in line
