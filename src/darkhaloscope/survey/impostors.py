"""Lens impostors of the mock survey: LRGs with light that looks like an arc but is not lensed.

Real lens searches fight ring galaxies, spiral arms, mergers with tidal features,
edge-on discs crossing the lens, blue clumpy satellites and close galaxy pairs. The
mock gives a fraction of its LRGs (``survey.mock.impostor_frac``, one fraction per
class) one such feature. They stay ordinary parent galaxies: the class is not in the
sweep catalogue (a Tractor catalogue does not know it), but in a side table beside it,
``impostors.fits`` (BRICKNAME, OBJID, IMPOSTOR), which stage ``parent`` joins
(``survey.impostors``) and the manifest then uses as negatives only.

Everything here is a pure function of its random generator and arguments (no I/O).
Units: sizes and separations in arcsec (converted with the pixel scale), positions in
pixels, fluxes in nanomaggies; colours g - r and r - z in AB mag. Each feature's total r magnitude
is drawn about the host's (from 0.5 mag brighter to 1.5 mag fainter): as bright as the injected
arcs, which are 0.5-2 mag fainter sources magnified several times.
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from darkhaloscope.constants import (
    IMPOSTOR_CLASSES,
    NO_IMPOSTOR,
    PIXEL_SCALE,
    mag_to_nmgy,
)

#: half side of the box an impostor's extra light is drawn in (pixels; 25 px = 6.5 arcsec)
HALF_BOX = 25


def assign_classes(rng: np.random.Generator, n: int, frac: dict) -> np.ndarray:
    """Class of each of ``n`` galaxies: one uniform draw against the cumulative fractions.

    ``frac`` maps every class of :data:`IMPOSTOR_CLASSES` to its fraction (0..1, summing to
    at most 1); the rest are :data:`NO_IMPOSTOR`. Returns a string array of length ``n``.
    """
    missing = [c for c in IMPOSTOR_CLASSES if c not in frac]
    if missing:
        raise ValueError(f"survey.mock.impostor_frac lacks {', '.join(missing)} (expected every class of "
                         f"{', '.join(IMPOSTOR_CLASSES)})")
    rates = np.array([float(frac[c]) for c in IMPOSTOR_CLASSES])
    if (rates < 0).any() or rates.sum() > 1.0 + 1e-12:
        raise ValueError(f"survey.mock.impostor_frac: expected fractions >= 0 summing to <= 1, got {frac}")
    u = rng.uniform(size=n)
    edges = np.cumsum(rates)
    idx = np.searchsorted(edges, u, side="right")
    labels = np.array(list(IMPOSTOR_CLASSES) + [NO_IMPOSTOR])
    return labels[idx]


def _grid(fx: float, fy: float, oversample: int = 3):
    """Sub-pixel coordinates (arcsec) of the impostor box relative to the host centre."""
    n = 2 * HALF_BOX + 1
    c = (np.arange(n * oversample) + 0.5) / oversample - 0.5
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return (xx - HALF_BOX - fx) * PIXEL_SCALE, (yy - HALF_BOX - fy) * PIXEL_SCALE


def _bin(img: np.ndarray, oversample: int = 3) -> np.ndarray:
    n = img.shape[0] // oversample
    out = img.reshape(n, oversample, n, oversample).sum(axis=(1, 3))
    tot = out.sum()
    return out / tot if tot > 0 else out


def _rot(x, y, phi):
    c, s = np.cos(phi), np.sin(phi)
    return x * c + y * s, -x * s + y * c


def _sersic(x, y, reff, n, q, phi):
    xr, yr = _rot(x, y, phi)
    r = np.sqrt(xr**2 + (yr / max(q, 0.05)) ** 2)
    bn = 2.0 * n - 1.0 / 3.0
    return np.exp(-bn * ((np.maximum(r, 1e-3) / reff) ** (1.0 / n) - 1.0))


def feature_light(rng: np.random.Generator, cls: str, fx: float, fy: float) -> tuple[np.ndarray, float, float, float]:
    """The extra light of one impostor of class ``cls`` around a host at sub-pixel offset (fx, fy).

    Returns (unit image of sum 1 on a (2*HALF_BOX+1)^2 box centred on the host's nearest pixel,
    magnitude offset from the host's r magnitude (mag), g - r, r - z (AB mag)). Before the PSF.
    """
    x, y = _grid(fx, fy)
    r = np.hypot(x, y)
    t = np.arctan2(y, x)
    if cls == "ring":  # a (collisional / resonance) ring, 1-3 arcsec, star-forming colours
        rad, w = rng.uniform(1.0, 3.0), rng.uniform(0.15, 0.35)
        q, phi = rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
        xr, yr = _rot(x, y, phi)
        img = np.exp(-0.5 * ((np.hypot(xr, yr / q) - rad) / w) ** 2)
        return _bin(img), rng.uniform(-0.5, 1.0), rng.normal(0.5, 0.1), rng.normal(0.35, 0.1)
    if cls == "spiral":  # two logarithmic arms winding from 1 to 3 arcsec
        pitch, t0, w = np.radians(rng.uniform(12, 25)), rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.3)
        phase = np.log(np.maximum(r, 1e-3)) / np.tan(pitch) + t0
        d = np.angle(np.exp(2j * (t - phase))) / 2.0  # angular distance to the nearer of the two arms
        img = np.exp(-0.5 * (d * r / w) ** 2) * ((r >= 1.0) & (r <= 3.0)) * np.exp(-r / 2.0)
        return _bin(img), rng.uniform(-0.5, 1.0), rng.normal(0.6, 0.1), rng.normal(0.4, 0.1)
    if cls == "merger":  # tidal tails / shells of the host's own (red) stars, and a second nucleus
        img = np.zeros_like(r)
        for _ in range(int(rng.integers(1, 3))):
            rad, a0, span = rng.uniform(1.5, 3.2), rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(60), np.radians(150))
            da = np.angle(np.exp(1j * (t - a0)))
            img += np.exp(-0.5 * ((r - rad) / rng.uniform(0.25, 0.5)) ** 2) * np.exp(-0.5 * (da / (span / 2)) ** 4)
        ang, sep = rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.6)
        img += 0.5 * img.max() * np.exp(-0.5 * (np.hypot(x - sep * np.cos(ang), y - sep * np.sin(ang)) / 0.25) ** 2)
        return _bin(img), rng.uniform(0.0, 1.5), rng.normal(1.5, 0.2), rng.normal(1.0, 0.2)
    if cls == "edge_on":  # a thin foreground / background disc crossing the LRG
        dx, dy = rng.uniform(-0.8, 0.8, 2)
        img = _sersic(x - dx, y - dy, rng.uniform(1.2, 2.5), 1.0, rng.uniform(0.08, 0.18), rng.uniform(0, np.pi))
        return _bin(img), rng.uniform(-0.5, 1.0), rng.normal(0.8, 0.15), rng.normal(0.6, 0.15)
    if cls == "clumpy":  # 3-7 compact blue star-forming clumps 1-3 arcsec away
        img = np.zeros_like(r)
        a0 = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(3, 8))):
            rad, a = rng.uniform(1.0, 3.0), a0 + rng.normal(0, 0.8)
            s = rng.uniform(0.08, 0.2)
            img += rng.uniform(0.5, 1.0) * np.exp(-0.5 * (np.hypot(x - rad * np.cos(a), y - rad * np.sin(a)) / s) ** 2) / s**2
        return _bin(img), rng.uniform(0.0, 1.5), rng.normal(0.15, 0.1), rng.normal(0.05, 0.1)
    if cls == "pair":  # a second early-type galaxy 1.5-3 arcsec away, of LRG colours
        ang, sep = rng.uniform(0, 2 * np.pi), rng.uniform(1.5, 3.0)
        img = _sersic(x - sep * np.cos(ang), y - sep * np.sin(ang), rng.uniform(0.4, 1.0), 4.0,
                      rng.uniform(0.6, 1.0), rng.uniform(0, np.pi))
        return _bin(img), rng.uniform(0.0, 1.5), rng.normal(1.6, 0.2), rng.normal(1.1, 0.2)
    raise ValueError(f"unknown impostor class {cls!r}; expected one of {', '.join(IMPOSTOR_CLASSES)}")


def band_fluxes(host_rmag: float, dmag: float, gr: float, rz: float) -> dict:
    """g, r, z fluxes (nanomaggies) of a feature ``dmag`` fainter than its host in r."""
    f_r = float(mag_to_nmgy(host_rmag + dmag))
    return {"g": f_r * 10 ** (-0.4 * gr), "r": f_r, "z": f_r * 10 ** (0.4 * rz)}


def side_table_hdu(rows: list[tuple[str, int, str]]) -> fits.BinTableHDU:
    """The side table: one row (BRICKNAME, OBJID, IMPOSTOR) per impostor; other galaxies are absent."""
    return fits.BinTableHDU.from_columns([
        fits.Column(name="BRICKNAME", format="8A", array=np.array([r[0] for r in rows], dtype="S8")),
        fits.Column(name="OBJID", format="J", array=np.array([r[1] for r in rows], dtype=np.int32)),
        fits.Column(name="IMPOSTOR", format="8A", array=np.array([r[2] for r in rows], dtype="S8")),
    ])
