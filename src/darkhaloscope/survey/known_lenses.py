"""Known strong lenses: the survey's own list (FITS with RA, DEC in deg) or lenscat's catalogue.

lenscat (Vujeva et al.) compiles ~33,000 entries graded ``confident`` or ``probable`` and typed
``galaxy``, ``group`` or ``cluster``; about 90% are probable candidates. As *known lenses* (the
known-lens recall, the bricks whose cutouts are made for it) only the grades and types of
``survey.lenscat_recall`` count (default: confident galaxy-scale lenses); exclusions around known
lenses (the parent sample's ``near_known_lens``, hard-negative mining) use every entry
(:func:`read_lenscat`).
"""

from __future__ import annotations

import io

import numpy as np
from astropy.io import fits

from darkhaloscope.survey import fs
from darkhaloscope.errors import SurveyError


#: lenscat's grades and types (its columns ``grading`` and ``type``)
LENSCAT_GRADES = ("confident", "probable")
LENSCAT_TYPES = ("galaxy", "group", "cluster")
#: the lenscat entries that count as known lenses by default: confident galaxy-scale lenses
DEFAULT_LENSCAT_RECALL = {"grading": ["confident"], "type": ["galaxy"]}


def read_known_lenses(root: str, spec: str, lenscat_recall: dict | None = None) -> dict[str, np.ndarray]:
    """Return {'name', 'ra', 'dec'} arrays (deg) of the known lenses.

    ``spec`` is a path relative to the survey root (a FITS table with RA and DEC
    columns) or ``"lenscat"`` for the lenscat package's compilation: then only the entries whose
    grading and type are in ``lenscat_recall`` (params.yaml survey.lenscat_recall; default
    :data:`DEFAULT_LENSCAT_RECALL`), with their 'grading' and 'type'.
    """
    if spec == "lenscat":
        return select_lenscat(read_lenscat(), lenscat_recall)
    path = fs.join(root, spec)
    try:
        raw = fs.read_bytes(path)
    except FileNotFoundError:
        raise SurveyError(f"{path}: known-lens table not found (survey.known_lenses in params.yaml)") from None
    if raw[:2] == b"\x1f\x8b":  # gzip, whatever the name
        import gzip
        import zlib

        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise SurveyError(f"{path}: gzip-compressed but not readable ({type(e).__name__}: {e})") from None
    try:
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
    except SurveyError:
        raise
    except (OSError, ValueError, TypeError, IndexError) as e:
        raise SurveyError(f"{path}: not a readable FITS known-lens table with RA, DEC (deg) "
                          f"({type(e).__name__}: {e})") from None
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
    """Every entry of lenscat's catalogue: 'name', 'ra', 'dec' (deg), 'grading', 'type' (for exclusions)."""
    import lenscat

    cat = lenscat.catalog
    out = {"name": np.asarray(cat["name"]).astype(str),
           "ra": np.asarray(cat["RA"], dtype=np.float64),
           "dec": np.asarray(cat["DEC"], dtype=np.float64),
           "grading": np.char.strip(np.asarray(cat["grading"]).astype(str)),
           "type": np.char.strip(np.asarray(cat["type"]).astype(str))}
    check_coordinates("lenscat", out["ra"], out["dec"])
    return out


def select_lenscat(cat: dict, recall: dict | None = None) -> dict[str, np.ndarray]:
    """The entries of :func:`read_lenscat`'s ``cat`` whose grading and type are in ``recall``
    ({'grading': [...], 'type': [...]}; default :data:`DEFAULT_LENSCAT_RECALL`)."""
    recall = DEFAULT_LENSCAT_RECALL if recall is None else recall
    for key, valid in (("grading", LENSCAT_GRADES), ("type", LENSCAT_TYPES)):
        bad = [v for v in recall.get(key, []) if v not in valid]
        if bad or not recall.get(key):
            raise ValueError(f"survey.lenscat_recall.{key}: expected a non-empty list of {valid}, got "
                             f"{recall.get(key)!r}")
    keep = np.isin(cat["grading"], recall["grading"]) & np.isin(cat["type"], recall["type"])
    return {k: v[keep] for k, v in cat.items()}


def lenscat_counts(cat: dict, near: np.ndarray | None = None) -> dict:
    """Entries per ``<grading>/<type>`` (every combination, zeros included); with ``near`` (one bool per
    entry) the count of those entries instead."""
    near = np.ones(len(cat["ra"]), bool) if near is None else np.asarray(near, bool)
    out, known = {}, np.zeros(len(cat["ra"]), bool)
    for g in LENSCAT_GRADES:
        for t in LENSCAT_TYPES:
            m = (cat["grading"] == g) & (cat["type"] == t)
            known |= m
            out[f"{g}/{t}"] = int((m & near).sum())
    out["other"] = int((~known & near).sum())  # a grading or type outside LENSCAT_GRADES / LENSCAT_TYPES
    return out


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
