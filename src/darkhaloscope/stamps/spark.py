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

Stopping: Ctrl-C (SIGINT) during the job cancels it and raises :class:`StampsInterrupted`;
a full disk (ENOSPC, in the driver or arriving from an executor inside a Py4J / Spark
exception) raises :class:`DiskFullError` naming the file being written. Both are one-line
errors for the stage script (``stages/_common.py``); the caller's ``atomic_dir`` discards
the unfinished output. Spark's JVM logs only errors that are not task failures (the
driver reports those itself), and py4j's connection chatter is silenced.
"""

from __future__ import annotations

import copy
import errno
import os
import re
import signal
import threading
from collections import Counter

import numpy as np

from darkhaloscope.constants import BANDS, IMPOSTOR_CLASSES, KNOWN_SPLIT, SPLITS
from darkhaloscope.errors import SurveyError
from darkhaloscope.lensing.injector import Injector
from darkhaloscope.spark_session import spark_session
from darkhaloscope.stamps.coadd_cache import CoaddSource
from darkhaloscope.stamps.cutout import REJECTED, process_brick
from darkhaloscope.stamps.format import part_file_name, write_stamp_file
from darkhaloscope.survey.fs import is_remote

# columns written beside the stamps, in this order
OUTPUT_COLUMNS = (
    "sample_id", "pair_id", "row_id", "replicate", "split", "brickname", "objid", "ra", "dec",
    "is_control", "config_id", "impostor", "theta_e_arcsec", "src_dmag", "src_reff_arcsec", "src_e", "shear",
    "shear_phi_deg", "gamma1", "gamma2", "lens_q", "lens_phi_deg", "src_phi_deg", "src_x_arcsec",
    "src_y_arcsec", "src_gr", "src_rz", "src_mag_r", "host_mag_r",
    "psfsize_g", "psfsize_r", "psfsize_z", "psfdepth_g", "psfdepth_r", "psfdepth_z",
    "psf_fwhm_used_g", "psf_fwhm_used_r", "psf_fwhm_used_z", "psf_fallback",
    "theta_e_over_psf", "magnification", "arc_snr", "arc_snr_int", "arc_flux_r",
    "source_model", "source_ident",
    "x_offset_pix", "y_offset_pix", "cutout_ok", "fail_reason", "bad_pixel_frac",
)
INT_COLUMNS = {"sample_id": np.int64, "pair_id": np.int64, "row_id": np.int64, "replicate": np.int32,
               "objid": np.int64, "is_control": np.int8, "cutout_ok": np.int8, "source_ident": np.int64}
STR_COLUMNS = {"split", "brickname", "config_id", "impostor", "psf_fallback", "fail_reason", "source_model"}
#: failure reasons that are expected, not losses: a stamp over the brick edge, an injection its cuts reject
EXPECTED_FAILS = ("off_brick_edge", REJECTED)
#: the injected population's columns whose quantiles metrics/stamps.json reports per split, and the quantiles
POPULATION_COLUMNS = ("arc_snr", "magnification", "theta_e_over_psf")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
class StampsInterrupted(RuntimeError):
    """Ctrl-C / SIGINT stopped stage ``stamps``; the message says that no output was written."""

    exit_status = 130  # stages/_common.run exits with it, as for a plain Ctrl-C (128 + SIGINT)


class DiskFullError(OSError):
    """No space left on a disk the stage writes to; the message names the file and the fix.

    ``errno`` is ENOSPC; ``path`` the file being written (None when Spark's own scratch space filled up).
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.errno = errno.ENOSPC
        self.path = path


def interrupted_message(out_dir: str) -> str:
    return (f"interrupted (Ctrl-C / SIGINT): no output written (the Spark job was cancelled; the unfinished "
            f"stamps in {out_dir} are discarded)")


_ENOSPC_PATH = re.compile(r"\[Errno 28\] No space left on device: '([^']+)'")


def disk_full(exc: BaseException) -> tuple[bool, str | None]:
    """(True, path or None) when ``exc`` - or an exception it wraps, or an executor's traceback in its
    text (a Py4J / Spark exception) - is ENOSPC; (False, None) otherwise."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True, getattr(e, "path", None) or e.filename
        e = e.__cause__ or e.__context__
    text = str(exc)
    m = _ENOSPC_PATH.search(text)
    if m:
        return True, m.group(1)
    if "No space left on device" in text or "[Errno 28]" in text:
        return True, None
    return False, None


def disk_full_error(path: str | None, out_dir: str) -> DiskFullError:
    tail = f"no output written (the unfinished stamps in {out_dir} are discarded)"
    if path:
        return DiskFullError(f"disk full writing {path} (no space left on device): free space on that disk or move "
                             f"data/ to a disk with room, then re-run stage stamps; {tail}", path)
    return DiskFullError("disk full while Spark ran the job (no space left on device): free space where the stage "
                         f"writes ({out_dir}) and in Spark's scratch space (spark.local.dir, default /tmp; "
                         f"SPARK_LOCAL_DIRS moves it), then re-run stage stamps; {tail}")


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
            "negatives": int(sum(1 for r in rows if r["cutout_ok"] and r["is_control"])),
            "impostors": dict(Counter(r.get("impostor", "none") for r in rows if r["cutout_ok"] and r["is_control"]
                                      and r.get("impostor", "none") != "none")),
            # the injected population's values (the ok injected rows), for its quantiles in metrics/stamps.json
            "population": {c: [float(r[c]) for r in rows if r["cutout_ok"] and not r["is_control"]]
                           for c in POPULATION_COLUMNS},
            # the first few full reasons of failures that are not a stamp over the brick edge (for the warning)
            "first_failures": list(dict.fromkeys(r["fail_reason"] for r in rows if not r["cutout_ok"]
                                                 and r["fail_reason"] not in EXPECTED_FAILS))[:3]}


def split_failures(stats: list[dict]) -> list[dict]:
    """Per split (in ``stats`` order): ``split``, ``rows``, ``lost`` (stamps failed for a missing or
    unreadable coadd: every failure reason but ``off_brick_edge``, which is expected), ``nonfinite``
    (stamps with non-finite pixels), ``frac`` = (lost + nonfinite) / rows (0 for an empty split) and
    ``first`` (the first few full failure reasons)."""
    out = []
    for split in dict.fromkeys(s["split"] for s in stats):
        mine = [s for s in stats if s["split"] == split]
        rows = sum(s["rows"] for s in mine)
        lost = sum(v for s in mine for k, v in s["fail_reasons"].items() if k not in EXPECTED_FAILS)
        nonfinite = sum(s["nonfinite_stamps"] for s in mine)
        first = [f for s in mine for f in s.get("first_failures", [])][:3]
        out.append({"split": split, "rows": rows, "lost": lost, "nonfinite": nonfinite,
                    "frac": (lost + nonfinite) / rows if rows else 0.0, "first": first or ["non-finite pixels"]})
    return out


def failure_warnings(stats: list[dict]) -> list[str]:
    """WARN lines, one per split, for stamps lost to unreadable or missing coadds or non-finite
    pixels (a stamp over the brick edge is expected and not warned about), with the first reasons."""
    return [f"WARN split {f['split']}: {f['lost']} of {f['rows']} stamps failed (missing or unreadable coadds) and "
            f"{f['nonfinite']} have non-finite pixels; first reasons: {f['first']}"
            for f in split_failures(stats) if f["lost"] or f["nonfinite"]]


def too_many_failures(stats: list[dict], max_failed_frac: float) -> str | None:
    """None, or the one-line message for the splits where more than ``max_failed_frac`` (params
    ``inject.max_failed_frac``, a fraction of the split's rows) of the stamps failed: each such split
    with its count and fraction, and the first reasons of the first one."""
    bad = [f for f in split_failures(stats) if f["frac"] > float(max_failed_frac)]
    if not bad:
        return None
    splits = "; ".join(f"split {f['split']}: {f['lost'] + f['nonfinite']} of {f['rows']} stamps failed "
                       f"({f['frac']:.0%} of its rows: {f['lost']} missing or unreadable coadds, {f['nonfinite']} "
                       f"non-finite)" for f in bad)
    return (f"{splits}, more than inject.max_failed_frac {float(max_failed_frac):g} allows; first reasons: "
            f"{bad[0]['first']}. Fix the coadds (stage coadds, metrics/coadds.json) or raise inject.max_failed_frac "
            f"in params.yaml; no output written")


def population_quantiles(values) -> dict:
    """{"n", "q05", "q25", "q50", "q75", "q95"} of the finite ``values`` (None each when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    out: dict = {"n": len(v)}
    for q in QUANTILES:
        out[f"q{round(100 * q):02d}"] = float(np.quantile(v, q)) if len(v) else None
    return out


def summarize_stats(stats: list[dict]) -> dict:
    """Per-split totals of :func:`write_file`'s per-file counts, as metrics/stamps.json reports them.

    Every failed cutout is counted under its reason (``off_brick_edge``, ``missing_coadd``,
    ``coadd_error``), every row whose PSF FWHM fell back to another band under
    ``psf_fallback_rows`` and every non-finite stamp under ``nonfinite_stamps``. Per split also the
    ok negatives (``negatives``: controls and evaluation negatives, the impostors among them by class)
    and the quantiles of the injected population's :data:`POPULATION_COLUMNS` (peak arc S/N per
    pixel, total magnification, theta_E / PSF FWHM) over its ok injected rows.
    """
    splits: dict[str, dict] = {}
    values: dict[str, dict] = {}
    for s in stats:
        d = splits.setdefault(s["split"], {"rows": 0, "cutout_ok": 0, "fail_reasons": {}, "psf_fallback_rows": 0,
                                           "nonfinite_stamps": 0, "files": 0, "negatives": 0, "impostors": {}})
        d["negatives"] += s.get("negatives", 0)
        for k, v in s.get("impostors", {}).items():
            d["impostors"][k] = d["impostors"].get(k, 0) + v
        for c, v in s.get("population", {}).items():
            values.setdefault(s["split"], {}).setdefault(c, []).extend(v)
        d["rows"] += s["rows"]
        d["cutout_ok"] += s["cutout_ok"]
        d["psf_fallback_rows"] += s["psf_fallback_rows"]
        d["nonfinite_stamps"] += s["nonfinite_stamps"]
        d["files"] += 1
        for k, v in s["fail_reasons"].items():
            d["fail_reasons"][k] = d["fail_reasons"].get(k, 0) + v
    for split, d in splits.items():
        d["impostors"] = {c: d["impostors"].get(c, 0) for c in IMPOSTOR_CLASSES}
        d["population_quantiles"] = {c: population_quantiles(values.get(split, {}).get(c, []))
                                     for c in POPULATION_COLUMNS}
    return {"splits": splits, "n_rows": sum(d["rows"] for d in splits.values()),
            "n_cutout_failed": sum(d["rows"] - d["cutout_ok"] for d in splits.values())}


def _cancel(spark) -> None:
    """Cancel the running Spark jobs after a Ctrl-C. Further Ctrl-Cs are ignored until the caller
    has stopped Spark and restored its SIGINT handler (a cleanup cut short could leave workers behind)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _silence_jvm(spark)
    try:
        spark.sparkContext.cancelAllJobs()
    except Exception:  # the JVM may be gone already; spark.stop() follows either way
        pass


def _silence_jvm(spark) -> None:
    """No more JVM log lines: the job has failed or was cancelled, the driver reports why, and the
    shutdown of tasks still running logs errors of its own (e.g. missing broadcast blocks)."""
    try:
        spark.sparkContext.setLogLevel("OFF")
    except Exception:
        pass


def output_files(splits, files_per_split: int, paired: bool) -> list[tuple[str, int, bool]]:
    """``(split, bucket, paired)`` of every output file, in Spark partition order: ``files_per_split``
    files per split, except one unpaired file for the known lenses (:data:`KNOWN_SPLIT`)."""
    return [(s, b, paired and s != KNOWN_SPLIT) for s in splits
            for b in range(1 if s == KNOWN_SPLIT else files_per_split)]


def _absolute_root(coadd_root):
    """``(source for the tasks, root as given, root as the tasks see it)`` of a coadd directory or a
    :class:`~darkhaloscope.stamps.coadd_cache.CoaddSource` (a copy with its local root absolute)."""
    given = coadd_root.root if isinstance(coadd_root, CoaddSource) else str(coadd_root)
    local = given if is_remote(given) else os.path.abspath(given)
    if isinstance(coadd_root, CoaddSource):
        coadd_root = copy.copy(coadd_root)
        coadd_root.root = local
        return coadd_root, given, local
    return local, given, local


def run_stamps(rows: list[dict], coadd_root, out_dir: str, params: dict,
               gallery_ids: frozenset = frozenset(), splits=SPLITS) -> tuple[list[dict], list[dict]]:
    """Run Phase 4c under Spark, writing into ``out_dir`` (the caller makes it atomic).

    ``coadd_root``: the coadd directory or a :class:`~darkhaloscope.stamps.coadd_cache.CoaddSource`
    (:func:`~darkhaloscope.stamps.pipeline.coadd_source`).
    ``rows`` are manifest-like dicts (see OUTPUT_COLUMNS); ``splits`` the output split dirs
    (:func:`output_files`; rows of :data:`KNOWN_SPLIT` are cut without injection and written
    with ``is_control = 0``). Returns (per-file counts, gallery rows with their clean cutouts).
    """
    inj, sp = params["inject"], params["spark"]
    # the executors' Python workers run in the directory the JVM started in, which need not be this
    # process's current one (a JVM outlives spark.stop() and serves the next session): local paths go
    # to them absolute; messages, fail_reason included, keep the caller's spelling (the stamps' bytes
    # do not depend on where the checkout is)
    coadd_root, given_root, task_root = _absolute_root(coadd_root)
    write_dir = os.path.abspath(out_dir)
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

    previous_sigint = signal.getsignal(signal.SIGINT)
    main_thread = threading.current_thread() is threading.main_thread()
    spark = spark_session(sp["master"], sp["driver_memory"], "darkhaloscope-stamps")
    interrupted: list[int] = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    if main_thread:
        # pyspark's own SIGINT handler calls into the JVM from inside the interrupted py4j call (a
        # reentrant call that fails with tracebacks); a plain KeyboardInterrupt instead, remembered,
        # because py4j's clean-up of the interrupted call may replace it by a Py4JError of its own;
        # the job is cancelled below on a fresh connection
        signal.signal(signal.SIGINT, on_sigint)
    try:
        sc = spark.sparkContext
        rdd = sc.parallelize(groups, max(1, min(int(sp["partitions"]), len(groups))))

        def work(group):
            brick, brows = group
            try:
                for res in process_brick(brick, brows, coadd_root, inj, bands, gallery_ids, paired, injector):
                    if res["fail_reason"] and task_root != given_root:
                        res["fail_reason"] = res["fail_reason"].replace(task_root, given_root)
                    if res["split"] == KNOWN_SPLIT:
                        res["is_control"] = 0  # cut without injection, but they are lenses
                    yield file_index[res["split"], int(res["sample_id"]) % n_buckets[res["split"]]], res
            except SurveyError as e:
                if task_root == given_root:
                    raise
                raise SurveyError(str(e).replace(task_root, given_root)) from None

        def write_partition(index, items):
            items = list(items)
            gallery = [{k: v for k, v in r.items() if k in ("sample_id", "clean", "stamp", "config_id",
                                                            "theta_e_arcsec", "arc_snr", "split", "impostor",
                                                            "source_model", "source_ident")}
                       for _, r in items if "clean" in r]
            split, bucket, file_paired = files[index]
            try:
                stats = write_file(write_dir, split, bucket, [r for _, r in items], file_paired)
            except OSError as e:  # name the file (pyarrow's ENOSPC message does not)
                if e.errno == errno.ENOSPC or "No space left on device" in str(e):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                                  os.path.join(out_dir, split, part_file_name(bucket))) from e
                raise
            yield {"stats": stats, "gallery": gallery}

        try:
            results = (rdd.flatMap(work)
                       .partitionBy(len(files), lambda k: k)
                       .mapPartitionsWithIndex(write_partition)
                       .collect())
        except KeyboardInterrupt:
            _cancel(spark)
            raise StampsInterrupted(interrupted_message(out_dir)) from None
        except Exception as e:
            if interrupted:  # e.g. py4j's "Answer from Java side is empty" while it cleans up after Ctrl-C
                _cancel(spark)
                raise StampsInterrupted(interrupted_message(out_dir)) from None
            full, path = disk_full(e)
            if full:
                _silence_jvm(spark)
                raise disk_full_error(path, out_dir) from None
            raise
    finally:
        spark.stop()
        if main_thread:
            signal.signal(signal.SIGINT, previous_sigint)
    stats = sorted((r["stats"] for r in results), key=lambda s: s["file"])
    gallery = sorted((g for r in results for g in r["gallery"]), key=lambda g: g["sample_id"])
    return stats, gallery
