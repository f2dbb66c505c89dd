"""Phase 4c at Spark scale: one task per brick group, deterministic output files.

The manifest rows are grouped by brick (a brick's coadds are read once). Each
result row is keyed by its output file ``(split, sample_id mod files_per_split)``
and the keyed rows are partitioned so that one Spark partition holds exactly one
output file; that partition sorts its rows by ``sample_id`` and writes the file.
The bytes written therefore depend only on the manifest and the params, never on
``spark.partitions``, the master or the number of executors.

The known lenses (split ``known``, :data:`~darkhaloscope.constants.KNOWN_SPLIT`) are
cut in the same job without injection and written as one unpaired file,
``known/part-00000.parquet``, labelled ``is_control = 0`` (they are lenses).
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import numpy as np

from darkhaloscope.constants import BANDS, KNOWN_SPLIT, SPLITS
from darkhaloscope.lensing.injector import Injector
from darkhaloscope.stamps.cutout import process_brick
from darkhaloscope.stamps.format import part_file_name, write_stamp_file

# columns written beside the stamps, in this order
OUTPUT_COLUMNS = (
    "sample_id", "pair_id", "row_id", "replicate", "split", "brickname", "objid", "ra", "dec",
    "is_control", "config_id", "theta_e_arcsec", "src_dmag", "src_reff_arcsec", "src_e", "shear",
    "shear_phi_deg", "gamma1", "gamma2", "lens_q", "lens_phi_deg", "src_phi_deg", "src_x_arcsec",
    "src_y_arcsec", "src_gr", "src_rz", "src_mag_r", "host_mag_r",
    "psfsize_g", "psfsize_r", "psfsize_z", "psfdepth_g", "psfdepth_r", "psfdepth_z",
    "psf_fwhm_used_g", "psf_fwhm_used_r", "psf_fwhm_used_z", "psf_fallback",
    "theta_e_over_psf", "magnification", "arc_snr", "arc_snr_int", "arc_flux_r",
    "x_offset_pix", "y_offset_pix", "cutout_ok", "fail_reason", "bad_pixel_frac",
)
INT_COLUMNS = {"sample_id": np.int64, "pair_id": np.int64, "row_id": np.int64, "replicate": np.int32,
               "objid": np.int64, "is_control": np.int8, "cutout_ok": np.int8}
STR_COLUMNS = {"split", "brickname", "config_id", "psf_fallback", "fail_reason"}
_SRC_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # .../src


def spark_session(master: str, driver_memory: str, app: str = "darkhaloscope-stamps"):
    """A SparkSession whose Python workers run this interpreter (so they import darkhaloscope)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    b = (SparkSession.builder.master(master).appName(app)
         .config("spark.driver.memory", driver_memory)
         .config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false")
         .config("spark.python.worker.reuse", "true")
         # workers import darkhaloscope from THIS checkout, not from wherever the package is installed
         # (an editable install points at another tree, e.g. in a dvc exp / test copy of the repository)
         .config("spark.executorEnv.PYTHONPATH", _SRC_DIR))
    if master.startswith("local"):
        b = b.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    return b.getOrCreate()


def write_file(out_dir: str, split: str, bucket: int, rows: list[dict], paired: bool) -> dict:
    """Write one output file from its rows (sorted by sample_id); return its counts."""
    rows = sorted(rows, key=lambda r: r["sample_id"])
    cols = {}
    for c in OUTPUT_COLUMNS:
        vals = [r[c] for r in rows]
        if c in STR_COLUMNS:
            cols[c] = np.array(vals, dtype=object).astype(str) if vals else np.array([], dtype=str)
        else:
            cols[c] = np.array(vals, dtype=INT_COLUMNS.get(c, np.float64))
    size = rows[0]["stamp"].shape[-1] if rows else 64
    stamps = (np.stack([r["stamp"] for r in rows]) if rows
              else np.zeros((0, len(BANDS), size, size), np.float32))
    ctrl = None
    if paired:
        ctrl = (np.stack([r["ctrl_stamp"] for r in rows]) if rows
                else np.zeros((0, len(BANDS), size, size), np.float32))
    path = os.path.join(out_dir, split, part_file_name(bucket))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_stamp_file(path, cols, stamps, ctrl)
    return {"split": split, "file": os.path.relpath(path, out_dir), "rows": len(rows),
            "cutout_ok": int(sum(r["cutout_ok"] for r in rows)),
            "fail_reasons": dict(Counter(r["fail_reason"].split(":")[0] for r in rows if not r["cutout_ok"])),
            "psf_fallback_rows": int(sum(1 for r in rows if r["psf_fallback"])),
            "nonfinite_stamps": int(sum(1 for r in rows if not np.isfinite(r["stamp"]).all())),
            # the first few full reasons of failures that are not a stamp over the brick edge (for the warning)
            "first_failures": list(dict.fromkeys(r["fail_reason"] for r in rows if not r["cutout_ok"]
                                                 and r["fail_reason"] != "off_brick_edge"))[:3]}


def failure_warnings(stats: list[dict]) -> list[str]:
    """WARN lines, one per split, for stamps lost to unreadable or missing coadds or non-finite
    pixels (a stamp over the brick edge is expected and not warned about), with the first reasons."""
    out = []
    for split in dict.fromkeys(s["split"] for s in stats):
        mine = [s for s in stats if s["split"] == split]
        rows = sum(s["rows"] for s in mine)
        lost = sum(v for s in mine for k, v in s["fail_reasons"].items() if k != "off_brick_edge")
        nonfinite = sum(s["nonfinite_stamps"] for s in mine)
        if lost or nonfinite:
            first = [f for s in mine for f in s.get("first_failures", [])][:3]
            out.append(f"WARN split {split}: {lost} of {rows} stamps failed (missing or unreadable coadds) and "
                       f"{nonfinite} have non-finite pixels; first reasons: {first or ['non-finite pixels']}")
    return out


def summarize_stats(stats: list[dict]) -> dict:
    """Per-split totals of :func:`write_file`'s per-file counts, as metrics/stamps.json reports them.

    Every failed cutout is counted under its reason (``off_brick_edge``, ``missing_coadd``,
    ``coadd_error``), every row whose PSF FWHM fell back to another band under
    ``psf_fallback_rows`` and every non-finite stamp under ``nonfinite_stamps``.
    """
    splits: dict[str, dict] = {}
    for s in stats:
        d = splits.setdefault(s["split"], {"rows": 0, "cutout_ok": 0, "fail_reasons": {}, "psf_fallback_rows": 0,
                                           "nonfinite_stamps": 0, "files": 0})
        d["rows"] += s["rows"]
        d["cutout_ok"] += s["cutout_ok"]
        d["psf_fallback_rows"] += s["psf_fallback_rows"]
        d["nonfinite_stamps"] += s["nonfinite_stamps"]
        d["files"] += 1
        for k, v in s["fail_reasons"].items():
            d["fail_reasons"][k] = d["fail_reasons"].get(k, 0) + v
    return {"splits": splits, "n_rows": sum(d["rows"] for d in splits.values()),
            "n_cutout_failed": sum(d["rows"] - d["cutout_ok"] for d in splits.values())}


def output_files(splits, files_per_split: int, paired: bool) -> list[tuple[str, int, bool]]:
    """``(split, bucket, paired)`` of every output file, in Spark partition order: ``files_per_split``
    files per split, except one unpaired file for the known lenses (:data:`KNOWN_SPLIT`)."""
    return [(s, b, paired and s != KNOWN_SPLIT) for s in splits
            for b in range(1 if s == KNOWN_SPLIT else files_per_split)]


def run_stamps(rows: list[dict], coadd_root: str, out_dir: str, params: dict,
               gallery_ids: frozenset = frozenset(), splits=SPLITS) -> tuple[list[dict], list[dict]]:
    """Run Phase 4c under Spark, writing into ``out_dir`` (the caller makes it atomic).

    ``rows`` are manifest-like dicts (see OUTPUT_COLUMNS); ``splits`` the output split dirs
    (:func:`output_files`; rows of :data:`KNOWN_SPLIT` are cut without injection and written
    with ``is_control = 0``). Returns (per-file counts, gallery rows with their clean cutouts).
    """
    inj, sp = params["inject"], params["spark"]
    paired = params["manifest"]["control_type"] == "paired"
    bands = tuple(params["survey"]["bands"])
    injector = Injector.from_params(inj, bands)  # travels to the tasks as its parameters
    files = output_files(splits, int(inj["files_per_split"]), paired)
    file_index = {(s, b): i for i, (s, b, _) in enumerate(files)}
    n_buckets = {s: b + 1 for s, b, _ in files}
    by_brick: dict[str, list] = {}
    for r in rows:
        by_brick.setdefault(r["brickname"], []).append(r)
    groups = sorted(by_brick.items())
    os.makedirs(out_dir, exist_ok=True)

    spark = spark_session(sp["master"], sp["driver_memory"])
    try:
        sc = spark.sparkContext
        rdd = sc.parallelize(groups, max(1, min(int(sp["partitions"]), len(groups))))

        def work(group):
            brick, brows = group
            for res in process_brick(brick, brows, coadd_root, inj, bands, gallery_ids, paired, injector):
                if res["split"] == KNOWN_SPLIT:
                    res["is_control"] = 0  # cut without injection, but they are lenses
                yield file_index[res["split"], int(res["sample_id"]) % n_buckets[res["split"]]], res

        def write_partition(index, items):
            items = list(items)
            gallery = [{k: v for k, v in r.items() if k in ("sample_id", "clean", "stamp", "config_id",
                                                            "theta_e_arcsec", "arc_snr", "split")}
                       for _, r in items if "clean" in r]
            split, bucket, file_paired = files[index]
            stats = write_file(out_dir, split, bucket, [r for _, r in items], file_paired)
            yield {"stats": stats, "gallery": gallery}

        results = (rdd.flatMap(work)
                   .partitionBy(len(files), lambda k: k)
                   .mapPartitionsWithIndex(write_partition)
                   .collect())
    finally:
        spark.stop()
    stats = sorted((r["stats"] for r in results), key=lambda s: s["file"])
    gallery = sorted((g for r in results for g in r["gallery"]), key=lambda g: g["sample_id"])
    return stats, gallery
