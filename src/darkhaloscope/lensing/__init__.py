"""Strong-lensing physics: PSF kernels, the lenstronomy reference arc renderer, the fast engine
and the :class:`Injector` that composes them for the stamps.

Units: angles in arcsec (position angles in degrees), pixel scale in
arcsec/pixel, fluxes and pixel values in nanomaggies. No I/O.

Modules: :mod:`~darkhaloscope.lensing.psf` (kernels), :mod:`~darkhaloscope.lensing.render`
(the lenstronomy reference renderer, scipy PSF convolution and photometry helpers),
:mod:`~darkhaloscope.lensing.fast` (the numba ray tracer / renderer and its batch API),
:mod:`~darkhaloscope.lensing.convolve` (batched FFT PSF convolution and band injection) and
:mod:`~darkhaloscope.lensing.injector` (:class:`Injector`, :func:`get_engine`).

Engines (``params.yaml`` ``inject.engine``, see :func:`~darkhaloscope.lensing.injector.engine_parts`):
``lenstronomy`` -- :class:`ArcRenderer` on the grid of sub-pixel phases with
``render.inject_phases`` (reference); ``fast`` -- ``fast.render_phase_images`` with
``convolve.inject_phases_batch`` (numba; imported on first use so that numba is loaded only
when needed). Both bin the rays into the ``s_c x s_c`` phases of each pixel
(:func:`phase_factor`) and convolve each phase with the PSF integrated over the pixel box as
seen from it (:func:`phase_kernels`, side from :func:`kernel_size`); see
:mod:`~darkhaloscope.lensing.injector`.
"""

from darkhaloscope.lensing.psf import (
    PSF_MODELS,
    fwhm_to_sigma,
    gaussian_kernel,
    kernel_size,
    phase_factor,
    phase_kernels,
    measured_fwhm,
    moffat_alpha,
    moffat_kernel,
    noise_equivalent_area,
    psf_kernel,
)
from darkhaloscope.lensing.render import (
    BANDS,
    ArcRenderer,
    arc_snr_integrated,
    arc_snr_peak,
    convolve_psf,
    get_renderer,
    inject_bands,
    mag_to_nmgy,
    nmgy_to_mag,
    render_arc,
    render_stamp,
    source_band_fluxes,
)
from darkhaloscope.lensing.injector import ENGINES, Injector, get_engine

__all__ = [
    "ENGINES",
    "Injector",
    "get_engine",
    "PSF_MODELS",
    "fwhm_to_sigma",
    "gaussian_kernel",
    "kernel_size",
    "phase_factor",
    "phase_kernels",
    "measured_fwhm",
    "moffat_alpha",
    "moffat_kernel",
    "noise_equivalent_area",
    "psf_kernel",
    "BANDS",
    "ArcRenderer",
    "arc_snr_integrated",
    "arc_snr_peak",
    "convolve_psf",
    "get_renderer",
    "inject_bands",
    "mag_to_nmgy",
    "nmgy_to_mag",
    "render_arc",
    "render_stamp",
    "source_band_fluxes",
]
