"""DR10 brick naming, coadd layout, the brick tables and the bricks' TAN WCS (0.262 arcsec/pixel)."""

from __future__ import annotations

import math
import posixpath
import re

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


#: brick-table columns read (either case in the file): name and bounds (deg)
BRICK_COLUMNS = ("BRICKNAME", "RA1", "RA2", "DEC1", "DEC2")


def brick_table_candidates(root: str) -> list[str]:
    """Where the brick table of a survey root is looked for, in order.

    ``root`` names a region directory of the release (``.../dr10/south``, local or ``s3://``):

    1. the region's own table ``<root>/survey-bricks-<dr>-<region>.fits.gz`` (DR10 south:
       ``survey-bricks-dr10-south.fits.gz``, lower-case columns, only bricks with data), ``<dr>``
       being the parent directory's name when it is ``dr<N>``, else ``dr10``;
    2. the release's all-sky table one level up, ``<root>/../survey-bricks.fits.gz`` (upper case);
    3. ``<root>/survey-bricks.fits`` or ``.fits.gz`` (the mock survey's).
    """
    r = str(root).rstrip("/") or str(root)
    region = posixpath.basename(r)
    parent = _parent_dir(r)
    dr = posixpath.basename(parent.rstrip("/")) if parent else ""
    dr = dr if re.fullmatch(r"dr\d+", dr) else "dr10"
    out = []
    if region and region not in (".", ".."):
        out.append(posixpath.join(r, f"survey-bricks-{dr}-{region}.fits.gz"))
    if parent:
        out.append(posixpath.join(parent, "survey-bricks.fits.gz"))
    out += [posixpath.join(r, "survey-bricks.fits"), posixpath.join(r, "survey-bricks.fits.gz")]
    return out


def _parent_dir(root: str) -> str | None:
    """The directory above ``root`` (None for a bucket's top level)."""
    if "://" in root and not root.startswith("file://"):
        scheme, rest = root.split("://", 1)
        if "/" not in rest.strip("/"):
            return None
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
    import os

    prefix = "file://" if root.startswith("file://") else ""
    return prefix + os.path.normpath(os.path.join(root[len(prefix):], ".."))


def find_brick_table(root: str) -> str:
    """The first of :func:`brick_table_candidates` that exists (SurveyError listing them if none does)."""
    from darkhaloscope.errors import SurveyError
    from darkhaloscope.survey import fs

    cands = brick_table_candidates(root)
    for path in cands:
        if fs.exists(path):
            return path
    raise SurveyError(f"{root}: no brick table to map positions to bricks; looked for {', '.join(cands)} "
                      f"(the DR10 release has survey-bricks-dr10-<region>.fits.gz in the region directory and "
                      f"survey-bricks.fits.gz one level up)")


def read_brick_table(root: str) -> dict:
    """The brick table of a survey root (see :func:`brick_table_candidates`) as arrays:
    ``brickname`` (str) and the bounds ``ra1, ra2, dec1, dec2`` (deg), plus ``brickid`` when present.

    Gzip or not (by the file's first bytes, whatever its name), column names in either case.
    Every failure is a SurveyError naming the file and what was expected.
    """
    path = find_brick_table(root)
    return read_brick_file(path)


def read_brick_file(path: str) -> dict:
    """One brick-table file (local or s3://, gzip or not); see :func:`read_brick_table`."""
    import gzip
    import io
    import zlib

    import numpy as np
    from astropy.io import fits

    from darkhaloscope.errors import SurveyError
    from darkhaloscope.survey import fs

    try:
        raw = fs.read_bytes(path)
    except FileNotFoundError:
        raise SurveyError(f"{path}: brick table not found") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise SurveyError(f"{path}: gzip-compressed but not readable ({type(e).__name__}: {e}); "
                              f"truncated? download it again") from None
    try:
        with fits.open(io.BytesIO(raw), memmap=False) as hdul:
            hdu = next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
            if hdu is None:
                raise SurveyError(f"{path}: no binary table HDU (expected a brick table with columns "
                                  f"{', '.join(BRICK_COLUMNS)})")
            t = hdu.data
            names = {n.upper(): n for n in t.columns.names}
            missing = [c for c in BRICK_COLUMNS if c not in names]
            if missing:
                raise SurveyError(f"{path}: brick table lacks column(s) {', '.join(missing)} (either case); "
                                  f"expected {', '.join(BRICK_COLUMNS)} (deg) as in survey-bricks*.fits.gz")
            out = {"brickname": np.char.strip(np.asarray(t[names["BRICKNAME"]]).astype("U"))}
            for c in BRICK_COLUMNS[1:]:
                out[c.lower()] = np.asarray(t[names[c]], dtype=np.float64)
            if "BRICKID" in names:
                out["brickid"] = np.asarray(t[names["BRICKID"]], dtype=np.int64)
    except SurveyError:
        raise
    except (OSError, ValueError, TypeError, IndexError) as e:
        raise SurveyError(f"{path}: not a readable FITS brick table ({type(e).__name__}: {e})") from None
    bad = ~np.isfinite(np.column_stack([out[c.lower()] for c in BRICK_COLUMNS[1:]])).all(axis=1)
    if bad.any():
        raise SurveyError(f"{path}: {int(bad.sum())} brick(s) have non-finite bounds, e.g. {out['brickname'][bad][0]}")
    return out


def bricks_of(table: dict, ra, dec) -> list:
    """Brick name containing each (ra, dec) in deg, or None where no brick covers it.

    A brick covers ra1 <= ra < ra2, dec1 <= dec < dec2 (the first such brick in table order). For a
    table laid out as the release's (rows of constant dec1/dec2 that do not overlap, bricks within a row
    that do not overlap) the lookup is two binary searches per position; otherwise every brick is scanned.
    """
    import numpy as np

    ra, dec = np.atleast_1d(np.asarray(ra, np.float64)), np.atleast_1d(np.asarray(dec, np.float64))
    fast = _grid_index(table)
    if fast is None:
        out = []
        for r, d in zip(ra, dec):
            hit = np.flatnonzero((table["ra1"] <= r) & (r < table["ra2"]) & (table["dec1"] <= d) & (d < table["dec2"]))
            out.append(str(table["brickname"][hit[0]]) if len(hit) else None)
        return out
    order, row_dec1, row_dec2, row_start, row_end = fast
    ra1, ra2 = table["ra1"][order], table["ra2"][order]
    names = table["brickname"][order]
    row = np.searchsorted(row_dec1, dec, side="right") - 1
    row_c = np.clip(row, 0, len(row_dec1) - 1)
    ok = (row >= 0) & (dec < row_dec2[row_c]) & np.isfinite(ra)
    hit = np.full(len(ra), -1)
    for rr in np.unique(row_c[ok]).tolist():  # within a row: the last brick whose ra1 <= ra
        sel = np.flatnonzero(ok & (row_c == rr))
        s0, s1 = int(row_start[rr]), int(row_end[rr])
        k = s0 + np.searchsorted(ra1[s0:s1], ra[sel], side="right") - 1
        good = (k >= s0) & (ra[sel] < ra2[np.maximum(k, s0)])
        hit[sel[good]] = k[good]
    return [str(names[k]) if k >= 0 else None for k in hit.tolist()]


def _grid_index(table: dict):
    """(order, row dec1, row dec2, row start, row end) when the table is a grid of dec rows that do
    not overlap, with bricks in each row that do not overlap (as the release's), else None."""
    import numpy as np

    d1, d2, r1, r2 = table["dec1"], table["dec2"], table["ra1"], table["ra2"]
    if not len(d1) or not (np.all(r1 < r2) and np.all(d1 < d2)):
        return None
    order = np.lexsort((r1, d1))
    sd1, sd2, sr1, sr2 = d1[order], d2[order], r1[order], r2[order]
    new = np.r_[True, sd1[1:] != sd1[:-1]]
    row_start = np.flatnonzero(new)
    row_end = np.r_[row_start[1:], len(sd1)]
    row_of = np.cumsum(new) - 1
    row_dec1, row_dec2 = sd1[row_start], sd2[row_start]
    in_row = ~new[1:]
    if (np.all(sd2 == row_dec2[row_of]) and np.all(row_dec1[1:] >= row_dec2[:-1])
            and np.all(sr1[1:][in_row] >= sr2[:-1][in_row])):
        return order, row_dec1, row_dec2, row_start, row_end
    return None
