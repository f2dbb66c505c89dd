"""Known strong lenses: the survey's own list (FITS with RA, DEC in deg) or lenscat's catalogue."""

from __future__ import annotations

import io

import numpy as np
from astropy.io import fits

from darkhaloscope.survey import fs
from darkhaloscope.errors import SurveyError


def read_known_lenses(root: str, spec: str) -> dict[str, np.ndarray]:
    """Return {'name', 'ra', 'dec'} arrays (deg).

    ``spec`` is a path relative to the survey root (a FITS table with RA and DEC
    columns) or ``"lenscat"`` for the lenscat package's compilation of known lenses.
    """
    if spec == "lenscat":
        return read_lenscat()
    path = fs.join(root, spec)
    try:
        raw = fs.read_bytes(path)
    except FileNotFoundError:
        raise SurveyError(f"{path}: known-lens table not found (survey.known_lenses in params.yaml)") from None
    with fits.open(io.BytesIO(raw), memmap=False) as hdul:
        tab = next((h.data for h in hdul if isinstance(h, fits.BinTableHDU)), None)
        if tab is None:
            raise SurveyError(f"{path}: no table HDU with RA and DEC columns")
        names = {n.upper(): n for n in tab.columns.names}
        for c in ("RA", "DEC"):
            if c not in names:
                raise SurveyError(f"{path}: known-lens table lacks column {c} (deg)")
        ra = np.asarray(tab[names["RA"]], dtype=np.float64)
        dec = np.asarray(tab[names["DEC"]], dtype=np.float64)
        nm = (np.char.strip(np.asarray(tab[names["NAME"]]).astype("U")) if "NAME" in names
              else np.array([f"lens{i}" for i in range(len(ra))]))
    check_coordinates(path, ra, dec)
    return {"name": nm, "ra": ra, "dec": dec}


def check_coordinates(path: str, ra: np.ndarray, dec: np.ndarray) -> None:
    """SurveyError naming ``path`` unless every RA is in [0, 360) deg and every Dec in [-90, 90] deg."""
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra < 360) & (np.abs(dec) <= 90))
    if bad.any():
        i = np.flatnonzero(bad)
        raise SurveyError(f"{path}: {len(i)} of {len(ra)} known lenses have coordinates out of range "
                          f"(RA must be in [0, 360) deg, Dec in [-90, 90] deg), e.g. row {int(i[0])}: "
                          f"RA {ra[i[0]]!r}, Dec {dec[i[0]]!r}")


def read_lenscat() -> dict[str, np.ndarray]:
    """All entries of lenscat's catalogue of known lenses (real sky positions, deg)."""
    import lenscat

    cat = lenscat.catalog
    return {"name": np.asarray(cat["name"]).astype(str),
            "ra": np.asarray(cat["RA"], dtype=np.float64),
            "dec": np.asarray(cat["DEC"], dtype=np.float64)}


def match_within(ra, dec, ref_ra, ref_dec, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """For each (ra, dec): is there a reference within radius, and the separation to the nearest (arcsec).

    scikit-learn's BallTree with the haversine metric on (dec, ra) in radians.
    """
    from sklearn.neighbors import BallTree

    n = len(ra)
    if len(ref_ra) == 0 or n == 0:
        return np.zeros(n, bool), np.full(n, np.inf)
    tree = BallTree(np.radians(np.column_stack([ref_dec, ref_ra])), metric="haversine")
    dist, _ = tree.query(np.radians(np.column_stack([dec, ra])), k=1)
    sep = np.degrees(dist[:, 0]) * 3600.0
    return sep <= radius_arcsec, sep
