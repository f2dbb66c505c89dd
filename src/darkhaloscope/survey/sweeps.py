"""Reader for DR10 sweep catalogues (FITS binary tables, DR10 column names, fluxes in nanomaggies)."""

from __future__ import annotations

import io

import numpy as np
from astropy.io import fits

from darkhaloscope.survey import fs
from darkhaloscope.errors import SurveyError


# Columns the pipeline reads from a sweep (DR10 names, upper case as in the FITS files).
REQUIRED_COLUMNS = (
    "RA", "DEC", "TYPE", "BRICKNAME", "OBJID",
    "FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1",
    "FLUX_IVAR_G", "FLUX_IVAR_R", "FLUX_IVAR_Z", "FLUX_IVAR_W1",
    "MW_TRANSMISSION_G", "MW_TRANSMISSION_R", "MW_TRANSMISSION_Z", "MW_TRANSMISSION_W1",
    "EBV", "NOBS_G", "NOBS_R", "NOBS_Z",
    "PSFSIZE_G", "PSFSIZE_R", "PSFSIZE_Z",
    "PSFDEPTH_G", "PSFDEPTH_R", "PSFDEPTH_Z",
    "SHAPE_R", "SHAPE_E1", "SHAPE_E2", "SERSIC", "MASKBITS",
)
# Read when present (the DESI LRG selection needs FIBERFLUX_Z).
OPTIONAL_COLUMNS = ("FIBERFLUX_G", "FIBERFLUX_R", "FIBERFLUX_Z")
VALID_TYPES = ("PSF", "REX", "DEV", "EXP", "SER", "DUP")


def read_sweep(path: str, columns=REQUIRED_COLUMNS) -> dict[str, np.ndarray]:
    """Read one sweep file (local or s3://) into a dict of native-endian numpy arrays.

    Raises SurveyError naming the file if it cannot be read as FITS, has no
    table, or lacks a required DR10 column.
    """
    try:
        raw = fs.read_bytes(path)
    except FileNotFoundError:
        raise SurveyError(f"{path}: sweep file not found") from None
    try:
        with fits.open(io.BytesIO(raw), memmap=False) as hdul:
            table = next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
            if table is None:
                raise SurveyError(f"{path}: no binary table HDU (expected a DR10 sweep catalogue)")
            data = table.data
            names = {n.upper(): n for n in data.columns.names}
            missing = [c for c in columns if c not in names]
            if missing:
                raise SurveyError(
                    f"{path}: missing DR10 sweep column(s) {', '.join(missing)}; "
                    f"a sweep must provide {', '.join(columns)}"
                )
            wanted = list(columns) + [c for c in OPTIONAL_COLUMNS if c in names and c not in columns]
            out = {}
            for c in wanted:
                arr = np.asarray(data[names[c]])
                if arr.dtype.kind == "S" or arr.dtype.kind == "U":
                    arr = np.char.strip(arr.astype("U"))
                elif arr.dtype.byteorder not in ("=", "|"):
                    arr = arr.astype(arr.dtype.newbyteorder("="))
                out[c] = arr
    except SurveyError:
        raise
    except OSError as e:
        raise SurveyError(f"{path}: not a readable FITS file ({e})") from None
    bad = ~np.isin(out["TYPE"], VALID_TYPES) if "TYPE" in out else np.zeros(0, bool)
    if bad.any():
        raise SurveyError(
            f"{path}: column TYPE has {int(bad.sum())} value(s) outside {VALID_TYPES}, "
            f"e.g. {out['TYPE'][bad][0]!r}"
        )
    return out


def read_sweeps(paths: list[str], columns=REQUIRED_COLUMNS) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Concatenate several sweeps; also returns the index of the source file per row."""
    if not paths:
        raise SurveyError("no sweep files found (check survey.root and survey.sweep_glob in params.yaml)")
    parts = [read_sweep(p, columns) for p in paths]
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    cat = {}
    for k in keys:
        arrs = [p[k] for p in parts]
        if arrs[0].dtype.kind == "U":
            width = max(a.dtype.itemsize for a in arrs) // 4
            arrs = [a.astype(f"U{width}") for a in arrs]
        cat[k] = np.concatenate(arrs)
    file_index = np.concatenate([np.full(len(p["RA"]), i) for i, p in enumerate(parts)])
    return cat, file_index
