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
    t = _col(catalog, "TYPE")
    if t.dtype.kind == "S":
        t = np.char.decode(t, "ascii")
    return np.char.strip(t.astype("U")) != "PSF"


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


def _desi_lrg_steps(catalog, deredden: bool) -> "OrderedDict[str, np.ndarray]":
    """DESI LRG target selection, south (DECaLS) version (Zhou et al. 2023, AJ 165, 58).

    Uses extinction-corrected magnitudes (as DESI does when ``deredden``) and the
    z-band fibre magnitude. Quality cuts: NOBS > 0 in g, r, z; positive FLUX_IVAR in
    r, z, W1; MASKBITS 1 (BRIGHT), 12 (GALAXY) and 13 (CLUSTER) not set.
    """
    f = _fluxes(catalog, ("G", "R", "Z", "W1"), deredden)
    fib = _col(catalog, "FIBERFLUX_Z").astype(np.float64)
    if deredden:
        fib = fib / _col(catalog, "MW_TRANSMISSION_Z").astype(np.float64)
    g, r, z, w1 = (nmgy_to_mag(f[b]) for b in ("G", "R", "Z", "W1"))
    zfib = nmgy_to_mag(fib)
    mask = _col(catalog, "MASKBITS").astype(np.int64)
    with np.errstate(invalid="ignore"):
        steps = OrderedDict()
        steps["quality"] = (
            (_col(catalog, "NOBS_G") > 0) & (_col(catalog, "NOBS_R") > 0) & (_col(catalog, "NOBS_Z") > 0)
            & (_col(catalog, "FLUX_IVAR_R") > 0) & (_col(catalog, "FLUX_IVAR_Z") > 0)
            & (_col(catalog, "FLUX_IVAR_W1") > 0)
            & ((mask & ((1 << 1) | (1 << 12) | (1 << 13))) == 0)
        )
        steps["flux_positive"] = (f["R"] > 0) & (f["Z"] > 0) & (f["W1"] > 0) & (fib > 0)
        steps["zfiber_lt_21.6"] = zfib < 21.6
        steps["non_stellar"] = (z - w1) > 0.8 * (r - z) - 0.6
        steps["low_z_cut"] = ((g - w1) > 2.9) | ((r - w1) > 1.8)
        steps["sliding_cut"] = (((r - w1) > (w1 - 17.14) * 1.8) & ((r - w1) > (w1 - 16.33))) | ((r - w1) > 3.3)
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


def row_ids(bricknames, objids) -> np.ndarray:
    """Stable int64 galaxy ids from (BRICKNAME, OBJID): independent of file order."""
    names = [b.decode() if isinstance(b, bytes) else str(b) for b in bricknames]
    return np.fromiter((hash_int63("dr10", b.strip(), int(o)) for b, o in zip(names, objids)),
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
    cache: dict[int, str] = {}
    out = np.empty(len(pixels), dtype=object)
    for i, pix in enumerate(np.asarray(pixels).tolist()):
        if pix not in cache:
            uu = uniform(seed, "healpix", nside, pix)
            cache[pix] = names[min(int(np.searchsorted(edges, uu, side="right")), len(names) - 1)]
        out[i] = cache[pix]
    return out.astype(str)
