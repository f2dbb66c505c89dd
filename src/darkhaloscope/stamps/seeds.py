"""Reader and converter for the seeds' Phase 4c stamp parquet (``stamp_npz`` blobs).

The seeds' Spark job wrote its stamps as Hive-partitioned parquet::

    <root>/region_split=train/<any depth>/*.parquet
    <root>/region_split=val/...
    <root>/region_split=test/...

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

Decoding one blob costs ~1 ms (zip parsing plus inflating ~48 kB of noisy
floats), so the training loader never reads this format: it is converted ONCE
into our storage (:mod:`darkhaloscope.stamps.format`, read at memcpy speed) by
:func:`convert_seeds_to_stamps`, and :func:`resolve_stamp_root` - called by
training and scoring - does that conversion on demand into a cache directory
and returns the root to read. ``benchmarks/loader.py`` measures the difference.

Decisions (documented contract of the conversion):

- **Missing bands.** A band absent from a blob is filled with NaN and the row is
  kept, so :class:`darkhaloscope.model.loader.StampIndex` drops it under
  ``nonfinite_stamp`` and counts it (nothing is silently dropped). The column
  ``band_mask`` (int8; bit 0 = g, 1 = r, 2 = z; 7 = all present) records which
  bands were present, ``ctrl_band_mask`` the same for ``ctrl_stamp_npz``. A null
  blob is a row with all bands missing. Failed cutouts (``cutout_ok = 0``) are
  kept as they are and dropped by the index under ``cutout_not_ok``. The
  conversion report counts all of these per split.
- **Paired variant.** A null ``ctrl_stamp_npz`` becomes a null ``ctrl_stamp``
  (the index with ``require_ctrl`` counts it as ``missing_ctrl``).
- **sample_id** (int64 >= 0): a content hash of the row's identity, the values of
  :data:`ID_COLUMNS` present in the file (``brickname``, ``ra``, ``dec`` and
  ``is_control`` are required), together with the split:
  ``hash_int63("seeds-sample", split, *values)``. Rows of a split with identical
  identity values are told apart by their occurrence number k (in file-path
  order, then row order): the k-th repeat (k >= 1) gets
  ``hash_int63("seeds-sample-dup", base_id, k)``. So the id does not depend on how
  the rows are spread over files nor on the other splits, and it is the same
  whichever function reads it. Uniqueness over the whole conversion is checked.
  A source column ``sample_id`` is used as it is instead.
- **row_id** (galaxy id, shared by a positive and its paired control):
  ``hash_int63("seeds-galaxy", brickname, ra, dec)`` unless the source has one.
- **theta_e_over_psf** = ``theta_e_arcsec / psfsize_r`` (NaN where
  ``psfsize_r`` is not a positive finite number) unless the source has it.
- ``src_file`` (path relative to the source root) and ``src_row`` trace every
  row back to the seeds' data. All source metadata columns are carried as they
  are (the contract columns cast to their contract types).
- Float values are stored bit-exactly: float32 arrays are copied, other numeric
  dtypes are cast to float32.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from darkhaloscope.constants import BANDS as STAMP_BANDS
from darkhaloscope.constants import SPLITS, STAMP_SIZE
from darkhaloscope.hashing import hash_int63
from darkhaloscope.outputs import atomic_dir
from darkhaloscope.stamps.format import STAMP_COLUMNS, part_file_name, write_stamp_file

log = logging.getLogger(__name__)

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
#: written into the converted root; holds the source listing, settings and counts
MANIFEST_NAME = "seeds_conversion.json"
CONVERSION_VERSION = 1
_FOOTER_BYTES = 1 << 16


# ----------------------------------------------------------------------------- layout


def _split_dir(root: str | os.PathLike, split: str) -> str:
    return os.path.join(os.fspath(root), f"{SPLIT_KEY}={split}")


def seeds_splits(root: str | os.PathLike) -> list[str]:
    """Split names of the ``region_split=<name>`` directories under ``root`` (sorted)."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        return []
    prefix = f"{SPLIT_KEY}="
    return sorted(
        d[len(prefix):] for d in os.listdir(root)
        if d.startswith(prefix) and os.path.isdir(os.path.join(root, d))
    )


def list_seeds_files(root: str | os.PathLike, split: str) -> list[str]:
    """Sorted parquet files (any depth) of ``<root>/region_split=<split>``; hidden / ``_`` names skipped."""
    directory = _split_dir(root, split)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"seeds split directory {directory!r} does not exist")
    out = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        for f in filenames:
            if f.endswith(".parquet") and not f.startswith(("_", ".")):
                out.append(os.path.join(dirpath, f))
    return sorted(out, key=lambda p: os.path.relpath(p, directory))


def is_seeds_layout(root: str | os.PathLike) -> bool:
    """True when ``root`` holds ``region_split=<split>`` directories with parquet files (the seeds' layout)."""
    for split in seeds_splits(root):
        if list_seeds_files(root, split):
            return True
    return False


def source_listing(root: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """What the conversion of ``root`` depends on: per split, each file's relative path, size and footer hash.

    The footer (last 64 KiB) holds the parquet metadata, so rewriting a file
    changes its hash; reading it is cheap even for hundreds of GB of data.
    """
    root = os.fspath(root)
    out: dict[str, list[dict[str, Any]]] = {}
    for split in seeds_splits(root):
        rows = []
        for path in list_seeds_files(root, split):
            size = os.path.getsize(path)
            with open(path, "rb") as fh:
                fh.seek(max(0, size - _FOOTER_BYTES))
                digest = hashlib.sha256(fh.read()).hexdigest()
            rows.append({"file": os.path.relpath(path, root), "bytes": size, "footer_sha256": digest})
        out[split] = rows
    return out


# ----------------------------------------------------------------------------- decoding


def decode_stamp_npz(blob: bytes | None, size: int = STAMP_SIZE) -> tuple[np.ndarray, int]:
    """One ``stamp_npz`` blob -> ((3, size, size) float32 g/r/z, band mask).

    Missing bands (and a null blob) are NaN; the mask has bit b set when band b
    (0 = g, 1 = r, 2 = z) is present. A corrupt blob or a wrongly shaped array is
    a ValueError.
    """
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


def _decode_column(column: pa.ChunkedArray, path: str, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode a blob column: (stamps (N,3,64,64) f32, band masks (N,) int8, present (N,) bool)."""
    n = len(column)
    stamps = np.empty((n, len(NPZ_KEYS), STAMP_SIZE, STAMP_SIZE), np.float32)
    masks = np.zeros(n, np.int8)
    present = np.zeros(n, bool)
    i = 0
    for chunk in column.chunks:
        if not (pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type)
                or pa.types.is_fixed_size_binary(chunk.type)):
            raise ValueError(f"{path}: column {name!r} has type {chunk.type}, expected binary npz blobs")
        for v in chunk:
            blob = v.as_py()  # bytes, or None for a null
            try:
                stamps[i], m = decode_stamp_npz(blob)
            except ValueError as exc:
                raise ValueError(f"{path}: row {i} column {name!r}: {exc}") from exc
            masks[i] = m
            present[i] = blob is not None
            i += 1
    return stamps, masks, present


def _id_values(table: pa.Table, path: str) -> list[list[Any]]:
    missing = [c for c in REQUIRED_ID_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(
            f"{path}: columns {missing} are needed to derive sample_id (has {table.column_names})"
        )
    return [table.column(c).to_pylist() for c in ID_COLUMNS if c in table.column_names]


def _base_ids(split: str, table: pa.Table, path: str) -> np.ndarray:
    cols = _id_values(table, path)
    return np.fromiter(
        (hash_int63("seeds-sample", split, *(repr(c[i]) for c in cols)) for i in range(table.num_rows)),
        dtype=np.int64, count=table.num_rows,
    )


def _disambiguate(base: np.ndarray) -> np.ndarray:
    """The k-th repeat (k >= 1, in array order) of a base id gets hash("seeds-sample-dup", base, k)."""
    if base.size == 0:
        return base
    order = np.argsort(base, kind="stable")
    srt = base[order]
    new_run = np.r_[True, srt[1:] != srt[:-1]]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(srt.size), 0))
    occ = np.empty(base.size, np.int64)
    occ[order] = np.arange(srt.size) - run_start
    out = base.copy()
    for i in np.flatnonzero(occ):
        out[i] = hash_int63("seeds-sample-dup", int(base[i]), int(occ[i]))
    return out


@dataclass
class _SplitPlan:
    root: str
    split: str
    files: list[str]
    ids: list[np.ndarray]  # sample ids per file (None where the source has its own sample_id)


def _plan_split(root: str | os.PathLike, split: str) -> _SplitPlan:
    """Pass 1 over a split's metadata (no blobs): the sample ids of every file."""
    root = os.fspath(root)
    files = list_seeds_files(root, split)
    bases, sizes, own = [], [], []
    for path in files:
        names = pq.read_schema(path).names
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"{path}: required seeds column(s) {missing} missing (has {names})")
        if "sample_id" in names:
            t = pq.read_table(path, columns=["sample_id"])
            own.append(True)
            bases.append(t.column("sample_id").to_numpy(zero_copy_only=False).astype(np.int64))
        else:
            t = pq.read_table(path, columns=[c for c in ID_COLUMNS if c in names])
            own.append(False)
            bases.append(_base_ids(split, t, path))
        sizes.append(t.num_rows)
    derived = [b for b, o in zip(bases, own) if not o]
    ids_derived = iter(np.split(_disambiguate(np.concatenate(derived)), np.cumsum([len(b) for b in derived])[:-1])
                       if derived else [])
    ids = [b if o else next(ids_derived) for b, o in zip(bases, own)]
    return _SplitPlan(root, split, files, ids)


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


def _read_file(root: str, split: str, path: str, ids: np.ndarray) -> SeedsRows:
    """Read and decode one seeds file into :class:`SeedsRows` (sample ids from the split's plan)."""
    t = pq.read_table(path)
    names = t.column_names
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path}: required seeds column(s) {missing} missing (has {names})")
    clash = [c for c in STAMP_COLUMNS if c in names]
    if clash:
        raise ValueError(f"{path}: column(s) {clash} clash with our stamp columns")
    n = t.num_rows
    if len(ids) != n:
        raise RuntimeError(f"{path}: {n} rows, but {len(ids)} sample ids were planned: the file changed")
    for c in ("is_control", "cutout_ok"):
        if t.column(c).null_count:
            raise ValueError(f"{path}: column {c!r} has {t.column(c).null_count} null values")
    stamps, masks, present = _decode_column(t.column(NPZ_COLUMN), path, NPZ_COLUMN)
    ctrl = cmasks = cpresent = None
    if CTRL_NPZ_COLUMN in names:
        ctrl, cmasks, cpresent = _decode_column(t.column(CTRL_NPZ_COLUMN), path, CTRL_NPZ_COLUMN)

    meta = t.drop_columns([c for c in NPZ_COLUMNS if c in names])
    cols: dict[str, Any] = {}
    cols["sample_id"] = pa.array(ids, pa.int64())
    if "row_id" not in names:
        b, r, d = (t.column(c).to_pylist() for c in ("brickname", "ra", "dec"))
        cols["row_id"] = pa.array(
            [hash_int63("seeds-galaxy", repr(b[i]), repr(r[i]), repr(d[i])) for i in range(n)], pa.int64()
        )
    for c in meta.column_names:
        if c != "sample_id":
            cols[c] = meta.column(c).combine_chunks()
    if "theta_e_over_psf" not in names and "theta_e_arcsec" in names and "psfsize_r" in names:
        th = t.column("theta_e_arcsec").to_numpy(zero_copy_only=False).astype(np.float64)
        psf = t.column("psfsize_r").to_numpy(zero_copy_only=False).astype(np.float64)
        good = np.isfinite(psf) & (psf > 0)
        cols["theta_e_over_psf"] = np.where(good, th / np.where(good, psf, 1.0), np.nan)
    cols["band_mask"] = masks
    if ctrl is not None:
        cols["ctrl_band_mask"] = cmasks
    cols["src_file"] = pa.array([os.path.relpath(path, root)] * n, pa.string())
    cols["src_row"] = np.arange(n, dtype=np.int64)
    table = pa.table(cols)
    cutout_ok = t.column("cutout_ok").to_numpy(zero_copy_only=False).astype(np.int64)
    return SeedsRows(table, stamps, ctrl, cpresent, _counts(cutout_ok, masks, present, stamps, cmasks, cpresent, ctrl))


def _concat_rows(parts: Sequence[SeedsRows]) -> SeedsRows:
    if len(parts) == 1:
        return parts[0]
    table = pa.concat_tables([p.columns for p in parts], promote_options="permissive")
    paired = [p.ctrl_stamps is not None for p in parts]
    if any(paired) and not all(paired):
        raise ValueError("some files of the split have ctrl_stamp_npz and others do not")
    counts: dict[str, int] = {}
    for p in parts:
        for k, v in p.counts.items():
            counts[k] = counts.get(k, 0) + v
    return SeedsRows(
        table,
        np.concatenate([p.stamps for p in parts]),
        np.concatenate([p.ctrl_stamps for p in parts]) if all(paired) else None,
        np.concatenate([p.ctrl_valid for p in parts]) if all(paired) else None,
        counts,
    )


def read_seeds_split(root: str | os.PathLike, split: str) -> SeedsRows:
    """All rows of one split of a seeds dataset, decoded (in file-path order, then row order)."""
    plan = _plan_split(root, split)
    if not plan.files:
        raise FileNotFoundError(f"no parquet files under {_split_dir(root, split)!r}")
    return _concat_rows([_read_file(plan.root, split, f, ids) for f, ids in zip(plan.files, plan.ids)])


def iter_seeds_rows(root: str | os.PathLike, split: str) -> Iterator[dict[str, Any]]:
    """Rows of one split as dicts: the metadata columns plus ``stamp`` (3, 64, 64) float32,
    ``band_mask`` and, in the paired variant, ``ctrl_stamp`` (None when null)."""
    plan = _plan_split(root, split)
    for f, ids in zip(plan.files, plan.ids):
        part = _read_file(plan.root, split, f, ids)
        names = part.columns.column_names
        cols = [part.columns.column(c).to_pylist() for c in names]
        for i in range(part.n):
            row = {c: v[i] for c, v in zip(names, cols)}
            row["stamp"] = part.stamps[i]
            if part.ctrl_stamps is not None:
                row["ctrl_stamp"] = part.ctrl_stamps[i] if part.ctrl_valid[i] else None
            yield row


# ----------------------------------------------------------------------------- conversion


def _convert_group(root: str, split: str, files: list[str], ids: list[np.ndarray], out_path: str,
                   row_group_size: int) -> dict[str, Any]:
    rows = _concat_rows([_read_file(root, split, f, i) for f, i in zip(files, ids)])
    cols = {c: rows.columns.column(c) for c in rows.columns.column_names}
    write_stamp_file(out_path, cols, rows.stamps, rows.ctrl_stamps, row_group_size, ctrl_valid=rows.ctrl_valid)
    return {"file": os.path.basename(out_path), "rows": rows.n, "sources": [os.path.relpath(f, root) for f in files],
            "counts": rows.counts, "sample_ids": rows.columns.column("sample_id").to_numpy()}


def _is_conversion(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST_NAME))


def convert_seeds_to_stamps(
    src_root: str | os.PathLike,
    dst_root: str | os.PathLike,
    files_per_split: int | None = None,
    *,
    row_group_size: int = 512,
    workers: int = 1,
) -> dict[str, Any]:
    """Convert a seeds dataset into our stamp layout ``<dst_root>/<split>/part-NNNNN.parquet``.

    Splits ``train``/``val``/``test`` present in the source are converted (other
    ``region_split`` values are listed under ``ignored_splits``). With
    ``files_per_split=None`` each source file becomes one output file (memory:
    one source file's decoded stamps at a time per worker); with an integer k the
    split's files (in path order) are cut into min(k, n_files) contiguous groups,
    one output file each (memory: one group). Rows keep their source order.
    ``workers`` > 1 decodes groups in parallel processes (same output bytes).

    The output is built in a sibling temporary directory and moved into place
    when complete; an existing ``dst_root`` is replaced only if it is empty or a
    previous conversion (it holds :data:`MANIFEST_NAME`). Returns the report also
    written to ``<dst_root>/seeds_conversion.json``: the source listing, the
    settings, and per split the output files and the row counts (rows,
    cutout_not_ok, r_only, missing_bands, nonfinite_stamp_cutout_ok = rows the
    index will drop as non-finite, ...).
    """
    src_root = os.path.abspath(os.fspath(src_root))
    dst_root = os.path.abspath(os.fspath(dst_root))
    if files_per_split is not None and int(files_per_split) < 1:
        raise ValueError(f"files_per_split must be >= 1 or None, got {files_per_split}")
    if not is_seeds_layout(src_root):
        raise ValueError(f"{src_root!r} is not in the seeds layout (no {SPLIT_KEY}=<split>/ parquet files)")
    if os.path.exists(dst_root) and os.listdir(dst_root) and not _is_conversion(dst_root):
        raise FileExistsError(f"{dst_root!r} exists and is not a seeds conversion; refusing to replace it")
    listing = source_listing(src_root)
    present = [s for s in SPLITS if listing.get(s)]
    ignored = sorted(s for s in listing if s not in SPLITS)
    if ignored:
        log.warning("seeds conversion: ignoring %s=%s (not one of %s)", SPLIT_KEY, ignored, list(SPLITS))
    if not present:
        raise ValueError(f"{src_root!r}: no {SPLIT_KEY}= directory of {list(SPLITS)} holds parquet files "
                         f"(found {sorted(listing)})")

    tasks = []
    for split in present:
        plan = _plan_split(src_root, split)
        n = len(plan.files)
        k = n if files_per_split is None else min(int(files_per_split), n)
        for g in range(k):
            a, b = g * n // k, (g + 1) * n // k
            tasks.append((split, g, plan.files[a:b], plan.ids[a:b]))

    with atomic_dir(dst_root, suffix=f".tmp-{os.getpid()}") as tmp:
        args = [(src_root, split, files, ids, os.path.join(tmp, split, part_file_name(g)), int(row_group_size))
                for split, g, files, ids in tasks]
        if int(workers) > 1 and len(args) > 1:
            with ProcessPoolExecutor(max_workers=int(workers)) as ex:
                results = list(ex.map(_convert_group, *zip(*args)))
        else:
            results = [_convert_group(*a) for a in args]
        all_ids = np.concatenate([r.pop("sample_ids") for r in results]) if results else np.zeros(0, np.int64)
        uniq, cnt = np.unique(all_ids, return_counts=True)
        if (cnt > 1).any():
            raise ValueError(f"seeds conversion: duplicate sample_id values {uniq[cnt > 1][:5].tolist()}")
        splits_report: dict[str, Any] = {}
        for (split, _, _, _), r in zip(tasks, results):
            rep = splits_report.setdefault(split, {"files": [], "counts": {}})
            rep["files"].append({k: r[k] for k in ("file", "rows", "sources")})
            for key, v in r["counts"].items():
                rep["counts"][key] = rep["counts"].get(key, 0) + v
        report = {
            "format": "darkhaloscope seeds conversion",
            "version": CONVERSION_VERSION,
            "source_root": src_root,
            "source": listing,
            "settings": _settings(files_per_split, row_group_size),
            "splits": splits_report,
            "ignored_splits": ignored,
        }
        with open(os.path.join(tmp, MANIFEST_NAME), "w") as fh:
            json.dump(report, fh, indent=1, sort_keys=True)
    return report


def _settings(files_per_split: int | None, row_group_size: int) -> dict[str, Any]:
    return {"files_per_split": None if files_per_split is None else int(files_per_split),
            "row_group_size": int(row_group_size)}



def conversion_is_current(src_root: str | os.PathLike, dst_root: str | os.PathLike,
                          files_per_split: int | None = None, row_group_size: int = 512) -> bool:
    """True when ``dst_root`` holds a complete conversion of ``src_root``'s current files with these settings."""
    path = os.path.join(os.fspath(dst_root), MANIFEST_NAME)
    try:
        with open(path) as fh:
            rep = json.load(fh)
    except (OSError, ValueError):
        return False
    return (rep.get("version") == CONVERSION_VERSION
            and rep.get("source") == source_listing(src_root)
            and rep.get("settings") == _settings(files_per_split, row_group_size))


def default_cache_dir(root: str | os.PathLike) -> str:
    """Where :func:`resolve_stamp_root` converts ``root`` when no cache directory is given:
    ``$DHS_SEEDS_CACHE`` if set, else ``<root>_converted`` beside it."""
    env = os.environ.get("DHS_SEEDS_CACHE")
    return env if env else os.fspath(root).rstrip("/\\") + "_converted"


def resolve_stamp_root(root: str | os.PathLike, cache_dir: str | os.PathLike | None = None, **convert_kw) -> str:
    """The stamp root training and scoring should read.

    ``root`` in our layout is returned unchanged. ``root`` in the seeds layout
    (:func:`is_seeds_layout`) is converted once into ``cache_dir`` (default
    :func:`default_cache_dir`) and ``cache_dir`` is returned; a later call finds
    the conversion current (same source listing and settings, see
    :func:`conversion_is_current`) and skips it. ``convert_kw`` go to
    :func:`convert_seeds_to_stamps` (``files_per_split``, ``row_group_size``,
    ``workers``). Concurrent callers (e.g. every rank under torchrun) serialise
    on an exclusive lock on ``<cache_dir>.lock``: the first converts, the others
    then find the conversion current.
    """
    if not is_seeds_layout(root):
        return os.fspath(root)
    cache = os.path.abspath(os.fspath(cache_dir) if cache_dir is not None else default_cache_dir(root))
    fps = convert_kw.get("files_per_split")
    rgs = convert_kw.get("row_group_size", 512)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with _exclusive_lock(cache + ".lock"):
        if conversion_is_current(root, cache, fps, rgs):
            log.info("seeds data %s: using the conversion in %s", root, cache)
            return cache
        log.info("seeds data %s: converting into %s (once)", root, cache)
        report = convert_seeds_to_stamps(root, cache, **convert_kw)
    for split, rep in report["splits"].items():
        log.info("seeds conversion %s: %s", split, rep["counts"])
    return cache


class _exclusive_lock:
    """``flock`` on a lock file (a no-op where ``fcntl`` does not exist)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fh = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.fh = open(self.path, "a")
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> bool:
        if self.fh is not None:
            import fcntl

            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()
        return False


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m darkhaloscope.stamps.seeds",
        description="Convert the seeds' Phase 4c parquet (region_split=<split>/, stamp_npz blobs) "
                    "into darkhaloscope's stamp layout (<dst>/<split>/part-NNNNN.parquet).",
    )
    ap.add_argument("src", help="seeds root holding region_split=train|val|test/")
    ap.add_argument("dst", help="output root (created; replaced only if it is a previous conversion)")
    ap.add_argument("--files-per-split", type=int, default=None,
                    help="output files per split (default: one per source file)")
    ap.add_argument("--row-group-size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=1, help="parallel decoding processes")
    ap.add_argument("--force", action="store_true", help="convert even if dst is a current conversion")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[seeds_format] %(message)s")
    if not a.force and conversion_is_current(a.src, a.dst, a.files_per_split, a.row_group_size):
        print(f"{a.dst} is already a current conversion of {a.src}")
        return 0
    rep = convert_seeds_to_stamps(a.src, a.dst, a.files_per_split, row_group_size=a.row_group_size,
                                  workers=a.workers)
    print(json.dumps({s: r["counts"] for s, r in rep["splits"].items()}, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
