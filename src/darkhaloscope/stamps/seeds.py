"""Reader and converter for the seeds' Phase 4c stamp parquet (``stamp_npz`` blobs).

Layouts (both are read; :func:`detect_seeds_layout` tells them apart)::

    <root>/region_split=train/<any depth>/*.parquet    the seeds' Spark job (Hive partitions)
    <root>/region_split=val/...
    <root>/region_split=test/...

    <root>/train/<any depth>/*.parquet                 the Gen5-Prime document's layout
    <root>/val/...
    <root>/test/...

one row per sample, the image in a binary column ``stamp_npz``: an
``np.savez_compressed`` blob holding float32 (64, 64) arrays ``image_g``,
``image_r``, ``image_z`` in nanomaggies. Some rows are r-only (only ``image_r``
present); failed cutouts hold a zero ``image_r`` and ``cutout_ok = 0``. The paired
variant adds ``ctrl_stamp_npz`` (the same galaxy without the injection). Metadata
columns include ``is_control``, ``cutout_ok``, ``theta_e_arcsec``, ``src_dmag``,
``src_reff_arcsec``, ``src_e``, ``shear``, ``psfsize_r``, ``psfdepth_r``,
``arc_snr``, ``brickname``, ``ra``, ``dec``; there is no ``sample_id`` and no
``theta_e_over_psf``. Spark's bookkeeping files (``_SUCCESS``, ``.crc``, names
starting with ``_`` or ``.``) are ignored.

Our own format (:mod:`darkhaloscope.stamps.format`, ``<root>/<split>/part-*.parquet``)
has the second directory shape too, but a ``stamp`` column and no ``stamp_npz``:
the schema of the first parquet file of a split directory decides, so our format is
never taken for the seeds'. A root with both shapes of seeds directories is refused.

**Splits.** The split directories must be named ``train``, ``val`` or ``test``.
Any other split directory holding parquet files (``region_split=validation``,
``region_split=__HIVE_DEFAULT_PARTITION__``, or in the second layout another
top-level directory of ``stamp_npz`` files) is an error raised before any work,
naming the directory and the expected names; it is left out only when named in
``ignore_splits`` (``--ignore-split``), and then listed in the report's
``ignored_splits``. Names are never mapped (``validation`` is not ``val``).
Parquet files directly under the root belong to no split and are an error too.

**Cost.** Decoding one blob with ``np.load`` costs ~0.9 ms, most of it zipfile
and ``.npy`` header parsing (``ast.literal_eval``) and re-inflating the first bytes
of each member; :func:`decode_stamp_npz` parses the zip central directory and
local headers itself (``struct``), inflates each member once, checks its CRC-32
and sizes and caches the parsed ``.npy`` headers: ~0.15 ms, the cost of inflating
~48 kB of noisy floats. It inflates with the system's libdeflate
(``libdeflate.so.0`` through ctypes, ~1.5x zlib's speed, no Python package) where
that loads, else with Python's ``zlib``; inflating is defined by the stream, so the
bytes are the same either way. Any blob it does not fully understand
(encryption, zip64 end records, unusual member names, other compressions, .npy
format 3.0, ...) or finds inconsistent is handed to the ``np.load`` path
:func:`decode_stamp_npz_reference`, so both give the same arrays and masks, bit
for bit, and the same accept / reject decision. The training loader never
reads this format: it is converted ONCE into our storage (read at memcpy speed)
by :func:`convert_seeds_to_stamps` (parallel over output files, a process per
core by default, with a progress bar on stderr; ~0.4 ms of CPU per row in all,
of which inflating ~0.15, reading the parquet 0.03 (snappy) to 0.09 (gzip) and
writing ours ~0.05), and :func:`resolve_stamp_root`
- called by training and scoring - does that conversion on demand into a cache
directory and returns the root to read. ``benchmarks/seeds_format.py`` measures the
converter, ``benchmarks/loader.py`` the loaders.

**Errors.** Everything that can be checked without decoding blobs is checked
before any output is written: the layout, the split names, every file's
readability, schema (required columns and their types), ``is_control`` /
``cutout_ok`` values (0 or 1, no nulls) and the uniqueness of the sample ids. A
problem is a :class:`SeedsDataError` (a ``ValueError``) or an ``OSError`` whose
message names the file (and row, and column where relevant) and what was
expected. A corrupt blob found while converting stops the conversion; the output
is built in a temporary directory beside ``dst_root``, so a failed conversion
leaves nothing that looks complete. ``python -m darkhaloscope.stamps.seeds`` reports
such an error as one line ``seeds_format: error: <message>`` on stderr, exit status
1 (2 for a usage error); ``DHS_TRACEBACK=1`` shows the traceback instead. Ctrl-C
stops the worker processes (they ignore SIGINT; the parent stops them) and is one
line too, exit status 130, with nothing written (a stage converting through
:func:`resolve_stamp_root` ends the same way through ``stages/_common.run``).

Decisions (documented contract of the conversion):

- **Missing bands.** A band absent from a blob is filled with NaN and the row is
  kept, so :class:`darkhaloscope.model.loader.StampIndex` drops it under
  ``nonfinite_stamp`` and counts it (nothing is silently dropped). The column
  ``band_mask`` (int8; bit 0 = g, 1 = r, 2 = z; 7 = all present) records which
  bands were present, ``ctrl_band_mask`` the same for ``ctrl_stamp_npz``. A null
  blob is a row with all bands missing. Failed cutouts (``cutout_ok = 0``) are
  kept as they are and dropped by the index under ``cutout_not_ok``. The conversion
  report counts all of these per split.
- **Paired variant.** A null ``ctrl_stamp_npz`` becomes a null ``ctrl_stamp``
  (the index with ``require_ctrl`` counts it as ``missing_ctrl``). Either every
  file of a split has ``ctrl_stamp_npz`` or none has.
- **sample_id** (int64 >= 0): a content hash of the row's identity, the values of
  :data:`ID_COLUMNS` present in the file (``brickname``, ``ra``, ``dec`` and
  ``is_control`` are required), together with the split:
  ``hash_int63("seeds-sample", split, *map(repr, values))`` (values as Arrow's
  ``to_pylist`` gives them). Rows of a split with identical identity values are
  told apart by their occurrence number k (in file-path order, then row order): the
  k-th repeat (k >= 1) gets ``hash_int63("seeds-sample-dup", base_id, k)``; such
  rows are counted per split as ``duplicate_identity_rows`` in the report and
  logged as a warning. So the id does not depend on how the rows are spread over
  files nor on the other splits, and it is the same whichever function reads it.
  Uniqueness over the whole conversion is checked before converting. A source
  column ``sample_id`` (integer, no nulls) is used as it is instead.
- **row_id** (galaxy id, shared by a positive and its paired control):
  ``hash_int63("seeds-galaxy", repr(brickname), repr(ra), repr(dec))`` unless the
  source has one.
- **theta_e_over_psf** = ``theta_e_arcsec / psfsize_r`` (NaN where
  ``psfsize_r`` is not a positive finite number) unless the source has it.
- ``src_file`` (path relative to the source root) and ``src_row`` trace every
  row back to the seeds' data. All source metadata columns are carried as they
  are (the contract columns cast to their contract types); a source column named
  like one the conversion adds (``band_mask``, ``ctrl_band_mask``, ``src_file``,
  ``src_row``) is an error rather than being overwritten.
- Float values are stored bit-exactly: float32 arrays are copied, other numeric
  dtypes are cast to float32. Missing pixels are the float32 NaN 0x7fc00000.
- **Determinism.** The output files (and the report) are the same bytes for any
  ``workers`` count and on any machine: rows keep their source order, the work
  is split by output file, and nothing depends on timing. The bytes are those of
  :data:`CONVERSION_VERSION` 1 (conversions written before the fast decoder stay
  current).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import io
import json
import logging
import multiprocessing
import os
import signal
import struct
import sys
import threading
import warnings
import zlib
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from darkhaloscope.constants import BANDS as STAMP_BANDS
from darkhaloscope.constants import SPLITS, STAMP_SIZE
from darkhaloscope.hashing import hash_int63
from darkhaloscope.outputs import atomic_dir
from darkhaloscope.stamps.format import STAMP_COLUMN, STAMP_COLUMNS, part_file_name, write_stamp_file

log = logging.getLogger(__name__)

if sys.argv[:1] == ["-m"]:  # being imported by runpy for `python -m darkhaloscope.stamps.seeds`:
    # darkhaloscope.stamps imports this module first, so runpy would warn that it is already imported
    warnings.filterwarnings("ignore", message=r"'darkhaloscope\.stamps\.seeds' found in sys\.modules",
                            category=RuntimeWarning)

SPLIT_KEY = "region_split"
NPZ_COLUMN = "stamp_npz"
CTRL_NPZ_COLUMN = "ctrl_stamp_npz"
NPZ_COLUMNS: tuple[str, ...] = (NPZ_COLUMN, CTRL_NPZ_COLUMN)
#: npz array names, in our band order (g, r, z)
NPZ_KEYS: tuple[str, ...] = tuple(f"image_{b}" for b in STAMP_BANDS)
ALL_BANDS_MASK = (1 << len(STAMP_BANDS)) - 1
R_ONLY_MASK = 1 << STAMP_BANDS.index("r")
#: columns whose values identify a row (those present are hashed into sample_id)
ID_COLUMNS: tuple[str, ...] = (
    "brickname", "ra", "dec", "is_control", "theta_e_arcsec", "src_dmag", "src_reff_arcsec", "src_e", "shear",
)
REQUIRED_ID_COLUMNS: tuple[str, ...] = ("brickname", "ra", "dec", "is_control")
REQUIRED_COLUMNS: tuple[str, ...] = (NPZ_COLUMN, "is_control", "cutout_ok")
#: columns the conversion adds (a source column of the same name is an error)
ADDED_COLUMNS: tuple[str, ...] = ("band_mask", "ctrl_band_mask", "src_file", "src_row")
#: per-split count of rows whose identity values repeat an earlier row's
DUPLICATE_COUNT = "duplicate_identity_rows"
#: written into the converted root; holds the source listing, settings and counts
MANIFEST_NAME = "seeds_conversion.json"
CONVERSION_VERSION = 1
DECODERS: tuple[str, ...] = ("fast", "reference")
_FOOTER_BYTES = 1 << 16
_NAN32 = np.float32(np.nan)
#: what a seeds stamp set looks like (for error messages)
EXPECTED_LAYOUT = (
    f"parquet files with a binary {NPZ_COLUMN!r} column (one np.savez_compressed blob of float32 "
    f"({STAMP_SIZE}, {STAMP_SIZE}) arrays image_g/image_r/image_z per row) under "
    f"<root>/{SPLIT_KEY}=<split>/ (the seeds' Spark layout) or <root>/<split>/ (the Gen5-Prime layout), "
    f"<split> one of {', '.join(SPLITS)}"
)


class SeedsDataError(ValueError):
    """A seeds source that cannot be converted; the message names the file or directory and what was expected."""


# ----------------------------------------------------------------------------- layout


def _visible(name: str) -> bool:
    return not name.startswith(("_", "."))


def _parquet_files(directory: str, first_only: bool = False) -> list[str]:
    """Parquet files (any depth) under ``directory``, sorted by relative path; hidden / ``_`` names skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        for f in sorted(filenames):
            if f.endswith(".parquet") and _visible(f):
                out.append(os.path.join(dirpath, f))
                if first_only:
                    return out
    return sorted(out, key=lambda p: os.path.relpath(p, directory))


def _hive_dirs(root: str) -> dict[str, str]:
    prefix = f"{SPLIT_KEY}="
    try:
        names = os.listdir(root)
    except OSError:
        return {}
    return {d[len(prefix):]: os.path.join(root, d) for d in sorted(names)
            if d.startswith(prefix) and os.path.isdir(os.path.join(root, d))}


def _schema_kind(directory: str) -> tuple[str | None, str | None]:
    """("seeds" | "ours" | "other", file) from the first readable parquet file under ``directory``;
    ("unreadable", first file) if no file is readable, (None, None) if there is none."""
    files = _parquet_files(directory)
    for path in files:
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowException, OSError):
            continue  # an unreadable file decides nothing; the reader reports it
        if STAMP_COLUMN in names:
            return "ours", path
        return ("seeds" if NPZ_COLUMN in names else "other"), path
    return ("unreadable", files[0]) if files else (None, None)


@dataclass(frozen=True)
class SeedsLayout:
    """A seeds stamp set: its root, its form and its split directories (standard names or not)."""

    root: str
    form: str  # "hive" (<root>/region_split=<split>/) or "plain" (<root>/<split>/)
    dirs: dict[str, str]  # split name -> directory

    def split_dir(self, split: str) -> str:
        return self.dirs.get(split) or (os.path.join(self.root, f"{SPLIT_KEY}={split}") if self.form == "hive"
                                        else os.path.join(self.root, split))

    def files(self, split: str) -> list[str]:
        directory = self.split_dir(split)
        return _parquet_files(directory) if os.path.isdir(directory) else []


def detect_seeds_layout(root: str | os.PathLike) -> SeedsLayout | None:
    """The seeds layout of ``root`` or None (not a directory, our own format, nothing with ``stamp_npz``).

    ``hive``: ``region_split=<name>`` directories, at least one holding parquet
    files. ``plain``: ``train`` / ``val`` / ``test`` directories whose first
    readable parquet file has a ``stamp_npz`` column (and no ``stamp``); then
    every other visible top-level directory whose parquet files have one is a
    split directory too (an unknown one). Both forms at once is a
    :class:`SeedsDataError`.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        return None
    hive = _hive_dirs(root)
    hive_used = any(_parquet_files(d, first_only=True) for d in hive.values())
    plain: dict[str, str] = {}
    for s in SPLITS:
        d = os.path.join(root, s)
        if os.path.isdir(d) and _schema_kind(d)[0] == "seeds":
            plain[s] = d
    if hive_used and plain:
        raise SeedsDataError(
            f"{root}: holds both {SPLIT_KEY}=<split>/ directories ({sorted(hive)}) and plain split directories "
            f"with {NPZ_COLUMN} files ({sorted(plain)}); expected one layout, not both"
        )
    if hive_used:
        return SeedsLayout(root, "hive", hive)
    if not plain:
        return None
    dirs = {s: os.path.join(root, s) for s in SPLITS if os.path.isdir(os.path.join(root, s))}
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if name not in dirs and _visible(name) and os.path.isdir(d) and _schema_kind(d)[0] == "seeds":
            dirs[name] = d
    return SeedsLayout(root, "plain", dirs)


def is_seeds_layout(root: str | os.PathLike) -> bool:
    """True when ``root`` holds a seeds stamp set (either layout, see :func:`detect_seeds_layout`)."""
    try:
        return detect_seeds_layout(root) is not None
    except SeedsDataError:
        return True  # seeds data, but not convertible as it is: the conversion says why


def _require_layout(root: str) -> SeedsLayout:
    """The layout of ``root``, or an error saying what was found and what was expected."""
    if not os.path.exists(root):
        raise FileNotFoundError(f"{root}: no such directory; expected a seeds stamp set: {EXPECTED_LAYOUT}")
    if not os.path.isdir(root):
        raise SeedsDataError(f"{root}: not a directory; expected a seeds stamp set: {EXPECTED_LAYOUT}")
    layout = detect_seeds_layout(root)
    if layout is not None:
        return layout
    found = []
    for s in SPLITS:
        d = os.path.join(root, s)
        if os.path.isdir(d):
            kind, path = _schema_kind(d)
            if kind == "ours":
                raise SeedsDataError(
                    f"{root}: is darkhaloscope's own stamp format ({os.path.relpath(path, root)} has a "
                    f"{STAMP_COLUMN!r} column), not the seeds' format: nothing to convert, read it directly"
                )
            what = {None: "no parquet file", "other": f"parquet without {NPZ_COLUMN!r}"}.get(
                kind, f"no readable parquet file: {os.path.relpath(path or '', root)} is truncated or not parquet")
            found.append(f"{s}/ ({what})")
    hive = _hive_dirs(root)
    if hive:
        found.append(f"{SPLIT_KEY}= directories {sorted(hive)} without parquet files")
    entries = sorted(os.listdir(root))
    if not found:
        found.append(f"entries {entries[:10]}{' ...' if len(entries) > 10 else ''}" if entries else "nothing")
    raise SeedsDataError(f"{root}: not a seeds stamp set: found {'; '.join(found)}; expected {EXPECTED_LAYOUT}")


def _layout_or_hive(root: str | os.PathLike) -> SeedsLayout:
    """The detected layout, else the seeds' Hive layout (for the listing helpers on partial data)."""
    root = os.fspath(root)
    layout = detect_seeds_layout(root)
    return layout if layout is not None else SeedsLayout(root, "hive", _hive_dirs(root))


def _split_dir(root: str | os.PathLike, split: str) -> str:
    return os.path.join(os.fspath(root), f"{SPLIT_KEY}={split}")


def seeds_splits(root: str | os.PathLike) -> list[str]:
    """Split names of the split directories under ``root`` (sorted): the ``region_split=<name>``
    directories, else (the Gen5-Prime layout) the split directories holding ``stamp_npz`` files."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        return []
    hive = _hive_dirs(root)
    if hive:
        return sorted(hive)
    try:
        layout = detect_seeds_layout(root)
    except SeedsDataError:
        return sorted(hive)
    return sorted(layout.dirs) if layout is not None else []


def list_seeds_files(root: str | os.PathLike, split: str) -> list[str]:
    """Sorted parquet files (any depth) of ``<root>/region_split=<split>`` (or ``<root>/<split>`` in the
    Gen5-Prime layout); hidden / ``_`` names skipped."""
    root = os.fspath(root)
    hive = _split_dir(root, split)
    if os.path.isdir(hive):
        return _parquet_files(hive)
    plain = os.path.join(root, split)
    if os.path.isdir(plain) and not _hive_dirs(root):
        return _parquet_files(plain)
    raise FileNotFoundError(f"seeds split directory {hive!r} (or {plain!r}) does not exist")


def source_listing(root: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """What the conversion of ``root`` depends on: per split directory, each file's relative path, size and
    footer hash.

    The footer (last 64 KiB) holds the parquet metadata, so rewriting a file
    changes its hash; reading it is cheap even for hundreds of GB of data.
    """
    layout = _layout_or_hive(root)
    out: dict[str, list[dict[str, Any]]] = {}
    for split in sorted(layout.dirs):
        rows = []
        for path in layout.files(split):
            size = os.path.getsize(path)
            with open(path, "rb") as fh:
                fh.seek(max(0, size - _FOOTER_BYTES))
                digest = hashlib.sha256(fh.read()).hexdigest()
            rows.append({"file": os.path.relpath(path, layout.root), "bytes": size, "footer_sha256": digest})
        out[split] = rows
    return out


# ----------------------------------------------------------------------------- decoding


def decode_stamp_npz_reference(blob: bytes | None, size: int = STAMP_SIZE) -> tuple[np.ndarray, int]:
    """:func:`decode_stamp_npz` through ``np.load`` (the slow, obviously right path the fast one is checked against)."""
    out = np.full((len(NPZ_KEYS), size, size), np.nan, dtype=np.float32)
    mask = 0
    if blob is None:
        return out, mask
    if not bytes(blob[:4]) == b"PK\x03\x04":  # np.load would try to unpickle anything else
        raise ValueError("not an npz blob (no zip signature)")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            names = set(z.files)
            for b, key in enumerate(NPZ_KEYS):
                if key not in names:
                    continue
                a = z[key]
                if a.shape != (size, size):
                    raise ValueError(f"array {key!r} has shape {a.shape}, expected ({size}, {size})")
                if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                    raise ValueError(f"array {key!r} has dtype {a.dtype}, expected float32")
                out[b] = a  # float32 copied bit-exactly; other dtypes cast
                mask |= 1 << b
    except ValueError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError, ...
        raise ValueError(f"not a readable npz blob ({type(exc).__name__}: {exc})") from exc
    return out, mask


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record (22 bytes)
_CDIR = struct.Struct("<4s4B4HL2L5H2L")  # central directory file header (46 bytes)
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # local file header (30 bytes)
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")
#: npz member name -> band index (numpy writes ``<key>.npy``)
_MEMBERS = {f"{k}.npy".encode(): b for b, k in enumerate(NPZ_KEYS)}
_BARE_KEYS = frozenset(k.encode() for k in NPZ_KEYS)  # a member named like this wins in np.load: not handled here
_NPY_MAGIC = b"\x93NUMPY"
#: zip flag bits the fast path accepts: deflate options (1, 2), data descriptor (3), UTF-8 names (11)
_OK_FLAGS = 0x0002 | 0x0004 | 0x0008 | 0x0800
#: parsed .npy headers: (version, header bytes) -> (dtype, fortran_order, shape), or None (leave to np.load)
_NPY_HEADERS: dict[tuple[int, bytes], tuple[np.dtype, bool, tuple[int, ...]] | None] = {}


class _ZlibInflater:
    """Raw-deflate inflate of one zip member with Python's ``zlib`` (always available)."""

    name = "zlib"

    def inflate(self, blob, start: int, csize: int, usize: int, crc: int, addr: int | None = None):
        """The member ``blob[start:start + csize]`` inflated: bytes of exactly ``usize`` bytes whose CRC-32 is
        ``crc``, or None (corrupt, another size or CRC: the caller defers to np.load). ``addr`` is unused."""
        try:
            data = zlib.decompress(blob[start:start + csize], -15, max(usize, 1))
        except zlib.error:
            return None
        if len(data) != usize or zlib.crc32(data) != crc:
            return None
        return data


class _LibdeflateInflater:
    """The same through the system's libdeflate (``libdeflate.so.0``, loaded with ctypes, no Python package):
    ~1.5x zlib's inflate speed and ~3x its CRC-32 on these blobs. Inflating is defined by the stream, so
    both give the same bytes. Each thread inflates into a buffer of its own (no allocation per member);
    the returned view is valid until that thread's next call. A forked worker process has its own copy."""

    name = "libdeflate"
    _LIMIT = STAMP_SIZE * STAMP_SIZE * 16 + (1 << 16)  # = _decode_fast's largest member

    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.libdeflate_alloc_decompressor.restype = ctypes.c_void_p
        lib.libdeflate_alloc_decompressor.argtypes = []
        lib.libdeflate_free_decompressor.restype = None
        lib.libdeflate_free_decompressor.argtypes = [ctypes.c_void_p]
        self._alloc = lib.libdeflate_alloc_decompressor
        self._free = lib.libdeflate_free_decompressor
        self._dec = lib.libdeflate_deflate_decompress
        self._dec.restype = ctypes.c_int
        self._dec.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                              ctypes.c_void_p]
        self._crc = lib.libdeflate_crc32
        self._crc.restype = ctypes.c_uint32
        self._crc.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        self._local = threading.local()

    class _State:
        """One thread's decompressor and output buffer (the decompressor is freed with it)."""

        def __init__(self, alloc, free) -> None:
            self.free = free
            self.d = alloc()
            if not self.d:
                raise MemoryError("libdeflate_alloc_decompressor failed")
            self.buf = np.empty(_LibdeflateInflater._LIMIT, np.uint8)
            self.addr = self.buf.ctypes.data
            self.view = memoryview(self.buf)

        def __del__(self) -> None:
            if getattr(self, "d", None):
                self.free(self.d)
                self.d = None

    def inflate(self, blob, start: int, csize: int, usize: int, crc: int, addr: int | None = None):
        """As :meth:`_ZlibInflater.inflate`; ``addr``: the address of ``blob``'s first byte, if known."""
        try:
            st = self._local.state
        except AttributeError:
            st = self._local.state = self._State(self._alloc, self._free)
        if usize > self._LIMIT or start < 0 or start + csize > len(blob):
            return None
        if addr is None:
            addr = np.frombuffer(blob, np.uint8).ctypes.data if len(blob) else 0
        # NULL actual_out: success only when the stream inflates to exactly usize bytes
        if self._dec(st.d, addr + start, csize, st.addr, usize, None) != 0:
            return None
        if self._crc(0, st.addr, usize) != crc:
            return None
        return st.view[:usize]


def _load_inflater(which: str = "auto") -> _ZlibInflater | _LibdeflateInflater:
    """The inflater ``which`` names: "zlib", "libdeflate" (an OSError where ``libdeflate.so.0`` does not
    load) or "auto" (libdeflate where it loads, else zlib)."""
    if which not in ("auto", "zlib", "libdeflate"):
        raise ValueError(f"inflater {which!r}: expected 'auto', 'zlib' or 'libdeflate'")
    if which == "zlib":
        return _ZlibInflater()
    for name in ("libdeflate.so.0", ctypes.util.find_library("deflate")):
        if not name:
            continue
        try:
            return _LibdeflateInflater(ctypes.CDLL(name))
        except (OSError, AttributeError):
            continue
    if which == "libdeflate":
        raise OSError("libdeflate (libdeflate.so.0) cannot be loaded (Debian/Ubuntu package libdeflate0)")
    return _ZlibInflater()


#: the inflater the fast decoder uses (output bytes do not depend on it)
_INFLATER = _load_inflater()


def _npy_header(version: int, header: bytes) -> tuple[np.dtype, bool, tuple[int, ...]] | None:
    key = (version, header)
    try:
        return _NPY_HEADERS[key]
    except KeyError:
        pass
    parsed = None
    try:
        with warnings.catch_warnings(record=True) as caught:  # a Python 2 header warns in np.load: leave it to np.load
            warnings.simplefilter("always")
            length = (_U16 if version == 1 else _U32).pack(len(header))
            read = np.lib.format.read_array_header_1_0 if version == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(io.BytesIO(length + header))
        if not caught and dtype.kind in "fiu" and not dtype.hasobject and dtype.shape == () and dtype.itemsize > 0:
            parsed = (dtype, bool(fortran), tuple(shape))
    except Exception:  # noqa: BLE001 - anything unusual is np.load's to judge
        parsed = None
    if len(_NPY_HEADERS) < 1024:
        _NPY_HEADERS[key] = parsed
    return parsed


def _decode_fast(blob, out: np.ndarray, size: int, addr: int | None = None) -> int | None:
    """Decode an npz blob (bytes-like) into ``out`` (3, size, size); the band mask, or None to defer to np.load.

    ``addr``: the memory address of ``blob``'s first byte where the caller knows it
    (the Arrow data buffer's), else found here when the inflater needs it.

    Returns a mask only where ``np.load`` reads exactly the same bytes and accepts them:
    the zip's central directory and local headers are consistent, every wanted member
    is stored or deflated, unencrypted, inflates to its recorded size with its recorded
    CRC-32, and holds a .npy (format 1.0 or 2.0) integer or float array of shape
    (size, size). Anything else returns None (``out`` may then be partly written).
    """
    n = len(blob)
    if n < 22 + 46 or blob[:4] != b"PK\x03\x04":
        return None
    sig, disk, cd_disk, n_disk, n_total, cd_size, cd_off, comment = _EOCD.unpack_from(blob, n - 22)
    cd_end = n - 22
    if (sig != b"PK\x05\x06" or comment or disk or cd_disk or n_disk != n_total or cd_off + cd_size != cd_end
            or blob[cd_end - 20:cd_end - 16] == b"PK\x06\x07"):  # zip64 end record: np.load's business
        return None
    pos, wanted, offsets = cd_off, [], []
    while pos < cd_end:
        if pos + 46 > cd_end:
            return None
        (sig, _, _, extract, _, flags, method, _, _, crc, csize, usize, fn_len, ex_len, cm_len, _, _, _,
         hoff) = _CDIR.unpack_from(blob, pos)
        if sig != b"PK\x01\x02" or extract > 63 or ex_len:  # (an extra field in the directory: zipfile parses it)
            return None
        name = bytes(blob[pos + 46:pos + 46 + fn_len])
        pos += 46 + fn_len + ex_len + cm_len
        if b"\x00" in name or name in _BARE_KEYS:
            return None
        offsets.append(hoff)
        band = _MEMBERS.get(name)
        if band is not None:
            if flags & ~_OK_FLAGS or method not in (0, 8) or 0xFFFFFFFF in (csize, usize, hoff):
                return None
            wanted.append((band, name, method, crc, csize, usize, hoff))
    if (pos != cd_end or len(offsets) != n_total or len(set(offsets)) != len(offsets)
            or (offsets and max(offsets) >= cd_off)):
        return None
    if len({w[0] for w in wanted}) != len(wanted):  # a name twice: np.load takes the last
        return None
    ends = sorted(offsets) + [cd_off]
    max_member = size * size * 16 + (1 << 16)  # (a larger recorded size is corrupt or exotic: np.load streams it)
    mask = 0
    for band, name, method, crc, csize, usize, hoff in wanted:
        if hoff + 30 > cd_off:
            return None
        sig, _, _, _, _, _, _, _, _, _, fn_len, ex_len = _LOCAL.unpack_from(blob, hoff)
        start = hoff + 30 + fn_len + ex_len
        end = start + csize
        if sig != b"PK\x03\x04" or bytes(blob[hoff + 30:hoff + 30 + fn_len]) != name \
                or end > ends[ends.index(hoff) + 1] or usize > max_member:
            return None
        if method == 8:
            data = _INFLATER.inflate(blob, start, csize, usize, crc, addr)
            if data is None:
                return None
        else:
            data = blob[start:end]
            if len(data) != usize or zlib.crc32(data) != crc:
                return None
        if usize < 10 or bytes(data[:6]) != _NPY_MAGIC:
            return None
        major, minor = data[6], data[7]
        if minor or major not in (1, 2):
            return None
        if major == 1:
            hstart, hlen = 10, _U16.unpack_from(data, 8)[0]
        else:
            if usize < 12:
                return None
            hstart, hlen = 12, _U32.unpack_from(data, 8)[0]
        parsed = _npy_header(major, bytes(data[hstart:hstart + hlen]))
        if parsed is None:
            return None
        dtype, fortran, shape = parsed
        if shape != (size, size):
            return None
        count = size * size
        offset = hstart + hlen
        if usize - offset < count * dtype.itemsize:
            return None
        a = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        out[band] = a.reshape(shape[::-1]).T if fortran else a.reshape(shape)
        mask |= 1 << band
    for b in range(len(NPZ_KEYS)):
        if not mask >> b & 1:
            out[b] = _NAN32
    return mask


def _decode_into(blob, out: np.ndarray, size: int = STAMP_SIZE, decoder: str = "fast",
                 addr: int | None = None) -> int:
    """Decode one non-null blob (bytes-like) into ``out`` (3, size, size); returns the band mask."""
    if decoder == "fast":
        mask = _decode_fast(blob, out, size, addr)
        if mask is not None:
            return mask
    arr, mask = decode_stamp_npz_reference(bytes(blob), size)
    out[...] = arr
    return mask


def decode_stamp_npz(blob: bytes | None, size: int = STAMP_SIZE) -> tuple[np.ndarray, int]:
    """One ``stamp_npz`` blob -> ((3, size, size) float32 g/r/z, band mask).

    Missing bands (and a null blob) are NaN; the mask has bit b set when band b
    (0 = g, 1 = r, 2 = z) is present. A corrupt blob or a wrongly shaped array is
    a ValueError. Same result as :func:`decode_stamp_npz_reference`, ~3x faster.
    """
    out = np.empty((len(NPZ_KEYS), size, size), dtype=np.float32)
    if blob is None:
        out.fill(_NAN32)
        return out, 0
    return out, _decode_into(blob, out, size)


def _blob_type_ok(typ: pa.DataType) -> bool:
    return pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_fixed_size_binary(typ)


def _decode_chunk(chunk: pa.Array, stamps: np.ndarray, masks: np.ndarray, present: np.ndarray,
                  where: Callable[[int], str], decoder: str) -> None:
    """Decode the blobs of one Arrow chunk into ``stamps`` / ``masks`` / ``present`` (same length)."""
    n = len(chunk)
    if n == 0:
        return
    valid = chunk.is_valid().to_numpy(zero_copy_only=False).tolist() if chunk.null_count else [True] * n
    bufs = chunk.buffers()
    data = memoryview(bufs[-1]) if bufs[-1] is not None else memoryview(b"")
    base = bufs[-1].address if bufs[-1] is not None else None
    if pa.types.is_fixed_size_binary(chunk.type):
        width = chunk.type.byte_width
        starts = ((chunk.offset + np.arange(n + 1)) * width).tolist()
    else:
        dt = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        starts = np.frombuffer(bufs[1], dtype=dt, count=n + 1, offset=chunk.offset * np.dtype(dt).itemsize).tolist()
    size = stamps.shape[-1]
    for j in range(n):
        if not valid[j]:
            stamps[j].fill(_NAN32)
            masks[j] = 0
            present[j] = False
            continue
        try:
            masks[j] = _decode_into(data[starts[j]:starts[j + 1]], stamps[j], size, decoder,
                                    None if base is None else base + starts[j])
        except ValueError as exc:
            raise SeedsDataError(
                f"{where(j)}: {exc}; expected an np.savez_compressed blob of integer or float "
                f"({size}, {size}) arrays named among {', '.join(NPZ_KEYS)}"
            ) from exc
        present[j] = True


# ----------------------------------------------------------------------------- sample ids


def _hash63_many(prefix: str, keys: Iterator[str], n: int) -> np.ndarray:
    """``hash_int63(*parts)`` for many rows whose joined parts are ``prefix + key`` (same bytes, same hash)."""
    blake = hashlib.blake2b
    return np.fromiter(
        (int.from_bytes(blake((prefix + k).encode(), digest_size=8).digest(), "little") >> 1 for k in keys),
        dtype=np.int64, count=n,
    )


def _base_ids(split: str, table: pa.Table) -> np.ndarray:
    """``hash_int63("seeds-sample", split, *(repr(v) for v in the row's ID_COLUMNS values))`` per row."""
    cols = [list(map(repr, table.column(c).to_pylist())) for c in ID_COLUMNS if c in table.column_names]
    return _hash63_many(f"seeds-sample\x1f{split}\x1f", map("\x1f".join, zip(*cols)), table.num_rows)


def _row_ids(table: pa.Table) -> np.ndarray:
    """``hash_int63("seeds-galaxy", repr(brickname), repr(ra), repr(dec))`` per row."""
    cols = [list(map(repr, table.column(c).to_pylist())) for c in ("brickname", "ra", "dec")]
    return _hash63_many("seeds-galaxy\x1f", map("\x1f".join, zip(*cols)), table.num_rows)


def _occurrences(base: np.ndarray) -> np.ndarray:
    """Per element: how many earlier elements (in array order) have the same value."""
    if base.size == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(base, kind="stable")
    srt = base[order]
    new_run = np.r_[True, srt[1:] != srt[:-1]]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(srt.size), 0))
    occ = np.empty(base.size, np.int64)
    occ[order] = np.arange(srt.size) - run_start
    return occ


def _disambiguate(base: np.ndarray, occ: np.ndarray | None = None) -> np.ndarray:
    """The k-th repeat (k >= 1, in array order) of a base id gets hash("seeds-sample-dup", base, k)."""
    if base.size == 0:
        return base
    occ = _occurrences(base) if occ is None else occ
    out = base.copy()
    for i in np.flatnonzero(occ):
        out[i] = hash_int63("seeds-sample-dup", int(base[i]), int(occ[i]))
    return out


# ----------------------------------------------------------------------------- planning (metadata only)


def _open_parquet(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise SeedsDataError(
            f"{path}: not a readable parquet file ({type(exc).__name__}: {exc}); expected a seeds stamp file "
            f"(parquet with a binary {NPZ_COLUMN!r} column)"
        ) from exc


def _read(pf: pq.ParquetFile, path: str, columns: list[str], row_group: int | None = None,
          use_threads: bool = False) -> pa.Table:
    try:
        if row_group is None:
            return pf.read(columns=columns, use_threads=use_threads)
        return pf.read_row_group(row_group, columns=columns, use_threads=use_threads)
    except (pa.ArrowException, OSError) as exc:
        where = "" if row_group is None else f" (row group {row_group})"
        raise SeedsDataError(f"{path}: cannot read columns {columns}{where} ({type(exc).__name__}: {exc}); "
                             f"the file is truncated or corrupt") from exc


def _first_bad(values: np.ndarray, bad: np.ndarray) -> str:
    i = int(np.flatnonzero(bad)[0])
    v = values[i].item() if hasattr(values[i], "item") else values[i]
    return f"row {i} holds {v!r}" + (f" ({int(bad.sum())} rows in all)" if bad.sum() > 1 else "")


@dataclass
class _FilePlan:
    path: str  # absolute
    rel: str  # relative to the source root
    rows: int
    paired: bool
    own_ids: bool  # the source has its own sample_id
    ids: np.ndarray  # the source's sample_id, or the base ids (before disambiguation)
    meta: list[str]  # metadata column names, in file order


def _plan_file(root: str, split: str, path: str) -> _FilePlan:
    """Check one source file's schema and metadata (no blobs) and derive its base sample ids."""
    pf = _open_parquet(path)
    schema = pf.schema_arrow
    names = schema.names
    rel = os.path.relpath(path, root)
    clash = [c for c in STAMP_COLUMNS if c in names]
    if clash:
        raise SeedsDataError(f"{path}: column(s) {clash} are darkhaloscope's own stamp columns; expected a seeds "
                             f"stamp file with a {NPZ_COLUMN!r} column (our format is read directly, not converted)")
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise SeedsDataError(f"{path}: required seeds column(s) {missing} missing (has {names}); expected "
                             f"{EXPECTED_LAYOUT}, with integer columns 'is_control' and 'cutout_ok'")
    for c in NPZ_COLUMNS:
        if c in names and not _blob_type_ok(schema.field(c).type):
            raise SeedsDataError(f"{path}: column {c!r} has type {schema.field(c).type}, expected binary "
                                 f"(np.savez_compressed blobs)")
    taken = [c for c in ADDED_COLUMNS if c in names]
    if taken:
        raise SeedsDataError(f"{path}: column(s) {taken} would be overwritten by the conversion, which adds them")
    own = "sample_id" in names
    id_needed = ["is_control"] + ([] if own and "row_id" in names else ["brickname", "ra", "dec"])
    missing = [c for c in id_needed if c not in names]
    if missing:
        raise SeedsDataError(f"{path}: column(s) {missing} are needed to derive sample_id / row_id (has {names})")
    for c in ("is_control", "cutout_ok") + (("sample_id",) if own else ()):
        typ = schema.field(c).type
        ok = pa.types.is_integer(typ) or (c != "sample_id" and (pa.types.is_boolean(typ) or pa.types.is_floating(typ)))
        if not ok:
            raise SeedsDataError(f"{path}: column {c!r} has type {typ}, expected "
                                 f"{'an integer sample id' if c == 'sample_id' else 'integer 0 / 1'}")
    read = ["is_control", "cutout_ok"] + (["sample_id"] if own else [c for c in ID_COLUMNS if c in names])
    read = [c for c in names if c in set(read)]
    t = _read(pf, path, read)
    for c in ("is_control", "cutout_ok") + (("sample_id",) if own else ()):
        col = t.column(c)
        if col.null_count:
            bad = col.is_null().to_numpy(zero_copy_only=False)
            want = "integers" if c == "sample_id" else "0 or 1"
            raise SeedsDataError(f"{path}: column {c!r} has {col.null_count} null values (first at row "
                                 f"{int(np.flatnonzero(bad)[0])}); expected {want}")
        if c != "sample_id":
            v = col.to_numpy(zero_copy_only=False)
            bad = (v != 0) & (v != 1)
            if bad.any():
                raise SeedsDataError(f"{path}: column {c!r}: {_first_bad(v, bad)}, expected 0 or 1")
    if own:
        ids = t.column("sample_id").to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        ids = _base_ids(split, t)
    return _FilePlan(path, rel, t.num_rows, CTRL_NPZ_COLUMN in names, own, ids,
                     [c for c in names if c not in NPZ_COLUMNS])


@dataclass
class _SplitPlan:
    root: str
    split: str
    files: list[_FilePlan]
    ids: list[np.ndarray]  # final sample ids per file
    duplicates: int  # rows whose identity values repeat an earlier row's (derived ids only)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


def _locate(files: Sequence[_FilePlan], i: int) -> str:
    for f in files:
        if i < f.rows:
            return f"{f.rel} row {i}"
        i -= f.rows
    raise IndexError(i)


def _finish_split(root: str, split: str, files: list[_FilePlan]) -> _SplitPlan:
    """Disambiguate the derived ids of a split (file-path order, then row order) and count the repeats."""
    paired = {f.paired for f in files}
    if len(paired) > 1:
        with_c = next(f.rel for f in files if f.paired)
        without = next(f.rel for f in files if not f.paired)
        raise SeedsDataError(f"split {split!r}: some files have {CTRL_NPZ_COLUMN!r} ({with_c}) and others do not "
                             f"({without}); expected all or none (the paired variant or not)")
    derived = [f for f in files if not f.own_ids]
    base = np.concatenate([f.ids for f in derived]) if derived else np.zeros(0, np.int64)
    occ = _occurrences(base)
    dups = int(np.count_nonzero(occ))
    if dups:
        i = int(np.flatnonzero(occ)[0])
        j = int(np.flatnonzero(base == base[i])[0])
        log.warning("seeds split %r: %d row(s) repeat the identity values (%s) of an earlier row, e.g. %s = %s; "
                    "kept, with distinct sample ids (counted as %s)", split, dups, ", ".join(ID_COLUMNS),
                    _locate(derived, i), _locate(derived, j), DUPLICATE_COUNT)
    final = iter(np.split(_disambiguate(base, occ), np.cumsum([f.rows for f in derived])[:-1]) if derived else [])
    ids = [f.ids if f.own_ids else next(final) for f in files]
    return _SplitPlan(root, split, files, ids, dups)


def _plan_split(root: str | os.PathLike, split: str) -> _SplitPlan:
    """Pass 1 over a split's metadata (no blobs), in this process: the sample ids of every file."""
    root = os.fspath(root)
    files = list_seeds_files(root, split)
    return _finish_split(root, split, [_plan_file(root, split, f) for f in files])


def _check_unique(plans: Sequence[_SplitPlan]) -> None:
    """Every sample id of the conversion is distinct (else an error naming two rows that share one)."""
    parts = [(p, f, ids) for p in plans for f, ids in zip(p.files, p.ids)]
    if not parts:
        return
    all_ids = np.concatenate([ids for _, _, ids in parts])
    uniq, cnt = np.unique(all_ids, return_counts=True)
    if not (cnt > 1).any():
        return
    value = uniq[cnt > 1][0]
    where = []
    for p, f, ids in parts:
        for r in np.flatnonzero(ids == value)[:2]:
            where.append(f"{p.split}: {f.rel} row {int(r)}")
    raise SeedsDataError(f"seeds conversion: {int((cnt > 1).sum())} sample_id value(s) occur more than once, e.g. "
                         f"{int(value)} at {' and '.join(where[:2])}; expected unique sample ids (a source "
                         f"'sample_id' column must be unique over all splits)")


# ----------------------------------------------------------------------------- reading


@dataclass
class SeedsRows:
    """Decoded rows of seeds files, ready for :func:`darkhaloscope.stamps.format.write_stamp_file`."""

    columns: pa.Table  # metadata: sample_id, row_id, the source columns, derived columns
    stamps: np.ndarray  # (N, 3, 64, 64) float32 nanomaggies; missing bands NaN
    ctrl_stamps: np.ndarray | None  # paired variant only
    ctrl_valid: np.ndarray | None  # bool (N,): ctrl_stamp_npz not null
    counts: dict[str, int]

    @property
    def n(self) -> int:
        return int(self.stamps.shape[0])


def _counts(cutout_ok: np.ndarray, masks: np.ndarray, present: np.ndarray, stamps: np.ndarray,
            cmasks: np.ndarray | None, cpresent: np.ndarray | None, ctrl: np.ndarray | None) -> dict[str, int]:
    ok = cutout_ok == 1
    n = len(ok)
    fin = np.isfinite(stamps.reshape(n, -1)).all(axis=1) if n else np.zeros(0, bool)
    c = {
        "rows": n,
        "cutout_not_ok": int((~ok).sum()),
        "stamp_npz_null": int((~present).sum()),
        "r_only": int((present & (masks == R_ONLY_MASK)).sum()),
        "missing_bands": int((masks != ALL_BANDS_MASK).sum()),  # includes r-only and null blobs
        # rows the index will drop as nonfinite_stamp (after cutout_not_ok): r-only rows among them
        "nonfinite_stamp_cutout_ok": int((ok & ~fin).sum()),
        "r_only_cutout_ok": int((ok & present & (masks == R_ONLY_MASK)).sum()),
    }
    if ctrl is not None:
        cfin = np.isfinite(ctrl.reshape(n, -1)).all(axis=1) if n else np.zeros(0, bool)
        c.update({
            "ctrl_stamp_npz_null": int((~cpresent).sum()),
            "ctrl_r_only": int((cpresent & (cmasks == R_ONLY_MASK)).sum()),
            "ctrl_missing_bands": int((cpresent & (cmasks != ALL_BANDS_MASK)).sum()),
            "ctrl_nonfinite_cutout_ok": int((ok & cpresent & ~cfin).sum()),
        })
    return c


def _add_counts(total: dict[str, int], part: dict[str, int]) -> dict[str, int]:
    for k, v in part.items():
        total[k] = total.get(k, 0) + v
    return total


# progress and cancellation: set per worker process by _init_worker, in this process by _Runner
_TICK: Callable[[int], None] | None = None
_ABORT: Any = None


class _Aborted(Exception):
    """Raised in a worker when another task failed (its result is not wanted)."""


def _progress(n: int) -> None:
    if _ABORT is not None and _ABORT.value:
        raise _Aborted()
    if _TICK is not None and n:
        _TICK(n)


def _read_group(root: str, split: str, files: Sequence[_FilePlan], ids: Sequence[np.ndarray],
                decoder: str = "fast", use_threads: bool = False) -> SeedsRows:
    """Read and decode a group of files of a split (in order) into one :class:`SeedsRows`."""
    n_total = sum(f.rows for f in files)
    paired = bool(files) and files[0].paired
    stamps = np.empty((n_total, len(NPZ_KEYS), STAMP_SIZE, STAMP_SIZE), np.float32)
    ctrl = np.empty_like(stamps) if paired else None
    masks = np.zeros(n_total, np.int8)
    present = np.zeros(n_total, bool)
    cmasks = np.zeros(n_total, np.int8) if paired else None
    cpresent = np.zeros(n_total, bool) if paired else None
    tables, counts, pos = [], {}, 0
    for f, f_ids in zip(files, ids):
        pf = _open_parquet(f.path)
        names = pf.schema_arrow.names
        if pf.metadata.num_rows != f.rows or (CTRL_NPZ_COLUMN in names) != f.paired:
            raise SeedsDataError(f"{f.path}: the file changed during the conversion ({pf.metadata.num_rows} rows, "
                                 f"{f.rows} planned); convert again")
        t = _read(pf, f.path, f.meta, use_threads=use_threads)
        blob_cols = [NPZ_COLUMN] + ([CTRL_NPZ_COLUMN] if paired else [])
        a = pos
        for rg in range(pf.metadata.num_row_groups):
            tb = _read(pf, f.path, blob_cols, rg, use_threads)
            m = tb.num_rows
            if a + m > pos + f.rows:
                raise SeedsDataError(f"{f.path}: row group {rg} holds more rows than the file's {f.rows}; "
                                     f"the file is corrupt")
            for name, out, mk, pr in ((NPZ_COLUMN, stamps, masks, present), (CTRL_NPZ_COLUMN, ctrl, cmasks, cpresent)):
                if out is None:
                    continue
                s0 = a
                for chunk in tb.column(name).chunks:
                    k = len(chunk)
                    _decode_chunk(chunk, out[s0:s0 + k], mk[s0:s0 + k], pr[s0:s0 + k],
                                  lambda j, r=s0 - pos, c=name, p=f.path: f"{p}: row {r + j} column {c!r}", decoder)
                    s0 += k
            a += m
            _progress(m)
        n = t.num_rows
        if a - pos != n:
            raise SeedsDataError(f"{f.path}: {a - pos} blobs but {n} metadata rows; the file is corrupt")
        cols: dict[str, Any] = {"sample_id": pa.array(f_ids, pa.int64())}
        if "row_id" not in names:
            cols["row_id"] = pa.array(_row_ids(t), pa.int64())
        for c in t.column_names:
            if c != "sample_id":
                cols[c] = t.column(c).combine_chunks()
        if "theta_e_over_psf" not in names and "theta_e_arcsec" in names and "psfsize_r" in names:
            th = t.column("theta_e_arcsec").to_numpy(zero_copy_only=False).astype(np.float64)
            psf = t.column("psfsize_r").to_numpy(zero_copy_only=False).astype(np.float64)
            good = np.isfinite(psf) & (psf > 0)
            cols["theta_e_over_psf"] = np.where(good, th / np.where(good, psf, 1.0), np.nan)
        sl = slice(pos, pos + n)
        cols["band_mask"] = masks[sl]
        if paired:
            cols["ctrl_band_mask"] = cmasks[sl]
        cols["src_file"] = pa.array([f.rel] * n, pa.string())
        cols["src_row"] = np.arange(n, dtype=np.int64)
        tables.append(pa.table(cols))
        cutout_ok = t.column("cutout_ok").to_numpy(zero_copy_only=False).astype(np.int64)
        _add_counts(counts, _counts(cutout_ok, masks[sl], present[sl], stamps[sl],
                                    cmasks[sl] if paired else None, cpresent[sl] if paired else None,
                                    ctrl[sl] if paired else None))
        pos += n
    if not tables:
        raise SeedsDataError(f"split {split!r}: no files to read")
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    return SeedsRows(table, stamps, ctrl, cpresent, counts)


def read_seeds_split(root: str | os.PathLike, split: str) -> SeedsRows:
    """All rows of one split of a seeds dataset, decoded (in file-path order, then row order)."""
    plan = _plan_split(root, split)
    if not plan.files:
        raise FileNotFoundError(f"no parquet files under {_split_dir(root, split)!r}")
    rows = _read_group(plan.root, split, plan.files, plan.ids)
    rows.counts[DUPLICATE_COUNT] = plan.duplicates
    return rows


def iter_seeds_rows(root: str | os.PathLike, split: str) -> Iterator[dict[str, Any]]:
    """Rows of one split as dicts: the metadata columns plus ``stamp`` (3, 64, 64) float32,
    ``band_mask`` and, in the paired variant, ``ctrl_stamp`` (None when null)."""
    plan = _plan_split(root, split)
    for f, ids in zip(plan.files, plan.ids):
        part = _read_group(plan.root, split, [f], [ids])
        names = part.columns.column_names
        cols = [part.columns.column(c).to_pylist() for c in names]
        for i in range(part.n):
            row = {c: v[i] for c, v in zip(names, cols)}
            row["stamp"] = part.stamps[i]
            if part.ctrl_stamps is not None:
                row["ctrl_stamp"] = part.ctrl_stamps[i] if part.ctrl_valid[i] else None
            yield row


# ----------------------------------------------------------------------------- parallel execution


def available_cores() -> int:
    """CPU cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where that does not exist)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _mp_context():
    # fork: workers start at once, without re-importing __main__ (a stage script); they only run
    # numpy / pyarrow / zlib code. Elsewhere (macOS, Windows) the platform's default.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _init_worker(counter, abort) -> None:
    global _TICK, _ABORT
    # Ctrl-C reaches the whole process group: the parent alone handles it (it sets ``abort``, which
    # stops the running tasks, and reports one line), so the workers print no tracebacks of their own
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def tick(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    _TICK, _ABORT = tick, abort


def _mark(exc: BaseException) -> BaseException:
    """Remember in the exception (it travels back pickled) whether it is a data error or a bug."""
    try:
        exc._dhs_user_error = _is_user_error(exc)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - some exception types take no attributes
        pass
    return exc


def _task(fn: Callable, args: tuple) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise _mark(exc)


class _Runner:
    """Runs tasks in this process (workers <= 1) or in a pool of worker processes, results in task order,
    progress on a tqdm bar (ticks from the tasks), stopping the other tasks at the first failure."""

    def __init__(self, workers: int) -> None:
        self.workers = int(workers)
        self.pool = None

    def __enter__(self) -> "_Runner":
        if self.workers > 1:
            pa.array([0])  # (pyarrow imports pandas on first use: once here, inherited by the forked workers)
            ctx = _mp_context()
            self.counter = ctx.Value("q", 0)
            self.abort = ctx.Value("b", 0)
            self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                            initargs=(self.counter, self.abort))
            self.pool.submit(int).result()  # start the workers now, before a progress bar starts its thread
        return self

    def __exit__(self, *exc) -> bool:
        if self.pool is not None:
            if exc[0] is not None:
                self.abort.value = 1
            self.pool.shutdown(wait=True, cancel_futures=True)
        return False

    def map(self, fn: Callable, arglist: Sequence[tuple], bar: tqdm) -> list:
        global _TICK
        if self.pool is None or len(arglist) <= 1:
            prev, _TICK = _TICK, bar.update
            try:
                return [fn(*a) for a in arglist]
            finally:
                _TICK = prev
        with self.counter.get_lock():
            self.counter.value = 0
        futures = [self.pool.submit(_task, fn, a) for a in arglist]
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
                if self.counter.value > bar.n:
                    bar.update(self.counter.value - bar.n)
                for fut in done:
                    if fut.exception() is not None:
                        raise fut.exception()
        except BaseException:
            self.abort.value = 1
            for fut in futures:
                fut.cancel()
            raise
        if self.counter.value > bar.n:
            bar.update(self.counter.value - bar.n)
        return [fut.result() for fut in futures]


# ----------------------------------------------------------------------------- conversion


def _plan_task(root: str, split: str, path: str) -> _FilePlan:
    plan = _plan_file(root, split, path)
    _progress(1)
    return plan


def _convert_group(root: str, split: str, files: list[_FilePlan], ids: list[np.ndarray], out_path: str,
                   row_group_size: int, decoder: str = "fast", use_threads: bool = False) -> dict[str, Any]:
    rows = _read_group(root, split, files, ids, decoder, use_threads)
    cols = {c: rows.columns.column(c) for c in rows.columns.column_names}
    try:
        write_stamp_file(out_path, cols, rows.stamps, rows.ctrl_stamps, row_group_size, ctrl_valid=rows.ctrl_valid)
    except ValueError as exc:
        raise SeedsDataError(f"{split}/{os.path.basename(out_path)} (from {[f.rel for f in files]}): {exc}") from exc
    return {"file": os.path.basename(out_path), "rows": rows.n, "sources": [f.rel for f in files],
            "counts": rows.counts}


def _is_conversion(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST_NAME))


def _inside(path: str, parent: str) -> bool:
    return os.path.commonpath([path, parent]) == parent


def _check_destination(src_root: str, dst_root: str, layout: SeedsLayout) -> None:
    if _inside(dst_root, src_root):
        top = os.path.relpath(dst_root, src_root).split(os.sep)[0]
        if (dst_root == src_root or top in SPLITS or top.startswith(f"{SPLIT_KEY}=")
                or any(_inside(dst_root, d) for d in layout.dirs.values())):
            raise SeedsDataError(f"{dst_root}: the output may not be the source, nor lie in or be named like one "
                                 f"of its split directories ({src_root})")
    if _inside(src_root, dst_root):
        raise SeedsDataError(f"{dst_root}: the output may not contain the source ({src_root})")
    if os.path.exists(dst_root):
        if not os.path.isdir(dst_root):
            raise FileExistsError(f"{dst_root!r} exists and is not a directory; refusing to replace it")
        if os.listdir(dst_root) and not _is_conversion(dst_root):
            raise FileExistsError(f"{dst_root!r} exists and is not a seeds conversion (no {MANIFEST_NAME}); "
                                  f"refusing to replace it: choose another output directory or remove it")


def _splits_to_convert(layout: SeedsLayout, ignore_splits: Sequence[str]) -> tuple[list[str], list[str]]:
    """(splits to convert, splits ignored); an unknown split holding files is an error unless ignored."""
    ignore = list(dict.fromkeys(str(s) for s in ignore_splits))
    absent = [s for s in ignore if s not in layout.dirs]
    if absent:
        raise SeedsDataError(f"{layout.root}: ignore_splits names {absent}, but there is no such split directory "
                             f"(found {sorted(layout.dirs)})")
    has_files = {s: bool(_parquet_files(d, first_only=True)) for s, d in layout.dirs.items()}
    unknown = sorted(s for s in layout.dirs if s not in SPLITS and s not in ignore and has_files[s])
    if unknown:
        dirs = ", ".join(layout.dirs[s] for s in unknown)
        key = f"{SPLIT_KEY}=" if layout.form == "hive" else ""
        raise SeedsDataError(
            f"{dirs}: unknown split name(s) {unknown}; expected {key}<split> with <split> one of "
            f"{', '.join(SPLITS)}. Rename the directory (names are not guessed), or leave it out explicitly "
            f"with ignore_splits={unknown} (--ignore-split {' --ignore-split '.join(unknown)})"
        )
    stray = [f for f in sorted(os.listdir(layout.root)) if f.endswith(".parquet") and _visible(f)
             and os.path.isfile(os.path.join(layout.root, f))]
    if stray:
        raise SeedsDataError(f"{layout.root}: parquet file(s) {stray[:5]} lie directly under the root, in no split; "
                             f"expected every file under a split directory ({EXPECTED_LAYOUT})")
    present = [s for s in SPLITS if s not in ignore and has_files.get(s)]
    for s in SPLITS:
        if s in layout.dirs and s not in ignore and not has_files[s]:
            log.warning("seeds conversion: %s holds no parquet files; the conversion has no %r split",
                        layout.dirs[s], s)
    if not present:
        raise SeedsDataError(f"{layout.root}: no split directory of {list(SPLITS)} holds parquet files "
                             f"(found {sorted(layout.dirs)}, ignored {ignore}); expected {EXPECTED_LAYOUT}")
    return present, sorted(s for s in ignore if s in layout.dirs)


def _default_workers(n_tasks: int, max_group_rows: int, paired: bool) -> int:
    """One process per available core plus one (each output file ends with an fsync, ~20% of a task's time,
    which the extra process fills), at most one per task, and no more than ~60% of the free memory holds."""
    cores = available_cores()
    workers = min(cores + 1 if n_tasks > cores else cores, max(1, n_tasks))
    mem = _available_memory()
    if mem is not None and max_group_rows:
        per_task = max_group_rows * len(NPZ_KEYS) * STAMP_SIZE * STAMP_SIZE * 4 * (2 if paired else 1) * 1.6
        workers = max(1, min(workers, int(0.6 * mem // per_task)))
    return workers


def convert_seeds_to_stamps(
    src_root: str | os.PathLike,
    dst_root: str | os.PathLike,
    files_per_split: int | None = None,
    *,
    row_group_size: int = 512,
    workers: int | None = None,
    progress: bool = True,
    ignore_splits: Sequence[str] = (),
    decoder: str = "fast",
) -> dict[str, Any]:
    """Convert a seeds dataset into our stamp layout ``<dst_root>/<split>/part-NNNNN.parquet``.

    The splits ``train`` / ``val`` / ``test`` present in the source are converted;
    another split directory holding files is an error (before any work) unless
    named in ``ignore_splits`` (then listed under ``ignored_splits``). With
    ``files_per_split=None`` each source file becomes one output file (memory:
    one source file's decoded stamps at a time per worker); with an integer k the
    split's files (in path order) are cut into min(k, n_files) contiguous groups,
    one output file each (memory: one group). Rows keep their source order.

    ``workers``: processes decoding output files in parallel (None: one per
    available core plus one to cover the writes' fsync waits, at most one per
    output file and as many as ~60% of the free memory holds); the output bytes
    do not depend on it. ``progress``: tqdm bars on
    stderr (files read, then rows converted). ``decoder``: ``"fast"``
    (:func:`decode_stamp_npz`) or ``"reference"`` (``np.load`` per blob, the old
    path; same bytes, ~3x slower, for checks and benchmarks).

    Everything but the blobs is checked first (layout, split names, every file's
    schema and metadata, unique sample ids), so most errors come before any
    output. The output is built in a sibling temporary directory and moved into
    place when complete; an existing ``dst_root`` is replaced only if it is empty
    or a previous conversion (it holds :data:`MANIFEST_NAME`). Returns the report
    also written to ``<dst_root>/seeds_conversion.json``: the source listing, the
    settings, and per split the output files and the row counts (rows,
    cutout_not_ok, r_only, missing_bands, nonfinite_stamp_cutout_ok = rows the
    index will drop as non-finite, duplicate_identity_rows, ...).
    """
    src_root = os.path.abspath(os.fspath(src_root))
    dst_root = os.path.abspath(os.fspath(dst_root))
    if files_per_split is not None and int(files_per_split) < 1:
        raise ValueError(f"files_per_split must be >= 1 or None, got {files_per_split}")
    if int(row_group_size) < 1:
        raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers must be >= 1 or None (every core), got {workers}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if isinstance(ignore_splits, str):
        ignore_splits = [ignore_splits]
    layout = _require_layout(src_root)
    _check_destination(src_root, dst_root, layout)
    present, ignored = _splits_to_convert(layout, ignore_splits)
    listing = source_listing(src_root)
    files = {s: layout.files(s) for s in present}
    n_files = sum(len(v) for v in files.values())

    # pass 1, metadata only: every file's schema, flags and sample ids (errors before any output)
    n_plan = int(workers) if workers is not None else min(available_cores(), max(1, n_files))
    with _Runner(min(n_plan, n_files)) as runner, \
            tqdm(total=n_files, desc="seeds: checking files", unit="file", disable=not progress,
                 file=sys.stderr, dynamic_ncols=True) as bar:
        flat = runner.map(_plan_task, [(src_root, s, f) for s in present for f in files[s]], bar)
    plans, k = [], 0
    for s in present:
        plans.append(_finish_split(src_root, s, flat[k:k + len(files[s])]))
        k += len(files[s])
    _check_unique(plans)

    tasks = []
    for plan in plans:
        n = len(plan.files)
        g_count = n if files_per_split is None else min(int(files_per_split), n)
        for g in range(g_count):
            a, b = g * n // g_count, (g + 1) * n // g_count
            tasks.append((plan.split, g, plan.files[a:b], plan.ids[a:b]))
    if workers is None:
        group_rows = max((sum(f.rows for f in t[2]) for t in tasks), default=0)
        n_conv = _default_workers(len(tasks), group_rows, any(p.files[0].paired for p in plans))
        log.info("seeds conversion: %d output file(s), %d row(s), %d worker process(es) (%d core(s) available)",
                 len(tasks), sum(p.rows for p in plans), n_conv, available_cores())
    else:
        n_conv = min(int(workers), len(tasks))

    # pass 2: decode and write, one task per output file
    with atomic_dir(dst_root, suffix=f".tmp-{os.getpid()}") as tmp:
        args = [(src_root, split, fl, ids, os.path.join(tmp, split, part_file_name(g)), int(row_group_size),
                 decoder, n_conv <= 1) for split, g, fl, ids in tasks]
        with _Runner(n_conv) as runner, \
                tqdm(total=sum(p.rows for p in plans), desc="seeds: converting", unit="row",
                     disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
            results = runner.map(_convert_group, args, bar)
        splits_report: dict[str, Any] = {}
        for (split, _, _, _), r in zip(tasks, results):
            rep = splits_report.setdefault(split, {"files": [], "counts": {}})
            rep["files"].append({k: r[k] for k in ("file", "rows", "sources")})
            _add_counts(rep["counts"], r["counts"])
        for plan in plans:
            splits_report[plan.split]["counts"][DUPLICATE_COUNT] = plan.duplicates
        report = {
            "format": "darkhaloscope seeds conversion",
            "version": CONVERSION_VERSION,
            "source_root": src_root,
            "source": listing,
            "settings": _settings(files_per_split, row_group_size, ignored),
            "splits": splits_report,
            "ignored_splits": ignored,
        }
        with open(os.path.join(tmp, MANIFEST_NAME), "w") as fh:
            json.dump(report, fh, indent=1, sort_keys=True)
    return report


def _settings(files_per_split: int | None, row_group_size: int, ignore_splits: Sequence[str] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"files_per_split": None if files_per_split is None else int(files_per_split),
                           "row_group_size": int(row_group_size)}
    if ignore_splits:  # (absent when empty, so conversions written before this key stay current)
        out["ignore_splits"] = sorted(set(str(s) for s in ignore_splits))
    return out


def conversion_is_current(src_root: str | os.PathLike, dst_root: str | os.PathLike,
                          files_per_split: int | None = None, row_group_size: int = 512, *,
                          ignore_splits: Sequence[str] = ()) -> bool:
    """True when ``dst_root`` holds a complete conversion of ``src_root``'s current files with these settings."""
    path = os.path.join(os.fspath(dst_root), MANIFEST_NAME)
    try:
        with open(path) as fh:
            rep = json.load(fh)
    except (OSError, ValueError):
        return False
    if isinstance(ignore_splits, str):
        ignore_splits = [ignore_splits]
    try:
        listing = source_listing(src_root)
    except (OSError, SeedsDataError):
        return False
    return (rep.get("version") == CONVERSION_VERSION
            and rep.get("source") == listing
            and rep.get("settings") == _settings(files_per_split, row_group_size, ignore_splits))


def default_cache_dir(root: str | os.PathLike) -> str:
    """Where :func:`resolve_stamp_root` converts ``root`` when no cache directory is given:
    ``$DHS_SEEDS_CACHE`` if set, else ``<root>_converted`` beside it."""
    env = os.environ.get("DHS_SEEDS_CACHE")
    return env if env else os.fspath(root).rstrip("/\\") + "_converted"


def lock_path(cache_dir: str | os.PathLike) -> str:
    """The lock file :func:`resolve_stamp_root` holds while converting into ``cache_dir``: a hidden
    ``.<name>.lock`` beside it, removed when the conversion is done."""
    cache = os.path.abspath(os.fspath(cache_dir)).rstrip(os.sep)
    return os.path.join(os.path.dirname(cache), f".{os.path.basename(cache)}.lock")


def resolve_stamp_root(root: str | os.PathLike, cache_dir: str | os.PathLike | None = None, **convert_kw) -> str:
    """The stamp root training and scoring should read.

    ``root`` in our layout is returned unchanged. ``root`` in the seeds layout
    (:func:`is_seeds_layout`) is converted once into ``cache_dir`` (default
    :func:`default_cache_dir`) and ``cache_dir`` is returned; a later call finds
    the conversion current (same source listing and settings, see
    :func:`conversion_is_current`) and skips it. ``convert_kw`` go to
    :func:`convert_seeds_to_stamps` (``files_per_split``, ``row_group_size``,
    ``workers``, ``progress``, ``ignore_splits``). Concurrent callers (e.g. every
    rank under torchrun) serialise on an exclusive lock on :func:`lock_path`
    (``.<cache name>.lock`` beside the cache, removed afterwards): the first
    converts, the others then find the conversion current.
    """
    if not is_seeds_layout(root):
        return os.fspath(root)
    cache = os.path.abspath(os.fspath(cache_dir) if cache_dir is not None else default_cache_dir(root))
    fps = convert_kw.get("files_per_split")
    rgs = convert_kw.get("row_group_size", 512)
    ign = convert_kw.get("ignore_splits", ())
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with _exclusive_lock(lock_path(cache)):
        if conversion_is_current(root, cache, fps, rgs, ignore_splits=ign):
            log.info("seeds data %s: using the conversion in %s", root, cache)
            return cache
        log.info("seeds data %s: converting into %s (once)", root, cache)
        report = convert_seeds_to_stamps(root, cache, **convert_kw)
    for split, rep in report["splits"].items():
        log.info("seeds conversion %s: %s", split, rep["counts"])
    return cache


class _exclusive_lock:
    """``flock`` on a lock file that is removed on release (a no-op where ``fcntl`` does not exist).

    The holder unlinks the file before unlocking it; a waiter that then gets the lock
    on the unlinked file sees that the path no longer names its file and starts
    over, so only one process at a time holds the lock on the file the path names.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> "_exclusive_lock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                st = os.fstat(fd)
                try:
                    cur = os.stat(self.path)
                except FileNotFoundError:
                    cur = None
            except BaseException:
                os.close(fd)
                raise
            if cur is not None and (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
                self.fd = fd
                return self
            os.close(fd)  # the previous holder removed it: lock the new one

    def __exit__(self, *exc) -> bool:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:  # pragma: no cover - removed by hand
                pass
            os.close(self.fd)  # releases the lock
            self.fd = None
        return False


# ----------------------------------------------------------------------------- CLI

#: error types reported as one line when this package raised them (as stages/_common.py does)
_USER_ERROR_TYPES = (ValueError, OSError, KeyError, RuntimeError, TypeError)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _is_user_error(exc: BaseException) -> bool:
    """A data problem with a message meant for the user (one line), not a bug (traceback)."""
    marked = getattr(exc, "_dhs_user_error", None)
    if marked is not None:  # judged in the worker process that raised it
        return bool(marked)
    if isinstance(exc, (SeedsDataError, FileNotFoundError, FileExistsError, PermissionError)):
        return True
    if not isinstance(exc, _USER_ERROR_TYPES):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR)


class _UsageError(Exception):
    pass


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2 (instead of argparse's usage block)
        raise _UsageError(message)


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def main(argv: Sequence[str] | None = None) -> int:
    ap = _ArgumentParser(
        prog="python -m darkhaloscope.stamps.seeds",
        description="Convert the seeds' Phase 4c parquet (region_split=<split>/ or <split>/ directories of "
                    "parquet files with stamp_npz blobs) into darkhaloscope's stamp layout "
                    "(<dst>/<split>/part-NNNNN.parquet). Errors: one line on stderr, exit status 1 "
                    "(2: usage); DHS_TRACEBACK=1 shows the traceback.",
    )
    ap.add_argument("src", help="seeds root holding region_split=train|val|test/ (or train|val|test/)")
    ap.add_argument("dst", help="output root (created; replaced only if it is a previous conversion)")
    ap.add_argument("--files-per-split", type=_positive, default=None,
                    help="output files per split (default: one per source file)")
    ap.add_argument("--row-group-size", type=_positive, default=512)
    ap.add_argument("--workers", type=_positive, default=None,
                    help=f"parallel decoding processes (default: one per available core plus one, here "
                         f"{available_cores() + 1})")
    ap.add_argument("--ignore-split", action="append", default=[], metavar="NAME",
                    help="leave out this split directory (e.g. one not named train/val/test); repeatable")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ap.add_argument("--force", action="store_true", help="convert even if dst is a current conversion")
    try:
        a = ap.parse_args(argv)
    except _UsageError as exc:
        print(f"seeds_format: error: {exc} (usage: {ap.prog} SRC DST [options]; see --help)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[seeds_format] %(message)s")
    try:
        if not a.force and conversion_is_current(a.src, a.dst, a.files_per_split, a.row_group_size,
                                                 ignore_splits=a.ignore_split):
            print(f"{a.dst} is already a current conversion of {a.src}")
            return 0
        rep = convert_seeds_to_stamps(a.src, a.dst, a.files_per_split, row_group_size=a.row_group_size,
                                      workers=a.workers, progress=not a.no_progress, ignore_splits=a.ignore_split)
    except KeyboardInterrupt:
        print("seeds_format: error: interrupted (nothing was written)", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("DHS_TRACEBACK") == "1" or not _is_user_error(exc):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else exc
        print(f"seeds_format: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 1
    print(json.dumps({s: r["counts"] for s, r in rep["splits"].items()}, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":  # pragma: no cover
    # run the package's copy of this module (the one darkhaloscope.stamps imported), so worker
    # processes, pickled tasks and exception classes all refer to darkhaloscope.stamps.seeds
    from darkhaloscope.stamps import seeds as _seeds

    sys.exit(_seeds.main())
