"""DR10 brick naming, coadd layout and the bricks' TAN WCS (0.262 arcsec/pixel)."""

from __future__ import annotations

import math

from astropy.wcs import WCS

from darkhaloscope.constants import PIXEL_SCALE


def brick_name(ra_deg: float, dec_deg: float) -> str:
    """DR10 brick name of a brick centre: ``<RA*10:04d><p|m><|Dec|*10:03d>``, e.g. 0460m800."""
    ra10 = int(math.floor(round(ra_deg * 10.0, 6)))
    dec10 = int(math.floor(round(abs(dec_deg) * 10.0, 6)))
    return f"{ra10:04d}{'p' if dec_deg >= 0 else 'm'}{dec10:03d}"


def coadd_relpath(brick: str, band: str, kind: str = "image", ext: str = ".fits.fz") -> str:
    """Path of a coadd file relative to the survey root, as DR10 lays it out."""
    if kind not in ("image", "invvar"):
        raise ValueError(f"coadd kind must be 'image' or 'invvar', got {kind!r}")
    return f"coadd/{brick[:3]}/{brick}/legacysurvey-{brick}-{kind}-{band}{ext}"


def sweep_name(ra_lo: float, dec_lo: float, step: float = 5.0) -> str:
    """DR10 sweep file name of the step x step deg box whose lower corner is given."""

    def part(ra: float, dec: float) -> str:
        return f"{int(round(ra)):03d}{'p' if dec >= 0 else 'm'}{int(round(abs(dec))):03d}"

    return f"sweep-{part(ra_lo, dec_lo)}-{part(ra_lo + step, dec_lo + step)}.fits"


def brick_wcs(ra_deg: float, dec_deg: float, size_pix: int, pixel_scale: float = PIXEL_SCALE) -> WCS:
    """TAN WCS of a square brick centred on (ra, dec), RA increasing to the left (east)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra_deg, dec_deg]
    w.wcs.crpix = [(size_pix + 1) / 2.0, (size_pix + 1) / 2.0]
    w.wcs.cd = [[-pixel_scale / 3600.0, 0.0], [0.0, pixel_scale / 3600.0]]
    w.wcs.cunit = ["deg", "deg"]
    w.pixel_shape = (size_pix, size_pix)
    return w


BRICK_TABLES = ("survey-bricks.fits", "survey-bricks.fits.gz")


def read_brick_table(root: str) -> dict:
    """DR10's brick table (BRICKNAME, RA1, RA2, DEC1, DEC2 in deg) from the survey root."""
    import io

    import numpy as np
    from astropy.io import fits

    from darkhaloscope.survey import fs
    from darkhaloscope.errors import SurveyError

    for name in BRICK_TABLES:
        path = fs.join(root, name)
        if fs.exists(path):
            with fits.open(io.BytesIO(fs.read_bytes(path)), memmap=False) as hdul:
                t = hdul[1].data
                return {c.lower(): (np.char.strip(np.asarray(t[c]).astype("U")) if c == "BRICKNAME"
                                    else np.asarray(t[c], dtype=np.float64))
                        for c in ("BRICKNAME", "RA1", "RA2", "DEC1", "DEC2")}
    raise SurveyError(f"{root}: no brick table ({' or '.join(BRICK_TABLES)}) to map positions to bricks")


def bricks_of(table: dict, ra, dec) -> list:
    """Brick name containing each (ra, dec) in deg, or None where no brick covers it."""
    import numpy as np

    out = []
    for r, d in zip(np.atleast_1d(ra), np.atleast_1d(dec)):
        hit = np.flatnonzero((table["ra1"] <= r) & (r < table["ra2"]) & (table["dec1"] <= d) & (d < table["dec2"]))
        out.append(str(table["brickname"][hit[0]]) if len(hit) else None)
    return out
