"""Stage ``stamps`` (Phase 4c) as one pipeline: the rows of every output split, one Spark job,
the injection gallery and the metrics summary.

The rows are the manifest's (splits train / val / test, injected or controls), one
un-injected cutout of every train-split parent galaxy that carries no injection (split
``parent``, for hard-negative mining) and one of every known lens of the survey that lies on
a brick (split ``known``, for the known-lens check in ``evaluate``); all of them go through
:func:`~darkhaloscope.stamps.spark.run_stamps` together.

The stage stops with one line and no output (its caller's ``atomic_dir`` discards the
unfinished files): on Ctrl-C / SIGINT (:class:`~darkhaloscope.stamps.spark.StampsInterrupted`),
on a full disk (:class:`~darkhaloscope.stamps.spark.DiskFullError`, naming the file), and when
more than ``inject.max_failed_frac`` of a split's stamps failed (a
:class:`~darkhaloscope.errors.SurveyError` naming the split, the fraction and the first reasons).
"""

from __future__ import annotations

import logging
import os
import re

import pyarrow.parquet as pq

from darkhaloscope.constants import IMPOSTOR_CLASSES, KNOWN_SPLIT, NO_IMPOSTOR, PARENT_SPLIT, SPLITS
from darkhaloscope.errors import SurveyError
from darkhaloscope.stamps.coadd_cache import CHANGED, MANIFEST_NAME, CoaddSource, coadd_mode
from darkhaloscope.stamps.cutout import known_lens_rows, parent_rows
from darkhaloscope.stamps.gallery import impostor_gallery, injection_gallery
from darkhaloscope.stamps.spark import (
    DiskFullError,
    StampsInterrupted,
    disk_full,
    disk_full_error,
    failure_warnings,
    interrupted_message,
    run_stamps,
    summarize_stats,
    too_many_failures,
)
from darkhaloscope.survey.bricks import bricks_of, read_brick_table
from darkhaloscope.survey.known_lenses import read_known_lenses

log = logging.getLogger(__name__)

#: the output split directories, in the order of their Spark partitions
STAGE_SPLITS = SPLITS + (PARENT_SPLIT, KNOWN_SPLIT)


def gallery_ids(manifest_rows: list[dict], n: int) -> frozenset:
    """Sample ids of the gallery: the ``n`` smallest of the train split's injected rows."""
    return frozenset(sorted(r["sample_id"] for r in manifest_rows
                            if r["split"] == "train" and r["is_control"] == 0)[:n])


def impostor_gallery_ids(manifest_rows: list[dict], n: int) -> dict:
    """Per impostor class, the sample ids of its gallery: the ``n`` smallest of its manifest rows (any split)."""
    return {c: frozenset(sorted(r["sample_id"] for r in manifest_rows if r.get("impostor", NO_IMPOSTOR) == c)[:n])
            for c in IMPOSTOR_CLASSES}


def run_stamps_stage(params: dict, manifest_path: str, parent_path: str, coadd_root: str, out_dir: str) -> dict:
    """Write every stamp file and ``gallery.png`` into ``out_dir`` (the caller makes it atomic).

    Reads the manifest once; the known lenses come from the survey (``survey.root``,
    ``survey.known_lenses``). Returns the metrics summary: :func:`summarize_stats` of the
    train / val / test / parent files, ``known_lenses`` (``rows``, ``cutout_ok``, ``no_brick``:
    known lenses on no brick) and the ``psf_model``, ``engine`` and ``supersample`` used.

    Raises StampsInterrupted (Ctrl-C), DiskFullError (ENOSPC) or SurveyError (a split above
    ``inject.max_failed_frac``), each with a one-line message; see the module docstring.
    """
    try:
        return _run_stamps_stage(params, manifest_path, parent_path, coadd_root, out_dir)
    except (StampsInterrupted, DiskFullError):
        raise
    except KeyboardInterrupt:  # outside the Spark job (reading the manifest, the gallery, ...)
        raise StampsInterrupted(interrupted_message(out_dir)) from None
    except OSError as e:
        full, path = disk_full(e)
        if full:
            raise disk_full_error(path or out_dir, out_dir) from None
        raise


def coadd_source(sv: dict, coadd_dir: str):
    """Where the cutouts read the coadds: the directory ``coadd_dir`` (``survey.coadd_mode`` copy, see :func:`~darkhaloscope.stamps.coadd_cache.coadd_mode`) or,
    with ``manifest``, a :class:`~darkhaloscope.stamps.coadd_cache.CoaddSource` reading ``survey.root``
    (``s3://`` through the bounded cache ``survey.coadd_cache``) as ``coadd_dir/coadd_manifest.parquet`` lists."""
    if coadd_mode(sv) != "manifest":
        return coadd_dir
    cache = sv["coadd_cache"]
    return CoaddSource(os.path.join(coadd_dir, MANIFEST_NAME), sv["root"], cache["dir"],
                       int(float(cache["max_gb"]) * 1e9))


def _run_stamps_stage(params: dict, manifest_path: str, parent_path: str, coadd_root: str, out_dir: str) -> dict:
    inj, sv = params["inject"], params["survey"]
    rows = pq.read_table(manifest_path).to_pylist()
    gallery = gallery_ids(rows, inj["gallery_n"])
    imp_gallery = impostor_gallery_ids(rows, inj["gallery_n"])
    rows += parent_rows(pq.read_table(parent_path), rows, params["seed"])
    known = read_known_lenses(sv["root"], sv["known_lenses"], sv["lenscat_recall"])
    known_rows, n_nobrick = known_lens_rows(known, bricks_of(read_brick_table(sv["root"]), known["ra"], known["dec"]))
    source = coadd_source(sv, coadd_root)
    try:
        stats, gallery_rows = run_stamps(rows + known_rows, source, out_dir, params,
                                         gallery.union(*imp_gallery.values()), STAGE_SPLITS)
    except Exception as e:  # a task's SurveyError arrives wrapped by Spark: keep its own line
        hit = re.search(r"SurveyError: ([^\n]*" + re.escape(CHANGED) + r"[^\n]*)", str(e))
        if hit is None:
            raise
        raise SurveyError(hit.group(1)) from None
    # per split, in the order train, val, test, parent, known
    by_split = sorted(stats, key=lambda st: (STAGE_SPLITS.index(st["split"]) if st["split"] in STAGE_SPLITS
                                             else len(STAGE_SPLITS), st["file"]))
    for line in failure_warnings(by_split):
        log.warning(line)
    problem = too_many_failures(by_split, inj["max_failed_frac"])
    if problem:
        raise SurveyError(problem)
    if known_rows == [] and len(known["ra"]):
        log.warning("WARN none of the %d known lenses (survey.known_lenses) lies on a brick of %s: the known "
                    "split is empty and evaluate reports known_n 0", len(known["ra"]), sv["root"])
    injection_gallery([g for g in gallery_rows if g["sample_id"] in gallery], os.path.join(out_dir, "gallery.png"))
    for cls, ids in imp_gallery.items():  # gallery_<class>.png beside gallery.png, one per impostor class
        impostor_gallery([g for g in gallery_rows if g["sample_id"] in ids], cls,
                         os.path.join(out_dir, f"gallery_{cls}.png"))
    (known_stats,) = [s for s in stats if s["split"] == KNOWN_SPLIT]
    summary = summarize_stats([s for s in stats if s["split"] != KNOWN_SPLIT])
    summary.update(known_lenses={"rows": known_stats["rows"], "cutout_ok": known_stats["cutout_ok"],
                                 "no_brick": n_nobrick},
                   psf_model=inj["psf_model"], engine=inj["engine"], supersample=inj["supersample"])
    return summary
