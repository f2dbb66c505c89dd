"""Validation of the fast (numba) injection engine against the lenstronomy reference.

* 240 random lens/source configurations drawn from grid_sota's ranges are
  rendered by both engines (default float32 fast engine, supersample 4 with
  the reference's adaptive refinement) and convolved with a Gaussian and a
  Moffat (beta 3.5) PSF of FWHM 0.9-1.8 arcsec: every pixel within 1% of the
  reference arc's peak pixel and the total flux within 0.5% (the engines
  actually agree to ~1e-5 and ~1e-6).
* The deflection and the unlensed Sersic source are checked point by point
  against lenstronomy's ``LensModel(['SIE', 'SHEAR'])`` and
  ``LightModel(['SERSIC_ELLIPSE'])`` (float64: rtol 1e-6, in practice
  ~1e-15).
* The batched / single-stamp PSF convolution (:mod:`darkhaloscope.lensing.convolve`)
  equals ``convolve_psf`` / ``inject_bands``; ``get_engine`` and ``process_brick`` use
  the fast engine.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits

from darkhaloscope.lensing import (
    ArcRenderer,
    ENGINES,
    convolve_psf,
    get_engine,
    get_renderer,
    inject_bands,
    psf_kernel,
)
from darkhaloscope.errors import ParamsError
from darkhaloscope.lensing import convolve, fast
from darkhaloscope.lensing.fast import FastRenderer, get_fast_renderer, render_unit_images

N, PS, SS = 64, 0.262, 4
KEYS = fast.PARAM_KEYS
N_SETS = 240


def draw_sets(n: int, seed: int) -> tuple[dict, np.ndarray]:
    """Random configurations over grid_sota's ranges (continuous), lens centres with sub-pixel offsets."""
    rng = np.random.default_rng(seed)
    te = rng.uniform(0.5, 2.5, n)
    shear = rng.uniform(0.0, 0.04, n)
    shear_phi = rng.uniform(0.0, np.pi, n)
    r = np.sqrt(rng.uniform(0.0, 1.0, n)) * 0.8 * te
    a = rng.uniform(0.0, 2 * np.pi, n)
    params = {
        "theta_e": te,
        "lens_q": rng.uniform(0.5, 1.0, n),
        "lens_phi_deg": rng.uniform(0.0, 180.0, n),
        "gamma1": shear * np.cos(2 * shear_phi),
        "gamma2": shear * np.sin(2 * shear_phi),
        "src_x": r * np.cos(a),
        "src_y": r * np.sin(a),
        "src_reff": rng.uniform(0.06, 0.20, n),
        "src_e": rng.uniform(0.0, 0.4, n),
        "src_phi_deg": rng.uniform(0.0, 180.0, n),
    }
    params["lens_q"][:4] = 1.0  # the exactly round lens (lenstronomy's q -> 0.99999999 branch)
    centers = 32.0 + rng.uniform(-0.5, 0.5, (n, 2))
    return params, centers


def args_of(params: dict, i: int) -> list[float]:
    return [float(params[k][i]) for k in KEYS]


@pytest.fixture(scope="module")
def rendered():
    """Reference and fast unit images of N_SETS configurations, plus two PSFs per configuration."""
    params, centers = draw_sets(N_SETS, seed=2024)
    ref_engine = get_renderer(N, PS, SS, True)
    ref = np.array([ref_engine.lensed_unit_image(*args_of(params, i), center=tuple(centers[i]))
                    for i in range(N_SETS)])
    fast_f32 = render_unit_images(params, centers, N, PS, SS)
    rng = np.random.default_rng(7)
    fw = rng.uniform(0.9, 1.8, (N_SETS, 2))
    kernels = np.array([[psf_kernel("gaussian", fw[i, 0], pixel_scale=PS),
                         psf_kernel("moffat", fw[i, 1], beta=3.5, pixel_scale=PS)] for i in range(N_SETS)])
    return {"params": params, "centers": centers, "ref": ref, "fast": fast_f32, "kernels": kernels}


def agreement(fast_imgs: np.ndarray, ref_imgs: np.ndarray) -> tuple[float, float]:
    """(max over stamps of max |fast - ref| / ref peak, max |flux ratio - 1|)."""
    axes = tuple(range(1, ref_imgs.ndim))
    peak = ref_imgs.max(axis=axes)
    pix = np.abs(fast_imgs - ref_imgs).max(axis=axes) / peak
    flux = np.abs(fast_imgs.sum(axis=axes) / ref_imgs.sum(axis=axes) - 1)
    return float(pix.max()), float(flux.max())


# --------------------------------------------------------------------------
# end-to-end agreement over the random configurations
# --------------------------------------------------------------------------
def test_unit_images_match_reference(rendered):
    ref, got = rendered["ref"], rendered["fast"]
    assert got.shape == ref.shape == (N_SETS, N, N) and got.dtype == np.float64
    assert np.all(ref.max(axis=(1, 2)) > 0)
    pix, flux = agreement(got, ref)
    assert pix < 1e-4, pix      # float32 rays: ~1e-5 of the peak pixel
    assert flux < 1e-5, flux


@pytest.mark.parametrize("model", ["gaussian", "moffat"])
def test_psf_convolved_arcs_match_reference(rendered, model):
    j = 0 if model == "gaussian" else 1
    ref, got, ker = rendered["ref"], rendered["fast"], rendered["kernels"][:, j]
    ref_c = np.array([convolve_psf(ref[i], ker[i]) for i in range(N_SETS)])
    kidx = np.arange(N_SETS)[:, None]
    for conv in (convolve.convolve_psf_batch(got, ker, kidx),                          # float64 FFTs
                 convolve.inject_bands_batch(got, np.ones((N_SETS, 1)), ker, kidx)):   # float32 FFTs
        conv = conv[:, 0].astype(np.float64)
        pix, flux = agreement(conv, ref_c)
        assert pix <= 0.01, pix      # the acceptance criterion; in practice ~1e-5
        assert flux <= 0.005, flux   # in practice ~1e-6
        assert pix < 1e-4 and flux < 1e-5


def test_float64_engine_is_exact(rendered):
    sel = slice(0, 24)
    params = {k: v[sel] for k, v in rendered["params"].items()}
    got = render_unit_images(params, rendered["centers"][sel], N, PS, SS, dtype=np.float64)
    pix, flux = agreement(got, rendered["ref"][sel])
    assert pix < 1e-10 and flux < 1e-10, (pix, flux)
    # the pixel cull drops nothing above the ray cut
    full = render_unit_images(params, rendered["centers"][sel], N, PS, SS, dtype=np.float64, cull=False)
    assert np.abs(full - got).max() <= 1e-14 * got.max()


def test_single_stamp_renderer_matches_batch(rendered):
    r = get_engine("fast", N, PS, SS)
    assert isinstance(r, FastRenderer) and r is get_fast_renderer(N, PS, SS, True)
    for i in range(0, N_SETS, 40):
        img = r.lensed_unit_image(*args_of(rendered["params"], i), center=tuple(rendered["centers"][i]))
        assert img.shape == (N, N) and img.dtype == np.float64
        np.testing.assert_array_equal(img, rendered["fast"][i])


def test_adaptive_off_and_other_supersample_match_reference(rendered):
    params = {k: v[:12] for k, v in rendered["params"].items()}
    centers = rendered["centers"][:12]
    for ss, adaptive in ((4, False), (3, True), (6, True)):
        ref_engine = ArcRenderer(N, PS, ss, adaptive=adaptive)
        ref = np.array([ref_engine.lensed_unit_image(*args_of(params, i), center=tuple(centers[i]))
                        for i in range(12)])
        got = render_unit_images(params, centers, N, PS, ss, adaptive=adaptive, dtype=np.float64)
        pix, flux = agreement(got, ref)
        assert pix < 1e-10 and flux < 1e-10, (ss, adaptive, pix, flux)


@pytest.mark.parametrize("case", [
    # n != 1 Sersic and a very flat lens take the general (libm) code path
    dict(n_sersic=2.5), dict(n_sersic=0.7), dict(lens_q=0.15), dict(lens_q=0.2, n_sersic=4.0),
])
def test_general_code_path_matches_reference(case):
    args = dict(theta_e=1.1, lens_q=0.8, lens_phi_deg=35.0, gamma1=0.02, gamma2=-0.01, src_x=0.2,
                src_y=-0.15, src_reff=0.12, src_e=0.25, src_phi_deg=70.0, n_sersic=1.0)
    args.update(case)
    n_sersic = args.pop("n_sersic")
    ref = get_renderer(N, PS, SS, True).lensed_unit_image(*args.values(), center=(31.8, 32.3), n_sersic=n_sersic)
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        got = FastRenderer(N, PS, SS, dtype=dtype).lensed_unit_image(*args.values(), center=(31.8, 32.3),
                                                                   n_sersic=n_sersic)
        pix, flux = agreement(got[None], ref[None])
        assert pix < tol and flux < tol, (dtype, pix, flux)


def test_unlensed_source_and_far_source():
    # negligible lens: the image is the pixel-integrated source itself
    args = (1e-4, 1.0, 0.0, 0.0, 0.0, 0.3, -0.2, 0.15, 0.4, 30.0)
    ref = get_renderer(N, PS, SS, True).lensed_unit_image(*args)
    got = get_fast_renderer(N, PS, SS).lensed_unit_image(*args)
    pix, flux = agreement(got[None], ref[None])
    assert pix < 1e-4 and flux < 1e-5
    assert got.sum() == pytest.approx(1.0, rel=0.01)
    # a source far outside the caustics still gives its (weak) images
    args = (0.5, 0.7, 10.0, 0.0, 0.0, 3.0, 1.0, 0.1, 0.0, 0.0)
    ref = get_renderer(N, PS, SS, True).lensed_unit_image(*args)
    got = get_fast_renderer(N, PS, SS).lensed_unit_image(*args)
    pix, flux = agreement(got[None], ref[None])
    assert pix < 1e-4 and flux < 1e-5


# --------------------------------------------------------------------------
# point-by-point exactness against lenstronomy
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lenstronomy_models():
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    return LensModel(["SIE", "SHEAR"]), LightModel(["SERSIC_ELLIPSE"])


def test_deflection_matches_lenstronomy(rendered, lenstronomy_models):
    lm, _ = lenstronomy_models
    rng = np.random.default_rng(11)
    params = rendered["params"]
    for i in range(0, N_SETS, 8):
        p = {k: params[k][i:i + 1] for k in KEYS}
        kw = ArcRenderer.lens_kwargs(*[params[k][i] for k in KEYS[:5]])
        r = np.concatenate([10 ** rng.uniform(-3, 1, 300), [0.0]])
        a = rng.uniform(0, 2 * np.pi, r.size)
        x, y = r * np.cos(a), r * np.sin(a)
        ax_ref, ay_ref = lm.alpha(x, y, kw)
        scale = float(params["theta_e"][i])
        ax, ay = fast.deflection(p, x[None], y[None])
        np.testing.assert_allclose(ax[0], ax_ref, rtol=1e-6, atol=1e-12 * scale)
        np.testing.assert_allclose(ay[0], ay_ref, rtol=1e-6, atol=1e-12 * scale)
        assert max(np.abs(ax[0] - ax_ref).max(), np.abs(ay[0] - ay_ref).max()) < 1e-12 * scale
        bx, by = lm.ray_shooting(x, y, kw)
        sx, sy = fast.source_plane(p, x[None], y[None])
        np.testing.assert_allclose(sx[0], bx, rtol=1e-6, atol=1e-12 * scale)
        np.testing.assert_allclose(sy[0], by, rtol=1e-6, atol=1e-12 * scale)
        # the float32 rays used by the default renderer: ~1e-6 of the Einstein radius
        ax32, ay32 = fast.deflection(p, x[None], y[None], dtype=np.float32)
        assert max(np.abs(ax32[0] - ax_ref).max(), np.abs(ay32[0] - ay_ref).max()) < 2e-6 * (scale + 8.0)


def test_unlensed_sersic_matches_lenstronomy(rendered, lenstronomy_models):
    _, light = lenstronomy_models
    params = rendered["params"]
    rng = np.random.default_rng(12)
    for i in range(0, N_SETS, 12):
        p = {k: params[k][i:i + 1] for k in KEYS}
        kw = get_renderer(N, PS, SS, True).unit_flux_kwargs(*[params[k][i] for k in KEYS[5:]])
        reff = float(params["src_reff"][i])
        r = np.concatenate([reff * 10 ** rng.uniform(-5, 1.2, 400), [0.0]])
        a = rng.uniform(0, 2 * np.pi, r.size)
        bx, by = params["src_x"][i] + r * np.cos(a), params["src_y"][i] + r * np.sin(a)
        ref = light.surface_brightness(bx, by, kw)
        got = fast.sersic_unit_sb(p, bx[None], by[None])[0]
        cut = fast.ray_cut(1.0)  # rays beyond it are 0 (a 1e-14 fraction of the flux)
        inside = ref > math.exp(-cut + 1e-3) * ref.max()
        outside = ref < math.exp(-cut - 1e-3) * ref.max()
        assert inside.sum() > 300
        np.testing.assert_allclose(got[inside], ref[inside], rtol=1e-6)
        assert np.abs(got[inside] / ref[inside] - 1).max() < 1e-11
        assert np.all(got[outside] == 0.0)
        got32 = fast.sersic_unit_sb(p, bx[None], by[None], dtype=np.float32)[0]
        strong = ref > 1e-3 * ref.max()
        np.testing.assert_allclose(got32[strong], ref[strong], rtol=1e-4)


def test_refined_supersample_matches_reference():
    r = get_renderer(N, PS, SS, True)
    fr = FastRenderer(N, PS, SS)
    for reff, e, n in ((0.06, 0.4, 1.0), (0.2, 0.0, 1.0), (0.1, 0.2, 2.0), (0.5, 0.0, 1.0), (0.02, 0.0, 1.0)):
        assert fr.refined_supersample(reff, e, n) == r.refined_supersample(reff, e, n)


# --------------------------------------------------------------------------
# PSF convolution and band injection
# --------------------------------------------------------------------------
def test_convolve_psf_batch_equals_convolve_psf():
    rng = np.random.default_rng(3)
    imgs = rng.random((5, N, N)) ** 6
    imgs[1] = 0.0
    imgs[2, :, :] = 0.0
    imgs[2, 3, 60] = 1.0  # a single pixel at the edge
    imgs[3, :20, :] = 0.0
    kers = np.array([psf_kernel("moffat", 1.3), psf_kernel("gaussian", 0.9), psf_kernel("moffat", 1.8, beta=2.5)])
    idx = rng.integers(0, 3, (5, 3))
    got = convolve.convolve_psf_batch(imgs, kers, idx)
    assert got.shape == (5, 3, N, N) and got.dtype == np.float64
    for b in range(5):
        for j in range(3):
            ref = convolve_psf(imgs[b], kers[idx[b, j]])
            np.testing.assert_allclose(got[b, j], ref, rtol=0, atol=1e-14 * max(imgs[b].max(), 1e-300))
    # every kernel on every image, float32 transforms
    got32 = convolve.convolve_psf_batch(imgs, kers, dtype=np.float32)
    ref = np.array([[convolve_psf(imgs[b], k) for k in kers] for b in range(5)])
    assert np.abs(got32 - ref).max() < 1e-6 * imgs.max()
    with pytest.raises(ValueError, match="odd"):
        convolve.convolve_psf_batch(imgs, np.ones((1, 4, 4)) / 16)


def test_inject_bands_drop_in(rendered):
    unit = rendered["fast"][5]
    kers = [psf_kernel("moffat", f) for f in (1.5, 1.3, 1.2)]
    fluxes = {"g": 2.0, "r": 3.0, "z": 4.5}
    ref = inject_bands(unit, fluxes, kers)
    for dtype, tol in ((np.float64, 1e-6), (np.float32, 1e-6)):
        got = convolve.inject_bands(unit, fluxes, kers, dtype=dtype)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.abs(got.astype(np.float64) - ref).max() <= tol * ref.max()
    np.testing.assert_array_equal(convolve.inject_bands(unit, [2.0, 3.0, 4.5], None),
                                  inject_bands(unit, fluxes, None))
    batch = convolve.inject_bands_batch(rendered["fast"][:3], [2.0, 3.0, 4.5], kers, dtype=np.float64)
    for b in range(3):
        np.testing.assert_allclose(batch[b], inject_bands(rendered["fast"][b], fluxes, kers),
                                   rtol=0, atol=1e-6 * batch[b].max())
    with pytest.raises(ValueError, match="band_fluxes"):
        convolve.inject_bands(unit, {"g": 1.0, "r": 1.0}, kers)


# --------------------------------------------------------------------------
# API, validation, wiring
# --------------------------------------------------------------------------
def test_get_engine():
    assert ENGINES == ("lenstronomy", "fast")
    assert isinstance(get_engine("lenstronomy", N, PS, SS), ArcRenderer)
    assert get_engine("lenstronomy", N, PS, SS) is get_renderer(N, PS, SS, True)
    assert isinstance(get_engine("fast", N, PS, SS), FastRenderer)
    with pytest.raises(ValueError, match="engine"):
        get_engine("gpu", N, PS, SS)


def test_argument_errors():
    r = get_fast_renderer(N, PS, SS)
    good = dict(theta_e=1.0, lens_q=0.8, lens_phi_deg=0.0, gamma1=0.0, gamma2=0.0, src_x=0.1, src_y=0.1,
                src_reff=0.1, src_e=0.2, src_phi_deg=0.0)
    for key, bad in [("theta_e", 0.0), ("lens_q", 1.2), ("src_e", 1.0), ("src_reff", -0.1), ("gamma1", np.nan)]:
        with pytest.raises(ValueError, match=key):
            r.lensed_unit_image(**{**good, key: bad})
        with pytest.raises(ValueError, match=key):
            render_unit_images({**good, key: [bad, 1.0]}, [[32, 32], [32, 32]])
    with pytest.raises(ValueError, match="lacks"):
        render_unit_images({k: v for k, v in good.items() if k != "src_x"})
    with pytest.raises(ValueError, match="centers"):
        render_unit_images(good, [[32.0, 32.0, 1.0]])
    with pytest.raises(ValueError, match="dtype"):
        render_unit_images(good, dtype=np.float16)
    # scalars broadcast; default centre (32, 32)
    img = render_unit_images(good)
    assert img.shape == (1, N, N)
    np.testing.assert_array_equal(img[0], r.lensed_unit_image(**good))


def test_process_brick_with_fast_engine(tmp_path, inj):
    from darkhaloscope.stamps.cutout import process_brick
    from darkhaloscope.survey.bricks import brick_wcs, coadd_relpath

    brick, ra_c, dec_c, n = "1500p005", 150.0, 0.5, 200
    wcs = brick_wcs(ra_c, dec_c, n)
    rng = np.random.default_rng(5)
    for band in "grz":
        for kind, data in (("image", rng.normal(0, 0.01, (n, n))), ("invvar", np.full((n, n), 100.0))):
            path = tmp_path / coadd_relpath(brick, band, kind, ".fits")
            path.parent.mkdir(parents=True, exist_ok=True)
            fits.PrimaryHDU(data.astype(np.float32), header=wcs.to_header()).writeto(path)
    rows = []
    for sid, (x, y) in enumerate([(100.3, 90.6), (60.8, 130.2)]):
        ra, dec = wcs.all_pix2world([x], [y], 0)
        rows.append({"sample_id": sid, "ra": float(ra[0]), "dec": float(dec[0]), "is_control": 0,
                     "split": "train", "brickname": brick, "psfsize_g": 1.4, "psfsize_r": 1.2, "psfsize_z": 1.1,
                     "theta_e_arcsec": 1.2 - 0.4 * sid, "lens_q": 0.7, "lens_phi_deg": 20.0, "gamma1": 0.01,
                     "gamma2": -0.02, "src_x_arcsec": 0.15, "src_y_arcsec": -0.1, "src_reff_arcsec": 0.08,
                     "src_e": 0.3, "src_phi_deg": 100.0, "src_mag_r": 20.5, "src_gr": 0.3, "src_rz": 0.1})
    out = {}
    for engine in ("lenstronomy", "fast"):
        out[engine] = process_brick(brick, rows, str(tmp_path), {**inj, "engine": engine})
    for a, b in zip(out["lenstronomy"], out["fast"]):
        assert a["cutout_ok"] == b["cutout_ok"] == 1
        # the engines differ only by the fast engine's extra refinement of cells its bound does not exclude
        assert b["magnification"] == pytest.approx(a["magnification"], rel=1e-3)
        assert b["arc_snr"] == pytest.approx(a["arc_snr"], rel=1e-3)
        arc_diff = np.abs(a["stamp"] - b["stamp"]).max()
        assert arc_diff <= 1e-3 * (a["stamp"] - b.get("clean", 0)).max() or arc_diff <= 1e-4 * a["arc_flux_r"]
    # engine missing from the inject section: refused (no silent default engine)
    with pytest.raises(ParamsError, match="engine"):
        process_brick(brick, rows[:1], str(tmp_path), {k: v for k, v in inj.items() if k != "engine"})
