"""Tests of darkhaloscope.lensing: PSF kernels, convolution and the lenstronomy arc renderer.

References are independent of the renderer wherever possible: the FWHM is
checked against the analytic profile definition, total fluxes against
lenstronomy's LensEquationSolver + LensModel.magnification (point-source
magnifications averaged over the source's light) or against the analytic SIS
result, and the unlensed source against a numpy exponential profile.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.special import gammaincinv, roots_genlaguerre

from darkhaloscope.lensing import (
    ArcRenderer,
    arc_snr_integrated,
    arc_snr_peak,
    convolve_psf,
    fwhm_to_sigma,
    gaussian_kernel,
    get_renderer,
    inject_bands,
    mag_to_nmgy,
    measured_fwhm,
    moffat_alpha,
    moffat_kernel,
    nmgy_to_mag,
    noise_equivalent_area,
    psf_kernel,
    render_arc,
    render_stamp,
    source_band_fluxes,
)

PS = 0.262
N = 64
B1 = float(gammaincinv(2.0, 0.5))  # Sersic b_n for n = 1 (1.678...)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _pixel_coords(center=(32.0, 32.0), n=N):
    rows, cols = np.mgrid[0:n, 0:n].astype(np.float64)
    return (cols - center[0]) * PS, (rows - center[1]) * PS  # x (arcsec), y (arcsec)


def _ring_stats(img, center=(32.0, 32.0)):
    x, y = _pixel_coords(center)
    r = np.hypot(x, y)
    tot = img.sum()
    return (img * r).sum() / tot, (img * x).sum() / tot, (img * y).sum() / tot


# --------------------------------------------------------------------------
# PSF kernels
# --------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["gaussian", "moffat"])
@pytest.mark.parametrize("fwhm", [0.8, 1.3, 2.0])
@pytest.mark.parametrize("size", [21, 33])
def test_kernel_normalised_centred_symmetric(model, fwhm, size):
    k = psf_kernel(model, fwhm, beta=3.5, pixel_scale=PS, size=size, oversample=5)
    assert k.shape == (size, size) and k.dtype == np.float64
    assert abs(k.sum() - 1.0) < 1e-12
    assert np.unravel_index(np.argmax(k), k.shape) == (size // 2, size // 2)
    np.testing.assert_allclose(k, k[::-1, :], rtol=0, atol=1e-15)
    np.testing.assert_allclose(k, k.T, rtol=0, atol=1e-15)
    assert (k > 0).all()


@pytest.mark.parametrize(
    "maker",
    [
        lambda f: gaussian_kernel(f, pixel_scale=0.02, size=401, oversample=3),
        lambda f: moffat_kernel(f, beta=3.5, pixel_scale=0.02, size=401, oversample=3),
        lambda f: moffat_kernel(f, beta=2.5, pixel_scale=0.02, size=401, oversample=3),
    ],
    ids=["gaussian", "moffat3.5", "moffat2.5"],
)
@pytest.mark.parametrize("fwhm", [0.9, 1.8])
def test_kernel_has_requested_fwhm(maker, fwhm):
    k = maker(fwhm)
    assert abs(k.sum() - 1.0) < 1e-12
    assert measured_fwhm(k, pixel_scale=0.02) == pytest.approx(fwhm, rel=0.02)


def test_profile_width_formulas():
    # the Moffat profile at r = FWHM / 2 is exactly half its peak
    for beta in (2.5, 3.5, 4.765):
        a = moffat_alpha(1.3, beta)
        assert (1.0 + (0.65 / a) ** 2) ** (-beta) == pytest.approx(0.5, rel=1e-12)
    s = fwhm_to_sigma(1.3)
    assert math.exp(-0.5 * (0.65 / s) ** 2) == pytest.approx(0.5, rel=1e-12)


def test_measured_fwhm_on_coarse_kernel_is_close():
    # at the survey pixel scale the pixel-integrated width is only slightly broader
    k = gaussian_kernel(1.3, pixel_scale=PS)
    assert 1.3 <= measured_fwhm(k, PS) <= 1.3 * 1.06


def test_noise_equivalent_area_gaussian():
    # NEA of a Gaussian is 4 pi sigma^2; pixel integration adds 1/12 px^2 per axis
    fwhm = 1.3
    sig_pix = fwhm_to_sigma(fwhm) / PS
    k = gaussian_kernel(fwhm, pixel_scale=PS, size=33)
    assert noise_equivalent_area(k) == pytest.approx(4 * math.pi * (sig_pix**2 + 1.0 / 12), rel=0.01)
    # a delta kernel has NEA 1
    d = np.zeros((5, 5))
    d[2, 2] = 1.0
    assert noise_equivalent_area(d) == pytest.approx(1.0)


@pytest.mark.parametrize("maker", [gaussian_kernel, moffat_kernel])
def test_kernel_argument_errors(maker):
    with pytest.raises(ValueError, match="size"):
        maker(1.2, size=32)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fwhm_arcsec"):
            maker(bad)
    with pytest.raises(ValueError, match="pixel_scale"):
        maker(1.2, pixel_scale=0.0)


def test_psf_kernel_dispatch_and_errors():
    np.testing.assert_array_equal(psf_kernel("gaussian", 1.1), gaussian_kernel(1.1))
    np.testing.assert_array_equal(psf_kernel("moffat", 1.1, beta=3.0), moffat_kernel(1.1, beta=3.0))
    with pytest.raises(ValueError, match="gaussian.*moffat"):
        psf_kernel("airy", 1.1)
    with pytest.raises(ValueError, match="beta"):
        moffat_kernel(1.1, beta=1.0)


# --------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------
def test_convolution_delta_stays_centred_and_orientation():
    rng = np.random.default_rng(0)
    k = rng.random((9, 9))  # deliberately asymmetric
    k /= k.sum()
    img = np.zeros((N, N))
    img[32, 32] = 1.0
    out = convolve_psf(img, k)
    assert out.shape == (N, N)
    # the kernel's central pixel lands on (32, 32), with the kernel's own orientation
    np.testing.assert_allclose(out[28:37, 28:37], k, rtol=0, atol=1e-14)
    assert abs(out.sum() - 1.0) < 1e-12

    m = moffat_kernel(1.3)
    out = convolve_psf(img, m)
    assert np.unravel_index(np.argmax(out), out.shape) == (32, 32)
    np.testing.assert_allclose(out[16:49, 16:49], m, rtol=0, atol=1e-14)


def test_convolution_conserves_flux():
    x, y = _pixel_coords((31.3, 32.6))
    img = np.exp(-0.5 * (x**2 + y**2) / 0.3**2) + 0.2 * np.exp(-0.5 * ((x - 0.8) ** 2 + y**2) / 0.2**2)
    for k in (gaussian_kernel(1.8), moffat_kernel(1.3, beta=2.5)):
        out = convolve_psf(img, k)
        assert abs(out.sum() / img.sum() - 1.0) < 1e-10


def test_convolution_no_wraparound():
    img = np.zeros((N, N))
    img[30, 1] = 1.0
    out = convolve_psf(img, moffat_kernel(1.8, beta=2.5))
    assert np.abs(out[:, -8:]).max() < 1e-14  # nothing wrapped to the right edge
    assert out[30, 1] == out.max()
    assert out.sum() < 0.95  # the part beyond the left edge is lost, not wrapped


def test_convolution_rejects_even_kernel():
    with pytest.raises(AssertionError, match="odd"):
        convolve_psf(np.zeros((N, N)), np.ones((4, 4)) / 16)


# --------------------------------------------------------------------------
# rendering: total flux against independent magnifications
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lenstronomy_tools():
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LensModel.lens_model_extensions import LensModelExtensions
    from lenstronomy.LensModel.Solver.lens_equation_solver import LensEquationSolver

    lm = LensModel(["SIE", "SHEAR"])
    return lm, LensEquationSolver(lm), LensModelExtensions(lm)


def _point_magnification(tools, kw, theta_e, sx, sy):
    lm, solver, _ = tools
    xs, ys = solver.image_position_from_source(
        sx, sy, kw, min_distance=0.01, search_window=4.0 * theta_e + 2.0, precision_limit=1e-10,
        num_iter_max=200,
    )
    assert len(xs) in (2, 4), f"solver found {len(xs)} images for source ({sx}, {sy})"
    return float(np.abs(lm.magnification(xs, ys, kw)).sum())


# (theta_e, q, phi_deg, gamma1, gamma2, src_x, src_y, reff): every quadrature node of the
# source lies well away from the caustics (guarded in the test)
MAG_CONFIGS = [
    (1.0, 1.0, 0.0, 0.0, 0.0, 0.30, 0.02, 0.05),
    (1.2, 0.9, 80.0, 0.03, 0.0, 0.10, -0.45, 0.05),
    (2.0, 0.8, -40.0, 0.0, 0.04, 0.02, 0.50, 0.05),
    (1.3, 0.75, 0.0, 0.0, 0.0, 0.30, 0.30, 0.05),
    (1.0, 0.7, 60.0, 0.02, 0.02, -0.35, -0.35, 0.05),
    (1.5, 1.0, 0.0, 0.04, 0.0, 0.05, 0.45, 0.05),
    (1.6, 1.0, 0.0, 0.01, 0.0, 0.48, 0.12, 0.08),
]


@pytest.mark.parametrize("cfg", MAG_CONFIGS, ids=[f"te{c[0]}_q{c[1]}_s{c[5]},{c[6]}" for c in MAG_CONFIGS])
def test_total_flux_matches_solver_magnification(cfg, lenstronomy_tools):
    theta_e, q, phi, g1, g2, sx, sy, reff = cfg
    kw = ArcRenderer.lens_kwargs(theta_e, q, phi, g1, g2)
    h = reff / B1  # exponential scale length (arcsec)

    # guard: the source is far from the caustics in units of its scale length
    _, _, ra_cau, dec_cau = lenstronomy_tools[2].critical_curve_caustics(kw, compute_window=8, grid_scale=0.01)
    d_caustic = min(np.hypot(np.asarray(a) - sx, np.asarray(b) - sy).min() for a, b in zip(ra_cau, dec_cau))
    nodes, weights = roots_genlaguerre(3, 1.0)  # radial Gauss quadrature for the weight r exp(-r/h)
    assert nodes.max() * h < 0.9 * d_caustic, "test configuration too close to a caustic"

    # reference: point-source magnification (solver) averaged over the round source's light.
    # The plain point-source value differs by 1-3% for reff = 0.05 arcsec at these offsets
    # (the finite-source correction), hence the average.
    weights = weights / weights.sum()
    n_ang = 8
    mu_ref = 0.0
    for x_i, w_i in zip(nodes, weights):
        for k in range(n_ang):
            t = 2 * np.pi * (k + 0.5) / n_ang
            mu_ref += w_i / n_ang * _point_magnification(
                lenstronomy_tools, kw, theta_e, sx + h * x_i * np.cos(t), sy + h * x_i * np.sin(t)
            )
    mu_point = _point_magnification(lenstronomy_tools, kw, theta_e, sx, sy)
    assert abs(mu_ref / mu_point - 1) < 0.03  # compact source: close to the point-source value

    flux = 3.7
    img, info = render_arc(theta_e, q, phi, g1, g2, sx, sy, reff, 0.0, 0.0, flux)
    assert img.shape == (N, N) and img.dtype == np.float64
    assert info["magnification"] == pytest.approx(img.sum() / flux, rel=1e-12)
    assert img.sum() == pytest.approx(mu_ref * flux, rel=0.01)
    conv = convolve_psf(img, moffat_kernel(1.3))
    assert conv.sum() == pytest.approx(img.sum(), rel=1e-10)
    assert conv.sum() == pytest.approx(mu_ref * flux, rel=0.01)


def test_centred_source_finite_magnification_matches_sis_analytic():
    theta_e, reff = 1.0, 0.1
    h = reff / B1
    img, info = render_arc(theta_e, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, reff, 0.0, 0.0, 1.0)
    mu = info["magnification"]
    assert np.isfinite(mu) and mu > 10
    # SIS: total point magnification 2 theta_E / beta inside theta_E, 1 + theta_E / beta outside;
    # the exponential source has radial density beta exp(-beta / h) / h^2
    p = lambda b: b * np.exp(-b / h) / h**2  # noqa: E731
    inner = integrate.quad(lambda b: 2 * theta_e / b * p(b), 0, theta_e, limit=200)[0]
    outer = integrate.quad(lambda b: (1 + theta_e / b) * p(b), theta_e, np.inf, limit=200)[0]
    assert mu == pytest.approx(inner + outer, rel=0.01)


# --------------------------------------------------------------------------
# rendering: geometry
# --------------------------------------------------------------------------
def test_centred_source_makes_uniform_ring_at_theta_e():
    theta_e = 1.5
    img, _ = render_arc(theta_e, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 1.0)
    r_mean, x_mean, y_mean = _ring_stats(img)
    assert abs(r_mean - theta_e) < 0.25 * PS
    assert abs(x_mean) < 0.02 * PS and abs(y_mean) < 0.02 * PS
    # flux in 8 angular sectors, each pixel's flux shared by the fraction of its area in a sector
    ss = 10
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    ax = (np.arange(N)[:, None] + sub[None, :]).ravel() - 32.0
    sx, sy = np.meshgrid(ax, ax)
    sector = (np.mod(np.arctan2(sy, sx), 2 * np.pi) // (np.pi / 4)).astype(int).reshape(N, ss, N, ss)
    sectors = np.array([(img * (sector == k).mean(axis=(1, 3))).sum() for k in range(8)])
    assert sectors.sum() == pytest.approx(img.sum())
    assert sectors.max() / sectors.min() < 1.10


@pytest.mark.parametrize("adaptive", [True, False])
def test_lens_centre_subpixel_offset(adaptive):
    theta_e, center = 1.2, (32.3, 31.6)
    img, _ = render_arc(theta_e, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.15, 0.0, 0.0, 1.0, center=center, adaptive=adaptive)
    rows, cols = np.mgrid[0:N, 0:N]
    col_c = (img * cols).sum() / img.sum()
    row_c = (img * rows).sum() / img.sum()
    assert col_c == pytest.approx(32.3, abs=0.05)
    assert row_c == pytest.approx(31.6, abs=0.05)
    r_mean, _, _ = _ring_stats(img, center)
    assert abs(r_mean - theta_e) < 0.25 * PS


def test_orientation_conventions():
    # source displaced towards +x (+columns): the bright outer image is at col > cx
    img, _ = render_arc(1.2, 1.0, 0.0, 0.0, 0.0, 0.4, 0.05, 0.08, 0.0, 0.0, 1.0)
    r, c = np.unravel_index(np.argmax(img), img.shape)
    assert c > 32 + 4 and abs(r - 32) <= 2
    # source displaced towards +y (+rows)
    img, _ = render_arc(1.2, 1.0, 0.0, 0.0, 0.0, 0.05, 0.4, 0.08, 0.0, 0.0, 1.0)
    r, c = np.unravel_index(np.argmax(img), img.shape)
    assert r > 32 + 4 and abs(c - 32) <= 2
    # SIE deflection along the mass major axis (position angle phi, degrees from +x towards +y)
    # and along the minor axis: analytic Kormann et al. (1994) values for the lenstronomy
    # intermediate-axis theta_E normalisation
    theta_e, q = 1.5, 0.6
    s = math.sqrt(1 - q * q)
    alpha_major = theta_e * math.sqrt(q) / s * math.atan(s / q)
    alpha_minor = theta_e * math.sqrt(q) / s * math.atanh(s)
    renderer = get_renderer(N, PS, 4, True)
    x, y = renderer.image_plane_grid()
    r = np.hypot(x, y)
    ang = np.degrees(np.arctan2(y, x))
    for phi in (0.0, 30.0, 90.0, 135.0):
        bx, by = renderer.ray_shoot(theta_e, q, phi, 0.0, 0.0)
        alpha = np.hypot(x - bx, y - by)
        for direction, expected in ((phi, alpha_major), (phi + 90, alpha_minor)):
            sel = (np.abs((ang - direction + 180) % 360 - 180) < 0.5) & (r > 0.5)
            sel |= (np.abs((ang - direction) % 360 - 180) < 0.5) & (r > 0.5)
            assert sel.sum() > 10
            np.testing.assert_allclose(alpha[sel], expected, rtol=2e-3)
    # an external shear gamma1 > 0 stretches images along x: a centred source's ring is wider in x
    img, _ = render_arc(1.5, 1.0, 0.0, 0.05, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 1.0)
    xp, yp = _pixel_coords()
    w = img / img.sum()
    assert (w * xp * xp).sum() > 1.05 * (w * yp * yp).sum()


def _numpy_exponential(src_x, src_y, reff, e, phi_deg, ss=16):
    """Independent unit-flux exponential (product-average radius) integrated over pixels."""
    q = 1 - e
    h = reff / B1
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    ax = ((np.arange(N)[:, None] + sub[None, :]).ravel() - 32.0) * PS
    x, y = np.meshgrid(ax, ax)
    c, s = math.cos(math.radians(phi_deg)), math.sin(math.radians(phi_deg))
    dx, dy = x - src_x, y - src_y
    u, v = c * dx + s * dy, -s * dx + c * dy
    R = np.sqrt(q * u**2 + v**2 / q)
    sb = np.exp(-R / h) / (2 * np.pi * h**2)  # integrates to 1 over the plane
    return sb.reshape(N, ss, N, ss).sum(axis=(1, 3)) * (PS / ss) ** 2


@pytest.mark.parametrize("reff,e,phi", [(0.15, 0.4, 30.0), (0.08, 0.0, 0.0), (0.3, 0.2, -70.0)])
def test_unlensed_source_is_the_source(reff, e, phi):
    flux = 12.5
    sx, sy = 0.3, -0.2
    img, info = render_arc(1e-4, 1.0, 0.0, 0.0, 0.0, sx, sy, reff, e, phi, flux)
    assert img.sum() == pytest.approx(flux, rel=0.01)
    assert info["magnification"] == pytest.approx(1.0, rel=0.01)
    ref = _numpy_exponential(sx, sy, reff, e, phi) * flux
    assert np.abs(img - ref).sum() / flux < 0.01
    rows, cols = np.mgrid[0:N, 0:N]
    for grid, expected in ((cols, 32 + sx / PS), (rows, 32 + sy / PS)):
        centroid = (img * grid).sum() / img.sum()
        assert centroid == pytest.approx((ref * grid).sum() / ref.sum(), abs=0.005)
        assert centroid == pytest.approx(expected, abs=0.1)  # pixel-centroid bias of a compact source


def test_adaptive_refinement_against_fine_grid_and_plain_mode():
    args = (0.5, 0.8, 20.0, 0.02, 0.0, 0.3, 0.1, 0.06, 0.2, 50.0)
    fine = ArcRenderer(supersample=24, adaptive=False).lensed_unit_image(*args)
    adaptive = get_renderer(N, PS, 4, True).lensed_unit_image(*args)
    assert np.abs(adaptive - fine).sum() / fine.sum() < 0.005
    plain_renderer = get_renderer(N, PS, 4, False)
    plain = plain_renderer.lensed_unit_image(*args)
    bx, by = plain_renderer.ray_shoot(*args[:5])
    np.testing.assert_array_equal(plain, plain_renderer.source_image(bx, by, *args[5:]))
    assert np.abs(plain - fine).sum() / fine.sum() > np.abs(adaptive - fine).sum() / fine.sum()


def test_render_argument_errors():
    good = dict(theta_e=1.0, lens_q=0.8, lens_phi_deg=0.0, gamma1=0.0, gamma2=0.0, src_x=0.1, src_y=0.1,
                src_reff=0.1, src_e=0.2, src_phi_deg=0.0, src_flux=1.0)
    for key, bad in [("theta_e", 0.0), ("lens_q", 1.2), ("src_e", 1.0), ("src_reff", -0.1), ("src_flux", np.nan)]:
        with pytest.raises(ValueError, match=key):
            render_arc(**{**good, key: bad})


# --------------------------------------------------------------------------
# bands, photometry, S/N
# --------------------------------------------------------------------------
def test_per_band_images_are_scalar_multiples():
    fg, fr, fz = source_band_fluxes(22.0, 0.4, 0.3)
    assert -2.5 * math.log10(fg / fr) == pytest.approx(0.4)
    assert -2.5 * math.log10(fr / fz) == pytest.approx(0.3)
    assert fr == pytest.approx(mag_to_nmgy(22.0))
    args = (1.3, 0.8, 25.0, 0.01, -0.02, 0.2, -0.15, 0.12, 0.3, 70.0)
    imgs = {}
    for band, f in zip("grz", (fg, fr, fz)):
        imgs[band], info = render_arc(*args, f)
        np.testing.assert_array_equal(imgs[band], info["unit_image"] * f)
    np.testing.assert_allclose(imgs["g"] / fg, imgs["z"] / fz, rtol=1e-13)

    arc, info = render_stamp(*args, {"g": fg, "r": fr, "z": fz}, None)
    assert arc.shape == (3, N, N) and arc.dtype == np.float32
    np.testing.assert_allclose(arc[0] / fg, arc[2] / fz, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(arc[1], imgs["r"], rtol=1e-6, atol=1e-12)
    assert info["src_flux"] == {"g": fg, "r": fr, "z": fz}

    kernels = [moffat_kernel(f) for f in (1.5, 1.3, 1.2)]
    arc_c, info_c = render_stamp(*args, [fg, fr, fz], kernels)
    assert info_c["magnification"] == pytest.approx(info["magnification"], rel=1e-12)
    for i, f in enumerate((fg, fr, fz)):
        assert arc_c[i].sum(dtype=np.float64) == pytest.approx(info["magnification"] * f, rel=1e-5)
        assert info_c["arc_flux"]["grz"[i]] == pytest.approx(info["magnification"] * f, rel=1e-12)
    np.testing.assert_array_equal(arc_c, inject_bands(info["unit_image"], {"g": fg, "r": fr, "z": fz}, kernels))
    with pytest.raises(ValueError, match="band_fluxes"):
        inject_bands(info["unit_image"], {"g": fg, "r": fr}, None)


def test_magnitude_conversions():
    assert mag_to_nmgy(22.5) == pytest.approx(1.0)
    assert mag_to_nmgy(20.0) == pytest.approx(10.0)
    m = np.array([18.0, 21.3, 24.9])
    np.testing.assert_allclose(nmgy_to_mag(mag_to_nmgy(m)), m, rtol=1e-12)
    assert math.isnan(nmgy_to_mag(0.0)) and math.isnan(nmgy_to_mag(-1.0))
    f = source_band_fluxes(np.array([21.0, 22.0]), 0.5, 0.2)
    np.testing.assert_allclose(f[0], mag_to_nmgy(np.array([21.5, 22.5])))
    np.testing.assert_allclose(f[2], mag_to_nmgy(np.array([20.8, 21.8])))


def test_arc_snr_helpers():
    arc = np.zeros((4, 4))
    arc[1, 1], arc[2, 2], arc[3, 3] = 3.0, 4.0, 100.0
    iv = np.full((4, 4), 4.0)
    for masked in (0.0, -1.0, np.nan):  # masked / invalid pixels are ignored
        iv[3, 3] = masked
        assert arc_snr_peak(arc, iv) == pytest.approx(8.0)
        assert arc_snr_integrated(arc, iv) == pytest.approx(math.sqrt((9 + 16) * 4.0))
    assert arc_snr_peak(arc, np.zeros_like(iv)) == 0.0
    assert arc_snr_integrated(arc, np.zeros_like(iv)) == 0.0
    # matched filter S/N >= peak S/N for a real arc
    img, _ = render_arc(1.2, 0.8, 0.0, 0.0, 0.0, 0.2, 0.1, 0.1, 0.0, 0.0, 5.0)
    conv = convolve_psf(img, moffat_kernel(1.2))
    ivar = np.full((N, N), 400.0)
    assert arc_snr_integrated(conv, ivar) > arc_snr_peak(conv, ivar) > 0
