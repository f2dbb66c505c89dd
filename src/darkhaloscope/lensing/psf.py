"""Point-spread-function kernels for the injected arcs.

All kernels are 2-D ``float64`` arrays of odd side ``size`` (pixels), centred on
the central pixel ``(size // 2, size // 2)``, PIXEL-INTEGRATED (the profile is
evaluated on an ``oversample x oversample`` sub-grid inside every pixel and
averaged) and normalised to sum to 1 after truncation to the stamp, so that a
convolution conserves flux (nanomaggies) exactly.

Units: FWHM in arcsec, pixel scale in arcsec/pixel, kernel values are the
dimensionless fraction of a point source's flux falling in each pixel.

No I/O happens here.
"""

from __future__ import annotations

import math

import numpy as np

from darkhaloscope.constants import PIXEL_SCALE

__all__ = [
    "PSF_MODELS",
    "fwhm_to_sigma",
    "moffat_alpha",
    "gaussian_kernel",
    "moffat_kernel",
    "psf_kernel",
    "measured_fwhm",
    "noise_equivalent_area",
    "kernel_size",
    "DEFAULT_PHASES",
    "phase_factor",
    "phase_offsets",
    "phase_kernels",
]

#: Valid values of the ``model`` argument of :func:`psf_kernel`.
PSF_MODELS = ("gaussian", "moffat")

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548...


def _check_positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return v


def _check_odd_size(size: int) -> int:
    if isinstance(size, bool) or int(size) != size or int(size) < 1 or int(size) % 2 == 0:
        raise ValueError(
            f"size must be a positive odd integer (pixels) so the kernel has a central pixel, got {size!r}"
        )
    return int(size)


def _check_oversample(oversample: int) -> int:
    if isinstance(oversample, bool) or int(oversample) != oversample or int(oversample) < 1:
        raise ValueError(f"oversample must be a positive integer, got {oversample!r}")
    return int(oversample)


def fwhm_to_sigma(fwhm):
    """Gaussian standard deviation for a full width at half maximum.

    ``sigma = FWHM / (2 sqrt(2 ln 2))``; same unit as ``fwhm`` (arcsec or pixels).
    """
    return fwhm / _FWHM_PER_SIGMA


def moffat_alpha(fwhm, beta):
    """Moffat core width ``alpha`` for a given FWHM and power index ``beta``.

    The Moffat profile is ``I(r) ∝ (1 + (r / alpha)^2)^(-beta)`` and
    ``alpha = FWHM / (2 sqrt(2^(1/beta) - 1))``; ``alpha`` has the unit of
    ``fwhm`` (arcsec or pixels), ``beta`` is dimensionless (> 0).
    """
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _subpixel_radius2(size: int, pixel_scale: float, oversample: int) -> np.ndarray:
    """Squared radius (arcsec^2) from the kernel centre of every sub-pixel centre.

    Returned with shape ``(size, oversample, size, oversample)`` so that averaging
    over axes (1, 3) gives the pixel-integrated kernel.
    """
    half = size // 2
    # sub-pixel centre offsets inside a pixel, in pixel units, symmetric around 0
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    coord = ((np.arange(size) - half)[:, None] + sub[None, :]) * pixel_scale  # (size, oversample)
    y2 = (coord**2)[:, :, None, None]
    x2 = (coord**2)[None, None, :, :]
    return y2 + x2


def _finish(profile: np.ndarray) -> np.ndarray:
    kernel = profile.mean(axis=(1, 3))
    kernel = kernel / kernel.sum()
    # a second pass makes the sum 1 to the last ulp in the common case
    return kernel / kernel.sum()


def gaussian_kernel(
    fwhm_arcsec: float,
    pixel_scale: float = PIXEL_SCALE,
    size: int = 33,
    oversample: int = 5,
) -> np.ndarray:
    """Pixel-integrated circular Gaussian PSF kernel.

    Parameters
    ----------
    fwhm_arcsec : full width at half maximum (arcsec), finite and > 0.
    pixel_scale : arcsec per pixel.
    size : kernel side (pixels), odd.
    oversample : sub-pixels per pixel side used for the pixel integration.

    Returns
    -------
    ``(size, size)`` float64 array centred on ``(size // 2, size // 2)``,
    summing to 1 (dimensionless flux fraction per pixel).
    """
    fwhm = _check_positive("fwhm_arcsec", fwhm_arcsec)
    ps = _check_positive("pixel_scale", pixel_scale)
    size = _check_odd_size(size)
    oversample = _check_oversample(oversample)
    sigma = fwhm / _FWHM_PER_SIGMA
    r2 = _subpixel_radius2(size, ps, oversample)
    return _finish(np.exp(-0.5 * r2 / sigma**2))


def moffat_kernel(
    fwhm_arcsec: float,
    beta: float = 3.5,
    pixel_scale: float = PIXEL_SCALE,
    size: int = 33,
    oversample: int = 5,
) -> np.ndarray:
    """Pixel-integrated circular Moffat PSF kernel.

    ``I(r) ∝ (1 + (r / alpha)^2)^(-beta)`` with ``alpha = moffat_alpha(FWHM, beta)``.

    Parameters
    ----------
    fwhm_arcsec : full width at half maximum (arcsec), finite and > 0.
    beta : Moffat power index (dimensionless), finite and > 1.
    pixel_scale : arcsec per pixel.
    size : kernel side (pixels), odd. The wings beyond the kernel are
        truncated and the kernel is renormalised to sum to 1.
    oversample : sub-pixels per pixel side used for the pixel integration.

    Returns
    -------
    ``(size, size)`` float64 array centred on ``(size // 2, size // 2)``,
    summing to 1.
    """
    fwhm = _check_positive("fwhm_arcsec", fwhm_arcsec)
    beta = _check_positive("beta", beta)
    if beta <= 1.0:
        raise ValueError(f"beta must be > 1 for a Moffat PSF with finite flux, got {beta!r}")
    ps = _check_positive("pixel_scale", pixel_scale)
    size = _check_odd_size(size)
    oversample = _check_oversample(oversample)
    alpha = moffat_alpha(fwhm, beta)
    r2 = _subpixel_radius2(size, ps, oversample)
    return _finish((1.0 + r2 / alpha**2) ** (-beta))


def psf_kernel(
    model: str,
    fwhm_arcsec: float,
    beta: float = 3.5,
    pixel_scale: float = PIXEL_SCALE,
    size: int = 33,
    oversample: int = 5,
) -> np.ndarray:
    """Kernel for ``model`` in :data:`PSF_MODELS` ("gaussian" | "moffat").

    ``beta`` (dimensionless) is used by "moffat" only; FWHM in arcsec, pixel
    scale in arcsec/pixel, size in pixels (odd). See :func:`gaussian_kernel`
    and :func:`moffat_kernel`.
    """
    if model == "gaussian":
        return gaussian_kernel(fwhm_arcsec, pixel_scale=pixel_scale, size=size, oversample=oversample)
    if model == "moffat":
        return moffat_kernel(fwhm_arcsec, beta=beta, pixel_scale=pixel_scale, size=size, oversample=oversample)
    raise ValueError(f"model must be one of {list(PSF_MODELS)}, got {model!r}")


_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10   # fdlibm split of ln 2


def _exp_ieee(x: np.ndarray) -> np.ndarray:
    """exp(x) (x <= 0, float64, ~2e-16 relative) from +, *, rint and ldexp only.

    numpy's own exp / power dispatch SIMD code (AVX2, AVX-512) whose last bits differ between CPUs;
    these operations round identically everywhere, so the kernels (and the stamps) are the same bytes
    on every machine. Cody-Waite reduction x = n ln 2 + r, |r| <= ln 2 / 2, Taylor series of degree 14.
    """
    n = np.rint(x * (1.0 / math.log(2.0)))
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = np.full_like(r, 1.0 / math.factorial(14))
    for k in range(13, -1, -1):
        p = p * r + 1.0 / math.factorial(k)
    return np.ldexp(p, n.astype(np.int64))


def _log_ieee(y: np.ndarray) -> np.ndarray:
    """log(y) (y > 0, float64, ~2e-16 relative) from +, *, / , frexp only (see :func:`_exp_ieee`):
    y = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh((m - 1) / (m + 1)) by its series."""
    m, e = np.frexp(y)
    small = m < math.sqrt(0.5)
    m = np.where(small, m * 2.0, m)
    e = (e - small).astype(np.float64)
    f = (m - 1.0) / (m + 1.0)
    f2 = f * f
    p = np.full_like(f, 1.0 / 25.0)
    for k in range(23, 0, -2):
        p = p * f2 + 1.0 / k
    return 2.0 * f * p + e * _LN2_LO + e * _LN2_HI


def _profile(model: str, r2: np.ndarray, fwhm: float, beta: float) -> np.ndarray:
    """Unnormalised PSF profile at squared radii ``r2`` (arcsec^2), machine-independent to the bit."""
    if model == "gaussian":
        return _exp_ieee(-0.5 * r2 / fwhm_to_sigma(fwhm) ** 2)
    if model == "moffat":
        return _exp_ieee(-beta * _log_ieee(1.0 + r2 / moffat_alpha(fwhm, beta) ** 2))
    raise ValueError(f"model must be one of {list(PSF_MODELS)}, got {model!r}")


def kernel_size(model: str, fwhm_arcsec: float, beta: float = 3.5, pixel_scale: float = PIXEL_SCALE,
                flux_frac: float = 0.998, max_size: int = 127) -> int:
    """Odd kernel side (pixels) that keeps at least ``flux_frac`` of the PSF's total flux.

    The kernel covers every displacement within ``R = (size // 2) * pixel_scale`` arcsec of the
    PSF centre (also for the sub-pixel-shifted kernels of :func:`phase_kernels`), so ``R`` is
    taken from the circular enclosed flux: Gaussian ``1 - exp(-R^2 / 2 sigma^2)``, Moffat
    ``1 - (1 + R^2 / alpha^2)^(1 - beta)``. Capped at ``max_size`` (odd, pixels; a kernel
    wider than twice a 64-pixel stamp changes nothing inside it). The kernels are
    renormalised to sum 1 after truncation, so the kept fraction bounds the bias of every
    kernel value by ``1 / flux_frac - 1`` (0.2% at the default 0.998).
    """
    fwhm = _check_positive("fwhm_arcsec", fwhm_arcsec)
    ps = _check_positive("pixel_scale", pixel_scale)
    f = float(flux_frac)
    if not 0.0 < f < 1.0:
        raise ValueError(f"flux_frac must be in (0, 1), got {flux_frac!r}")
    if model == "gaussian":
        r = fwhm_to_sigma(fwhm) * math.sqrt(-2.0 * math.log1p(-f))
    elif model == "moffat":
        b = _check_positive("beta", beta)
        if b <= 1.0:
            raise ValueError(f"beta must be > 1 for a Moffat PSF with finite flux, got {beta!r}")
        r = float(moffat_alpha(fwhm, b)) * math.sqrt((1.0 - f) ** (1.0 / (1.0 - b)) - 1.0)
    else:
        raise ValueError(f"model must be one of {list(PSF_MODELS)}, got {model!r}")
    half = math.ceil(r / ps - 1e-9)
    return min(2 * half + 1, _check_odd_size(max_size))


#: Default sub-pixel phases per pixel side (params ``inject.psf_phases``): a ray is placed at most
#: 1/8 pixel from where it is (0.1-0.2% of the arc peak for 0.7-1.2 arcsec PSFs; 2 phases: ~0.9%).
DEFAULT_PHASES = 4


def phase_factor(supersample: int, max_phases: int = DEFAULT_PHASES) -> int:
    """Sub-pixel phases per pixel side at which the rays of a ``supersample`` grid are binned before the PSF.

    The largest divisor of ``supersample`` not above ``max_phases`` (4: supersample 4, 8, 12, ...
    -> 4; 2 -> 2; 3 or 6 -> 3), so every phase holds ``supersample / s_c`` rays per side of the
    coarse grid and a ray sits at most ``1 / (2 s_c)`` pixel from its phase centre.
    """
    ss = _check_oversample(supersample)
    return max(d for d in range(1, min(ss, _check_oversample(max_phases)) + 1) if ss % d == 0)


def phase_offsets(s_c: int) -> np.ndarray:
    """Offsets (pixels) of the ``s_c`` phase centres from their pixel's centre: ``(j + 0.5) / s_c - 0.5``."""
    s_c = _check_oversample(s_c)
    return (np.arange(s_c) + 0.5) / s_c - 0.5


def phase_kernels(model: str, fwhm_arcsec: float, beta: float = 3.5, pixel_scale: float = PIXEL_SCALE,
                  s_c: int = DEFAULT_PHASES, size: int | None = None, flux_frac: float = 0.998,
                  oversample: int = 8) -> np.ndarray:
    """Pixel-integrated PSF kernels for flux sitting at each of the ``s_c x s_c`` sub-pixel phases.

    Returns ``(s_c * s_c, size, size)`` float64, phase ``p = jy * s_c + jx`` (row phase ``jy``,
    column phase ``jx``): ``K[p][h + dy, h + dx]`` is the fraction of a point source at
    ``(m + o_jy, m' + o_jx)`` (pixels; ``o_j`` from :func:`phase_offsets`) that falls into pixel
    ``(m + dy, m' + dx)``, the PSF integrated over that pixel's box on an ``oversample x
    oversample`` sub-grid. So a stamp is ``sum_p I_p conv K[p]`` where ``I_p`` holds the flux of
    the rays inside phase ``p`` of each pixel: the pixel boxes are integrated exactly and the
    only approximation is placing a ray at its phase centre (at most ``1 / (2 s_c)`` pixel).
    ``size`` (odd, pixels) defaults to :func:`kernel_size` for ``flux_frac``; every kernel is
    normalised to sum 1 after truncation (bias <= ``1 / flux_frac - 1``). FWHM in arcsec,
    pixel scale in arcsec/pixel, ``beta`` dimensionless (Moffat only).
    """
    fwhm = _check_positive("fwhm_arcsec", fwhm_arcsec)
    ps = _check_positive("pixel_scale", pixel_scale)
    size = kernel_size(model, fwhm, beta, ps, flux_frac) if size is None else _check_odd_size(size)
    s_c = _check_oversample(s_c)
    # one fine grid for all phases: 2 * s_c * q samples per pixel side (>= oversample), so every phase's
    # pixel box starts on a sample edge; box sums of one pixel's samples by cumulative sums, per axis
    q = -(-_check_oversample(oversample) // (2 * s_c))
    n_sub = 2 * s_c * q
    half = size // 2
    ext = half + 1                                           # pixels each side of the PSF centre
    x = (np.arange(2 * ext * n_sub) + 0.5) / n_sub - ext     # sample centres (pixels)
    prof = _profile(model, ((x * ps) ** 2)[:, None] + ((x * ps) ** 2)[None, :], fwhm, beta)
    c = np.zeros((prof.shape[0] + 1, prof.shape[1]))
    np.cumsum(prof, axis=0, out=c[1:])
    box = c[n_sub:] - c[:-n_sub]                             # rows: sums over n_sub samples from each start
    c = np.zeros((box.shape[0], box.shape[1] + 1))
    np.cumsum(box, axis=1, out=c[:, 1:])
    box = c[:, n_sub:] - c[:, :-n_sub]
    d = np.arange(-half, half + 1)
    out = np.empty((s_c * s_c, size, size))
    for jy in range(s_c):
        sy = (d + ext) * n_sub - (2 * jy + 1) * q            # first sample of the box of offset d - o_jy
        for jx in range(s_c):
            sx = (d + ext) * n_sub - (2 * jx + 1) * q
            k = box[sy[:, None], sx[None, :]]
            k = k / k.sum()
            out[jy * s_c + jx] = k / k.sum()
    return out


def _half_width(profile: np.ndarray, peak_index: int, half: float) -> float:
    """Distance (pixels) from ``peak_index`` to the half-maximum crossings, summed
    over both sides, with linear interpolation between the bracketing samples."""
    width = 0.0
    for step in (1, -1):
        i = peak_index
        while 0 <= i + step < profile.size and profile[i + step] > half:
            i += step
        j = i + step
        if not 0 <= j < profile.size:
            raise ValueError("kernel does not fall below half maximum inside the array; enlarge size")
        a, b = profile[i], profile[j]
        width += abs(i - peak_index) + (a - half) / (a - b)
    return width


def measured_fwhm(kernel: np.ndarray, pixel_scale: float = PIXEL_SCALE) -> float:
    """Measured full width at half maximum of a centred, single-peaked kernel (arcsec).

    The width is measured along the row and the column through the brightest
    pixel: on each side the half-maximum crossing is located by linear
    interpolation between the two samples that bracket it; the result is the
    mean of the row and column widths times ``pixel_scale``. Accurate to well
    under 1% when the FWHM spans >~ 20 pixels; on coarse kernels it reports the
    width of the pixel-integrated (i.e. slightly broadened) profile.
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2:
        raise ValueError(f"kernel must be 2-D, got shape {k.shape}")
    ps = _check_positive("pixel_scale", pixel_scale)
    r, c = np.unravel_index(int(np.argmax(k)), k.shape)
    half = 0.5 * k[r, c]
    w_row = _half_width(k[r, :], c, half)
    w_col = _half_width(k[:, c], r, half)
    return 0.5 * (w_row + w_col) * ps


def noise_equivalent_area(kernel: np.ndarray) -> float:
    """Noise-equivalent area ``1 / sum(P^2)`` (pixels) of a kernel normalised to sum 1.

    For background-limited data with per-pixel noise ``sigma_pix`` (nanomaggies),
    the optimal (PSF-weighted) point-source flux error is
    ``sigma_pix * sqrt(NEA)``, so a 5-sigma point-source depth ``f5`` converts
    to ``sigma_pix = f5 / (5 sqrt(NEA))``. The kernel is renormalised to sum 1
    before the computation.
    """
    k = np.asarray(kernel, dtype=np.float64)
    s = k.sum()
    if not np.isfinite(s) or s <= 0:
        raise ValueError("kernel must have a finite positive sum")
    k = k / s
    return float(1.0 / np.sum(k * k))
