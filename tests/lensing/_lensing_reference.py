"""The lenstronomy reference of the accuracy tests: lenstronomy's ImageModel called directly.

:func:`lenstronomy_stamp` builds an ``ImageModel`` (SIE + SHEAR lens, SERSIC_ELLIPSE source of
unit total flux, ``supersampling_convolution=True``) from the keyword conventions of
lenstronomy's own ``param_util`` -- not from the project's renderer -- with the PSF as
lenstronomy provides it: ``GAUSSIAN`` (its ``gaussian_filter`` on the supersampled grid) or a
``PIXEL`` kernel sampled from lenstronomy's ``MOFFAT`` light profile on the supersampled grid.
At ``supersample`` 24-32 (:func:`reference_supersample`) this is converged to ~5e-4 of the arc
peak (checked against 40 in the tests), so it serves as the truth the engines are held to.

:func:`draw_sets` draws random lens / source / PSF configurations over the ranges of the
``grid_sota`` grid (continuous), PSF FWHM 0.7-1.8 arcsec (a quarter at 0.7 arcsec).
"""

from __future__ import annotations

import math

import numpy as np

PS = 0.262


def lens_kwargs(p: dict) -> list[dict]:
    from lenstronomy.Util.param_util import phi_q2_ellipticity

    e1, e2 = phi_q2_ellipticity(math.radians(p["lens_phi_deg"]), p["lens_q"])
    return [{"theta_E": p["theta_e"], "e1": e1, "e2": e2, "center_x": 0.0, "center_y": 0.0},
            {"gamma1": p["gamma1"], "gamma2": p["gamma2"], "ra_0": 0.0, "dec_0": 0.0}]


def source_kwargs(p: dict) -> list[dict]:
    """SERSIC_ELLIPSE (n = 1) keywords of unit total flux (lenstronomy's ``total_flux``)."""
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.Util.param_util import phi_q2_ellipticity

    e1, e2 = phi_q2_ellipticity(math.radians(p["src_phi_deg"]), 1.0 - p["src_e"])
    kw = [{"amp": 1.0, "R_sersic": p["src_reff"], "n_sersic": 1.0, "e1": e1, "e2": e2,
           "center_x": p["src_x"], "center_y": p["src_y"]}]
    kw[0]["amp"] = 1.0 / float(LightModel(["SERSIC_ELLIPSE"]).total_flux(kw, norm=True)[0])
    return kw


def moffat_kernel_supersampled(fwhm: float, beta: float, ss: int, size_pix: int) -> np.ndarray:
    """lenstronomy's MOFFAT profile at the sub-pixel centres of a ``size_pix`` kernel (odd), sum 1."""
    from lenstronomy.LightModel.Profiles.moffat import Moffat

    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    n = size_pix * ss - (1 if ss % 2 == 0 else 0)
    x = (np.arange(n) - n // 2) * PS / ss
    xx, yy = np.meshgrid(x, x)
    k = Moffat().function(xx, yy, amp=1.0, alpha=alpha, beta=beta)
    return k / k.sum()


def lenstronomy_stamp(p: dict, center, psf_model: str, fwhm: float, kernel_px: int, ss: int = 16,
                      n_pix: int = 48, beta: float = 3.5, source=None, zero_padded: bool = False) -> np.ndarray:
    """The unit-flux PSF-convolved stamp (flux per pixel) by lenstronomy's ImageModel.

    ``center`` (cx, cy): lens centre in pixels (column, row); ``kernel_px``: kernel side in
    pixels (the Gaussian is truncated at the same radius); ``source``: a pixelated source
    (:class:`darkhaloscope.lensing.sources.PixelSource`, as lenstronomy's ``INTERPOL`` profile
    at ``src_x, src_y``) instead of the Sersic; ``zero_padded``: the Gaussian as a ``PIXEL``
    kernel (lenstronomy's ``kernel_gaussian``), convolved with zeros beyond the stamp as the
    engines do (the ``GAUSSIAN`` type's filter repeats the edge pixels: arcs reaching the edge).
    """
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    cx, cy = center
    data = ImageData(image_data=np.zeros((n_pix, n_pix)), transform_pix2angle=np.eye(2) * PS,
                     ra_at_xy_0=-cx * PS, dec_at_xy_0=-cy * PS)
    if psf_model == "gaussian" and zero_padded:
        from lenstronomy.Util.kernel_util import kernel_gaussian

        n = kernel_px * ss - (1 if ss % 2 == 0 else 0)
        psf = PSF(psf_type="PIXEL", kernel_point_source=kernel_gaussian(n, PS / ss, fwhm),
                  point_source_supersampling_factor=ss)
    elif psf_model == "gaussian":
        sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        psf = PSF(psf_type="GAUSSIAN", fwhm=fwhm, truncation=(kernel_px // 2 + 0.5) * PS / sigma)
    else:
        psf = PSF(psf_type="PIXEL", kernel_point_source=moffat_kernel_supersampled(fwhm, beta, ss, kernel_px),
                  point_source_supersampling_factor=ss)
    light, kw_src = source_light(p, source)
    model = ImageModel(data, psf, lens_model_class=LensModel(["SIE", "SHEAR"]), source_model_class=light,
                       kwargs_numerics={"supersampling_factor": ss, "supersampling_convolution": True,
                                        # the whole kernel on the supersampled grid (lenstronomy's default: 5 pixels)
                                        "supersampling_kernel_size": kernel_px})
    return np.asarray(model.image(kwargs_lens=lens_kwargs(p), kwargs_source=kw_src), dtype=np.float64)


def source_light(p: dict, source=None):
    """(LightModel, kwargs) of the Sersic of ``p`` or of a pixelated source (``INTERPOL``: its image in
    surface brightness per arcsec^2, rotated by ``phi_G``, at ``src_x, src_y``)."""
    from lenstronomy.LightModel.light_model import LightModel

    if source is None:
        return LightModel(["SERSIC_ELLIPSE"]), source_kwargs(p)
    img = source.sb[:, ::-1] if source.flip else source.sb
    kw = {"image": np.array(img), "amp": 1.0, "center_x": p["src_x"], "center_y": p["src_y"],
          "phi_G": math.radians(source.angle_deg), "scale": source.scale}
    return LightModel(["INTERPOL"]), [kw]


def lenstronomy_unconvolved(p: dict, center, ss: int, n_pix: int = 48, window=None, source=None) -> np.ndarray:
    """The unconvolved unit-flux image (flux per pixel) by lenstronomy's ImageModel at ``ss`` sub-pixels
    per side; ``window = (row0, col0, size)`` renders only that square of the stamp."""
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    r0, c0, size = window if window is not None else (0, 0, n_pix)
    cx, cy = center
    data = ImageData(image_data=np.zeros((size, size)), transform_pix2angle=np.eye(2) * PS,
                     ra_at_xy_0=(c0 - cx) * PS, dec_at_xy_0=(r0 - cy) * PS)
    light, kw_src = source_light(p, source)
    model = ImageModel(data, PSF(psf_type="NONE"), lens_model_class=LensModel(["SIE", "SHEAR"]),
                       source_model_class=light, kwargs_numerics={"supersampling_factor": ss})
    return np.asarray(model.image(kwargs_lens=lens_kwargs(p), kwargs_source=kw_src, unconvolved=True),
                      dtype=np.float64)


def draw_sets(n: int, seed: int, n_pix: int = 48, fwhm_max: float = 1.8) -> list[dict]:
    """Random configurations (grid_sota's ranges, continuous) with a PSF each: dicts with the
    lens / source keys of :data:`darkhaloscope.lensing.fast.PARAM_KEYS`, ``center``,
    ``psf_model`` (alternating Gaussian / Moffat) and ``fwhm`` (arcsec, 0.7 to ``fwhm_max``)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        te = rng.uniform(0.5, 2.5)
        shear, sphi = rng.uniform(0.0, 0.04), rng.uniform(0.0, math.pi)
        r, a = math.sqrt(rng.uniform()) * 0.8 * te, rng.uniform(0.0, 2 * math.pi)
        out.append({
            "theta_e": te, "lens_q": rng.uniform(0.5, 1.0), "lens_phi_deg": rng.uniform(0.0, 180.0),
            "gamma1": shear * math.cos(2 * sphi), "gamma2": shear * math.sin(2 * sphi),
            "src_x": r * math.cos(a), "src_y": r * math.sin(a), "src_reff": rng.uniform(0.06, 0.20),
            "src_e": rng.uniform(0.0, 0.4), "src_phi_deg": rng.uniform(0.0, 180.0),
            "center": (n_pix / 2 + rng.uniform(-0.5, 0.5), n_pix / 2 + rng.uniform(-0.5, 0.5)),
            "psf_model": ("gaussian", "moffat")[i % 2],
            "fwhm": 0.7 if i % 4 in (0, 1) and rng.uniform() < 0.5 else rng.uniform(0.7, fwhm_max),
        })
    return out


def reference_supersample(p: dict) -> int:
    """Sub-pixels per side at which the reference is converged (~5e-4 of the peak): 32 for compact
    sources (inner scale below 0.035 arcsec) and for sources beyond 0.6 theta_E (a counter-image
    next to the lens centre, compressed by the lens: at 16 one such stamp was still 0.18% low in
    flux), else 24."""
    h = p["src_reff"] * math.sqrt(1.0 - p["src_e"]) / 1.678
    off = math.hypot(p["src_x"], p["src_y"]) / p["theta_e"]
    return 32 if h < 0.035 or off > 0.6 else 24
