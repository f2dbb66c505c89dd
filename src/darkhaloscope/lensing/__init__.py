"""Strong-lensing physics: PSF kernels, the lenstronomy reference arc renderer and the fast engine.

Units: angles in arcsec (position angles in degrees), pixel scale in
arcsec/pixel, fluxes and pixel values in nanomaggies. No I/O.

Engines (``params.yaml`` ``inject.engine``, see :func:`get_engine`):
``lenstronomy`` -- :class:`ArcRenderer` (reference); ``fast`` --
:class:`darkhaloscope.lensing.fast.FastRenderer` (numba, same result;
imported on first use so that numba is loaded only when needed).
"""

from darkhaloscope.constants import PIXEL_SCALE
from darkhaloscope.lensing.psf import (
    PSF_MODELS,
    fwhm_to_sigma,
    gaussian_kernel,
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

#: Valid values of ``engine`` in :func:`get_engine` (params.yaml ``inject.engine``).
ENGINES = ("lenstronomy", "fast")


def get_engine(engine: str = "lenstronomy", n_pix: int = 64, pixel_scale: float = PIXEL_SCALE, supersample: int = 4,
               adaptive: bool = True):
    """The cached arc renderer of an engine: ``lensed_unit_image(...)`` as :class:`ArcRenderer`.

    ``engine``: ``"lenstronomy"`` (:func:`get_renderer`, the reference) or
    ``"fast"`` (:func:`darkhaloscope.lensing.fast.get_fast_renderer`); ``n_pix``
    pixels, ``pixel_scale`` arcsec/pixel, ``supersample`` sub-pixels per side.
    """
    if engine == "lenstronomy":
        return get_renderer(int(n_pix), float(pixel_scale), int(supersample), bool(adaptive))
    if engine == "fast":
        from darkhaloscope.lensing.fast import get_fast_renderer

        return get_fast_renderer(int(n_pix), float(pixel_scale), int(supersample), bool(adaptive))
    raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")


__all__ = [
    "ENGINES",
    "get_engine",
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
