"""Hand-made files in the DR10 release's formats for the reader tests (``import _dr10`` from tests/survey,
or with tests/survey on sys.path): sweeps with DR10's column names and TFORMs (big-endian, TYPE ``3A``
unpadded, MASKBITS ``J``), and the region layout of ``dr10/south``.

The real files written by the Legacy Surveys' own software are in tests/data/realdata/ (see its README).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from astropy.io import fits

REALDATA = Path(__file__).resolve().parents[1] / "data" / "realdata"

#: DR10 sweep TFORMs of the columns Phase 3 reads (others default to E)
DR10_TFORM = {"RELEASE": "I", "BRICKID": "J", "BRICKNAME": "8A", "OBJID": "J", "TYPE": "3A", "RA": "D",
              "DEC": "D", "MASKBITS": "J", "NOBS_G": "I", "NOBS_R": "I", "NOBS_Z": "I", "BRICK_PRIMARY": "L"}
SWEEP_COLUMNS = (
    "RELEASE", "BRICKID", "BRICKNAME", "OBJID", "MASKBITS", "TYPE", "RA", "DEC", "EBV",
    "FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1", "FLUX_IVAR_G", "FLUX_IVAR_R", "FLUX_IVAR_Z", "FLUX_IVAR_W1",
    "FIBERFLUX_Z", "FIBERTOTFLUX_Z", "GAIA_PHOT_G_MEAN_MAG",
    "MW_TRANSMISSION_G", "MW_TRANSMISSION_R", "MW_TRANSMISSION_Z", "MW_TRANSMISSION_W1",
    "NOBS_G", "NOBS_R", "NOBS_Z", "PSFSIZE_G", "PSFSIZE_R", "PSFSIZE_Z", "PSFDEPTH_G", "PSFDEPTH_R", "PSFDEPTH_Z",
    "SHAPE_R", "SHAPE_E1", "SHAPE_E2", "SERSIC",
)


def nmgy(mag):
    return 10.0 ** ((22.5 - np.asarray(mag, np.float64)) / 2.5)


def sweep_rows(n: int, ra0: float = 150.0, dec0: float = 0.0, seed: int = 0, release: int = 10000,
               brick: str = "1502p002", brickid: int = 400000, lrg_frac: float = 0.5) -> dict:
    """``n`` rows of DR10 sweep columns: a fraction ``lrg_frac`` bright red extended galaxies that pass
    every LRG variant (z ~ 19, r - z ~ 1.2, z - W1 ~ 1.8), the rest faint blue ones or stars."""
    rng = np.random.default_rng(seed)
    lrg = rng.uniform(size=n) < lrg_frac
    z = np.where(lrg, rng.uniform(18.8, 19.6, n), rng.uniform(20.6, 23.0, n))
    rz = np.where(lrg, rng.uniform(1.1, 1.4, n), rng.uniform(0.0, 0.3, n))
    zw1 = np.where(lrg, rng.uniform(1.6, 2.0, n), rng.uniform(-0.5, 0.5, n))
    gr = np.where(lrg, 1.8, 0.4)
    c = {"RELEASE": np.full(n, release, np.int16), "BRICKID": np.full(n, brickid, np.int32),
         "BRICKNAME": np.array([brick.encode()] * n, "S8"), "OBJID": np.arange(n, dtype=np.int32),
         "MASKBITS": np.zeros(n, np.int32),
         "TYPE": np.where(lrg, b"DEV", np.where(rng.uniform(size=n) < 0.5, b"PSF", b"EXP")).astype("S3"),
         "RA": ra0 + rng.uniform(0, 0.2, n), "DEC": dec0 + rng.uniform(0, 0.2, n),
         "EBV": np.full(n, 0.02, np.float32)}
    mags = {"Z": z, "R": z + rz, "W1": z - zw1, "G": z + rz + gr}
    for b, m in mags.items():
        c[f"FLUX_{b}"] = nmgy(m).astype(np.float32)
        c[f"FLUX_IVAR_{b}"] = np.full(n, 50.0, np.float32)
        c[f"MW_TRANSMISSION_{b}"] = np.full(n, 0.97, np.float32)
    c["FIBERFLUX_Z"] = (0.4 * c["FLUX_Z"]).astype(np.float32)
    c["FIBERTOTFLUX_Z"] = (0.45 * c["FLUX_Z"]).astype(np.float32)
    c["GAIA_PHOT_G_MEAN_MAG"] = np.zeros(n, np.float32)
    for b in "GRZ":
        c[f"NOBS_{b}"] = np.full(n, 3, np.int16)
        c[f"PSFSIZE_{b}"] = np.full(n, 1.2, np.float32)
        c[f"PSFDEPTH_{b}"] = np.full(n, 800.0, np.float32)
    c["SHAPE_R"] = np.where(lrg, 1.0, 0.4).astype(np.float32)
    c["SHAPE_E1"] = np.zeros(n, np.float32)
    c["SHAPE_E2"] = np.zeros(n, np.float32)
    c["SERSIC"] = np.where(lrg, 4.0, 1.0).astype(np.float32)
    return c


def write_sweep(path: Path, cols: dict, tforms: dict | None = None) -> Path:
    """A sweep FITS file (empty primary HDU, binary table in HDU 1) with DR10's TFORMs."""
    tf = {**DR10_TFORM, **(tforms or {})}
    fcols = [fits.Column(name=k, format=tf.get(k, "E"), array=v) for k, v in cols.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(fcols)]).writeto(path, overwrite=True)
    return path


def write_brick_table(path: Path, rows: list[tuple], upper: bool, gz: bool) -> Path:
    """A brick table like legacypipe's: (brickname, brickid, ra, dec, ra1, ra2, dec1, dec2) rows."""
    names = ["brickname", "brickid", "ra", "dec", "ra1", "ra2", "dec1", "dec2"]
    cols = [fits.Column(name=names[0].upper() if upper else names[0], format="8A",
                        array=np.array([r[0] for r in rows], "S8")),
            fits.Column(name="BRICKID" if upper else "brickid", format="J", array=np.array([r[1] for r in rows]))]
    cols += [fits.Column(name=n.upper() if upper else n, format="D", array=np.array([r[i] for r in rows], float))
             for i, n in enumerate(names) if i >= 2]
    path.parent.mkdir(parents=True, exist_ok=True)
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)])
    if gz:
        import io

        buf = io.BytesIO()
        hdul.writeto(buf)
        path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    else:
        hdul.writeto(path, overwrite=True)
    return path


def real_brick_rows() -> list[tuple]:
    """The rows of every real legacypipe brick table in tests/data/realdata/legacypipe/."""
    rows = []
    for p in sorted((REALDATA / "legacypipe").glob("survey-bricks-*.fits.gz")):
        with fits.open(p) as h:
            t = h[1].data
            rows += [(str(r["brickname"]).strip(), int(r["brickid"]), float(r["ra"]), float(r["dec"]),
                      float(r["ra1"]), float(r["ra2"]), float(r["dec1"]), float(r["dec2"])) for r in t]
    return rows
