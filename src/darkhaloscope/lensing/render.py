"""Lensed-arc rendering: the lenstronomy reference engine and shared helpers.

Geometry and conventions
------------------------
A stamp is ``n_pix x n_pix`` pixels of ``pixel_scale`` arcsec. The centre of
pixel ``(row, col)`` has the angular coordinates (arcsec)::

    x = (col - cx) * pixel_scale        y = (row - cy) * pixel_scale

where ``center = (cx, cy)`` is the lens centre in PIXEL coordinates of the
stamp, ``cx`` along columns and ``cy`` along rows, sub-pixel values allowed
(the default ``(32.0, 32.0)`` is the centre pixel of a 64-pixel stamp). ``x``
increases with column and ``y`` with row. No RA flip is applied: on the sky
this is a mirror image of the usual (East-left) view, which changes only the
handedness of an arc, not its flux, radius or shape -- irrelevant to a
classifier trained with flip augmentation. Position angles (``lens_phi_deg``,
``src_phi_deg``, degrees) are measured from the +x (column) axis towards the
+y (row) axis and give the direction of the major axis. Shear components
``gamma1, gamma2`` are the lenstronomy ``SHEAR`` components in the same x/y
frame.

Lens model: lenstronomy ``SIE`` (``theta_E`` in arcsec, lenstronomy's
intermediate-axis convention; axis ratio ``lens_q`` = minor / major) plus
external ``SHEAR``, both centred on the lens centre.

Source: lenstronomy ``SERSIC_ELLIPSE`` (default index ``n = 1``, exponential),
half-light radius ``src_reff`` (arcsec; lenstronomy's default product-average
convention, i.e. the circularised radius ``sqrt(a b)``), axis ratio
``1 - src_e``, position ``(src_x, src_y)`` arcsec relative to the lens centre.
Its amplitude is set with ``LightModel.total_flux`` so that the UNLENSED source
has total flux ``src_flux`` (nanomaggies).

Rendering: every pixel is split into ``supersample x supersample`` sub-pixels;
the sub-pixel centres are ray-shot to the source plane once per lens, the
source surface brightness (nanomaggies / arcsec^2) is evaluated there,
multiplied by the sub-pixel area and summed per pixel. By default
(``adaptive=True``) the bright pixels of that first pass and their neighbours
are then re-rendered on a finer sub-grid that resolves the source's core,
because a coarse grid point-samples the cusp of a compact exponential source
(flux errors of 1-9% at ``src_reff`` 0.05-0.1 arcsec and ``supersample = 4``);
see :class:`ArcRenderer`. The result is the UNCONVOLVED lensed flux per pixel
(nanomaggies). The lensed flux is never renormalised:
``magnification = image.sum() / src_flux`` (flux inside the stamp only).

The three bands (g, r, z) share the source shape and differ only in flux, so
the lensed image is computed once for unit source flux
(:meth:`ArcRenderer.lensed_unit_image`) and scaled per band
(:func:`inject_bands`).

No I/O happens here.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import numpy as np
from scipy.ndimage import binary_dilation
from scipy.signal import fftconvolve
from scipy.special import gammaincinv

from darkhaloscope.constants import BANDS, PIXEL_SCALE, mag_to_nmgy, nmgy_to_mag

__all__ = [
    "BANDS",
    "ArcRenderer",
    "get_renderer",
    "render_arc",
    "convolve_psf",
    "inject_bands",
    "phase_images",
    "inject_phases",
    "render_stamp",
    "mag_to_nmgy",
    "nmgy_to_mag",
    "source_band_fluxes",
    "arc_snr_peak",
    "arc_snr_integrated",
]


#: Adaptive refinement: pixels at or above this fraction of the brightest
#: coarse pixel (and their neighbours) are re-rendered on a finer sub-grid.
REFINE_FRAC = 1e-2
#: Adaptive refinement: sub-pixel samples per source inner scale length.
REFINE_SAMPLES_PER_SCALE = 3.0
_MAX_RAYS_PER_CALL = 1 << 18


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------
def _finite(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def _positive(name: str, value) -> float:
    v = _finite(name, value)
    if v <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def _pos_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------
# renderer
# --------------------------------------------------------------------------
class ArcRenderer:
    """Ray-shooting renderer of SIE + shear lensed Sersic sources on a fixed grid.

    Parameters
    ----------
    n_pix : stamp side (pixels).
    pixel_scale : arcsec per pixel.
    supersample : sub-pixels per pixel side used for ray shooting (count).
    adaptive : if True (default), pixels where the coarse render is bright
        (>= ``REFINE_FRAC`` of the brightest pixel, plus their 8 neighbours)
        are re-rendered on a finer sub-grid whose spacing resolves the
        source's core (see :meth:`refined_supersample`), capped at
        ``max_supersample``. A plain ``supersample`` grid point-samples the
        cuspy exponential profile: for ``src_reff`` = 0.05-0.1 arcsec at
        ``supersample = 4`` the flux is off by 1-9% (unlensed or weakly
        magnified images worst); with refinement the flux and the pixel
        values agree with a 96x96 sub-grid render to ~0.2% (L1). With
        ``adaptive=False`` the image is exactly the plain sub-grid sum.
    max_supersample : cap on the refined sub-pixels per pixel side (count).

    The lenstronomy model objects and the sub-pixel offset grid are built once
    per instance, so one instance should be reused for many stamps. Instances
    hold no per-stamp state, so they can be shared between stamps of one
    process.
    """

    def __init__(
        self,
        n_pix: int = 64,
        pixel_scale: float = PIXEL_SCALE,
        supersample: int = 4,
        adaptive: bool = True,
        max_supersample: int = 32,
    ):
        from lenstronomy.LensModel.lens_model import LensModel
        from lenstronomy.LightModel.light_model import LightModel

        self.n_pix = _pos_int("n_pix", n_pix)
        self.pixel_scale = _positive("pixel_scale", pixel_scale)
        self.supersample = _pos_int("supersample", supersample)
        self.adaptive = bool(adaptive)
        self.max_supersample = _pos_int("max_supersample", max_supersample)
        self._lens_model = LensModel(["SIE", "SHEAR"])
        self._light_model = LightModel(["SERSIC_ELLIPSE"])
        s = self.supersample
        # sub-pixel centre positions in pixel units along one axis (length n_pix * s),
        # ordered so that index (i * s + k) belongs to pixel i
        sub = (np.arange(s) + 0.5) / s - 0.5
        self._axis_pix = (np.arange(self.n_pix)[:, None] + sub[None, :]).ravel()
        self.subpixel_area = (self.pixel_scale / s) ** 2  # arcsec^2

    # -- geometry ---------------------------------------------------------
    def image_plane_grid(self, center=(32.0, 32.0)) -> tuple[np.ndarray, np.ndarray]:
        """Sub-pixel centre coordinates (x, y) in arcsec relative to the lens centre.

        ``center = (cx, cy)`` is the lens centre in pixel coordinates (column,
        row). Both arrays have shape ``(n_pix * s, n_pix * s)`` (``s`` =
        supersample), indexed ``[row * s + k, col * s + l]``.
        """
        cx = _finite("center[0]", center[0])
        cy = _finite("center[1]", center[1])
        x1 = (self._axis_pix - cx) * self.pixel_scale
        y1 = (self._axis_pix - cy) * self.pixel_scale
        x, y = np.meshgrid(x1, y1)  # x varies along columns, y along rows
        return x, y

    @staticmethod
    def lens_kwargs(theta_e, lens_q, lens_phi_deg, gamma1, gamma2) -> list[dict]:
        """lenstronomy keyword list for ``['SIE', 'SHEAR']`` centred on the origin.

        ``theta_e`` arcsec (> 0), ``lens_q`` in (0, 1], ``lens_phi_deg`` degrees,
        ``gamma1``/``gamma2`` dimensionless.
        """
        from lenstronomy.Util.param_util import phi_q2_ellipticity

        theta_e = _positive("theta_e", theta_e)
        q = _positive("lens_q", lens_q)
        if q > 1.0:
            raise ValueError(f"lens_q must be in (0, 1], got {lens_q!r}")
        phi = math.radians(_finite("lens_phi_deg", lens_phi_deg))
        e1, e2 = phi_q2_ellipticity(phi, q)
        return [
            {"theta_E": theta_e, "e1": float(e1), "e2": float(e2), "center_x": 0.0, "center_y": 0.0},
            {
                "gamma1": _finite("gamma1", gamma1),
                "gamma2": _finite("gamma2", gamma2),
                "ra_0": 0.0,
                "dec_0": 0.0,
            },
        ]

    def ray_shoot(
        self, theta_e, lens_q, lens_phi_deg, gamma1, gamma2, center=(32.0, 32.0)
    ) -> tuple[np.ndarray, np.ndarray]:
        """Source-plane positions (arcsec, relative to the lens centre) of all sub-pixel centres.

        The deflection is computed here, once; the returned arrays (shape of
        :meth:`image_plane_grid`) can be reused with any source via
        :meth:`source_image`.
        """
        kwargs = self.lens_kwargs(theta_e, lens_q, lens_phi_deg, gamma1, gamma2)
        x, y = self.image_plane_grid(center)
        bx, by = self._lens_model.ray_shooting(x.ravel(), y.ravel(), kwargs)
        return bx.reshape(x.shape), by.reshape(x.shape)

    @staticmethod
    def source_kwargs(src_x, src_y, src_reff, src_e, src_phi_deg, n_sersic=1.0, amp=1.0) -> list[dict]:
        """lenstronomy keyword list for ``['SERSIC_ELLIPSE']``.

        ``src_x``, ``src_y`` arcsec from the lens centre; ``src_reff`` arcsec
        (half-light radius, > 0); ``src_e = 1 - q`` in [0, 1); ``src_phi_deg``
        degrees; ``n_sersic`` Sersic index (> 0); ``amp`` surface brightness at
        ``src_reff`` (flux / arcsec^2).
        """
        from lenstronomy.Util.param_util import phi_q2_ellipticity

        e = _finite("src_e", src_e)
        if not 0.0 <= e < 1.0:
            raise ValueError(f"src_e (= 1 - axis ratio) must be in [0, 1), got {src_e!r}")
        phi = math.radians(_finite("src_phi_deg", src_phi_deg))
        e1, e2 = phi_q2_ellipticity(phi, 1.0 - e)
        return [
            {
                "amp": float(amp),
                "R_sersic": _positive("src_reff", src_reff),
                "n_sersic": _positive("n_sersic", n_sersic),
                "e1": float(e1),
                "e2": float(e2),
                "center_x": _finite("src_x", src_x),
                "center_y": _finite("src_y", src_y),
            }
        ]

    def unit_flux_kwargs(self, src_x, src_y, src_reff, src_e, src_phi_deg, n_sersic=1.0) -> list[dict]:
        """Source keywords with the amplitude set so that the unlensed total flux is 1.

        Uses lenstronomy's analytic ``LightModel.total_flux`` of the Sersic profile.
        """
        kw = self.source_kwargs(src_x, src_y, src_reff, src_e, src_phi_deg, n_sersic, amp=1.0)
        flux_per_amp = float(self._light_model.total_flux(kw, norm=True)[0])
        kw[0]["amp"] = 1.0 / flux_per_amp
        return kw

    def source_image(self, beta_x, beta_y, src_x, src_y, src_reff, src_e, src_phi_deg, n_sersic=1.0) -> np.ndarray:
        """Pixel image (n_pix x n_pix) of a unit-flux source seen at source-plane positions ``beta``.

        ``beta_x``, ``beta_y`` are the outputs of :meth:`ray_shoot` (arcsec).
        The surface brightness is integrated over sub-pixels: the result is
        flux per pixel for a source of unlensed total flux 1.
        """
        kw = self.unit_flux_kwargs(src_x, src_y, src_reff, src_e, src_phi_deg, n_sersic)
        sb = self._light_model.surface_brightness(beta_x.ravel(), beta_y.ravel(), kw)
        n, s = self.n_pix, self.supersample
        sb = np.asarray(sb, dtype=np.float64).reshape(n, s, n, s)
        return sb.sum(axis=(1, 3)) * self.subpixel_area

    def lensed_unit_image(
        self,
        theta_e,
        lens_q,
        lens_phi_deg,
        gamma1,
        gamma2,
        src_x,
        src_y,
        src_reff,
        src_e,
        src_phi_deg,
        *,
        center=(32.0, 32.0),
        n_sersic=1.0,
    ) -> np.ndarray:
        """Unconvolved lensed image (n_pix x n_pix, float64) of a source of unit unlensed flux.

        Parameters as in :func:`render_arc` (arcsec, degrees; ``center`` in
        pixels). The deflection is computed once on the ``supersample`` grid
        (plus, if ``adaptive``, once more for the refined bright pixels).
        Multiply by a band's source flux (nanomaggies) to get that band's
        unconvolved arc in nanomaggies per pixel; ``.sum()`` is the
        magnification (flux inside the stamp).
        """
        bx, by = self.ray_shoot(theta_e, lens_q, lens_phi_deg, gamma1, gamma2, center)
        image = self.source_image(bx, by, src_x, src_y, src_reff, src_e, src_phi_deg, n_sersic)
        if not self.adaptive:
            return image
        ss_fine = self.refined_supersample(src_reff, src_e, n_sersic)
        if ss_fine <= self.supersample or not np.any(image > 0):
            return image
        mask = binary_dilation(image >= REFINE_FRAC * image.max(), structure=np.ones((3, 3), dtype=bool))
        rows, cols = np.nonzero(mask)
        kw_lens = self.lens_kwargs(theta_e, lens_q, lens_phi_deg, gamma1, gamma2)
        kw_src = self.unit_flux_kwargs(src_x, src_y, src_reff, src_e, src_phi_deg, n_sersic)
        image[rows, cols] = self._render_pixels(rows, cols, kw_lens, kw_src, center, ss_fine)
        return image

    def refined_supersample(self, src_reff, src_e=0.0, n_sersic=1.0) -> int:
        """Sub-pixels per pixel side used for refined pixels (count).

        The sub-pixel spacing is made <= 1/3 of the source's inner scale
        length ``h = src_reff * sqrt(1 - src_e) / b_n**n`` (arcsec; ``b_n`` the
        Sersic constant, ``h = reff / 1.678`` along the minor axis for
        ``n = 1``), never below ``supersample`` nor above ``max_supersample``.
        """
        n = _positive("n_sersic", n_sersic)
        b_n = float(gammaincinv(2.0 * n, 0.5))
        h = _positive("src_reff", src_reff) * math.sqrt(max(1.0 - float(src_e), 1e-6)) / b_n**n
        ss = math.ceil(REFINE_SAMPLES_PER_SCALE * self.pixel_scale / h)
        return int(min(self.max_supersample, max(self.supersample, ss)))

    def _render_pixels(self, rows, cols, kw_lens, kw_src, center, ss) -> np.ndarray:
        """Flux of the listed pixels (unit source flux) on an ``ss x ss`` sub-grid each."""
        cx = _finite("center[0]", center[0])
        cy = _finite("center[1]", center[1])
        sub = (np.arange(ss) + 0.5) / ss - 0.5
        out = np.empty(len(rows), dtype=np.float64)
        chunk = max(1, _MAX_RAYS_PER_CALL // (ss * ss))
        for i in range(0, len(rows), chunk):
            r = rows[i : i + chunk].astype(np.float64)
            c = cols[i : i + chunk].astype(np.float64)
            shape = (len(r), ss, ss)
            x = np.broadcast_to(((c[:, None, None] + sub[None, None, :]) - cx) * self.pixel_scale, shape)
            y = np.broadcast_to(((r[:, None, None] + sub[None, :, None]) - cy) * self.pixel_scale, shape)
            bx, by = self._lens_model.ray_shooting(x.ravel(), y.ravel(), kw_lens)
            sb = np.asarray(self._light_model.surface_brightness(bx, by, kw_src), dtype=np.float64)
            out[i : i + chunk] = sb.reshape(len(r), ss * ss).sum(axis=1) * (self.pixel_scale / ss) ** 2
        return out


@functools.lru_cache(maxsize=16)
def get_renderer(
    n_pix: int = 64, pixel_scale: float = PIXEL_SCALE, supersample: int = 4, adaptive: bool = True
) -> ArcRenderer:
    """A cached :class:`ArcRenderer` for ``(n_pix, pixel_scale [arcsec], supersample, adaptive)``."""
    return ArcRenderer(n_pix=n_pix, pixel_scale=pixel_scale, supersample=supersample, adaptive=adaptive)


def render_arc(
    theta_e,
    lens_q,
    lens_phi_deg,
    gamma1,
    gamma2,
    src_x,
    src_y,
    src_reff,
    src_e,
    src_phi_deg,
    src_flux,
    *,
    n_pix: int = 64,
    pixel_scale: float = PIXEL_SCALE,
    center=(32.0, 32.0),
    supersample: int = 4,
    n_sersic: float = 1.0,
    adaptive: bool = True,
) -> tuple[np.ndarray, dict]:
    """Render one band's unconvolved lensed arc.

    Parameters
    ----------
    theta_e : SIE Einstein radius (arcsec).
    lens_q : SIE axis ratio (minor / major, in (0, 1]).
    lens_phi_deg : SIE major-axis position angle (degrees, from +x towards +y).
    gamma1, gamma2 : external shear components (dimensionless).
    src_x, src_y : source centre relative to the lens centre (arcsec).
    src_reff : source half-light radius (arcsec).
    src_e : source ellipticity ``1 - q`` (dimensionless, [0, 1)).
    src_phi_deg : source major-axis position angle (degrees).
    src_flux : unlensed total source flux (nanomaggies).
    n_pix, pixel_scale, supersample : stamp side (pixels), arcsec/pixel,
        sub-pixels per pixel side.
    center : lens centre ``(cx, cy)`` in pixel coordinates (column, row).
    n_sersic : Sersic index of the source (1 = exponential).
    adaptive : refine bright pixels on a finer sub-grid (see :class:`ArcRenderer`).

    Returns
    -------
    image : ``(n_pix, n_pix)`` float64, unconvolved lensed flux per pixel (nanomaggies).
    info : dict with
        ``magnification`` -- lensed flux in the stamp / unlensed source flux;
        ``unit_image`` -- the lensed image for unit source flux (``image =
        unit_image * src_flux``), to be scaled for other bands without
        recomputing the deflection;
        ``src_flux`` -- the unlensed source flux (nanomaggies).
    """
    flux = _finite("src_flux", src_flux)
    renderer = get_renderer(n_pix, pixel_scale, supersample, bool(adaptive))
    unit = renderer.lensed_unit_image(
        theta_e, lens_q, lens_phi_deg, gamma1, gamma2,
        src_x, src_y, src_reff, src_e, src_phi_deg,
        center=center, n_sersic=n_sersic,
    )
    image = unit * flux
    info = {"magnification": float(unit.sum()), "unit_image": unit, "src_flux": flux}
    return image, info


# --------------------------------------------------------------------------
# PSF convolution and band handling
# --------------------------------------------------------------------------
def convolve_psf(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Linear (zero-padded, no wrap-around) convolution of a 2-D image with a PSF kernel.

    ``kernel`` must be 2-D with odd sides; its central pixel
    ``(k // 2, k // 2)`` is the PSF centre, so a delta function at pixel
    ``(i, j)`` becomes the kernel centred on ``(i, j)``. The output has the
    shape of ``image`` (``mode="same"``), in the same flux unit
    (nanomaggies per pixel); flux carried beyond the stamp edge is lost.
    """
    img = np.asarray(image, dtype=np.float64)
    ker = np.asarray(kernel, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img.shape}")
    assert ker.ndim == 2 and ker.shape[0] % 2 == 1 and ker.shape[1] % 2 == 1, (
        f"PSF kernel must be 2-D with odd sides so it has a central pixel, got shape {ker.shape}"
    )
    return fftconvolve(img, ker, mode="same")


def _per_band(values, name: str, bands: Sequence[str] = BANDS) -> list:
    """Values ordered as ``bands`` from a mapping (keys = band names) or a sequence."""
    if isinstance(values, Mapping):
        missing = [b for b in bands if b not in values]
        if missing:
            raise ValueError(f"{name} lacks bands {missing}; expected keys {list(bands)}")
        return [values[b] for b in bands]
    vals = list(values) if not isinstance(values, np.ndarray) or values.ndim > 0 else None
    if vals is None or len(vals) != len(bands):
        raise ValueError(f"{name} must be a mapping or a sequence of {len(bands)} values ordered {list(bands)}")
    return vals


def _band_inputs(band_fluxes, kernels, bands: Sequence[str] = BANDS) -> tuple[list[float], list | None]:
    """The arguments of an ``inject_bands``: (finite source flux per band [nanomaggies], PSF kernel
    per band or None), each ordered like ``bands``, from mappings (keys = band names) or sequences."""
    fluxes = [_finite(f"band_fluxes[{b}]", f) for b, f in zip(bands, _per_band(band_fluxes, "band_fluxes", bands))]
    return fluxes, None if kernels is None else _per_band(kernels, "kernels", bands)


def inject_bands(unit_image: np.ndarray, band_fluxes, kernels=None, bands: Sequence[str] = BANDS) -> np.ndarray:
    """Scale a unit-flux lensed image to each band's flux and convolve with that band's PSF.

    Parameters
    ----------
    unit_image : ``(N, N)`` unconvolved lensed image for unit source flux
        (e.g. ``info["unit_image"]`` or :meth:`ArcRenderer.lensed_unit_image`).
    band_fluxes : unlensed source flux per band (nanomaggies), a mapping with
        keys ``bands`` or a sequence ordered like ``bands`` (default g, r, z).
    kernels : PSF kernel per band (mapping or sequence, odd-sized, sum 1), or
        ``None`` for no convolution.

    Returns
    -------
    ``(len(bands), N, N)`` float32 arc image in nanomaggies per pixel.
    """
    unit = np.asarray(unit_image, dtype=np.float64)
    fluxes, kers = _band_inputs(band_fluxes, kernels, bands)
    out = np.empty((len(bands),) + unit.shape, dtype=np.float32)
    for i, (f, k) in enumerate(zip(fluxes, [None] * len(bands) if kers is None else kers)):
        band = unit * f
        if k is not None:
            band = convolve_psf(band, k)
        out[i] = band
    return out


def phase_images(renderer_cells: ArcRenderer, s_c: int, theta_e, lens_q, lens_phi_deg, gamma1, gamma2, src_x,
                 src_y, src_reff, src_e, src_phi_deg, *, center=(32.0, 32.0), n_sersic=1.0) -> np.ndarray:
    """(s_c^2, N, N) sub-pixel phase images (unit source flux, flux per pixel phase) by the reference renderer.

    ``renderer_cells`` renders the ``s_c``-times finer grid of phases (``N * s_c`` cells of
    ``pixel_scale / s_c`` arcsec, ``supersample / s_c`` rays per cell side: see
    :meth:`Injector <darkhaloscope.lensing.injector.Injector>`); ``center`` is the lens centre
    in stamp pixels (converted to cells here). Phase ``p = jy * s_c + jx`` as in
    :func:`darkhaloscope.lensing.psf.phase_kernels`.
    """
    cx, cy = (_finite("center[0]", center[0]) + 0.5) * s_c - 0.5, (_finite("center[1]", center[1]) + 0.5) * s_c - 0.5
    cells = renderer_cells.lensed_unit_image(theta_e, lens_q, lens_phi_deg, gamma1, gamma2, src_x, src_y, src_reff,
                                             src_e, src_phi_deg, center=(cx, cy), n_sersic=n_sersic)
    n = cells.shape[0] // s_c
    return np.ascontiguousarray(cells.reshape(n, s_c, n, s_c).transpose(1, 3, 0, 2).reshape(s_c * s_c, n, n))


def inject_phases(phases: np.ndarray, band_fluxes, kernels, bands: Sequence[str] = BANDS) -> np.ndarray:
    """Reference (scipy) injection of sub-pixel phase images: ``f_b * sum_p phases[p] conv kernels_b[p]``.

    ``phases`` (P, N, N) unit-flux phase images (:func:`phase_images`); ``band_fluxes`` unlensed
    source flux per band (nanomaggies; mapping or sequence ordered like ``bands``); ``kernels``
    per band the (P, k, k) phase kernels of :func:`darkhaloscope.lensing.psf.phase_kernels`.
    Returns ``(len(bands), N, N)`` float32 nanomaggies per pixel; equals
    :func:`darkhaloscope.lensing.convolve.inject_phases_batch` to its FFT rounding.
    """
    ph = np.asarray(phases, dtype=np.float64)
    if ph.ndim != 3 or ph.shape[1] != ph.shape[2]:
        raise ValueError(f"phases must have shape (P, N, N), got {ph.shape}")
    fluxes, kers = _band_inputs(band_fluxes, kernels, bands)
    if kers is None:
        raise ValueError("inject_phases needs a phase-kernel set per band")
    out = np.empty((len(bands),) + ph.shape[1:], dtype=np.float32)
    for i, (f, k) in enumerate(zip(fluxes, kers)):
        k = np.asarray(k, dtype=np.float64)
        if k.ndim != 3 or k.shape[0] != ph.shape[0]:
            raise ValueError(f"kernels[{bands[i]}] must have shape ({ph.shape[0]}, k, k), got {k.shape}")
        out[i] = f * sum(convolve_psf(ph[p], k[p]) for p in range(ph.shape[0]))
    return out


def render_stamp(
    theta_e,
    lens_q,
    lens_phi_deg,
    gamma1,
    gamma2,
    src_x,
    src_y,
    src_reff,
    src_e,
    src_phi_deg,
    band_fluxes,
    kernels=None,
    *,
    n_pix: int = 64,
    pixel_scale: float = PIXEL_SCALE,
    center=(32.0, 32.0),
    supersample: int = 4,
    n_sersic: float = 1.0,
    adaptive: bool = True,
    renderer: ArcRenderer | None = None,
    bands: Sequence[str] = BANDS,
) -> tuple[np.ndarray, dict]:
    """Multi-band PSF-convolved arc: deflection and unit image once, then per-band scaling.

    Lens and source parameters as in :func:`render_arc` (arcsec, degrees);
    ``band_fluxes`` are the unlensed source fluxes per band (nanomaggies;
    mapping or sequence ordered g, r, z), ``kernels`` the per-band PSF kernels
    (or ``None`` for the unconvolved arc). ``renderer`` overrides
    ``n_pix``/``pixel_scale``/``supersample``/``adaptive``.

    Returns
    -------
    arc : ``(3, n_pix, n_pix)`` float32, nanomaggies per pixel.
    info : dict with ``magnification`` (lensed flux in the stamp / source flux,
        before convolution), ``src_flux`` (dict band -> unlensed source flux,
        nanomaggies), ``arc_flux`` (dict band -> unconvolved lensed flux in the
        stamp, nanomaggies) and ``unit_image`` (float64 unit-flux image).
    """
    r = (
        renderer
        if renderer is not None
        else get_renderer(n_pix, pixel_scale, supersample, bool(adaptive))
    )
    unit = r.lensed_unit_image(
        theta_e, lens_q, lens_phi_deg, gamma1, gamma2,
        src_x, src_y, src_reff, src_e, src_phi_deg,
        center=center, n_sersic=n_sersic,
    )
    fluxes = [float(f) for f in _per_band(band_fluxes, "band_fluxes", bands)]
    arc = inject_bands(unit, fluxes, kernels, bands)
    mu = float(unit.sum())
    info = {
        "magnification": mu,
        "src_flux": dict(zip(bands, fluxes)),
        "arc_flux": {b: mu * f for b, f in zip(bands, fluxes)},
        "unit_image": unit,
    }
    return arc, info


# --------------------------------------------------------------------------
# photometry helpers
# --------------------------------------------------------------------------


def source_band_fluxes(src_mag_r, g_minus_r, r_minus_z):
    """Unlensed source fluxes ``(f_g, f_r, f_z)`` in nanomaggies from the r magnitude and colours (AB mag).

    ``m_g = m_r + (g - r)``, ``m_z = m_r - (r - z)``.
    """
    m_r = np.asarray(src_mag_r, dtype=np.float64)
    return (
        mag_to_nmgy(m_r + g_minus_r),
        mag_to_nmgy(m_r),
        mag_to_nmgy(m_r - r_minus_z),
    )


def arc_snr_peak(arc_r: np.ndarray, invvar_r: np.ndarray) -> float:
    """Peak per-pixel S/N of a noiseless arc: ``max(arc_r * sqrt(invvar_r))``.

    ``arc_r`` in nanomaggies per pixel (usually the PSF-convolved r-band arc),
    ``invvar_r`` the inverse variance per pixel (1 / nanomaggies^2). Pixels
    with ``invvar <= 0`` (masked) or non-finite values are ignored; returns 0.0
    if none is usable. Dimensionless.
    """
    a = np.asarray(arc_r, dtype=np.float64)
    iv = np.asarray(invvar_r, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(iv) & (iv > 0)
    if not ok.any():
        return 0.0
    return float(np.max(a[ok] * np.sqrt(iv[ok])))


def arc_snr_integrated(arc_r: np.ndarray, invvar_r: np.ndarray) -> float:
    """Matched-filter S/N of a noiseless arc: ``sqrt(sum(arc_r^2 * invvar_r))``.

    This is the S/N with which the arc's known template would be detected in
    Gaussian noise of inverse variance ``invvar_r`` (1 / nanomaggies^2);
    ``arc_r`` in nanomaggies per pixel. Pixels with ``invvar <= 0`` or
    non-finite values are ignored. Dimensionless.
    """
    a = np.asarray(arc_r, dtype=np.float64)
    iv = np.asarray(invvar_r, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(iv) & (iv > 0)
    return float(np.sqrt(np.sum(a[ok] ** 2 * iv[ok])))
