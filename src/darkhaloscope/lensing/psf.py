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
