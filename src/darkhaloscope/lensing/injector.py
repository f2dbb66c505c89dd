"""Arc injection as one object: engine, PSF and band scaling, built once from the params ``inject`` section.

:class:`Injector` is composed the way lenstronomy's ``ImageModel(data, psf, lens_model,
source_model)`` composes its parts: the stamp grid (``stamp_size`` pixels of ``pixel_scale``
arcsec), the lens (SIE + external shear) and source (exponential Sersic) models inside the
renderer of the chosen engine, and the PSF (``psf_model`` kernels that keep ``psf_flux_frac``
of the PSF flux) with the matching band injector (PSF convolution and per-band flux scaling).
The engine is decided in one place, :func:`engine_parts`: ``lenstronomy`` -- the reference
:class:`~darkhaloscope.lensing.render.ArcRenderer` with ``render.inject_phases`` (scipy);
``fast`` -- :func:`~darkhaloscope.lensing.fast.render_phase_images` with
``convolve.inject_phases_batch`` (numba + real FFTs, imported on first use).

PSF convolution at the sub-pixel level: the rays of every pixel are summed into its
``s_c x s_c`` sub-pixel phases (``s_c = psf.phase_factor(supersample)``: 4 for supersample 4
and 8, 2 for 2) and each phase is convolved with the PSF integrated over the pixel box as seen
from that phase (:func:`~darkhaloscope.lensing.psf.phase_kernels`). The pixel box is
integrated exactly (binning to pixel centres and convolving with a pixel-integrated kernel
blurred by a second pixel box and was off by up to 8% of the arc peak for 0.7 arcsec PSFs);
the only approximation is a ray's displacement to its phase centre (<= 1/8 pixel at s_c = 4).

Units: angles in arcsec (position angles in degrees), lens centres in stamp pixels
(column, row), PSF FWHMs in arcsec, fluxes and pixel values in nanomaggies (AB magnitudes
where named ``mag``), inverse variances in 1 / nanomaggies^2. No I/O.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import numpy as np

from darkhaloscope.constants import BANDS, PIXEL_SCALE
from darkhaloscope.errors import ParamsError
from darkhaloscope.lensing import render
from darkhaloscope.lensing.psf import kernel_size, phase_factor, phase_kernels
from darkhaloscope.lensing.render import arc_snr_integrated, arc_snr_peak, get_renderer, source_band_fluxes

__all__ = ["ENGINES", "INJECTOR_KEYS", "Injector", "engine_parts", "get_engine"]

#: Valid values of ``engine`` (params.yaml ``inject.engine``).
ENGINES = ("lenstronomy", "fast")
#: The keys of the params ``inject`` section an :class:`Injector` is built from.
INJECTOR_KEYS = ("engine", "psf_model", "moffat_beta", "supersample", "psf_flux_frac", "stamp_size",
                 "pixel_scale")
#: Sub-pixels per pixel side of the pixel integration of the PSF kernels.
PSF_OVERSAMPLE = 8
#: Cap on the rays per pixel side of refined pixels (both engines; ``max_supersample``).
MAX_SUPERSAMPLE = 64
#: Decimals of arcsec to which PSF FWHMs are the same kernel (see :meth:`Injector.psf_kernels`).
FWHM_DECIMALS = 4
#: Keys of the params ``inject`` section choosing the lensed source (:mod:`darkhaloscope.lensing.sources`);
#: an inject section without them builds the Sersic Injector.
SOURCE_KEYS = ("source_model", "cosmos_bank", "cosmos_size")
#: Injection columns of a manifest row (arcsec, degrees, AB magnitudes; see :meth:`Injector.inject_batch`).
ROW_KEYS = ("theta_e_arcsec", "lens_q", "lens_phi_deg", "gamma1", "gamma2", "src_x_arcsec", "src_y_arcsec",
            "src_reff_arcsec", "src_e", "src_phi_deg")


def engine_parts(engine: str) -> tuple[Callable, Callable]:
    """``(renderer getter, band injector)`` of an engine: the one place an engine name is resolved.

    The getter is called as ``getter(n_pix, pixel_scale [arcsec], supersample, adaptive)`` and
    returns a cached renderer with ``lensed_unit_image(...)``; the band injector is called as
    ``inject(phases (B, P, N, N), band_fluxes (B, J) [nanomaggies], kernels, kernel_index)``
    (``fast``: :func:`convolve.inject_phases_batch`; ``lenstronomy``: the scipy reference
    :func:`render.inject_phases` stamp by stamp).
    """
    if engine == "lenstronomy":
        return get_renderer, _reference_inject
    if engine == "fast":  # numba is loaded only when this engine is used
        from darkhaloscope.lensing import convolve, fast

        return fast.get_fast_renderer, convolve.inject_phases_batch
    raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")


def _reference_inject(phases, band_fluxes, kernels, kernel_index) -> np.ndarray:
    """:func:`render.inject_phases` for a batch (the reference engine's band injector)."""
    fl = np.asarray(band_fluxes, dtype=np.float64)
    idx = np.asarray(kernel_index)
    bands = tuple(str(j) for j in range(fl.shape[1]))
    return np.stack([render.inject_phases(phases[b], fl[b], [kernels[k] for k in idx[b]], bands=bands)
                     for b in range(len(phases))])


@functools.lru_cache(maxsize=8)
def _cell_renderer(n_cells: int, cell_scale: float, rays: int, max_rays: int) -> render.ArcRenderer:
    """The reference renderer of a grid of phases (cached per process, as :func:`get_renderer`)."""
    return render.ArcRenderer(n_cells, cell_scale, rays, True, max_supersample=max_rays)


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
    (dimensionless), ``supersample`` (sub-pixels per pixel side), ``psf_flux_frac`` (fraction
    of the PSF flux the kernels keep, in (0, 1): their side follows from the FWHM,
    :func:`~darkhaloscope.lensing.psf.kernel_size`), ``stamp_size`` (pixels),
    ``pixel_scale`` (arcsec/pixel); ``bands``: the stamp's bands in channel order. S/N and
    arc flux are measured in the r band (the first band when there is no r).

    PSF kernels are built once per (brick, band, FWHM) and kept for the current brick
    (:meth:`psf_kernels`). An Injector pickles as its parameters: a copy (e.g. in a Spark
    task) rebuilds its renderer from the process's cache and starts with no kernels.
    """

    def __init__(self, engine: str, psf_model: str, moffat_beta: float, supersample: int,
                 psf_flux_frac: float, stamp_size: int, pixel_scale: float, bands: Sequence[str] = BANDS,
                 source_model: str = "sersic", cosmos_bank: str = "", cosmos_size: str = "reff"):
        self._args = (engine, psf_model, moffat_beta, supersample, psf_flux_frac, stamp_size, pixel_scale,
                      tuple(bands))
        getter, self.inject_phases = engine_parts(engine)
        self.engine, self.psf_model = engine, psf_model
        self.moffat_beta, self.pixel_scale = float(moffat_beta), float(pixel_scale)
        self.supersample, self.psf_flux_frac = int(supersample), float(psf_flux_frac)
        if not 0.0 < self.psf_flux_frac < 1.0:
            raise ValueError(f"psf_flux_frac must be in (0, 1), got {psf_flux_frac!r}")
        self.stamp_size = int(stamp_size)
        self.bands = tuple(bands)
        self.r = self.bands.index("r") if "r" in self.bands else 0
        #: sub-pixel phases per pixel side of the convolution (psf.phase_factor)
        self.s_c = phase_factor(self.supersample)
        # the renderer of the grid of phases: cells of pixel_scale / s_c, supersample / s_c rays per side
        if engine == "fast":
            self.renderer = getter(self.stamp_size * self.s_c, self.pixel_scale / self.s_c,
                                   self.supersample // self.s_c, True)
        else:  # refined cells capped at MAX_SUPERSAMPLE rays per pixel side, as fast.render_phase_images
            self.renderer = _cell_renderer(self.stamp_size * self.s_c, self.pixel_scale / self.s_c,
                                           self.supersample // self.s_c, max(1, MAX_SUPERSAMPLE // self.s_c))
        self._brick = None
        self._sets: dict = {}     # rounded FWHMs of all bands -> their kernels (current brick)
        self._kernels: dict = {}  # (band, FWHM) -> kernel (current brick)
        # ---- the source (inject.source_model; pixel sources: darkhaloscope.lensing.sources) ----
        self._args += (source_model, cosmos_bank, cosmos_size)
        self._set_source(source_model, cosmos_bank, cosmos_size)

    @classmethod
    def from_params(cls, inj: Mapping, bands: Sequence[str] = BANDS) -> Injector:
        """The Injector of a params ``inject`` section (every key of :data:`INJECTOR_KEYS` required)."""
        missing = [k for k in INJECTOR_KEYS if k not in inj]
        if missing:
            raise ParamsError(f"params inject section lacks {missing}; an Injector needs {list(INJECTOR_KEYS)}")
        return cls(*(inj[k] for k in INJECTOR_KEYS), bands=bands, **{k: inj[k] for k in SOURCE_KEYS if k in inj})

    def __reduce__(self):
        return type(self), self._args

    # ---- pixel sources (inject.source_model cosmos | clumpy) ----------------------------------------
    def _set_source(self, model: str, bank: str, size: str) -> None:
        """Check and keep the source settings: ``model`` (``sources.SOURCE_MODELS``), ``bank`` (a
        RealGalaxyCatalog catalogue path, "" = the embedded bank; read on first use), ``size``
        (``sources.COSMOS_SIZES``)."""
        from darkhaloscope.lensing.sources import COSMOS_SIZES, SOURCE_MODELS

        if model not in SOURCE_MODELS:
            raise ValueError(f"source_model must be one of {list(SOURCE_MODELS)}, got {model!r}")
        if size not in COSMOS_SIZES:
            raise ValueError(f"cosmos_size must be one of {list(COSMOS_SIZES)}, got {size!r}")
        if model != "sersic" and self.engine != "fast":
            raise ValueError(f"source_model {model!r} is lensed by the fast engine only, got engine {self.engine!r}")
        self.source_model, self.cosmos_bank, self.cosmos_size = model, str(bank or ""), size

    def pixel_unit_images(self, rows: Sequence[Mapping], centers) -> tuple[list | None, list[int]]:
        """The rows' lensed pixel sources as supersampled unit-flux images (flux per sub-pixel, see
        :func:`darkhaloscope.lensing.sources.lensed_pixel_sources`; None for sersic) and their COSMOS
        IDENTs (-1: not a COSMOS galaxy). Each row's source is drawn from its ``sample_id``."""
        if self.source_model == "sersic":
            return None, [-1] * len(rows)
        from darkhaloscope.lensing import cosmos, fast, sources

        bank = cosmos.read_bank(self.cosmos_bank) if self.source_model == "cosmos" else None
        srcs = [sources.row_source(self.source_model, r, bank, self.cosmos_size, self.pixel_scale) for r in rows]
        params = {k: np.array([float(r[c]) for r in rows]) for k, c in zip(fast.PARAM_KEYS, ROW_KEYS)}
        imgs = sources.lensed_pixel_sources(params, srcs, centers, self.stamp_size, self.pixel_scale,
                                            self.supersample)
        return list(imgs), [s.ident for s in srcs]

    def psf_kernels(self, brick: str, fwhm: Sequence[float]) -> list[np.ndarray]:
        """The phase kernels ((s_c^2, k, k) each) of every band of ``brick`` for per-band FWHMs ``fwhm`` (arcsec).

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

    def kernel_size(self, fwhm: float) -> int:
        """Side (pixels) of the kernel of a FWHM (arcsec): keeps ``psf_flux_frac`` of the PSF flux."""
        return kernel_size(self.psf_model, fwhm, self.moffat_beta, self.pixel_scale, self.psf_flux_frac,
                           2 * self.stamp_size - 1)

    def _kernel(self, band: str, fwhm: float) -> np.ndarray:
        k = self._kernels.get((band, fwhm))
        if k is None:
            k = self._kernels[(band, fwhm)] = phase_kernels(self.psf_model, fwhm, self.moffat_beta, self.pixel_scale,
                                                            self.s_c, self.kernel_size(fwhm),
                                                            oversample=PSF_OVERSAMPLE)
        return k

    def _phases(self, rows: Sequence[Mapping], centers: np.ndarray) -> np.ndarray:
        """(N, s_c^2, n, n) unit-flux phase images of the rows' Sersic (n = 1) sources."""
        if self.engine == "fast":
            from darkhaloscope.lensing import fast

            keys = dict(zip(fast.PARAM_KEYS, ROW_KEYS))
            params = {k: np.array([float(r[c]) for r in rows]) for k, c in keys.items()}
            return fast.render_phase_images(params, centers, self.stamp_size, self.pixel_scale, self.supersample)
        return np.stack([render.phase_images(self.renderer, self.s_c, *(r[c] for c in ROW_KEYS),
                                             center=(float(cx), float(cy)))
                         for r, (cx, cy) in zip(rows, centers)])

    def inject_batch(self, rows: Sequence[Mapping], centers, iv_r: Sequence[np.ndarray],
                     fwhm: Sequence[Sequence[float]], unit_images_ss: Sequence | None = None
                     ) -> tuple[np.ndarray, list[dict]]:
        """The PSF-convolved arcs of many manifest rows (the path of stage ``stamps``), and their measurements.

        ``rows``: mappings with ``brickname`` and the injection columns -- ``theta_e_arcsec``,
        ``lens_q``, ``lens_phi_deg`` (deg), ``gamma1``, ``gamma2``, ``src_x_arcsec``,
        ``src_y_arcsec`` (arcsec from the lens), ``src_reff_arcsec``, ``src_e``, ``src_phi_deg``
        (deg), ``src_mag_r`` (AB mag), ``src_gr``, ``src_rz`` (AB colours); ``centers`` (N, 2):
        the lens centres (cx, cy) in stamp pixels (column, row); ``iv_r``: per row the r-band
        inverse variance of the stamp (1 / nanomaggies^2); ``fwhm``: per row the PSF FWHM of every
        band (arcsec). ``unit_images_ss``: optional per-row supersampled unit-flux images
        ((stamp_size * supersample)^2 sub-pixels, flux per sub-pixel, e.g. a lensed pixelated
        source) that replace the Sersic render of the rows where they are not None.

        Returns ``(arcs, infos)``: ``arcs`` (N, len(bands), stamp_size, stamp_size) float32
        nanomaggies per pixel; per row ``info`` with ``magnification`` (unconvolved lensed flux in
        the stamp / unlensed source flux), ``arc_snr`` (peak per-pixel S/N), ``arc_snr_int``
        (matched-filter S/N), ``arc_flux_r`` (r-band arc flux in the stamp, nanomaggies) and
        ``theta_e_over_psf`` (Einstein radius / r-band PSF FWHM); for pixel sources also
        ``source_model`` and ``source_ident`` (the COSMOS galaxy's IDENT, -1 for clumpy). Stamp by stamp the same bytes as
        :meth:`inject` (the rows are independent).
        """
        n = len(rows)
        if not (len(centers) == len(iv_r) == len(fwhm) == n):
            raise ValueError(f"inject_batch: {n} rows but {len(centers)} centers, {len(iv_r)} iv_r, "
                             f"{len(fwhm)} fwhm")
        nbands, size = len(self.bands), self.stamp_size
        if n == 0:
            return np.zeros((0, nbands, size, size), np.float32), []
        ctr = np.asarray(centers, dtype=np.float64).reshape(n, 2)
        idents = [-1] * n
        if unit_images_ss is None and self.source_model != "sersic":   # pixel sources (inject.source_model)
            unit_images_ss, idents = self.pixel_unit_images(rows, ctr)
        pix = [i for i in range(n) if unit_images_ss is not None and unit_images_ss[i] is not None]
        ser = [i for i in range(n) if i not in set(pix)]
        phases = np.empty((n, self.s_c ** 2, size, size))
        if ser:
            phases[ser] = self._phases([rows[i] for i in ser], ctr[ser])
        if pix:
            from darkhaloscope.lensing.convolve import bin_phases

            phases[pix] = bin_phases(np.stack([unit_images_ss[i] for i in pix]), self.supersample, self.s_c)
        kernels, kid, index = [], {}, np.empty((n, nbands), np.int64)
        for i, row in enumerate(rows):
            for j, k in enumerate(self.psf_kernels(row["brickname"], fwhm[i])):
                if id(k) not in kid:
                    kid[id(k)] = len(kernels)
                    kernels.append(k)
                index[i, j] = kid[id(k)]
        fluxes = np.array([source_band_fluxes(r["src_mag_r"], r["src_gr"], r["src_rz"]) for r in rows])
        if self.bands != BANDS:
            fluxes = fluxes[:, [BANDS.index(b) for b in self.bands]]
        arcs = self.inject_phases(phases, fluxes, kernels, index)
        r = self.r
        infos = [{"magnification": float(phases[i].sum()), "arc_snr": arc_snr_peak(arcs[i, r], iv_r[i]),
                  "arc_snr_int": arc_snr_integrated(arcs[i, r], iv_r[i]), "arc_flux_r": float(arcs[i, r].sum()),
                  "theta_e_over_psf": float(rows[i]["theta_e_arcsec"]) / float(fwhm[i][r])} for i in range(n)]
        if self.source_model != "sersic":   # pixel sources: which model, which COSMOS galaxy
            for d, ident in zip(infos, idents):
                d.update(source_model=self.source_model, source_ident=int(ident))
        return arcs, infos

    def inject(self, row: Mapping, center: tuple[float, float], iv_r: np.ndarray,
               fwhm: Sequence[float]) -> tuple[np.ndarray, dict]:
        """The PSF-convolved arc of one manifest row and its measurements (:meth:`inject_batch` of one row).

        Returns ``(arc, info)``: ``arc`` (len(bands), stamp_size, stamp_size) float32
        nanomaggies per pixel; ``info`` as in :meth:`inject_batch`.
        """
        arcs, infos = self.inject_batch([row], [center], [iv_r], [fwhm])
        return arcs[0], infos[0]
