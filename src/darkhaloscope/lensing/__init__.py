"""Strong-lensing physics: PSF kernels and the lenstronomy reference arc renderer.

Units: angles in arcsec (position angles in degrees), pixel scale in
arcsec/pixel, fluxes and pixel values in nanomaggies. No I/O.
"""

from .psf import (
    PSF_MODELS,
    fwhm_to_sigma,
    gaussian_kernel,
    measured_fwhm,
    moffat_alpha,
    moffat_kernel,
    noise_equivalent_area,
    psf_kernel,
)
from .render import (
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

__all__ = [
    "PSF_MODELS",
    "fwhm_to_sigma",
    "gaussian_kernel",
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
