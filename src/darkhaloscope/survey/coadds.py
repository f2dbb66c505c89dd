"""Reader for DR10 coadd images and inverse-variance maps (nanomaggies, TAN WCS)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from darkhaloscope.survey import fs
from darkhaloscope.survey.bricks import coadd_relpath
from darkhaloscope.errors import SurveyError

EXTENSIONS = (".fits.fz", ".fits")


def find_coadd(root: str, brick: str, band: str, kind: str = "image") -> str | None:
    """Path of a brick's coadd file under ``root`` (``.fits.fz`` preferred), or None."""
    for ext in EXTENSIONS:
        p = fs.join(root, coadd_relpath(brick, band, kind, ext))
        if fs.exists(p):
            return p
    return None


def read_coadd(path: str, need_wcs: bool = True) -> tuple[np.ndarray, WCS | None]:
    """Return (pixels float32 [nanomaggies or 1/nanomaggy^2], celestial WCS) of a coadd file.

    Takes the first HDU holding a 2-D image (hdu 1 of an fpack-compressed file).
    Raises SurveyError naming the file if it is unreadable or, when ``need_wcs``,
    has no usable celestial WCS.
    """
    try:
        raw = fs.read_bytes(path)
    except FileNotFoundError:
        raise SurveyError(f"{path}: coadd file not found") from None
    try:
        with fits.open(io.BytesIO(raw), memmap=False) as hdul:
            hdu = next((h for h in hdul if h.data is not None and np.ndim(h.data) == 2), None)
            if hdu is None:
                raise SurveyError(f"{path}: no 2-D image HDU")
            data = np.asarray(hdu.data, dtype=np.float32)
            header = hdu.header
    except SurveyError:
        raise
    except (OSError, ValueError) as e:
        raise SurveyError(f"{path}: not a readable FITS image ({e})") from None
    if not need_wcs:
        return data, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception as e:  # astropy raises several types for broken headers
            raise SurveyError(f"{path}: header has no usable WCS ({e})") from None
    if not wcs.has_celestial or wcs.wcs.ctype[0][:4] not in ("RA--", "GLON") or "TAN" not in wcs.wcs.ctype[0]:
        raise SurveyError(
            f"{path}: header has no usable celestial TAN WCS (CTYPE1={wcs.wcs.ctype[0]!r}); "
            "expected RA---TAN/DEC--TAN as in DR10 coadds"
        )
    return data, wcs
