"""Arc injection as one object: engine, PSF and band scaling, built once from the params ``inject`` section.

:class:`Injector` is composed the way lenstronomy's ``ImageModel(data, psf, lens_model,
source_model)`` composes its parts: the stamp grid (``stamp_size`` pixels of ``pixel_scale``
arcsec), the lens (SIE + external shear) and source (exponential Sersic) models inside the
renderer of the chosen engine, and the PSF (``psf_model`` kernels of ``psf_kernel_size``
pixels) with the matching band injector (PSF convolution and per-band flux scaling). The engine
is decided in one place, :func:`engine_parts`: ``lenstronomy`` -- the reference
:class:`~darkhaloscope.lensing.render.ArcRenderer` with ``render.inject_bands`` (scipy);
``fast`` -- :class:`~darkhaloscope.lensing.fast.FastRenderer` with
``convolve.inject_bands`` (numba + real FFTs, imported on first use).

Units: angles in arcsec (position angles in degrees), lens centres in stamp pixels
(column, row), PSF FWHMs in arcsec, fluxes and pixel values in nanomaggies (AB magnitudes
where named ``mag``), inverse variances in 1 / nanomaggies^2. No I/O.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from darkhaloscope.constants import BANDS, PIXEL_SCALE
from darkhaloscope.errors import ParamsError
from darkhaloscope.lensing import render
from darkhaloscope.lensing.psf import psf_kernel
from darkhaloscope.lensing.render import arc_snr_integrated, arc_snr_peak, get_renderer, source_band_fluxes

__all__ = ["ENGINES", "INJECTOR_KEYS", "Injector", "engine_parts", "get_engine"]

#: Valid values of ``engine`` (params.yaml ``inject.engine``).
ENGINES = ("lenstronomy", "fast")
#: The keys of the params ``inject`` section an :class:`Injector` is built from.
INJECTOR_KEYS = ("engine", "psf_model", "moffat_beta", "supersample", "psf_kernel_size", "stamp_size",
                 "pixel_scale")
#: Sub-pixel oversampling of the PSF kernels (per pixel side).
PSF_OVERSAMPLE = 5
#: Decimals of arcsec to which PSF FWHMs are the same kernel (see :meth:`Injector.psf_kernels`).
FWHM_DECIMALS = 4


def engine_parts(engine: str) -> tuple[Callable, Callable]:
    """``(renderer getter, band injector)`` of an engine: the one place an engine name is resolved.

    The getter is called as ``getter(n_pix, pixel_scale [arcsec], supersample, adaptive)`` and
    returns a cached renderer with ``lensed_unit_image(...)``; the band injector is called as
    ``inject_bands(unit_image, band_fluxes [nanomaggies], kernels, bands=...)``.
    """
    if engine == "lenstronomy":
        return get_renderer, render.inject_bands
    if engine == "fast":  # numba is loaded only when this engine is used
        from darkhaloscope.lensing import convolve, fast

        return fast.get_fast_renderer, convolve.inject_bands
    raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")


def get_engine(engine: str, n_pix: int = 64, pixel_scale: float = PIXEL_SCALE, supersample: int = 4,
               adaptive: bool = True):
    """The cached arc renderer of an engine: ``lensed_unit_image(...)`` as :class:`ArcRenderer`.

    ``engine``: ``"lenstronomy"`` (:func:`get_renderer`, the reference) or
    ``"fast"`` (:func:`darkhaloscope.lensing.fast.get_fast_renderer`); ``n_pix``
    pixels, ``pixel_scale`` arcsec/pixel, ``supersample`` sub-pixels per side.
    """
    getter, _ = engine_parts(engine)
    return getter(int(n_pix), float(pixel_scale), int(supersample), bool(adaptive))


class Injector:
    """Lensed arcs for stamps: the renderer of ``engine``, its band injector and PSF kernels.

    Parameters are those of the params ``inject`` section (:data:`INJECTOR_KEYS`): ``engine``
    (:data:`ENGINES`), ``psf_model`` ("gaussian" | "moffat"), ``moffat_beta``
    (dimensionless), ``supersample`` (sub-pixels per pixel side), ``psf_kernel_size``
    (pixels, odd), ``stamp_size`` (pixels), ``pixel_scale`` (arcsec/pixel); ``bands``: the
    stamp's bands in channel order. S/N and arc flux are measured in the r band (the first
    band when there is no r).

    PSF kernels are built once per (brick, band, FWHM) and kept for the current brick
    (:meth:`psf_kernels`). An Injector pickles as its parameters: a copy (e.g. in a Spark
    task) rebuilds its renderer from the process's cache and starts with no kernels.
    """

    def __init__(self, engine: str, psf_model: str, moffat_beta: float, supersample: int,
                 psf_kernel_size: int, stamp_size: int, pixel_scale: float, bands: Sequence[str] = BANDS):
        self._args = (engine, psf_model, moffat_beta, supersample, psf_kernel_size, stamp_size, pixel_scale,
                      tuple(bands))
        getter, self.inject_bands = engine_parts(engine)
        self.engine, self.psf_model = engine, psf_model
        self.moffat_beta, self.pixel_scale = float(moffat_beta), float(pixel_scale)
        self.supersample, self.psf_kernel_size = int(supersample), int(psf_kernel_size)
        self.stamp_size = int(stamp_size)
        self.bands = tuple(bands)
        self.r = self.bands.index("r") if "r" in self.bands else 0
        self.renderer = getter(self.stamp_size, self.pixel_scale, self.supersample, True)
        self._brick = None
        self._sets: dict = {}     # rounded FWHMs of all bands -> their kernels (current brick)
        self._kernels: dict = {}  # (band, FWHM) -> kernel (current brick)

    @classmethod
    def from_params(cls, inj: Mapping, bands: Sequence[str] = BANDS) -> Injector:
        """The Injector of a params ``inject`` section (every key of :data:`INJECTOR_KEYS` required)."""
        missing = [k for k in INJECTOR_KEYS if k not in inj]
        if missing:
            raise ParamsError(f"params inject section lacks {missing}; an Injector needs {list(INJECTOR_KEYS)}")
        return cls(*(inj[k] for k in INJECTOR_KEYS), bands=bands)

    def __reduce__(self):
        return type(self), self._args

    def psf_kernels(self, brick: str, fwhm: Sequence[float]) -> list[np.ndarray]:
        """The PSF kernel of every band of ``brick`` for per-band FWHMs ``fwhm`` (arcsec).

        FWHMs equal to :data:`FWHM_DECIMALS` decimals in every band share the kernels of the
        first such set seen in the brick; each kernel is built once per (brick, band, FWHM).
        Only the current brick's kernels are kept.
        """
        if brick != self._brick:
            self._brick, self._sets, self._kernels = brick, {}, {}
        key = tuple(round(f, FWHM_DECIMALS) for f in fwhm)
        kers = self._sets.get(key)
        if kers is None:
            kers = self._sets[key] = [self._kernel(b, f) for b, f in zip(self.bands, fwhm)]
        return kers

    def _kernel(self, band: str, fwhm: float) -> np.ndarray:
        k = self._kernels.get((band, fwhm))
        if k is None:
            k = self._kernels[(band, fwhm)] = psf_kernel(self.psf_model, fwhm, self.moffat_beta, self.pixel_scale,
                                                         self.psf_kernel_size, PSF_OVERSAMPLE)
        return k

    def inject(self, row: Mapping, center: tuple[float, float], iv_r: np.ndarray,
               fwhm: Sequence[float]) -> tuple[np.ndarray, dict]:
        """The PSF-convolved arc of one manifest row, and its measurements.

        ``row``: ``brickname`` and the injection columns -- ``theta_e_arcsec``, ``lens_q``,
        ``lens_phi_deg`` (deg), ``gamma1``, ``gamma2``, ``src_x_arcsec``, ``src_y_arcsec``
        (arcsec from the lens), ``src_reff_arcsec``, ``src_e``, ``src_phi_deg`` (deg),
        ``src_mag_r`` (AB mag), ``src_gr``, ``src_rz`` (AB colours); ``center``: the lens centre
        (cx, cy) in stamp pixels (column, row); ``iv_r``: the r-band inverse variance of the
        stamp (1 / nanomaggies^2); ``fwhm``: the PSF FWHM of every band (arcsec).

        Returns ``(arc, info)``: ``arc`` (len(bands), stamp_size, stamp_size) float32
        nanomaggies per pixel; ``info`` with ``magnification`` (unconvolved lensed flux in the
        stamp / unlensed source flux), ``arc_snr`` (peak per-pixel S/N), ``arc_snr_int``
        (matched-filter S/N), ``arc_flux_r`` (r-band arc flux in the stamp, nanomaggies) and
        ``theta_e_over_psf`` (Einstein radius / r-band PSF FWHM).
        """
        unit = self.renderer.lensed_unit_image(
            row["theta_e_arcsec"], row["lens_q"], row["lens_phi_deg"], row["gamma1"], row["gamma2"],
            row["src_x_arcsec"], row["src_y_arcsec"], row["src_reff_arcsec"], row["src_e"],
            row["src_phi_deg"], center=center, n_sersic=1.0)
        fluxes = source_band_fluxes(row["src_mag_r"], row["src_gr"], row["src_rz"])
        arc = self.inject_bands(unit, fluxes, self.psf_kernels(row["brickname"], fwhm), bands=self.bands)
        r = self.r
        return arc, {"magnification": float(unit.sum()), "arc_snr": arc_snr_peak(arc[r], iv_r),
                     "arc_snr_int": arc_snr_integrated(arc[r], iv_r), "arc_flux_r": float(arc[r].sum()),
                     "theta_e_over_psf": float(row["theta_e_arcsec"]) / fwhm[r]}
