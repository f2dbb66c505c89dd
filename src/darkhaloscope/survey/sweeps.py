"""Reader for DR10 sweep catalogues (FITS binary tables, DR10 column names, fluxes in nanomaggies).

A sweep is read *column-wise and in row blocks*: the FITS header says where every column sits in
a row (TFORMn), so :class:`SweepFile` reads blocks of rows (``CHUNK_BYTES`` at a time, from local
disk or by ranged S3 reads) and converts only the columns asked for. A whole file is never held
in memory: DR10 south sweeps hold up to ~1.8 GB each, ~2.8e9 sources in all.

The release layout (DR10, ``<region>/sweep/``)::

    sweep/10.1/sweep-<ramin><p|m><decmin>-<ramax><p|m><decmax>.fits    the sweeps (5 x 5 deg boxes)
    sweep/10.1-extra/sweep-...-ex.fits, sweep/10.1-lightcurves/...-lc.fits,
    sweep/10.1-photo-z/...-pz.fits                                      NOT sweeps (other columns
                                                                        of the same rows)

:func:`list_sweeps` finds the sweeps under a root with a glob and refuses, by name, any file the
glob matches that is not a sweep (before anything is read).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from darkhaloscope.errors import SurveyError
from darkhaloscope.survey import fs

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
    # the camera / processing run of each row: with BRICKNAME and OBJID it identifies a source across
    # releases and regions, as DESI's (RELEASE, BRICKID, OBJID) does (brick names and ids are one-to-one)
    "RELEASE",
)
# Read when present (the DESI LRG selection needs the z-band fibre fluxes and Gaia G).
OPTIONAL_COLUMNS = ("FIBERFLUX_G", "FIBERFLUX_R", "FIBERFLUX_Z", "FIBERTOTFLUX_Z", "GAIA_PHOT_G_MEAN_MAG")
VALID_TYPES = ("PSF", "REX", "DEV", "EXP", "SER", "DUP")

#: a sweep's file name: its RA/Dec box in whole degrees (5 x 5 deg in DR10, 10 x 5 deg in DR8/DR9)
SWEEP_NAME = re.compile(r"^sweep-\d{3}[pm]\d{3}-\d{3}[pm]\d{3}\.fits$")
#: the default survey.sweep_glob: sweeps anywhere under sweep/ (the release: sweep/10.1/, the mock:
#: sweep/), by a name pattern the release's -ex / -lc / -pz companions do not match
DEFAULT_SWEEP_GLOB = "sweep/**/sweep-???[pm]???-???[pm]???.fits"
#: files a broad glob can reach in the release that are not sweeps, by name ending
NOT_SWEEPS = {
    "-ex.fits": "a DR10 sweep-extra file (sweep/10.1-extra/: more columns of the sweep rows, not a sweep)",
    "-lc.fits": "a DR10 light-curve file (sweep/10.1-lightcurves/: WISE light curves, not a sweep)",
    "-pz.fits": "a DR10 photo-z file (sweep/10.1-photo-z/: photometric redshifts, not a sweep)",
}
#: bytes of rows read and converted at a time (the reader's working memory is a few times this)
CHUNK_BYTES = 32 * 2**20

_BLOCK = 2880  # FITS block (bytes)
_CARD = 80


def not_a_sweep_reason(path: str) -> str | None:
    """Why ``path`` is not a sweep by its name, or None when its name is a sweep's."""
    name = posixpath.basename(str(path))
    if SWEEP_NAME.match(name):
        return None
    for end, what in NOT_SWEEPS.items():
        if name.endswith(end):
            return what
    return ("its name is not a sweep's: sweep-<ramin><p|m><decmin>-<ramax><p|m><decmax>.fits "
            "(e.g. sweep-320m005-325p000.fits)")


def list_sweeps(root: str, pattern: str) -> list[tuple[str, int]]:
    """Sorted ``(path, size in bytes)`` of the sweeps matching ``root/pattern`` (survey.sweep_glob).

    Raises SurveyError when nothing matches, when the pattern matches a file that is not a sweep
    (naming the file and why; nothing is read) and when one sweep box is matched in two
    directories (two versions of the release, e.g. sweep/10.0/ and sweep/10.1/).
    """
    hits = fs.glob_files(root, pattern)
    if not hits:
        raise SurveyError(
            f"no sweep files match {fs.join(root, pattern)}: check survey.root and survey.sweep_glob in "
            f"params.yaml (the DR10 release keeps its sweeps in {fs.join(root, 'sweep/10.1/sweep-*.fits')}, "
            f"the mock survey in {fs.join(root, 'sweep/sweep-*.fits')})")
    bad = [(p, why) for p, _ in hits if (why := not_a_sweep_reason(p))]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise SurveyError(
            f"{bad[0][0]}: matched by survey.sweep_glob {pattern!r} but not a sweep: {bad[0][1]}{more}. Narrow "
            f"survey.sweep_glob to the sweeps, e.g. {DEFAULT_SWEEP_GLOB!r} (DR10: sweep/10.1/sweep-*.fits)")
    seen: dict[str, str] = {}
    for p, _ in hits:
        name = posixpath.basename(p)
        if name in seen:
            raise SurveyError(
                f"{p}: the sweep box {name} is matched twice by survey.sweep_glob {pattern!r} (also {seen[name]}): "
                f"two versions of the sweeps would count every source twice; narrow survey.sweep_glob to one "
                f"directory, e.g. 'sweep/10.1/sweep-*.fits'")
        seen[name] = p
    return hits


# --------------------------------------------------------------------------- FITS binary table layout
_TFORM = re.compile(r"^\s*(\d*)\s*([LXBIJKAEDCMPQ])(.*)$")
_WIDTH = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8, "C": 8, "M": 16, "P": 8, "Q": 16}
_DTYPE = {"L": "u1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8"}
# TZERO that turns a signed FITS integer into the unsigned type of the same width (the FITS convention)
_UNSIGNED = {("B", -128.0): np.int8, ("I", 32768.0): np.uint16, ("J", 2.0**31): np.uint32,
             ("K", 2.0**63): np.uint64}


@dataclass(frozen=True)
class Column:
    """One binary-table column: its name as written, byte offset in the row, TFORM code and repeat."""

    name: str
    offset: int
    code: str
    repeat: int
    scale: float = 1.0
    zero: float = 0.0

    @property
    def raw_dtype(self) -> np.dtype:
        """The field's raw (big-endian) dtype; a (repeat,) sub-array for a numeric vector column."""
        if self.code == "A":
            return np.dtype(f"S{self.repeat}")
        if self.code not in _DTYPE:
            raise SurveyError(f"column {self.name}: TFORM code {self.code} (bits, complex or variable-length "
                              f"arrays) is not read by this pipeline")
        base = np.dtype(_DTYPE[self.code])
        return base if self.repeat == 1 else np.dtype((base, (self.repeat,)))

    def convert(self, raw: np.ndarray) -> np.ndarray:
        """Native-endian values from the raw (big-endian) field: bool for L, bytes for A, scaled numbers."""
        if self.code == "A":
            return raw.copy()  # a copy: the records' buffer is reused for the next block of rows
        if self.code == "L":
            return raw == ord("T")
        if (self.scale, self.zero) != (1.0, 0.0):
            if self.scale == 1.0 and (self.code, self.zero) in _UNSIGNED:  # the FITS unsigned convention, exactly
                if self.code == "K":
                    return raw.astype(np.int64).view(np.uint64) ^ np.uint64(1 << 63)
                return (raw.astype(np.int64) + int(self.zero)).astype(_UNSIGNED[self.code, self.zero])
            return raw.astype(np.float64) * self.scale + self.zero
        return raw.astype(raw.dtype.newbyteorder("="))


@dataclass
class SweepFile:
    """The layout of a sweep's binary table (the first BINTABLE HDU): rows, row width, columns.

    ``SweepFile.open(path)`` reads only the FITS headers. Units are those of the file
    (DR10: RA/DEC deg, fluxes nanomaggies, PSFSIZE and SHAPE_R arcsec).
    """

    path: str
    n_rows: int
    row_bytes: int
    data_offset: int
    file_size: int
    columns: dict = field(default_factory=dict)  # UPPER name -> Column

    # ---- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, path: str, size: int | None = None) -> "SweepFile":
        """Parse the headers of ``path`` (local or s3://). SurveyError naming the file when it is missing,
        not FITS, truncated, has no binary table, or describes its rows inconsistently."""
        try:
            file_size = int(size) if size is not None else fs.size(path)
        except FileNotFoundError:
            raise SurveyError(f"{path}: sweep file not found") from None
        try:
            with fs.open_read(path) as f:
                offset = 0
                first = True
                n_hdu = 0
                while True:
                    header, hlen = _read_header(f, path, offset, file_size, first)
                    if header is None:
                        raise SurveyError(f"{path}: no binary table HDU (expected a DR10 sweep catalogue); the file "
                                          f"ends at byte {file_size} after {n_hdu} HDU(s) without one (truncated, "
                                          f"or not a sweep)")
                    first = False
                    n_hdu += 1
                    data_start = offset + hlen
                    if str(header.get("XTENSION", "")).strip() == "BINTABLE":
                        return cls._from_header(path, header, data_start, file_size)
                    offset = data_start + _padded(_data_bytes(header, path))
        except SurveyError:
            raise
        except (OSError, ValueError, EOFError) as e:
            raise SurveyError(f"{path}: not a readable FITS file ({type(e).__name__}: {e})") from None

    @classmethod
    def _from_header(cls, path: str, h, data_start: int, file_size: int) -> "SweepFile":
        try:
            row_bytes, n_rows, n_cols = int(h["NAXIS1"]), int(h["NAXIS2"]), int(h["TFIELDS"])
        except (KeyError, ValueError) as e:
            raise SurveyError(f"{path}: binary table header lacks NAXIS1/NAXIS2/TFIELDS ({e})") from None
        cols: dict[str, Column] = {}
        offset = 0
        for i in range(1, n_cols + 1):
            tform = str(h.get(f"TFORM{i}", ""))
            m = _TFORM.match(tform)
            if not m:
                raise SurveyError(f"{path}: column {i} has an unreadable TFORM{i} {tform!r}")
            repeat = int(m.group(1)) if m.group(1) else 1
            code = m.group(2)
            width = (repeat + 7) // 8 if code == "X" else _WIDTH[code] * (1 if code in "PQ" else repeat)
            name = str(h.get(f"TTYPE{i}", f"COL{i}")).strip()
            cols.setdefault(name.upper(), Column(name, offset, code, repeat,
                                                 float(h.get(f"TSCAL{i}", 1.0)), float(h.get(f"TZERO{i}", 0.0))))
            offset += width
        if offset != row_bytes:
            raise SurveyError(f"{path}: the TFORMs of its {n_cols} columns add up to {offset} bytes per row but "
                              f"NAXIS1 says {row_bytes}: a corrupt binary table header")
        need = data_start + row_bytes * n_rows
        if file_size < need:
            raise SurveyError(f"{path}: truncated: its header says {n_rows} rows of {row_bytes} bytes "
                              f"(the table ends at byte {need}) but the file has {file_size} bytes; "
                              f"download it again")
        return cls(path, n_rows, row_bytes, data_start, file_size, cols)

    # ---- columns -----------------------------------------------------------------------
    def require(self, names) -> None:
        """SurveyError naming the file and every missing column unless all ``names`` are present."""
        missing = [c for c in names if c not in self.columns]
        if missing:
            raise SurveyError(f"{self.path}: missing DR10 sweep column(s) {', '.join(missing)}; "
                              f"a sweep must provide {', '.join(names)}")
        bad = [f"{c} ({self.columns[c].repeat}{self.columns[c].code})" for c in names
               if self.columns[c].code in "XCMPQ" or (self.columns[c].code != "A" and self.columns[c].repeat != 1)]
        if bad:
            raise SurveyError(f"{self.path}: column(s) {', '.join(bad)} are not scalar; a DR10 sweep stores one "
                              f"value per row in each of {', '.join(names)}")

    def record_dtype(self, names) -> np.dtype:
        """Structured dtype over a whole row (itemsize NAXIS1) exposing only ``names`` (raw, big-endian)."""
        cols = [self.columns[n] for n in names]
        return np.dtype({"names": [c.name for c in cols], "formats": [c.raw_dtype for c in cols],
                         "offsets": [c.offset for c in cols], "itemsize": self.row_bytes})

    def column(self, records: np.ndarray, name: str) -> np.ndarray:
        """Native values of column ``name`` (upper case) from raw records of :meth:`record_dtype`."""
        c = self.columns[name]
        return c.convert(records[c.name])

    # ---- reading -----------------------------------------------------------------------
    def iter_records(self, names, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        """Raw records (see :meth:`record_dtype`) in blocks of about ``chunk_bytes`` bytes of rows."""
        dtype = self.record_dtype(names)
        if self.n_rows == 0:
            yield np.zeros(0, dtype)
            return
        rows_per = max(1, int(chunk_bytes) // max(1, self.row_bytes))
        buf = bytearray(min(self.n_rows, rows_per) * self.row_bytes)
        try:
            with fs.open_read(self.path) as f:
                f.seek(self.data_offset)
                done = 0
                while done < self.n_rows:
                    n = min(rows_per, self.n_rows - done)
                    view = memoryview(buf)[: n * self.row_bytes]
                    got = _read_into(f, view)
                    if got != len(view):
                        raise SurveyError(
                            f"{self.path}: truncated while reading: rows {done}-{done + n - 1} of {self.n_rows} need "
                            f"{len(view)} bytes at byte {self.data_offset + done * self.row_bytes}, got {got}")
                    yield np.frombuffer(view, dtype=dtype, count=n)
                    done += n
        except SurveyError:
            raise
        except OSError as e:
            raise SurveyError(f"{self.path}: unreadable while reading its rows ({type(e).__name__}: {e})") from None

    def read(self, names, chunk_bytes: int = CHUNK_BYTES) -> dict[str, np.ndarray]:
        """All rows of the columns ``names`` (native arrays; strings stripped, as str)."""
        parts: dict[str, list] = {n: [] for n in names}
        for rec in self.iter_records(names, chunk_bytes):
            for n in names:
                parts[n].append(self.column(rec, n))
        out = {}
        for n in names:
            arr = np.concatenate(parts[n])
            out[n] = strip_strings(arr) if self.columns[n].code == "A" else arr
        return out


def strip_strings(arr: np.ndarray) -> np.ndarray:
    """Bytes (FITS 'A' columns, blank- or NUL-padded) -> str with surrounding blanks removed."""
    return np.char.strip(np.asarray(arr).astype("U"))


def match_stripped(arr: np.ndarray, values) -> np.ndarray:
    """Index into ``values`` of each element of ``arr`` once stripped of surrounding blanks (-1: none).

    For bytes of up to 8 characters (FITS TYPE columns: 'S3' in DR10, blank-padded 'S4' in DR8) the
    common encodings (the value padded with blanks or NULs) are matched as integers, without building
    strings; anything else (leading blanks, str input) is stripped and compared, so the answer is the same.
    """
    arr = np.asarray(arr)
    out = np.full(len(arr), -1, np.int64)
    todo = np.ones(len(arr), bool)
    w = arr.dtype.itemsize
    if arr.dtype.kind == "S" and 0 < w <= 8 and len(arr):
        b = np.zeros((len(arr), 8), np.uint8)
        b[:, :w] = np.ascontiguousarray(arr).view(np.uint8).reshape(len(arr), w)
        codes = b.view(np.uint64).ravel()
        for i, v in enumerate(values):
            raw = str(v).encode("ascii")
            if len(raw) > w:
                continue
            forms = {raw + pad * (w - len(raw)) for pad in (b" ", b"\0")}
            known = np.frombuffer(b"".join(f.ljust(8, b"\0") for f in sorted(forms)), np.uint64)
            hit = np.isin(codes, known)
            out[hit] = i
            todo &= ~hit
    if todo.any():
        rest = arr[todo]
        rest = np.char.strip(np.char.decode(rest, "ascii") if rest.dtype.kind == "S" else rest.astype("U"))
        sub = np.full(len(rest), -1, np.int64)
        for i, v in enumerate(values):
            sub[rest == v] = i
        out[todo] = sub
    return out


def check_types(path: str, types: np.ndarray) -> None:
    """SurveyError naming ``path`` if a TYPE value (bytes or str, padded or not) is not a Tractor model type."""
    bad = match_stripped(types, VALID_TYPES) < 0
    if bad.any():
        raise SurveyError(f"{path}: column TYPE has {int(bad.sum())} value(s) outside {VALID_TYPES}, "
                          f"e.g. {strip_strings(np.asarray(types)[bad][:1])[0]!r}")


def read_sweep(path: str, columns=REQUIRED_COLUMNS) -> dict[str, np.ndarray]:
    """Read the columns ``columns`` (plus OPTIONAL_COLUMNS present) of one sweep into native numpy arrays.

    Reads column-wise in row blocks (never the whole file at once). Raises SurveyError naming the
    file if it cannot be read as FITS, is truncated, has no table, or lacks a required DR10 column.
    """
    sw = SweepFile.open(path)
    sw.require(columns)
    wanted = list(columns) + [c for c in OPTIONAL_COLUMNS if c in sw.columns and c not in columns]
    out = sw.read(wanted)
    if "TYPE" in out:
        check_types(path, out["TYPE"])
    return out


def read_sweeps(paths: list[str], columns=REQUIRED_COLUMNS) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Concatenate several sweeps; also returns the index of the source file per row.

    For small inputs (tests, a few files): Phase 3 itself streams (catalog.parent.select_file).
    """
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


# --------------------------------------------------------------------------- FITS header helpers
def _read_into(f, view: memoryview) -> int:
    """Fill ``view`` from ``f``; returns the bytes read (less only at the end of the file)."""
    got = 0
    readinto = getattr(f, "readinto", None)
    while got < len(view):
        if readinto is not None:
            n = readinto(view[got:])
        else:
            data = f.read(len(view) - got)
            n = len(data)
            view[got:got + n] = data
        if not n:
            break
        got += n
    return got


def _read_header(f, path: str, offset: int, file_size: int, first: bool):
    """(astropy Header, header length in bytes) of the HDU at ``offset``, or (None, 0) at the end of the file."""
    from astropy.io import fits

    if offset >= file_size:
        if first:
            raise SurveyError(f"{path}: not a readable FITS file (it is empty)")
        return None, 0
    f.seek(offset)
    blocks = []
    while True:
        block = f.read(_BLOCK)
        if len(block) < _BLOCK:
            if first and not blocks and not block.startswith(b"SIMPLE"):
                raise SurveyError(f"{path}: not a readable FITS file (no SIMPLE card: expected a FITS sweep)")
            raise SurveyError(f"{path}: truncated within a FITS header at byte {offset + len(blocks) * _BLOCK}: "
                              f"the file has {file_size} bytes; download it again")
        if first and not blocks and not block.startswith(b"SIMPLE  ="):
            raise SurveyError(f"{path}: not a readable FITS file (no SIMPLE card: expected a FITS sweep)")
        blocks.append(block)
        if any(block[i:i + 8] == b"END     " for i in range(0, _BLOCK, _CARD)):
            break
        if len(blocks) > 10000:
            raise SurveyError(f"{path}: not a readable FITS file (no END card in the first 28 MB of a header)")
    text = b"".join(blocks)
    try:
        header = fits.Header.fromstring(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise SurveyError(f"{path}: not a readable FITS file (bad header at byte {offset}: {e})") from None
    return header, len(text)


def _data_bytes(h, path: str) -> int:
    try:
        naxis = int(h.get("NAXIS", 0))
        n = 1 if naxis else 0
        for i in range(1, naxis + 1):
            n *= int(h[f"NAXIS{i}"])
        return abs(int(h.get("BITPIX", 8))) // 8 * int(h.get("GCOUNT", 1)) * (int(h.get("PCOUNT", 0)) + n)
    except (KeyError, ValueError) as e:
        raise SurveyError(f"{path}: not a readable FITS file (bad HDU size keywords: {e})") from None


def _padded(n: int) -> int:
    return (n + _BLOCK - 1) // _BLOCK * _BLOCK
