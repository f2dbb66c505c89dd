"""Phase 3: the LRG parent sample — colour cuts, sky-region splits, stable ids.

Magnitudes are AB, m = 22.5 - 2.5 log10(flux / nanomaggy); a non-positive flux
has no magnitude and fails every cut that uses it.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from astropy import units as u
from astropy_healpix import HEALPix

from darkhaloscope.constants import SPLITS
from darkhaloscope.constants import nmgy_to_mag
from darkhaloscope.hashing import hash_int63, uniform

DESI_LRG = "desi_lrg"

#: RELEASE values of the Legacy Surveys by photometric system (desitarget's ``releasedict``): DECam
#: (south, "S") or BASS/MzLS (north, "N"). Every DR10 value (10000-10999) is DECam: DR10 is south only.
RELEASE_SOUTH = (3000, 5000, 7000, 7999, 8000, 9000, 9002, 9004, 9006, 9008, 9010, 9012)
RELEASE_NORTH = (4000, 6000, 8001, 9001, 9003, 9005, 9007, 9009, 9011, 9013)


def photsys(release) -> np.ndarray:
    """'S' (DECam) or 'N' (BASS/MzLS) per RELEASE value; ValueError naming an unknown value."""
    rel = np.asarray(release).astype(np.int64)
    north = np.isin(rel, RELEASE_NORTH)
    south = ((rel >= 10000) & (rel < 11000)) | np.isin(rel, RELEASE_SOUTH)
    unknown = ~(north | south)
    if unknown.any():
        raise ValueError(f"column RELEASE has {int(unknown.sum())} value(s) this pipeline does not know, e.g. "
                         f"{int(rel[unknown][0])} (known: DR10 DECam 10000-10999; DECam {RELEASE_SOUTH}; "
                         f"BASS/MzLS {RELEASE_NORTH})")
    return np.where(north, "N", "S")


def _north_rows(catalog) -> np.ndarray | None:
    """Boolean mask of BASS/MzLS (north) rows, or None when the catalogue has no RELEASE column (south)."""
    try:
        rel = catalog["RELEASE"]
    except (KeyError, ValueError, IndexError):
        return None
    return photsys(rel) == "N"


def _col(catalog, name: str) -> np.ndarray:
    try:
        return np.asarray(catalog[name])
    except (KeyError, ValueError, IndexError):
        raise KeyError(f"catalogue has no column {name!r} (DR10 sweep names, upper case, are expected)") from None




def _fluxes(catalog, bands, deredden: bool, prefix: str = "FLUX_") -> dict:
    out = {}
    for b in bands:
        f = _col(catalog, f"{prefix}{b}").astype(np.float64)
        if deredden:
            f = f / _col(catalog, f"MW_TRANSMISSION_{b}").astype(np.float64)
        out[b] = f
    return out


def _type_not_psf(catalog) -> np.ndarray:
    """TYPE (bytes or str, blank- or NUL-padded) is not PSF."""
    from darkhaloscope.survey.sweeps import match_stripped

    return match_stripped(_col(catalog, "TYPE"), ("PSF",)) != 0


def cut_steps(catalog, variant: str = "v3_color_relaxed", deredden: bool = False,
              variants: dict | None = None) -> "OrderedDict[str, np.ndarray]":
    """The successive boolean cuts of a variant, in order (each independent of the others)."""
    if variant == DESI_LRG:
        # DESI defines its LRG cuts on extinction-corrected magnitudes: always deredden
        return _desi_lrg_steps(catalog, deredden=True)
    if variants is None:
        raise ValueError("cut_steps needs the cut table (params.yaml selection.variants)")
    table = variants
    if variant not in table:
        raise ValueError(f"unknown LRG variant {variant!r}; valid: {', '.join(sorted(table))}, {DESI_LRG}")
    north = _north_rows(catalog)
    if north is not None and north.any():
        rel = np.asarray(catalog["RELEASE"])[north]
        raise ValueError(f"{int(north.sum())} row(s) are BASS/MzLS (north) photometry (RELEASE {int(rel[0])}); "
                         f"the cuts of selection.variant {variant!r} are defined for DECam (south) photometry "
                         f"only: use selection.variant desi_lrg (DESI's published north cuts) or a south survey.root")
    cut = table[variant]
    f = _fluxes(catalog, ("R", "Z", "W1"), deredden)
    mr, mz, mw1 = nmgy_to_mag(f["R"]), nmgy_to_mag(f["Z"]), nmgy_to_mag(f["W1"])
    with np.errstate(invalid="ignore"):
        steps = OrderedDict()
        steps["type_not_psf"] = _type_not_psf(catalog)
        steps["flux_positive"] = (f["R"] > 0) & (f["Z"] > 0) & (f["W1"] > 0)
        steps[f"z_lt_{cut['z_max']}"] = mz < cut["z_max"]
        steps[f"r_minus_z_gt_{cut['rz_min']}"] = (mr - mz) > cut["rz_min"]
        steps[f"z_minus_w1_gt_{cut['zw1_min']}"] = (mz - mw1) > cut["zw1_min"]
    return steps


#: DESI main-survey LRG colour cuts (Zhou et al. 2023, AJ 165, 58; desitarget ``isLRG_colors``), AB mag:
#: zfiber faint limit, low-z cut (g - W1 or r - W1), sliding IR cut (pivot, slope, low-z pivot, r - W1 floor)
DESI_LRG_CUTS = {
    "S": {"zfiber_max": 21.6, "gw1_min": 2.9, "rw1_min": 1.8, "slide_pivot": 17.14, "slide_slope": 1.8,
          "lowz_pivot": 16.33, "rw1_red": 3.3},
    "N": {"zfiber_max": 21.61, "gw1_min": 2.97, "rw1_min": 1.8, "slide_pivot": 17.13, "slide_slope": 1.83,
          "lowz_pivot": 16.31, "rw1_red": 3.4},
}
#: sweep columns a variant reads beyond survey.sweeps.REQUIRED_COLUMNS
VARIANT_COLUMNS = {DESI_LRG: ("FIBERFLUX_Z", "FIBERTOTFLUX_Z", "GAIA_PHOT_G_MEAN_MAG")}
#: MASKBITS that veto a DESI LRG: BRIGHT (1), GALAXY (12), CLUSTER (13)
DESI_LRG_MASKBITS = (1 << 1) | (1 << 12) | (1 << 13)


def _desi_lrg_steps(catalog, deredden: bool) -> "OrderedDict[str, np.ndarray]":
    """DESI LRG target selection (Zhou et al. 2023, AJ 165, 58; desitarget ``isLRG``), complete:

    quality (``notinLRG_mask``): NOBS > 0 in g, r, z; positive FLUX_IVAR in r, z, W1; MASKBITS 1
    (BRIGHT), 12 (GALAXY), 13 (CLUSTER) not set; positive r, z, W1 and z-fibre fluxes; no bright Gaia
    star (GAIA_PHOT_G_MEAN_MAG == 0, i.e. no Gaia match, or > 18); z-band fibre-total flux below
    100 nanomaggies (zfibertot > 17.5 mag: bright stars missing from Gaia). Colour cuts as
    :data:`DESI_LRG_CUTS`, the south (DECam) or north (BASS/MzLS) set per row by RELEASE (south when the
    catalogue has no RELEASE column). Fluxes and fibre fluxes are divided by MW_TRANSMISSION when
    ``deredden`` (DESI does); Gaia G is not.
    """
    f = _fluxes(catalog, ("G", "R", "Z", "W1"), deredden)
    fib = _col(catalog, "FIBERFLUX_Z").astype(np.float64)
    fibtot = _col(catalog, "FIBERTOTFLUX_Z").astype(np.float64)
    if deredden:
        mw = _col(catalog, "MW_TRANSMISSION_Z").astype(np.float64)
        fib, fibtot = fib / mw, fibtot / mw
    gaia_g = _col(catalog, "GAIA_PHOT_G_MEAN_MAG").astype(np.float64)
    g, r, z, w1 = (nmgy_to_mag(f[b]) for b in ("G", "R", "Z", "W1"))
    zfib = nmgy_to_mag(fib)
    mask = _col(catalog, "MASKBITS").astype(np.int64)
    north = _north_rows(catalog)
    north = np.zeros(len(mask), bool) if north is None else north
    cut = {k: np.where(north, DESI_LRG_CUTS["N"][k], DESI_LRG_CUTS["S"][k]) for k in DESI_LRG_CUTS["S"]}
    with np.errstate(invalid="ignore"):
        steps = OrderedDict()
        steps["quality"] = (
            (_col(catalog, "NOBS_G") > 0) & (_col(catalog, "NOBS_R") > 0) & (_col(catalog, "NOBS_Z") > 0)
            & (_col(catalog, "FLUX_IVAR_R") > 0) & (_col(catalog, "FLUX_IVAR_Z") > 0)
            & (_col(catalog, "FLUX_IVAR_W1") > 0)
            & ((mask & DESI_LRG_MASKBITS) == 0)
        )
        steps["flux_positive"] = (f["R"] > 0) & (f["Z"] > 0) & (f["W1"] > 0) & (fib > 0)
        steps["no_bright_gaia_star"] = (gaia_g == 0) | (gaia_g > 18)
        steps["zfibertot_gt_17.5"] = fibtot < 10 ** (-0.4 * (17.5 - 22.5))
        steps["zfiber_faint_limit"] = zfib < cut["zfiber_max"]
        steps["non_stellar"] = (z - w1) > 0.8 * (r - z) - 0.6
        steps["low_z_cut"] = ((g - w1) > cut["gw1_min"]) | ((r - w1) > cut["rw1_min"])
        steps["sliding_cut"] = ((((r - w1) > (w1 - cut["slide_pivot"]) * cut["slide_slope"])
                                 & ((r - w1) > (w1 - cut["lowz_pivot"]))) | ((r - w1) > cut["rw1_red"]))
    return steps


def lrg_mask(catalog, variant: str = "v3_color_relaxed", deredden: bool = False,
             variants: dict | None = None) -> np.ndarray:
    """Boolean mask of the LRGs in ``catalog`` (a table with DR10 sweep column names, upper case).

    ``variant``: one of v1, v2, v3_color_relaxed (default, the seeds' choice), v4, v5
    or ``desi_lrg``. ``deredden``: divide fluxes by MW_TRANSMISSION_* first (off by
    default, as in the original pipeline; ``desi_lrg`` always uses dereddened fluxes,
    as DESI defines it). ``variants`` overrides the cut table
    (params.yaml's selection.variants).
    """
    steps = cut_steps(catalog, variant, deredden, variants)
    mask = np.ones(len(next(iter(steps.values()))), dtype=bool)
    for s in steps.values():
        mask &= s
    return mask


def cumulative_counts(steps: "OrderedDict[str, np.ndarray]", n_total: int) -> dict:
    """Number of rows left after each successive cut."""
    out = {"input": int(n_total)}
    m = np.ones(n_total, dtype=bool)
    for name, s in steps.items():
        m &= s
        out[f"after_{name}"] = int(m.sum())
    return out


def id_namespace(release) -> str:
    """The namespace of a row id for a RELEASE value: ``"dr10"`` for every DR10 value (10000-10999: DR10 is
    one DECam processing of the south, so (BRICKNAME, OBJID) is unique within it), else ``"ls<RELEASE>"``."""
    rel = int(release)
    return "dr10" if 10000 <= rel < 11000 else f"ls{rel}"


def row_ids(bricknames, objids, releases=None) -> np.ndarray:
    """Stable int64 galaxy ids from (RELEASE, BRICKNAME, OBJID): independent of file order.

    Unique across releases and regions, as DESI's (RELEASE, BRICKID, OBJID) (a brick's name and id are
    one-to-one): OBJID restarts in every brick and the north (BASS/MzLS) and south (DECam) runs share brick
    names, so RELEASE separates them. ``releases`` None means DR10 (as every DR10 RELEASE): the id is then
    BLAKE2b-63 of ("dr10", BRICKNAME, OBJID), as before RELEASE was part of it.
    """
    names = [b.decode() if isinstance(b, bytes) else str(b) for b in bricknames]
    if releases is None:
        spaces = ["dr10"] * len(names)
    else:
        rel = np.asarray(releases).astype(np.int64)
        cache = {int(v): id_namespace(v) for v in np.unique(rel).tolist()}
        spaces = [cache[v] for v in rel.tolist()]
    return np.fromiter((hash_int63(sp, b.strip(), int(o)) for sp, b, o in zip(spaces, names, objids)),
                       dtype=np.int64, count=len(objids))


def healpix_index(ra_deg, dec_deg, nside: int) -> np.ndarray:
    """Nested HEALPix pixel of each position."""
    hp = HEALPix(nside=nside, order="nested")
    return np.asarray(hp.lonlat_to_healpix(np.asarray(ra_deg) * u.deg, np.asarray(dec_deg) * u.deg), dtype=np.int64)


def region_split(pixels, nside: int, seed: int, fractions: dict) -> np.ndarray:
    """Split of each sky region: a hash of (seed, nside, pixel) against cumulative fractions.

    Whole HEALPix pixels go to one split, so splits are disjoint on the sky, and a
    pixel's split never depends on which other pixels exist.
    """
    names = [s for s in SPLITS if s in fractions]
    edges = np.cumsum([fractions[s] for s in names])
    pixels = np.asarray(pixels)
    if len(pixels) == 0:
        return np.zeros(0, dtype="U1")
    uniq, inverse = np.unique(pixels, return_inverse=True)  # one hash per sky region, not per galaxy
    per_pixel = [names[min(int(np.searchsorted(edges, uniform(seed, "healpix", nside, pix), side="right")),
                           len(names) - 1)] for pix in uniq.tolist()]
    return np.asarray(per_pixel, dtype=str)[inverse.reshape(-1)]
