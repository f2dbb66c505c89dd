"""Pixelated sources for the injection: real COSMOS galaxies and procedural clumpy discs.

``inject.source_model`` (:data:`SOURCE_MODELS`):

* ``sersic`` -- the analytic exponential ``SERSIC_ELLIPSE`` of the manifest's ``src_reff_arcsec``,
  ``src_e``, ``src_phi_deg`` (no pixel source: the engines evaluate it directly);
* ``cosmos`` -- a real galaxy of a RealGalaxyCatalog bank (:mod:`darkhaloscope.lensing.cosmos`):
  the galaxy is picked by the row's ``sample_id`` (itself a hash of the seed and the row: it
  seeds the draw's random stream), as are its random rotation and mirror flip; its HST noise is
  suppressed (:func:`clean_galaxy`: a smooth S/N mask around the galaxy, so that the noise does
  not become structured noise after lensing); with
  ``cosmos_size: reff`` it is rescaled so that its half-light radius is the row's
  ``src_reff_arcsec`` (``native``: its observed size); it is single-band, so every band gets the
  same shape with the row's magnitude and colours (as the Sersic source);
* ``clumpy`` -- a procedural star-forming galaxy (:func:`clumpy_source`): an exponential disc of the
  row's radius, ellipticity and angle plus 3-8 compact Gaussian clumps holding 20-50% of the
  flux, drawn from the random stream of ``sample_id`` (a richer default than a smooth Sersic
  when the COSMOS bank is small).

A :class:`PixelSource` is a surface-brightness image of unit total flux (flux per arcsec^2 at the
pixel centres, zero on its border) with its pixel scale on the sky, a rotation and a flip.
:func:`lensed_pixel_sources` traces a stamp's sub-pixels through the engine's SIE + shear
(:func:`darkhaloscope.lensing.fast.source_plane`, no second lens model) and interpolates the image
bilinearly at the traced positions, which is lenstronomy's ``INTERPOL`` light profile (the tests'
reference), on a ray grid refined per pixel until the rays are no farther apart than a source
pixel in the source plane; the :class:`~darkhaloscope.lensing.injector.Injector` convolves the
result like the Sersic's rays and scales it to the row's magnitude and colours.

Units: arcsec (pixel scales arcsec/pixel), degrees; images in flux per arcsec^2 for unit flux.
No I/O (the bank's files are read by :mod:`darkhaloscope.lensing.cosmos`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["COSMOS_SIZES", "SOURCE_MODELS", "PixelSource", "clean_galaxy", "clumpy_source", "cosmos_source",
           "half_light_radius", "lensed_pixel_sources", "row_source"]

#: Valid values of ``inject.source_model``.
SOURCE_MODELS = ("sersic", "cosmos", "clumpy")
#: Valid values of ``inject.cosmos_size``.
COSMOS_SIZES = ("reff", "native")
#: Border of zero pixels around every pixel source (its bilinear interpolation falls to 0 there).
BORDER = 2


@dataclass(frozen=True, eq=False)
class PixelSource:
    """A pixelated source of unit total flux.

    ``sb``: (ny, nx) surface brightness (flux per arcsec^2, float64, read-only) at the pixel
    centres, pixel (i, j) at image-frame offset ``((j - (nx - 1) / 2) scale, (i - (ny - 1) / 2)
    scale)`` arcsec from the source centre, zero on its border; ``scale``: arcsec per pixel on
    the sky; the image frame is mirrored (x -> -x) when ``flip``, then rotated by ``angle_deg``
    (from +x towards +y) onto the sky; ``model``: "cosmos" or "clumpy"; ``ident``: the COSMOS
    IDENT (-1 for clumpy); ``hlr``: half-light radius on the sky (arcsec).
    """

    sb: np.ndarray
    scale: float
    angle_deg: float
    flip: bool
    model: str
    ident: int
    hlr: float

    def metric(self) -> np.ndarray:
        """2 x 2 matrix taking sky offsets from the source centre (arcsec) to image-frame pixel offsets."""
        a = math.radians(self.angle_deg)
        c, s = math.cos(a), math.sin(a)
        rot = np.array([[c, s], [-s, c]])            # sky -> rotated back by angle_deg
        flip = np.diag([-1.0, 1.0]) if self.flip else np.eye(2)
        return flip @ rot / self.scale


def _smoothstep(x: np.ndarray) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def clean_galaxy(img: np.ndarray, noise_sigma: float | None = None, smooth_px: float = 1.5, lo: float = 2.0,
                 hi: float = 4.0) -> np.ndarray:
    """The galaxy of a noisy stamp, its noise suppressed: flux per pixel, >= 0, zero border.

    The stamp is smoothed with a Gaussian of ``smooth_px`` pixels; where the smoothed S/N (noise
    ``noise_sigma`` per pixel, from the catalogue's NOISE_VARIANCE, else 1.4826 MAD of the stamp's
    border) is below ``lo`` the pixels are set to 0, above ``hi`` kept, in between weighted by a
    smooth step; only the connected region (S/N > lo, dilated by 2 pixels) around the brightest
    smoothed pixel near the centre is kept (neighbours and noise islands are dropped).
    """
    from scipy import ndimage

    im = np.asarray(img, dtype=np.float64)
    if im.ndim != 2 or min(im.shape) < 2 * BORDER + 3:
        raise ValueError(f"galaxy image must be 2-D and at least {2 * BORDER + 3} pixels a side, got {im.shape}")
    sig = float(noise_sigma) if noise_sigma is not None and np.isfinite(noise_sigma) and noise_sigma > 0 else 0.0
    if sig == 0.0:
        edge = np.concatenate([im[:3].ravel(), im[-3:].ravel(), im[:, :3].ravel(), im[:, -3:].ravel()])
        sig = 1.4826 * float(np.median(np.abs(edge - np.median(edge))))
    sm = ndimage.gaussian_filter(im, smooth_px, mode="constant")
    sig_s = sig / (2.0 * math.sqrt(math.pi) * smooth_px) if sig > 0 else 0.0
    if sig_s <= 0.0:
        w = (im > 0).astype(np.float64)
        snr = np.where(im > 0, np.inf, 0.0)
    else:
        snr = sm / sig_s
        w = _smoothstep((snr - lo) / (hi - lo))
    ny, nx = im.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    central = np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2) <= 0.25 * min(ny, nx)
    lab, _ = ndimage.label(snr > lo)
    seed = np.unravel_index(np.argmax(np.where(central, sm, -np.inf)), sm.shape)
    out = np.zeros_like(im)
    if lab[seed] > 0:
        keep = ndimage.binary_dilation(lab == lab[seed], iterations=2)
        out = np.clip(im, 0.0, None) * w * keep
    out[:BORDER], out[-BORDER:], out[:, :BORDER], out[:, -BORDER:] = 0.0, 0.0, 0.0, 0.0
    if not out.sum() > 0:
        raise ValueError("no galaxy above the noise in the stamp")
    return out


def half_light_radius(flux: np.ndarray, scale: float = 1.0) -> float:
    """Circular half-light radius (units of ``scale``) about the flux centroid of an image of flux per pixel."""
    f = np.asarray(flux, dtype=np.float64)
    tot = f.sum()
    yy, xx = np.mgrid[0:f.shape[0], 0:f.shape[1]]
    cy, cx = (f * yy).sum() / tot, (f * xx).sum() / tot
    r = np.hypot(yy - cy, xx - cx).ravel()
    order = np.argsort(r, kind="stable")
    cum = np.cumsum(f.ravel()[order])
    k = int(np.searchsorted(cum, 0.5 * tot))
    return float(r[order][k] * scale)


def _bin(flux: np.ndarray, k: int) -> np.ndarray:
    """Sum ``k x k`` blocks of an image of flux per pixel (padded with zeros to a multiple of k, centred)."""
    if k <= 1:
        return flux
    ny, nx = flux.shape
    py, px = (-ny) % k, (-nx) % k
    f = np.pad(flux, ((py // 2, py - py // 2), (px // 2, px - px // 2)))
    return f.reshape(f.shape[0] // k, k, f.shape[1] // k, k).sum(axis=(1, 3))


def _pixel_source(flux: np.ndarray, scale: float, angle: float, flip: bool, model: str, ident: int,
                  min_scale: float, hlr: float) -> PixelSource:
    """A unit-flux PixelSource from an image of flux per pixel (binned so that its pixels are >= min_scale);
    ``hlr``: its half-light radius on the sky (arcsec)."""
    k = max(1, math.floor(min_scale / scale + 1e-9))
    if k > 1:
        flux = _bin(flux, k)
        scale = scale * k
    flux = np.pad(flux, BORDER) if (flux[:BORDER].any() or flux[-BORDER:].any() or flux[:, :BORDER].any()
                                    or flux[:, -BORDER:].any()) else flux
    sb = flux / (flux.sum() * scale * scale)
    sb.setflags(write=False)
    return PixelSource(sb=sb, scale=float(scale), angle_deg=float(angle), flip=bool(flip), model=model,
                       ident=int(ident), hlr=hlr)


#: Cleaned galaxies kept per bank (~100 kB each; the whole embedded bank, a bounded part of the full sample).
CLEANED_CACHE = 1024


def _cleaned(bank, i: int) -> tuple[np.ndarray, float]:
    """(cleaned flux image, its half-light radius in arcsec) of galaxy ``i`` of a bank (cached per bank)."""
    cache = bank.__dict__.setdefault("_cleaned", {})
    v = cache.get(i)
    if v is None:
        nv = float(bank.noise_variance[i])
        img = clean_galaxy(bank.image(i), math.sqrt(nv) if np.isfinite(nv) and nv > 0 else None)
        img.setflags(write=False)
        v = cache[i] = (img, half_light_radius(img, float(bank.pixel_scale[i])))
        if len(cache) > CLEANED_CACHE:
            cache.clear()
    return v


#: Salts of the random streams of the source draws (numpy SeedSequence entropy beside the key).
_COSMOS_SALT, _CLUMPY_SALT = 0xC05305, 0xC1F3B7


def _rng(key: int, salt: int) -> np.random.Generator:
    """The random stream of a source draw: PCG64 seeded with (key, salt), the same on every platform."""
    k = int(key)
    if k < 0:
        raise ValueError(f"key must be a non-negative integer (a sample_id), got {key!r}")
    return np.random.default_rng([k & 0xFFFFFFFF, k >> 32, salt])


def cosmos_source(bank, key: int, reff: float | None = None, min_scale: float = 0.262 / 8) -> PixelSource:
    """The COSMOS galaxy of ``key`` (a non-negative int: the row's sample_id, itself a hash), cleaned
    and oriented.

    The galaxy index, a rotation uniform in [0, 360) deg and a mirror flip are drawn from
    :func:`_rng` of the key; ``reff`` (arcsec) rescales it to that half-light radius (None: native size);
    pixels finer than ``min_scale`` arcsec (an eighth of a survey pixel by default: finer detail
    is far below the survey's resolution) are summed into blocks of at least that size.
    """
    rng = _rng(key, _COSMOS_SALT)
    i = int(rng.integers(len(bank)))
    angle = float(rng.uniform(0.0, 360.0))
    flip = bool(rng.integers(2))
    img, hlr = _cleaned(bank, i)
    scale = float(bank.pixel_scale[i])
    if reff is not None:
        if not reff > 0:
            raise ValueError(f"reff must be > 0, got {reff!r}")
        scale *= float(reff) / hlr
        hlr = float(reff)
    return _pixel_source(np.asarray(img), scale, angle, flip, "cosmos", int(bank.ident[i]), min_scale, hlr)


def clumpy_source(key: int, reff: float, e: float, phi_deg: float, oversample: int = 6,
                  min_scale: float = 0.0) -> PixelSource:
    """A procedural clumpy star-forming galaxy of half-light radius ~``reff`` (arcsec), ellipticity ``e``
    (1 - axis ratio) and position angle ``phi_deg`` (deg), drawn from ``key`` (a non-negative int).

    An exponential disc (half-light radius ``reff``, pixel-integrated on a 2 x 2 sub-grid) holding
    50-80% of the flux plus 3-8 circular Gaussian clumps (sigma 0.15-0.3 reff, positions drawn from
    the disc's light, fluxes exponentially distributed), on pixels of ``reff / oversample`` arcsec,
    or ``min_scale`` arcsec if larger (the clumps are pixel-integrated, so their flux is kept; finer
    detail is far below the survey's resolution); ``hlr`` is recorded as ``reff``.
    """
    if not reff > 0 or not 0.0 <= e < 1.0:
        raise ValueError(f"reff must be > 0 and e in [0, 1), got {reff!r}, {e!r}")
    from scipy.special import erf

    rng = _rng(key, _CLUMPY_SALT)
    scale = max(reff / oversample, float(min_scale))
    half = math.ceil(6.0 * reff / scale)
    n = 2 * half + 1
    q = 1.0 - e
    c, s = math.cos(math.radians(phi_deg)), math.sin(math.radians(phi_deg))
    h = reff / 1.678                                   # exponential scale length
    sub = (np.arange(2) + 0.5) / 2 - 0.5
    ax = ((np.arange(n) - half)[:, None] + sub[None, :]).ravel() * scale
    X, Y = np.meshgrid(ax, ax)
    xr, yr = c * X + s * Y, -s * X + c * Y
    disc = np.exp(-np.sqrt(q * xr * xr + yr * yr / q) / h).reshape(n, 2, n, 2).mean(axis=(1, 3))
    disc /= disc.sum()
    n_clumps = int(rng.integers(3, 9))
    frac = rng.uniform(0.2, 0.5)
    fl = rng.exponential(1.0, n_clumps)
    fl *= frac / fl.sum()
    img = (1.0 - frac) * disc
    edges = (np.arange(n + 1) - half - 0.5) * scale
    for f in fl:
        rad = min(rng.gamma(2.0, h), 4.0 * reff)        # radius drawn from the disc's light profile (on the grid)
        ang = rng.uniform(0.0, 2.0 * math.pi)
        u, v = rad * math.cos(ang) * math.sqrt(q), rad * math.sin(ang) / math.sqrt(q)
        x0, y0 = c * u - s * v, s * u + c * v
        sig = reff * rng.uniform(0.15, 0.3) * math.sqrt(2.0)
        gx = np.diff(0.5 * erf((edges - x0) / sig))
        gy = np.diff(0.5 * erf((edges - y0) / sig))
        img += f * np.outer(gy, gx) / max(gx.sum() * gy.sum(), 1e-300)
    return _pixel_source(img, scale, 0.0, False, "clumpy", -1, 0.0, float(reff))


def row_source(model: str, row, bank=None, size: str = "reff", pixel_scale: float = 0.262) -> PixelSource | None:
    """The pixel source of a manifest row under ``source_model`` (None for "sersic").

    ``row``: ``sample_id`` (it seeds the draw of the galaxy / clumps), ``src_reff_arcsec``, ``src_e``,
    ``src_phi_deg``; ``bank``: a :class:`~darkhaloscope.lensing.cosmos.CosmosBank` for "cosmos";
    ``size``: :data:`COSMOS_SIZES`; ``pixel_scale``: the stamp's (arcsec/pixel; COSMOS pixels finer
    than an eighth of it are binned).
    """
    if model == "sersic":
        return None
    if "sample_id" not in row:
        raise KeyError(f"source_model {model} draws its source from the row's sample_id, which the row lacks")
    key = int(row["sample_id"])
    if model == "cosmos":
        if size not in COSMOS_SIZES:
            raise ValueError(f"cosmos_size must be one of {list(COSMOS_SIZES)}, got {size!r}")
        return cosmos_source(bank, key, float(row["src_reff_arcsec"]) if size == "reff" else None,
                             min_scale=float(pixel_scale) / 8.0)
    if model == "clumpy":
        return clumpy_source(key, float(row["src_reff_arcsec"]), float(row["src_e"]), float(row["src_phi_deg"]),
                             min_scale=float(pixel_scale) / 8.0)
    raise ValueError(f"source_model must be one of {list(SOURCE_MODELS)}, got {model!r}")


def _bilinear(src: PixelSource, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Surface brightness (flux per arcsec^2, unit total flux) of ``src`` at sky offsets ``dx, dy``
    (arcsec from the source centre): lenstronomy ``INTERPOL``'s bilinear interpolation between the pixel
    centres, 0 outside the image (its border is 0, so the interpolant is continuous there)."""
    a = math.radians(src.angle_deg)
    c, s = math.cos(a), math.sin(a)                 # scalar libm: the same on every SIMD level
    inv = 1.0 / src.scale
    u = (c * dx + s * dy) * inv
    v = (c * dy - s * dx) * inv
    if src.flip:
        u = -u
    ny, nx = src.sb.shape
    u += 0.5 * (nx - 1)
    v += 0.5 * (ny - 1)
    sel = np.flatnonzero((u >= 0.0) & (u < nx - 1) & (v >= 0.0) & (v < ny - 1))   # the rest is 0
    u, v = u.ravel()[sel], v.ravel()[sel]
    j0, i0 = np.floor(u), np.floor(v)
    tu, tv = u - j0, v - i0
    k = i0.astype(np.int64) * nx + j0.astype(np.int64)
    f = src.sb.ravel()
    out = np.zeros(np.shape(dx))
    out.ravel()[sel] = ((f[k] * (1.0 - tu) + f[k + 1] * tu) * (1.0 - tv)
                        + (f[k + nx] * (1.0 - tu) + f[k + nx + 1] * tu) * tv)
    return out


#: Rays per source pixel along each axis in the source plane (at least) where a pixel source is traced
#: (over 30 random sets the stamps agree with lenstronomy's converged INTERPOL to 2.4e-3 of the peak with 1,
#: 2.2e-3 with 1.5: the rest is the PSF phases; 1 is ~2.8x faster than 2).
RAYS_PER_SOURCE_PIXEL = 1.0
#: Most sub-pixels per pixel side of the refined ray grid (pixels next to the lens centre).
MAX_REFINE = 64
#: Safety factor of the bound on a pixel's source-plane extent.
_SAFETY = 1.02


def _support_radius(src: PixelSource) -> float:
    """Radius (arcsec, on the sky) around the source centre outside which ``src`` is exactly 0."""
    ny, nx = src.sb.shape
    i, j = np.nonzero(src.sb)
    r = np.hypot(j - 0.5 * (nx - 1), i - 0.5 * (ny - 1)).max() if i.size else 0.0
    return float((r + math.sqrt(2.0)) * src.scale)


def _traced_pixels(pb: dict, src: PixelSource, center, n: int, ps: float) -> tuple[np.ndarray, np.ndarray]:
    """(n, n) mask of the stamp pixels that may receive light of ``src`` (the others are exactly 0) and the
    bound ``lmax`` on the lens mapping's stretch ``||A||`` over each pixel (see :func:`lensed_pixel_sources`)."""
    from darkhaloscope.lensing import fast

    pix = np.arange(n, dtype=np.float64)
    x = np.broadcast_to((pix[None, :] - center[0]) * ps, (n, n))
    y = np.broadcast_to((pix[:, None] - center[1]) * ps, (n, n))
    bx, by = fast.source_plane(pb, x, y)
    rmin = np.hypot(np.maximum(np.abs(x) - 0.5 * ps, 0.0), np.maximum(np.abs(y) - 0.5 * ps, 0.0))
    kb = pb["theta_e"] / math.sqrt(pb["lens_q"])                    # 2 kappa <= kb / r for the SIE
    with np.errstate(divide="ignore"):
        lmax = np.maximum(1.0, kb / rmin - 1.0) + math.hypot(pb["gamma1"], pb["gamma2"])
    reach = _support_radius(src) + _SAFETY * lmax * ps * math.sqrt(0.5)
    return np.hypot(bx - pb["src_x"], by - pb["src_y"]) <= reach, lmax


def lensed_pixel_sources(params, sources, centers, n_pix: int, pixel_scale: float, supersample: int) -> np.ndarray:
    """Supersampled unconvolved lensed images of pixel sources, one per stamp, for unit unlensed flux.

    ``params``: mapping of :data:`darkhaloscope.lensing.fast.PARAM_KEYS` to scalars or 1-D arrays of
    length B (arcsec, degrees; the lens is SIE + external shear, traced by the engine's own
    :func:`darkhaloscope.lensing.fast.source_plane`; ``src_x``, ``src_y`` place each source's centre,
    its shape is the :class:`PixelSource`, the Sersic keys are not used); ``sources``: B
    :class:`PixelSource`; ``centers``: (B, 2) lens centres (cx, cy) in stamp pixels (column, row);
    ``n_pix`` (pixels) x ``pixel_scale`` (arcsec/pixel) stamps, ``supersample`` sub-pixels per side.

    Each sub-pixel's flux is the mean of the source's surface brightness (:func:`_bilinear`, lenstronomy's
    ``INTERPOL``) over a regular grid of rays in it times its area (arcsec^2). The ray grid is chosen per
    pixel from a bound on the lens mapping (for an isothermal lens ``||A|| <= max(1, theta_E / (sqrt(q)
    r_min) - 1) + |gamma|``, ``r_min`` the pixel's distance from the lens centre): a pixel whose
    centre's source position is farther from the source than the source's support radius plus that
    bound times the half-diagonal is exactly 0 and not traced; the others get ``m * supersample`` rays
    per side, ``m`` the least integer with at least :data:`RAYS_PER_SOURCE_PIXEL` rays per source pixel
    in the source plane (up to :data:`MAX_REFINE` rays per side, reached only next to the lens
    centre). So a pixelated source is resolved whatever the stamp's ``supersample``, and no image of
    it is missed by the culling.

    Returns (B, n_pix * supersample, n_pix * supersample) float64, flux per sub-pixel (sub-pixel
    (i * ss + a, j * ss + b) lies in stamp pixel (i, j)); summing ss x ss blocks gives the flux per
    pixel, the total is the magnification for a unit source.
    """
    from darkhaloscope.lensing import fast

    ss, n = int(supersample), int(n_pix)
    if ss < 1 or n < 1:
        raise ValueError(f"n_pix and supersample must be >= 1, got {n_pix!r}, {supersample!r}")
    ps = float(pixel_scale)
    nb = len(sources)
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    if c.shape[0] != nb:
        raise ValueError(f"centers must have shape ({nb}, 2) (one per source), got {np.shape(centers)}")
    p = {k: np.broadcast_to(np.asarray(params[k], dtype=np.float64), (nb,)) for k in fast.PARAM_KEYS}
    out = np.zeros((nb, n, ss, n, ss))
    for b in range(nb):
        src = sources[b]
        pb = {k: float(v[b]) for k, v in p.items()}
        active, lmax = _traced_pixels(pb, src, c[b], n, ps)
        rows, cols = np.nonzero(active)
        if not rows.size:
            continue
        # sub-rays per sub-pixel side: >= RAYS_PER_SOURCE_PIXEL per source pixel where the map stretches by lmax
        need = np.ceil(RAYS_PER_SOURCE_PIXEL * ps * np.minimum(lmax[rows, cols], 1e6) / (ss * src.scale))
        m = np.clip(need, 1, max(1, MAX_REFINE // ss)).astype(np.int64)
        for mv in np.unique(m):
            sel = m == mv
            r_, c_ = rows[sel], cols[sel]
            f = ss * int(mv)
            off = (np.arange(f, dtype=np.float64) + 0.5) / f - 0.5          # ray offsets in the pixel (pixels)
            xs = (c_[:, None, None] + off[None, None, :] - c[b, 0]) * ps
            ys = (r_[:, None, None] + off[None, :, None] - c[b, 1]) * ps
            xs, ys = np.broadcast_arrays(xs, ys)
            sx, sy = fast.source_plane(pb, xs, ys)
            sb = _bilinear(src, sx - pb["src_x"], sy - pb["src_y"])
            flux = sb.reshape(-1, ss, int(mv), ss, int(mv)).sum(axis=(2, 4)) * (ps / f) ** 2
            out[b, r_, :, c_, :] = flux
    return out.reshape(nb, n * ss, n * ss)
