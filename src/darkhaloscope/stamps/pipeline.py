"""Stage ``stamps`` (Phase 4c) as one pipeline: the rows of every output split, one Spark job,
the injection gallery and the metrics summary.

The rows are the manifest's (splits train / val / test, injected or controls), one
un-injected cutout of every train-split parent galaxy that carries no injection (split
``parent``, for hard-negative mining) and one of every known lens of the survey that lies on
a brick (split ``known``, for the known-lens check in ``evaluate``); all of them go through
:func:`~darkhaloscope.stamps.spark.run_stamps` together.
"""

from __future__ import annotations

import logging
import os

import pyarrow.parquet as pq

from darkhaloscope.constants import KNOWN_SPLIT, PARENT_SPLIT, SPLITS
from darkhaloscope.stamps.cutout import known_lens_rows, parent_rows
from darkhaloscope.stamps.gallery import injection_gallery
from darkhaloscope.stamps.spark import failure_warnings, run_stamps, summarize_stats
from darkhaloscope.survey.bricks import bricks_of, read_brick_table
from darkhaloscope.survey.known_lenses import read_known_lenses

log = logging.getLogger(__name__)

#: the output split directories, in the order of their Spark partitions
STAGE_SPLITS = SPLITS + (PARENT_SPLIT, KNOWN_SPLIT)


def gallery_ids(manifest_rows: list[dict], n: int) -> frozenset:
    """Sample ids of the gallery: the ``n`` smallest of the train split's injected rows."""
    return frozenset(sorted(r["sample_id"] for r in manifest_rows
                            if r["split"] == "train" and r["is_control"] == 0)[:n])


def run_stamps_stage(params: dict, manifest_path: str, parent_path: str, coadd_root: str, out_dir: str) -> dict:
    """Write every stamp file and ``gallery.png`` into ``out_dir`` (the caller makes it atomic).

    Reads the manifest once; the known lenses come from the survey (``survey.root``,
    ``survey.known_lenses``). Returns the metrics summary: :func:`summarize_stats` of the
    train / val / test / parent files, ``known_lenses`` (``rows``, ``cutout_ok``, ``no_brick``:
    known lenses on no brick) and the ``psf_model``, ``engine`` and ``supersample`` used.
    """
    inj, sv = params["inject"], params["survey"]
    rows = pq.read_table(manifest_path).to_pylist()
    gallery = gallery_ids(rows, inj["gallery_n"])
    rows += parent_rows(pq.read_table(parent_path), rows, params["seed"])
    known = read_known_lenses(sv["root"], sv["known_lenses"])
    known_rows, n_nobrick = known_lens_rows(known, bricks_of(read_brick_table(sv["root"]), known["ra"], known["dec"]))
    stats, gallery_rows = run_stamps(rows + known_rows, coadd_root, out_dir, params, gallery, STAGE_SPLITS)
    for line in failure_warnings(stats):
        log.warning(line)
    if known_rows == [] and len(known["ra"]):
        log.warning("WARN none of the %d known lenses (survey.known_lenses) lies on a brick of %s: the known "
                    "split is empty and evaluate reports known_n 0", len(known["ra"]), sv["root"])
    injection_gallery(gallery_rows, os.path.join(out_dir, "gallery.png"))
    (known_stats,) = [s for s in stats if s["split"] == KNOWN_SPLIT]
    summary = summarize_stats([s for s in stats if s["split"] != KNOWN_SPLIT])
    summary.update(known_lenses={"rows": known_stats["rows"], "cutout_ok": known_stats["cutout_ok"],
                                 "no_brick": n_nobrick},
                   psf_model=inj["psf_model"], engine=inj["engine"], supersample=inj["supersample"])
    return summary
