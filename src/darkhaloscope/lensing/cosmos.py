"""A bank of real galaxies in GalSim's RealGalaxyCatalog format (COSMOS HST/ACS F814W stamps).

The format is what ``galsim_download_cosmos`` fetches (the 23.5 and 25.2 training samples,
~56,000 galaxies): a catalogue FITS table with one row per galaxy -- ``IDENT``, ``MAG`` (F814W
AB), ``GAL_FILENAME`` (the image file, relative to the catalogue's directory), ``GAL_HDU``
(its HDU holding the galaxy), ``PIXEL_SCALE`` (arcsec), ``NOISE_VARIANCE`` (of the stamp's
HST noise) -- and image files with one image HDU per galaxy (PSF-convolved by HST, with noise).

:data:`DEFAULT_BANK` is the embedded bank: ten galaxies of the 23.5 sample (from paltas' test
data, MIT licence; ``cosmos_bank/README.md``), enough for tests and a small default. Point
``inject.cosmos_bank`` at the full sample's ``real_galaxy_catalog_23.5.fits`` to draw from all
of it (see the README).

This module is the one place in :mod:`darkhaloscope.lensing` that reads files: the catalogue
once per bank, each galaxy's image on first use (a bounded cache); what it returns is plain
arrays for the physics in :mod:`darkhaloscope.lensing.sources`.

Units: pixel scale in arcsec/pixel, magnitudes AB, image values in the bank's flux units per
pixel (only their shape is used: the injection rescales them to the drawn magnitude).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_BANK", "CosmosBank", "read_bank"]

#: The embedded ten-galaxy bank's catalogue (``inject.cosmos_bank: ""`` selects it).
DEFAULT_BANK = str(Path(__file__).resolve().parent / "cosmos_bank" / "real_galaxy_catalog_23.5.fits")
#: Raw galaxy images kept in memory (the cleaned images are cached by :mod:`~darkhaloscope.lensing.sources`).
IMAGE_CACHE = 64


@dataclass(eq=False)
class CosmosBank:
    """A RealGalaxyCatalog: per galaxy ``ident``, ``mag`` (F814W AB), ``pixel_scale`` (arcsec),
    ``noise_variance`` (image units^2) and the image (:meth:`image`, read on first use)."""

    path: str
    ident: np.ndarray
    mag: np.ndarray
    pixel_scale: np.ndarray
    noise_variance: np.ndarray
    files: tuple[str, ...]
    hdus: np.ndarray

    def __len__(self) -> int:
        return int(self.ident.size)

    def image(self, i: int) -> np.ndarray:
        """The ``i``-th galaxy's stamp (2-D float64, read-only), as stored (HST PSF and noise included)."""
        return _read_image(self.files[i], int(self.hdus[i]))


@functools.lru_cache(maxsize=IMAGE_CACHE)
def _read_image(path: str, hdu: int) -> np.ndarray:
    from astropy.io import fits

    with fits.open(path, memmap=True) as h:
        data = h[hdu].data
        if data is None or data.ndim != 2:
            raise ValueError(f"{path}: HDU {hdu} holds no 2-D galaxy image")
        img = np.array(data, dtype=np.float64)
    if not np.isfinite(img).all():
        raise ValueError(f"{path}: HDU {hdu} has non-finite pixels")
    img.setflags(write=False)
    return img


def read_bank(path: str | None = None) -> CosmosBank:
    """The bank of a RealGalaxyCatalog catalogue FITS (``None`` or ``""``: :data:`DEFAULT_BANK`).

    Reads the catalogue (columns IDENT, MAG, GAL_FILENAME, GAL_HDU, PIXEL_SCALE and, if present,
    NOISE_VARIANCE); image files are resolved relative to the catalogue's directory and must
    exist. Galaxy images are read on first use. Cached per (absolute) path.
    """
    return _read_bank(os.path.abspath(os.path.expanduser(str(path) if path else DEFAULT_BANK)))


@functools.lru_cache(maxsize=8)
def _read_bank(path: str) -> CosmosBank:
    from astropy.io import fits

    if not os.path.isfile(path):
        raise FileNotFoundError(f"COSMOS bank catalogue not found: {path} (inject.cosmos_bank; \"\" = the "
                                f"embedded ten-galaxy bank; see src/darkhaloscope/lensing/cosmos_bank/README.md)")
    with fits.open(path) as h:
        t = h[1].data
        names = {n.upper() for n in t.columns.names}
        need = ("IDENT", "MAG", "GAL_FILENAME", "GAL_HDU", "PIXEL_SCALE")
        missing = [n for n in need if n not in names]
        if missing:
            raise ValueError(f"{path}: not a RealGalaxyCatalog catalogue, it lacks columns {missing}")
        n = len(t)
        if n == 0:
            raise ValueError(f"{path}: the catalogue has no galaxies")
        base = os.path.dirname(path)
        files = tuple(os.path.join(base, str(f).strip()) for f in t["GAL_FILENAME"])
        for f in sorted(set(files)):
            if not os.path.isfile(f):
                raise FileNotFoundError(f"{path}: image file {f} (GAL_FILENAME) not found")
        noise = (np.asarray(t["NOISE_VARIANCE"], dtype=np.float64) if "NOISE_VARIANCE" in names
                 else np.full(n, np.nan))
        bank = CosmosBank(path=path, ident=np.asarray(t["IDENT"], dtype=np.int64),
                          mag=np.asarray(t["MAG"], dtype=np.float64),
                          pixel_scale=np.asarray(t["PIXEL_SCALE"], dtype=np.float64),
                          noise_variance=noise, files=files, hdus=np.asarray(t["GAL_HDU"], dtype=np.int64))
    if not (np.isfinite(bank.pixel_scale).all() and (bank.pixel_scale > 0).all()):
        raise ValueError(f"{path}: PIXEL_SCALE must be positive")
    return bank
