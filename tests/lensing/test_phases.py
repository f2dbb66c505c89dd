"""The sub-pixel-phase injection's parts: kernel sizes, phase kernels, phase binning, the batch calls.

* :func:`psf.kernel_size` keeps >= ``flux_frac`` of the PSF flux (checked against the profile
  integrated on a kernel 4x wider), and the old 33-pixel kernel did not at 1.8-2.5 arcsec.
* :func:`psf.phase_kernels` with one phase is the classical pixel-integrated kernel; with s_c
  phases, a point source at a phase centre is spread exactly as the pixel-integrated PSF
  centred there (brute force on a fine grid).
* :func:`convolve.inject_supersampled_batch` (the interface pixel sources use) equals the fast
  renderer's phase path on the same rays, and :func:`render.inject_phases` (scipy) equals
  :func:`convolve.inject_phases_batch`.
"""

from __future__ import annotations

import numpy as np
import pytest

from darkhaloscope.lensing import convolve, fast, psf, render

PS = 0.262
P = {"theta_e": 1.3, "lens_q": 0.7, "lens_phi_deg": 25.0, "gamma1": 0.01, "gamma2": -0.02, "src_x": 0.12,
     "src_y": -0.08, "src_reff": 0.1, "src_e": 0.3, "src_phi_deg": 70.0}


def _enclosed(model, fwhm, size, beta=3.5):
    """Flux fraction of the PSF inside a size x size pixel box (fine midpoint integration)."""
    big = 4 * size + 1
    n = 8 * big
    x = ((np.arange(n) + 0.5) / 8 - big / 2) * PS
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    prof = psf._profile(model, r2, fwhm, beta)
    inside = (np.abs(x) <= size / 2 * PS)
    return float(prof[np.ix_(inside, inside)].sum() / prof.sum())


@pytest.mark.parametrize("model, fwhm", [("moffat", 1.3), ("moffat", 1.8), ("moffat", 2.5), ("gaussian", 0.7),
                                         ("gaussian", 2.0)])
def test_kernel_size_keeps_the_flux_fraction(model, fwhm):
    k = psf.kernel_size(model, fwhm, 3.5, PS, 0.998)
    assert k % 2 == 1
    assert _enclosed(model, fwhm, k - 1) >= 0.998      # even the box reaching the shifted phases' edge
    if model == "moffat" and fwhm >= 1.8:
        assert _enclosed(model, fwhm, 33) < 0.993        # the previous fixed 33 pixels lost > 0.7%


def test_kernel_size_errors():
    with pytest.raises(ValueError, match="flux_frac"):
        psf.kernel_size("moffat", 1.3, flux_frac=1.0)
    with pytest.raises(ValueError, match="model"):
        psf.kernel_size("airy", 1.3)
    assert psf.kernel_size("moffat", 9.0) == 127       # capped


def test_phase_factor():
    assert [psf.phase_factor(s) for s in (1, 2, 3, 4, 6, 8, 12)] == [1, 2, 3, 4, 3, 4, 4]


def test_one_phase_is_the_pixel_integrated_kernel():
    for model, f in (("gaussian", 0.9), ("moffat", 1.4)):
        k = psf.phase_kernels(model, f, 3.5, PS, 1, 25, oversample=8)
        np.testing.assert_allclose(k[0], psf.psf_kernel(model, f, 3.5, PS, 25, 8), rtol=0, atol=1e-15)


@pytest.mark.parametrize("s_c", [2, 4])
def test_phase_kernels_place_a_point_source_at_its_phase(s_c):
    """A point at phase (jy, jx) of a pixel: pixel values = the PSF integrated over each pixel box."""
    f, size = 0.8, 15
    k = psf.phase_kernels("gaussian", f, 3.5, PS, s_c, size, oversample=16)
    assert np.allclose(k.sum(axis=(1, 2)), 1.0)
    off = psf.phase_offsets(s_c)
    sig = psf.fwhm_to_sigma(f) / PS
    from scipy.special import erf

    edges = np.arange(-(size // 2) - 0.5, size // 2 + 1)
    for jy in range(s_c):
        for jx in range(s_c):
            by = np.diff(0.5 * erf((edges - off[jy]) / (np.sqrt(2) * sig)))
            bx = np.diff(0.5 * erf((edges - off[jx]) / (np.sqrt(2) * sig)))
            exact = np.outer(by, bx)
            exact /= exact.sum()
            assert np.abs(k[jy * s_c + jx] - exact).max() < 2e-4 * exact.max()


def test_bin_phases_keeps_the_flux_and_the_layout():
    rng = np.random.default_rng(1)
    img = rng.uniform(size=(2, 3 * 8, 3 * 8))
    ph = convolve.bin_phases(img, 8, 4)
    assert ph.shape == (2, 16, 3, 3)
    np.testing.assert_allclose(ph.sum(axis=1), img.reshape(2, 3, 8, 3, 8).sum(axis=(2, 4)))
    # phase (jy, jx) = 1 of pixel (1, 2) is the 2 x 2 block of sub-pixels rows 8 + 2 jy.., cols 16 + 2 jx..
    assert ph[0, 1 * 4 + 3, 1, 2] == pytest.approx(img[0, 10:12, 22:24].sum())
    with pytest.raises(ValueError, match="multiple"):
        convolve.bin_phases(img, 6, 4)


def test_inject_supersampled_batch_equals_the_phase_path():
    """The same rays (no refinement) as one supersampled image: the same stamp to float32 rounding."""
    n, ss = 40, 4
    center = [(20.3, 19.6)]
    ph = fast.render_phase_images(P, center, n, PS, ss, adaptive=False, refine_bound=False)
    ss_img = fast.render_unit_images(P, fast.cell_centers(np.array(center), ss), n * ss, PS / ss, 1, adaptive=False)
    kers = [psf.phase_kernels("moffat", f, 3.5, PS, 4) for f in (1.4, 1.2, 1.1)]
    got = convolve.inject_supersampled_batch(ss_img, ss, [[2.0, 3.0, 4.0]], kers)
    want = convolve.inject_phases_batch(ph, [[2.0, 3.0, 4.0]], kers)
    assert got.shape == (1, 3, n, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * want.max())
    ref = render.inject_phases(ph[0], [2.0, 3.0, 4.0], kers)           # scipy reference
    np.testing.assert_allclose(want[0], ref, rtol=0, atol=2e-6 * ref.max())
    assert want[0, 1].sum() == pytest.approx(3.0 * ph.sum(), rel=3e-3)   # flux (0.998-kernels renormalised)
    with pytest.raises(ValueError, match="phases"):
        convolve.inject_phases_batch(ph, [[1.0]], [psf.phase_kernels("moffat", 1.3, 3.5, PS, 2)])
