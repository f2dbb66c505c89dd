"""The on-disk storage contract of the image stamps (one parquet row per sample).

Layout: ``<root>/<split>/part-00000.parquet``, ``part-00001.parquet``, ... with
``split`` in train / val / test (no hive ``key=value`` directories).

Columns (others may exist; :func:`write_stamp_file` accepts arbitrary extra
1-D columns):

- ``stamp``: ``fixed_size_binary(49152)`` (:func:`stamp_arrow_type`): the
  little-endian float32 bytes of one (3, 64, 64) C-order array (band g, r, z; row;
  col), pixel values in nanomaggies. Stored UNCOMPRESSED, without dictionary or
  statistics, so reading a row group is one memcpy per row (a
  ``fixed_size_list<float32>`` column decodes ~7x slower: Parquet materialises
  12288 repetition/definition levels per row).
- ``ctrl_stamp``: same type, nullable; present in the paired-control variant (the
  same galaxy without the injection).

Files written before the binary layout hold ``fixed_size_list<float32>[12288]``
stamp columns (:func:`legacy_stamp_arrow_type`); every reader here
(:func:`stamps_from_arrow`, :func:`stamps_and_valid`, and through them the
loader) accepts both, so nothing has to be rewritten.
- ``sample_id`` int64 (unique), ``row_id`` int64 (galaxy id), ``is_control`` int8
  (1 = control / negative, 0 = injected / positive; label = 1 - is_control),
  ``cutout_ok`` int8, ``theta_e_arcsec`` float64 (0 for controls),
  ``theta_e_over_psf`` float64, ``arc_snr`` float64 (0 for controls),
  ``brickname`` string, ``impostor`` string (lens-impostor class, ``none`` for ordinary galaxies;
  absent from sets made before it existed), ``psfsize_r`` / ``psfdepth_r`` float64, ...

Columns listed in :data:`CONTRACT_TYPES` are cast (safely: an overflow or a
lossy conversion is an error naming the column) to their contract type when
written, so every file of every split has the same schema for them.
"""

from __future__ import annotations

import glob
import mmap
import hashlib
import os
from typing import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from darkhaloscope.constants import BANDS as STAMP_BANDS
from darkhaloscope.outputs import atomic_file
from darkhaloscope.constants import STAMP_SIZE

STAMP_COLUMN = "stamp"
CTRL_STAMP_COLUMN = "ctrl_stamp"
STAMP_COLUMNS: tuple[str, ...] = (STAMP_COLUMN, CTRL_STAMP_COLUMN)

#: Columns the writer insists on (the loader cannot work without them).
REQUIRED_COLUMNS: tuple[str, ...] = ("sample_id", "is_control", "cutout_ok")

#: Contract types of the known metadata columns (cast on write when present).
CONTRACT_TYPES: dict[str, pa.DataType] = {
    "sample_id": pa.int64(),
    "row_id": pa.int64(),
    "is_control": pa.int8(),
    "cutout_ok": pa.int8(),
    "theta_e_arcsec": pa.float64(),
    "theta_e_over_psf": pa.float64(),
    "arc_snr": pa.float64(),
    "brickname": pa.string(),
    "impostor": pa.string(),
    "psfsize_r": pa.float64(),
    "psfdepth_r": pa.float64(),
}

_PART_GLOB = "part-*.parquet"


#: Pixel dtype of the stamp bytes: float32, little-endian, whatever the host.
STAMP_DTYPE = np.dtype("<f4")


def stamp_arrow_type(n_channels: int = 3, size: int = STAMP_SIZE) -> pa.DataType:
    """Arrow type of a stamp column: ``fixed_size_binary(n_channels*size*size*4)``.

    Each value is the little-endian float32 bytes of one C-order
    (n_channels, size, size) array.
    """
    return pa.binary(int(n_channels) * int(size) * int(size) * STAMP_DTYPE.itemsize)


def legacy_stamp_arrow_type(n_channels: int = 3, size: int = STAMP_SIZE) -> pa.DataType:
    """The previous stamp column type, ``fixed_size_list<float32>[n_channels*size*size]`` (read only)."""
    return pa.list_(pa.float32(), int(n_channels) * int(size) * int(size))


def part_file_name(index: int) -> str:
    """Deterministic name of the ``index``-th part file of a split."""
    return f"part-{int(index):05d}.parquet"


# ----------------------------------------------------------------------------- writing


def _check_stamps(name: str, stamps: object) -> np.ndarray:
    if not isinstance(stamps, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(stamps).__name__}")
    if stamps.dtype != np.float32:
        raise ValueError(f"{name}: expected dtype float32 (nanomaggies), got {stamps.dtype}")
    want = (len(STAMP_BANDS), STAMP_SIZE, STAMP_SIZE)
    if stamps.ndim != 4 or tuple(stamps.shape[1:]) != want:
        raise ValueError(
            f"{name}: expected shape (N, {want[0]}, {want[1]}, {want[2]}) "
            f"(band {'/'.join(STAMP_BANDS)}, row, col), got {tuple(stamps.shape)}"
        )
    return np.ascontiguousarray(stamps)


def _stamp_array(stamps: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """(N, C, S, S) float32 -> ``fixed_size_binary(C*S*S*4)`` array (zero copy on little-endian hosts)."""
    n = stamps.shape[0]
    data = np.ascontiguousarray(stamps, dtype=STAMP_DTYPE)
    validity, null_count = None, 0
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        null_count = int(n - np.count_nonzero(valid))
        if null_count:
            validity = pa.array(valid, type=pa.bool_()).buffers()[1]
    return pa.FixedSizeBinaryArray.from_buffers(
        stamp_arrow_type(stamps.shape[1], stamps.shape[2]),
        n,
        [validity, pa.py_buffer(data)],
        null_count=null_count,
    )


def _column_array(name: str, values: object, n: int) -> pa.Array:
    try:
        if isinstance(values, pa.ChunkedArray):
            arr = values.combine_chunks()
        elif isinstance(values, pa.Array):
            arr = values
        else:
            if isinstance(values, np.ndarray) and values.ndim != 1:
                raise ValueError(f"column {name!r}: expected a 1-D array, got shape {values.shape}")
            arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise ValueError(f"column {name!r}: cannot convert to an Arrow array: {exc}") from exc
    if len(arr) != n:
        raise ValueError(f"column {name!r}: length {len(arr)} != number of stamps {n}")
    want = CONTRACT_TYPES.get(name)
    if want is not None and arr.type != want:
        try:
            arr = pc.cast(arr, want, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(
                f"column {name!r}: cannot cast {arr.type} to the contract type {want}: {exc}"
            ) from exc
    return arr


def _leaf_paths(name: str, typ: pa.DataType) -> list[str]:
    """Parquet leaf column paths of an Arrow field (compliant nested list naming)."""
    if pa.types.is_struct(typ):
        out: list[str] = []
        for i in range(typ.num_fields):
            child = typ.field(i)
            out += _leaf_paths(f"{name}.{child.name}", child.type)
        return out
    if pa.types.is_map(typ):
        return _leaf_paths(f"{name}.key_value.key", typ.key_type) + _leaf_paths(
            f"{name}.key_value.value", typ.item_type
        )
    if (
        pa.types.is_list(typ)
        or pa.types.is_large_list(typ)
        or pa.types.is_fixed_size_list(typ)
        or pa.types.is_list_view(typ)
        or pa.types.is_large_list_view(typ)
    ):
        return _leaf_paths(f"{name}.list.element", typ.value_type)
    return [name]


def _check_flag(name: str, arr: pa.Array) -> None:
    if arr.null_count:
        raise ValueError(f"column {name!r}: {arr.null_count} null values (must be 0 or 1)")
    vals = arr.to_numpy(zero_copy_only=False)
    bad = (vals != 0) & (vals != 1)
    if bad.any():
        raise ValueError(f"column {name!r}: values must be 0 or 1, found {np.unique(vals[bad])[:5]}")


def write_stamp_file(
    path: str | os.PathLike,
    columns: Mapping[str, object],
    stamps: np.ndarray,
    ctrl_stamps: np.ndarray | None = None,
    row_group_size: int = 512,
    *,
    ctrl_valid: np.ndarray | None = None,
) -> str:
    """Write one stamp parquet file atomically and deterministically.

    ``columns`` maps names to 1-D arrays (numpy, list or Arrow) of length N; they
    are written in the given order, then ``stamp`` and (if given) ``ctrl_stamp``.
    ``stamps`` (and ``ctrl_stamps``) are (N, 3, 64, 64) float32 nanomaggies.
    ``ctrl_valid`` (optional, bool (N,)) marks which ``ctrl_stamp`` rows are
    present; False rows are written as nulls.

    Stamp columns are stored uncompressed without dictionary or statistics, one
    data page per row group (so :class:`StampFile` maps them without decoding);
    the other columns zstd. The same inputs give a byte-identical file
    (no timestamps are written). The file is written to ``path + ".tmp"`` and
    renamed into place with :func:`os.replace`, so a crash never leaves a file at
    ``path`` that looks complete. Returns ``path`` as a string.
    """
    path = os.fspath(path)
    stamps = _check_stamps("stamps", stamps)
    n = stamps.shape[0]
    if ctrl_stamps is not None:
        ctrl_stamps = _check_stamps("ctrl_stamps", ctrl_stamps)
        if ctrl_stamps.shape != stamps.shape:
            raise ValueError(
                f"ctrl_stamps: shape {ctrl_stamps.shape} != stamps shape {stamps.shape}"
            )
    if ctrl_valid is not None:
        if ctrl_stamps is None:
            raise ValueError("ctrl_valid given without ctrl_stamps")
        ctrl_valid = np.asarray(ctrl_valid)
        if ctrl_valid.dtype != np.bool_ or ctrl_valid.shape != (n,):
            raise ValueError(
                f"ctrl_valid: expected a bool array of shape ({n},), "
                f"got {ctrl_valid.dtype} {ctrl_valid.shape}"
            )
    if int(row_group_size) < 1:
        raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
    for name in STAMP_COLUMNS:
        if name in columns:
            raise ValueError(f"column {name!r} is reserved: pass it as stamps / ctrl_stamps")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"write_stamp_file({path}): required columns missing: {missing}")

    names: list[str] = []
    arrays: list[pa.Array] = []
    for name, values in columns.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"column names must be non-empty strings, got {name!r}")
        arr = _column_array(name, values, n)
        names.append(name)
        arrays.append(arr)
    for flag in ("is_control", "cutout_ok"):
        _check_flag(flag, arrays[names.index(flag)])
    sid = arrays[names.index("sample_id")]
    if sid.null_count or len(pc.unique(sid)) != n:
        raise ValueError("column 'sample_id': values must be non-null and unique within a file")

    names.append(STAMP_COLUMN)
    arrays.append(_stamp_array(stamps))
    if ctrl_stamps is not None:
        names.append(CTRL_STAMP_COLUMN)
        arrays.append(_stamp_array(ctrl_stamps, ctrl_valid))
    table = pa.Table.from_arrays(arrays, names=names)

    # per-column options are keyed by Parquet leaf paths ("stamp.list.element")
    compression: dict[str, str] = {}
    meta_leaves: list[str] = []
    for fld in table.schema:
        leaves = _leaf_paths(fld.name, fld.type)
        for leaf in leaves:
            compression[leaf] = "none" if fld.name in STAMP_COLUMNS else "zstd"
        if fld.name not in STAMP_COLUMNS:
            meta_leaves += leaves
    with atomic_file(path) as tmp:
        pq.write_table(
            table,
            tmp,
            row_group_size=int(row_group_size),
            compression=compression,
            use_dictionary=meta_leaves,  # never dictionary-encode the stamp floats
            write_statistics=meta_leaves,  # nor compute statistics over them
            # one data page per column chunk, so a row group's stamps lie back to back in
            # the file and StampFile can map them without decoding (see _stamp_page_view)
            data_page_size=max(1 << 20, int(row_group_size) * int(stamps[0].nbytes if n else 0) + (1 << 16)),
            write_batch_size=max(1024, int(row_group_size)),
            store_schema=True,
        )
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    return path


# ----------------------------------------------------------------------------- reading


def _stamp_values(column: object, name: str) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Flat float32 pixel values of a stamp column, its null mask (or None), and the pixels per row.

    Accepts the binary layout (``fixed_size_binary``; also a variable-size binary
    column whose rows all have the same length) and the legacy list layout
    (``fixed_size_list<float32>`` or ``list<float32>``). The values of null rows are
    unspecified (NaN, zeros or whatever backs the slot).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not isinstance(column, pa.Array):
        raise ValueError(f"column {name!r}: expected an Arrow array, got {type(column).__name__}")
    n = len(column)
    nulls = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else None
    if isinstance(column, pa.FixedSizeBinaryArray):
        width = column.type.byte_width
        if width % STAMP_DTYPE.itemsize:
            raise ValueError(f"column {name!r}: {width} bytes per row is not a whole number of float32")
        size = width // STAMP_DTYPE.itemsize
        buf = column.buffers()[1]
        if n == 0 or buf is None:
            return np.zeros(0, np.float32), nulls, size
        flat = np.frombuffer(buf, dtype=STAMP_DTYPE, count=n * size, offset=column.offset * width)
        flat.flags.writeable = False  # a view of Arrow memory: never write into it
        return flat, nulls, size
    if isinstance(column, (pa.BinaryArray, pa.LargeBinaryArray)):
        offsets = np.frombuffer(
            column.buffers()[1], dtype=np.int32 if isinstance(column, pa.BinaryArray) else np.int64,
            count=n + 1, offset=column.offset * (4 if isinstance(column, pa.BinaryArray) else 8),
        )
        lengths = np.diff(offsets)
        if nulls is not None:
            raise ValueError(f"column {name!r}: {int(nulls.sum())} null rows in a variable-size binary column")
        if n and not np.all(lengths == lengths[0]):
            raise ValueError(f"column {name!r}: rows have different byte lengths")
        width = int(lengths[0]) if n else 0
        if width % STAMP_DTYPE.itemsize:
            raise ValueError(f"column {name!r}: {width} bytes per row is not a whole number of float32")
        size = width // STAMP_DTYPE.itemsize
        if n == 0:
            return np.zeros(0, np.float32), nulls, size
        flat = np.frombuffer(column.buffers()[2], dtype=STAMP_DTYPE, count=n * size, offset=int(offsets[0]))
        flat.flags.writeable = False
        return flat, nulls, size
    if isinstance(column, pa.FixedSizeListArray):
        size = column.type.list_size
        values = column.values.slice(column.offset * size, n * size)
    elif isinstance(column, (pa.ListArray, pa.LargeListArray)):
        offsets = column.offsets.to_numpy(zero_copy_only=False)
        lengths = np.diff(offsets)
        if nulls is not None:
            lengths = lengths[~nulls]
        if n and (lengths.size and not np.all(lengths == lengths[0])):
            raise ValueError(f"column {name!r}: rows have different list lengths")
        if nulls is not None:
            raise ValueError(f"column {name!r}: {int(nulls.sum())} null rows in a variable-size list")
        size = int(lengths[0]) if lengths.size else 0
        values = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    else:
        raise ValueError(
            f"column {name!r}: expected a fixed_size_binary stamp column (or the legacy "
            f"list<float32>), got {column.type}"
        )
    if values.type != pa.float32():
        raise ValueError(f"column {name!r}: expected float32 pixels, got {values.type}")
    flat = values.to_numpy(zero_copy_only=False)  # zero copy when the child has no nulls
    return flat, nulls, size


def stamps_from_arrow(
    array_or_column: object,
    n_channels: int = 3,
    size: int = STAMP_SIZE,
    *,
    name: str = STAMP_COLUMN,
) -> np.ndarray:
    """(N, n_channels, size, size) float32 view of a stamp column (no copy when possible).

    Accepts an Arrow FixedSizeBinaryArray (the current layout), a legacy
    (Fixed)ListArray of float32, or a ChunkedArray of either (chunks are combined).
    A null row is an error naming the column. The result may be read-only (it
    views the Arrow buffer): copy it before writing into it.
    """
    flat, nulls, list_size = _stamp_values(array_or_column, name)
    if nulls is not None and nulls.any():
        raise ValueError(f"column {name!r}: {int(nulls.sum())} null stamps")
    want = int(n_channels) * int(size) * int(size)
    n = len(array_or_column)
    if list_size != want and n:
        raise ValueError(
            f"column {name!r}: list size {list_size} != {n_channels}*{size}*{size} = {want} pixels"
        )
    return flat.reshape(n, int(n_channels), int(size), int(size))


def stamps_and_valid(
    array_or_column: object,
    n_channels: int = 3,
    size: int = STAMP_SIZE,
    *,
    name: str = STAMP_COLUMN,
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`stamps_from_arrow` but null rows are allowed.

    Returns (stamps, valid) where ``valid`` is a bool (N,) array; the pixels of
    invalid rows are unspecified.
    """
    flat, nulls, list_size = _stamp_values(array_or_column, name)
    want = int(n_channels) * int(size) * int(size)
    n = len(array_or_column)
    if list_size != want and n:
        raise ValueError(
            f"column {name!r}: list size {list_size} != {n_channels}*{size}*{size} = {want} pixels"
        )
    valid = np.ones(n, dtype=bool) if nulls is None else ~nulls
    return flat.reshape(n, int(n_channels), int(size), int(size)), valid


# ----------------------------------------------------------------------------- zero-copy row groups
#
# A stamp column written by write_stamp_file is, in each row group, ONE Parquet data
# page, PLAIN-encoded and uncompressed: its payload ends with the row group's stamps
# back to back (preceded only by a few bytes of definition levels). For such a
# column chunk the stamps are a read-only numpy view straight into the memory-mapped
# file: no decoding and no copy (Arrow's reader would memcpy every value). The page
# header is parsed (Thrift compact protocol) to verify the layout; anything else
# (legacy list columns, nulls, several pages, compression, dictionary) is read
# through Arrow, with the same result.

_T_STOP, _T_TRUE, _T_FALSE, _T_BYTE, _T_I16, _T_I32, _T_I64, _T_DOUBLE, _T_BINARY, _T_LIST, _T_SET, _T_MAP, \
    _T_STRUCT = range(13)
_PAGE_DATA, _PAGE_DATA_V2 = 0, 3
_ENC_PLAIN = 0


class _Thrift:
    """Just enough of Thrift's compact protocol to read a Parquet PageHeader."""

    def __init__(self, buf: bytes) -> None:
        self.b = buf
        self.i = 0

    def byte(self) -> int:
        v = self.b[self.i]
        self.i += 1
        return v

    def varint(self) -> int:
        out = shift = 0
        while True:
            c = self.byte()
            out |= (c & 0x7F) << shift
            if not c & 0x80:
                return out
            shift += 7
            if shift > 70:
                raise ValueError("bad varint")

    def zigzag(self) -> int:
        v = self.varint()
        return (v >> 1) ^ -(v & 1)

    def value(self, t: int):
        if t in (_T_TRUE, _T_FALSE):
            return t == _T_TRUE
        if t == _T_BYTE:
            return self.byte()
        if t in (_T_I16, _T_I32, _T_I64):
            return self.zigzag()
        if t == _T_DOUBLE:
            self.i += 8
            return None
        if t == _T_BINARY:
            n = self.varint()
            self.i += n
            return None
        if t in (_T_LIST, _T_SET):
            h = self.byte()
            n, et = h >> 4, h & 0x0F
            if n == 15:
                n = self.varint()
            for _ in range(n):
                if et in (_T_TRUE, _T_FALSE):
                    self.i += 1
                else:
                    self.value(et)
            return None
        if t == _T_MAP:
            n = self.varint()
            if n:
                kv = self.byte()
                for _ in range(n):
                    self.value(kv >> 4)
                    self.value(kv & 0x0F)
            return None
        if t == _T_STRUCT:
            return self.struct()
        raise ValueError(f"unknown thrift type {t}")

    def struct(self) -> dict[int, object]:
        out: dict[int, object] = {}
        fid = 0
        while True:
            h = self.byte()
            t = h & 0x0F
            if t == _T_STOP:
                return out
            delta = h >> 4
            fid = fid + delta if delta else self.zigzag()
            out[fid] = self.value(t)


def _stamp_page_view(mm: mmap.mmap, cc: "pq.ColumnChunkMetaData", n: int, width: int) -> np.ndarray | None:
    """Flat little-endian float32 view of a column chunk's n values of ``width`` bytes, or None."""
    if (cc.physical_type != "FIXED_LEN_BYTE_ARRAY" or cc.compression != "UNCOMPRESSED"
            or cc.has_dictionary_page or cc.num_values != n or n == 0
            or not set(cc.encodings) <= {"PLAIN", "RLE", "BIT_PACKED"}):
        return None
    start = cc.data_page_offset
    end = start + cc.total_compressed_size
    if start < 0 or end > len(mm):
        return None
    try:
        th = _Thrift(mm[start : min(end, start + 4096)])
        hdr = th.struct()
    except (ValueError, IndexError):
        return None
    page_type, usize, csize = hdr.get(1), hdr.get(2), hdr.get(3)
    if usize != csize or not isinstance(csize, int):
        return None
    if page_type == _PAGE_DATA:
        dph = hdr.get(5)
        if not isinstance(dph, dict) or dph.get(1) != n or dph.get(2) != _ENC_PLAIN:
            return None
    elif page_type == _PAGE_DATA_V2:
        dph = hdr.get(8)
        if not isinstance(dph, dict) or dph.get(1) != n or dph.get(2) != 0 or dph.get(4) != _ENC_PLAIN:
            return None
    else:
        return None
    nbytes = n * width
    payload_end = start + th.i + csize
    # one page holding all n values (its payload is the values plus a few bytes of levels:
    # a single null would take away `width` bytes), and nothing after it in the chunk
    if payload_end != end or csize < nbytes or csize - nbytes > 64 + n // 4:
        return None
    flat = np.frombuffer(mm, dtype=STAMP_DTYPE, count=nbytes // STAMP_DTYPE.itemsize, offset=end - nbytes)
    flat.flags.writeable = False
    return flat


class StampFile:
    """Row-group access to one stamp file: metadata through Arrow, stamp columns zero-copy where possible.

    ``read_row_group(i, columns)`` is :meth:`pyarrow.parquet.ParquetFile.read_row_group`;
    :meth:`stamps` returns a row group's stamps and their validity - a read-only view
    into the memory-mapped file when the column chunk has the layout
    :func:`write_stamp_file` gives it (one PLAIN, uncompressed page without nulls),
    else decoded by Arrow (any layout :func:`stamps_and_valid` accepts). The views
    keep the mapping alive; do not modify the file in place while they exist.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        try:
            self.pf = pq.ParquetFile(self.path, memory_map=True)
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{self.path}: not a readable stamp parquet file ({e})") from None
        self.metadata = self.pf.metadata
        self.schema_arrow = self.pf.schema_arrow
        self._mm: mmap.mmap | None = None
        self._leaf: dict[str, int] = {}
        rg0 = self.metadata.row_group(0) if self.metadata.num_row_groups else None
        if rg0 is not None:
            for j in range(rg0.num_columns):
                self._leaf.setdefault(rg0.column(j).path_in_schema, j)

    def read_row_group(self, i: int, columns: Sequence[str]) -> pa.Table:
        return self.pf.read_row_group(i, columns=list(columns), use_threads=False)

    def _map(self) -> mmap.mmap | None:
        if self._mm is None:
            try:
                with open(self.path, "rb") as fh:
                    self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                return None
        return self._mm

    def stamps(
        self, i: int, name: str = STAMP_COLUMN, n_channels: int = 3, size: int = STAMP_SIZE
    ) -> tuple[np.ndarray, np.ndarray]:
        """(stamps (N, n_channels, size, size) float32, valid (N,) bool) of row group ``i``."""
        n = self.metadata.row_group(i).num_rows
        width = int(n_channels) * int(size) * int(size) * STAMP_DTYPE.itemsize
        j = self._leaf.get(name)
        field = self.schema_arrow.field(name) if name in self.schema_arrow.names else None
        if (j is not None and field is not None and pa.types.is_fixed_size_binary(field.type)
                and field.type.byte_width == width):
            mm = self._map()
            flat = None if mm is None else _stamp_page_view(mm, self.metadata.row_group(i).column(j), n, width)
            if flat is not None:
                return flat.reshape(n, int(n_channels), int(size), int(size)), np.ones(n, dtype=bool)
        t = self.pf.read_row_group(i, columns=[name], use_threads=False)
        return stamps_and_valid(t.column(name), n_channels, size, name=name)

    def close(self) -> None:
        self.pf.close()
        self._mm = None  # the mapping closes when the last view of it is gone

    def __enter__(self) -> "StampFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def files_fingerprint(paths: Sequence[str | os.PathLike]) -> str:
    """Content identity of a set of parquet files without reading their stamps (hex sha256).

    Per file, in the given order: its last two path components (``<split>/part-NNNNN.parquet``,
    so a stamp set keeps its identity when its root moves), its size in bytes and its parquet
    footer, which holds every row group's row count and column-chunk offsets and the statistics
    of the metadata columns (sample_id min / max and the like). Any rewrite of a file with other
    rows changes it. Reads a few kB per file, so it suits 10^4 files.
    """
    h = hashlib.sha256()
    for path in paths:
        path = os.fspath(path)
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as fh:
                fh.seek(max(0, size - 8))
                tail = fh.read(8)
                if len(tail) != 8 or tail[4:] != b"PAR1":
                    raise ValueError(f"{path}: not a parquet file (no PAR1 footer); re-run the stage that wrote it")
                n = int.from_bytes(tail[:4], "little")
                if n + 8 > size:
                    raise ValueError(f"{path}: parquet footer of {n} bytes in a {size}-byte file: truncated")
                fh.seek(size - 8 - n)
                footer = fh.read(n)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: stamp file not found") from None
        h.update("/".join(path.replace(os.sep, "/").split("/")[-2:]).encode() + b"\0")
        h.update(size.to_bytes(8, "little") + footer)
    return h.hexdigest()


def list_stamp_files(root: str | os.PathLike, split: str) -> list[str]:
    """Sorted ``part-*.parquet`` files of ``<root>/<split>``; an error names the directory if none."""
    directory = os.path.join(os.fspath(root), split)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"stamp directory {directory!r} does not exist")
    files = sorted(glob.glob(os.path.join(directory, _PART_GLOB)))
    if not files:
        raise FileNotFoundError(f"no {_PART_GLOB} files in stamp directory {directory!r}")
    return files


def read_columns(files: Sequence[str] | str, columns: Iterable[str]) -> pa.Table:
    """Concatenated metadata columns of ``files`` (in file order), never the stamp bytes.

    A missing column is a ValueError naming the file and the column; asking for a
    stamp column is a ValueError (use :func:`stamps_from_arrow` on a row group).
    """
    if isinstance(files, (str, os.PathLike)):
        files = [os.fspath(files)]
    columns = list(columns)
    stamp_cols = [c for c in columns if c in STAMP_COLUMNS]
    if stamp_cols:
        raise ValueError(f"read_columns is for metadata only; got stamp columns {stamp_cols}")
    if not files:
        raise ValueError("read_columns: no files given")
    tables = []
    for f in files:
        schema = pq.read_schema(f)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise ValueError(f"{f}: required column(s) missing: {missing} (has {schema.names})")
        tables.append(pq.read_table(f, columns=columns))
    return pa.concat_tables(tables, promote_options="default")
