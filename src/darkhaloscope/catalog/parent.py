"""Phase 3 driver: stream the sweeps, apply the LRG cuts, de-duplicate, assign sky splits.

Two parts:

1. per sweep file (:func:`select_file`): read the header, then blocks of rows, converting only the
   columns the cuts need; keep the rows that pass every cut, with the columns the parent sample
   carries. Memory is a few blocks (``sweeps.CHUNK_BYTES``), whatever the file's size. Run either in
   this process, one file after the other, or as one Spark task per file (``spark.master``; ``local[*]``
   on one machine, a cluster URL under ``spark-submit``): ``selection.engine``.
2. on the (small) union of the kept rows, in file order: de-duplicate by id, then by position, give
   each row its HEALPix region and split, flag rows near a known lens.

Both engines run the same per-file function and collect its results in file order, so the output is
byte-identical whichever runs it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from darkhaloscope.catalog import selection
from darkhaloscope.constants import IMPOSTOR_CLASSES, NO_IMPOSTOR, SPLITS, nmgy_to_mag
from darkhaloscope.errors import SurveyError
from darkhaloscope.spark_session import spark_session
from darkhaloscope.survey import fs
from darkhaloscope.survey.known_lenses import (DEFAULT_LENSCAT_RECALL, lenscat_counts, match_within,
                                               read_known_lenses, read_lenscat, select_lenscat)
from darkhaloscope.survey.sweeps import (CHUNK_BYTES, OPTIONAL_COLUMNS, REQUIRED_COLUMNS, SweepFile, check_types,
                                         list_sweeps, strip_strings)

log = logging.getLogger(__name__)

# sweep columns carried into the parent sample (lower-cased)
CARRY = ("RA", "DEC", "TYPE", "BRICKNAME", "OBJID", "FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1",
         "MW_TRANSMISSION_G", "MW_TRANSMISSION_R", "MW_TRANSMISSION_Z", "MW_TRANSMISSION_W1", "EBV",
         "NOBS_G", "NOBS_R", "NOBS_Z", "PSFSIZE_G", "PSFSIZE_R", "PSFSIZE_Z",
         "PSFDEPTH_G", "PSFDEPTH_R", "PSFDEPTH_Z", "SHAPE_R", "SHAPE_E1", "SHAPE_E2", "SERSIC", "MASKBITS")
# read for the kept rows beside CARRY: the id namespace (selection.row_ids)
KEEP_EXTRA = ("RELEASE",)
DUP_RADIUS_ARCSEC = 0.2  # two catalogue rows closer than this are one galaxy
#: selection.engine auto runs on Spark when the sweeps hold more than this many bytes in all
AUTO_SPARK_BYTES = 8 * 2**30


class _ChunkColumns(Mapping):
    """The columns of one block of raw sweep records, converted on first access (upper-case names)."""

    def __init__(self, sweep: SweepFile, records: np.ndarray, names):
        self._sweep, self._rec, self._names, self._cache = sweep, records, tuple(names), {}

    def __getitem__(self, name):
        if name not in self._cache:
            if name not in self._names:
                raise KeyError(name)
            self._cache[name] = self._sweep.column(self._rec, name)  # strings stay bytes (stripped at the end)
        return self._cache[name]

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)


def select_file(path: str, variant: str, deredden: bool, variants: dict | None,
                size: int | None = None, chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Phase 3's per-file part: the rows of one sweep that pass every cut of ``variant``.

    Returns ``{"path", "n_rows", "counts": {step: rows left after it}, "rows": {column: array}}`` with
    the CARRY and KEEP_EXTRA columns of the kept rows, in file order. Every problem is a SurveyError
    naming the file (missing or non-scalar columns, truncation, a bad TYPE, an unknown RELEASE).
    """
    sw = SweepFile.open(path, size)
    sw.require(REQUIRED_COLUMNS)
    extra = selection.VARIANT_COLUMNS.get(variant, ())
    missing = [c for c in extra if c not in sw.columns]
    if missing:
        raise SurveyError(f"{path}: selection.variant {variant} needs column(s) {', '.join(missing)}, which this "
                          f"sweep lacks (DR9 and DR10 sweeps have them)")
    names = list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in sw.columns and c not in REQUIRED_COLUMNS]
    keep_cols = CARRY + KEEP_EXTRA
    parts: dict[str, list] = {c: [] for c in keep_cols}
    counts: OrderedDict | None = None
    for rec in sw.iter_records(names, chunk_bytes):
        cat = _ChunkColumns(sw, rec, names)
        check_types(path, cat["TYPE"])
        try:
            steps = selection.cut_steps(cat, variant, deredden, variants)
        except (KeyError, ValueError) as e:
            msg = e.args[0] if e.args else str(e)
            raise SurveyError(f"{path}: {msg}") from None
        keep = np.ones(len(rec), bool)
        chunk_counts = OrderedDict()
        for name, s in steps.items():
            keep &= s
            chunk_counts[name] = int(keep.sum())
        counts = chunk_counts if counts is None else OrderedDict((k, counts[k] + v) for k, v in chunk_counts.items())
        idx = np.flatnonzero(keep)
        for c in keep_cols:  # only the kept rows' fields are gathered and converted
            parts[c].append(cat[c] if len(idx) == len(rec) else sw.columns[c].convert(rec[sw.columns[c].name][idx]))
    rows = {}
    for c in keep_cols:
        arr = np.concatenate(parts[c])
        rows[c] = strip_strings(arr) if arr.dtype.kind == "S" else arr
    # the stable ids of the kept rows, here so that Spark spreads the hashing over the files
    rows["ROW_ID"] = selection.row_ids(rows["BRICKNAME"], rows["OBJID"].astype(np.int64), rows["RELEASE"])
    return {"path": path, "n_rows": sw.n_rows, "counts": dict(counts or {}), "rows": rows}


def _combine(results: list[dict], n_in: int) -> tuple[dict, dict]:
    """(kept rows of every file concatenated in file order, cumulative cut counts)."""
    steps = list(results[0]["counts"])
    counts = {"input": int(n_in)}
    for name in steps:
        counts[f"after_{name}"] = int(sum(r["counts"].get(name, 0) for r in results))
    cat = {}
    for c in results[0]["rows"]:
        arrs = [r["rows"][c] for r in results]
        if arrs[0].dtype.kind == "U" or any(a.dtype.kind == "U" for a in arrs):
            width = max(max(a.dtype.itemsize for a in arrs) // 4, 1)
            arrs = [a.astype(f"U{width}") for a in arrs]
        cat[c] = np.concatenate(arrs)
    return cat, counts


def close_duplicates(ra, dec, radius_arcsec: float) -> np.ndarray:
    """Rows (in row_id order) to drop as duplicates: within ``radius_arcsec`` of an earlier kept row
    (deg in, the lowest row_id of each close group is kept).

    The haversine BallTree decides, as it always did, but only over the rows that have any other row
    within twice the radius (a KD-tree on unit vectors finds those in C): at DR10 scale (~2e7 LRGs)
    querying every row through the haversine metric, and looping over every row's neighbours in
    Python, would take hours. A row with no neighbour within 2r has none within r, and neighbours
    within r of a candidate are candidates, so the result is the same.
    """
    n = len(ra)
    drop = np.zeros(n, bool)
    if n < 2:
        return drop
    from scipy.spatial import cKDTree

    lon, lat = np.radians(np.asarray(ra, np.float64)), np.radians(np.asarray(dec, np.float64))
    xyz = np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    r = np.radians(radius_arcsec / 3600.0)
    pairs = cKDTree(xyz).query_pairs(2.0 * np.sin(r), output_type="ndarray")  # chord of 2r
    if not len(pairs):
        return drop
    cand = np.unique(pairs.ravel())  # ascending: the row_id order is kept
    from sklearn.neighbors import BallTree

    pos = np.column_stack([lat[cand], lon[cand]])
    near = BallTree(pos, metric="haversine").query_radius(pos, r=r)
    sub = np.zeros(len(cand), bool)
    for i, nb in enumerate(near):  # keep the lowest row_id of each close group
        if not sub[i]:
            sub[nb[nb > i]] = True
    drop[cand[sub]] = True
    return drop


def choose_engine(engine: str, total_bytes: int) -> str:
    """``inprocess`` or ``spark`` for selection.engine (``auto``: Spark above AUTO_SPARK_BYTES of sweeps)."""
    if engine == "auto":
        return "spark" if total_bytes > AUTO_SPARK_BYTES else "inprocess"
    if engine not in ("inprocess", "spark"):
        raise ValueError(f"selection.engine must be auto, inprocess or spark, got {engine!r}")
    return engine


def select_all(files: list[tuple[str, int]], sel: dict, engine: str, spark: dict | None = None,
               chunk_bytes: int = CHUNK_BYTES) -> list[dict]:
    """:func:`select_file` of every ``(path, size)``, in file order, in this process or on Spark."""
    args = (sel["variant"], bool(sel["deredden"]), sel["variants"])
    if engine == "inprocess":
        return [select_file(p, *args, size=n, chunk_bytes=chunk_bytes) for p, n in files]
    return _select_spark(files, args, spark or {}, chunk_bytes)


def _select_spark(files: list[tuple[str, int]], args: tuple, sp: dict, chunk_bytes: int) -> list[dict]:
    """One Spark task per sweep file; a task's SurveyError comes back as a value and is raised here
    (the first failing file in file order), so the message is the same as in this process.

    The tasks run in parallel into the executors' storage (memory, spilling to disk), then their results
    come to the driver one file at a time in file order (``toLocalIterator``): the driver's JVM never
    holds more than one file's kept rows (a ``collect`` of all DR10 LRGs, a few GB, would need
    ``spark.driver.maxResultSize`` and driver memory to match); this process holds them all (it must:
    the de-duplication needs every kept row).
    """
    from pyspark import StorageLevel

    spark = spark_session(sp.get("master", "local[*]"), sp.get("driver_memory", "2g"), "darkhaloscope-parent")
    try:
        sc = spark.sparkContext

        def work(item):
            path, size = item
            # the executors' Python workers run in the directory the JVM started in, not necessarily
            # this process's current one: a local path goes to them absolute, its messages as given
            where = path if fs.is_remote(path) else os.path.abspath(path)
            try:
                return "ok", select_file(where, *args, size=size, chunk_bytes=chunk_bytes)
            except SurveyError as e:
                return "error", str(e).replace(where, path)

        done = sc.parallelize(files, max(1, len(files))).map(work).persist(StorageLevel.MEMORY_AND_DISK)
        done.count()  # every file, in parallel
        out = list(done.toLocalIterator())
        done.unpersist()
    finally:
        spark.stop()
    for status, value in out:
        if status == "error":
            raise SurveyError(value)
    return [value for _, value in out]


def impostor_column(root: str, spec: str, brickname: np.ndarray, objid: np.ndarray) -> np.ndarray:
    """The ``impostor`` class of each parent row from the side table ``spec`` under ``root``
    (survey.impostors: FITS with BRICKNAME, OBJID, IMPOSTOR); ``none`` for rows it does not list, and
    for every row when ``spec`` is "" or the survey has no such file (a real DR10 release: logged, and
    the parent summary's ``impostor_table`` says so). A malformed table is a SurveyError naming it."""
    out = np.full(len(brickname), NO_IMPOSTOR, dtype=object)
    if not spec:
        return out.astype(str)
    path = fs.join(root, spec)
    try:
        raw = fs.read_bytes(path)
    except FileNotFoundError:
        log.info("no impostor side table %s (survey.impostors): every parent galaxy's impostor is %r",
                 path, NO_IMPOSTOR)
        return out.astype(str)
    import io

    from astropy.io import fits

    try:
        with fits.open(io.BytesIO(raw), memmap=False) as hdul:
            tab = hdul[1].data
            names = {n.upper(): n for n in tab.columns.names}
            missing = [c for c in ("BRICKNAME", "OBJID", "IMPOSTOR") if c not in names]
            if missing:
                raise SurveyError(f"{path}: impostor side table lacks column(s) {', '.join(missing)} "
                                  f"(expected BRICKNAME, OBJID, IMPOSTOR)")
            bricks = np.char.strip(np.asarray(tab[names["BRICKNAME"]]).astype("U"))
            ids = np.asarray(tab[names["OBJID"]]).astype(np.int64)
            cls = np.char.strip(np.asarray(tab[names["IMPOSTOR"]]).astype("U"))
    except SurveyError:
        raise
    except (OSError, ValueError, TypeError, IndexError) as e:
        raise SurveyError(f"{path}: not a readable FITS impostor table ({type(e).__name__}: {e})") from None
    bad = sorted(set(cls.tolist()) - set(IMPOSTOR_CLASSES))
    if bad:
        raise SurveyError(f"{path}: column IMPOSTOR holds {bad}; expected classes {', '.join(IMPOSTOR_CLASSES)}")
    lookup = dict(zip(zip(bricks.tolist(), ids.tolist()), cls.tolist()))
    for i, key in enumerate(zip(np.asarray(brickname).astype(str).tolist(), np.asarray(objid).tolist())):
        c = lookup.get(key)
        if c is not None:
            out[i] = c
    return out.astype(str)


def build_parent(params: dict, engine: str | None = None,
                 chunk_bytes: int = CHUNK_BYTES) -> tuple[pa.Table, dict]:
    """Return (parent table sorted by row_id, summary dict of counts).

    ``engine`` overrides params' selection.engine (``auto``, ``inprocess`` or ``spark``); ``chunk_bytes``
    is the size of the row blocks read at a time (bytes; the output does not depend on it).
    """
    sv, sel = params["survey"], params["selection"]
    files = list_sweeps(sv["root"], sv["sweep_glob"])
    total = sum(n for _, n in files)
    chosen = choose_engine(engine or sel.get("engine", "auto"), total)
    t0 = time.monotonic()
    results = select_all(files, sel, chosen, params.get("spark"), chunk_bytes)
    n_in = sum(r["n_rows"] for r in results)
    log.info("selected %d of %d sweep rows in %d files (%.1f GB) in %.1f s (%s)",
             sum(len(r["rows"]["RA"]) for r in results), n_in, len(files), total / 1e9,
             time.monotonic() - t0, chosen)
    cat, counts = _combine(results, n_in)
    return finish_parent(cat, counts, len(files), params)


def finish_parent(cat: dict, counts: dict, n_files: int, params: dict) -> tuple[pa.Table, dict]:
    """Phase 3 on the kept rows of every file (``cat``, upper-case CARRY + KEEP_EXTRA columns in file
    order) and their cumulative cut ``counts``: de-duplicate, HEALPix splits, known lenses, summary."""
    sv, sel = params["survey"], params["selection"]
    variant = sel["variant"]

    # de-duplicate: identical (RELEASE, BRICKNAME, OBJID), then positions closer than DUP_RADIUS_ARCSEC
    idx = np.arange(len(cat["RA"]))
    rid = (cat["ROW_ID"] if "ROW_ID" in cat else
           selection.row_ids(cat["BRICKNAME"].astype(str), cat["OBJID"].astype(np.int64), cat["RELEASE"]))
    order = np.argsort(rid, kind="stable")
    idx, rid = idx[order], rid[order]
    _, first = np.unique(rid, return_index=True)
    n_dup_id = len(idx) - len(first)
    idx, rid = idx[np.sort(first)], rid[np.sort(first)]
    drop = close_duplicates(cat["RA"][idx], cat["DEC"][idx], DUP_RADIUS_ARCSEC)
    n_dup_pos = int(drop.sum())
    idx, rid = idx[~drop], rid[~drop]

    cols = {c.lower(): cat[c][idx] for c in CARRY}
    cols["type"] = cols["type"].astype(str)
    cols["brickname"] = cols["brickname"].astype(str)
    cols["objid"] = cols["objid"].astype(np.int64)
    for b in ("g", "r", "z", "w1"):
        cols[f"mag_{b}"] = nmgy_to_mag(cols[f"flux_{b}"])
    sp = sel["split"]
    hp = selection.healpix_index(cols["ra"], cols["dec"], sp["nside"])
    split = selection.region_split(hp, sp["nside"], sp["seed"], sp["fractions"])
    radius = params["manifest"]["known_lens_radius_arcsec"]
    lenscat_report = None
    if sv["known_lenses"] == "lenscat":
        # parent galaxies near ANY lenscat entry are excluded (probable candidates too); the graded subset
        # (survey.lenscat_recall) is what counts as known lenses downstream (recall)
        everything = read_lenscat()
        recall = select_lenscat(everything, sv.get("lenscat_recall"))
        near, sep = match_within(cols["ra"], cols["dec"], everything["ra"], everything["dec"], radius)
        entry_near, _ = match_within(everything["ra"], everything["dec"], cols["ra"], cols["dec"], radius)
        lenscat_report = {
            "source": "lenscat", "entries": lenscat_counts(everything),
            "recall": {"grading": list(sv.get("lenscat_recall", DEFAULT_LENSCAT_RECALL)["grading"]),
                       "type": list(sv.get("lenscat_recall", DEFAULT_LENSCAT_RECALL)["type"]),
                       "entries": int(len(recall["ra"]))},
            f"entries_with_parent_within_{radius}_arcsec": lenscat_counts(everything, entry_near),
        }
    else:
        known = read_known_lenses(sv["root"], sv["known_lenses"])
        near, sep = match_within(cols["ra"], cols["dec"], known["ra"], known["dec"], radius)
    impostor = impostor_column(sv["root"], sv["impostors"], cols["brickname"], cols["objid"])
    table = pa.table({"row_id": rid, **cols, "healpix": hp, "split": split,
                      "near_known_lens": near, "known_lens_sep_arcsec": np.minimum(sep, 1e6),
                      "impostor": impostor})
    summary = {
        "variant": variant,
        "deredden": bool(sel["deredden"]),
        "n_sweep_files": int(n_files),
        "cuts": counts,
        "duplicates_removed": {"same_brick_objid": int(n_dup_id), f"within_{DUP_RADIUS_ARCSEC}_arcsec": n_dup_pos},
        "n_parent": int(len(rid)),
        "splits": {s: int((split == s).sum()) for s in SPLITS},
        "healpix_regions": {s: int(len(np.unique(hp[split == s]))) for s in SPLITS},
        "near_known_lens": int(near.sum()),
        "impostor_table": (fs.join(sv["root"], sv["impostors"])
                           if sv["impostors"] and fs.exists(fs.join(sv["root"], sv["impostors"])) else None),
        "impostors": {s: {c: int(((split == s) & (impostor == c)).sum()) for c in IMPOSTOR_CLASSES} for s in SPLITS},
    }
    if lenscat_report is not None:
        summary["known_lenses"] = lenscat_report
    return table, summary
