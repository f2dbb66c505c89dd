"""Stage `stamps` (Phase 4c): 64x64 g/r/z cutouts with injected arcs, under Spark."""

import os

import numpy as np
import pyarrow.parquet as pq
from _common import run

from darkhaloscope.stamps.gallery import injection_gallery
from darkhaloscope.outputs import atomic_dir, write_json
from darkhaloscope.constants import PARENT_SPLIT, SPLITS
from darkhaloscope.stamps.spark import run_stamps, summarize_stats, write_file
from darkhaloscope.stamps.cutout import known_lens_rows, parent_rows, process_brick
from darkhaloscope.survey.bricks import bricks_of, read_brick_table
from darkhaloscope.survey.known_lenses import read_known_lenses


def main(p: dict) -> None:
    inj, sv = p["inject"], p["survey"]
    man = pq.read_table("data/manifest/manifest.parquet", columns=["sample_id", "split", "is_control"])
    sid, split, ctrl = (man.column(c).to_numpy(zero_copy_only=False) for c in ("sample_id", "split", "is_control"))
    gallery_ids = frozenset(np.sort(sid[(split == "train") & (ctrl == 0)])[: inj["gallery_n"]].tolist())

    rows = pq.read_table("data/manifest/manifest.parquet").to_pylist()
    rows += parent_rows(pq.read_table("data/parent/parent.parquet"), rows, p["seed"])

    with atomic_dir("data/stamps") as out:
        stats, gallery = run_stamps(rows, "data/coadds", out, p, gallery_ids, SPLITS + (PARENT_SPLIT,))
        # the survey's known lenses, cut (never injected) for the known-lens check in `evaluate`
        known = read_known_lenses(sv["root"], sv["known_lenses"])
        rows, n_nobrick = known_lens_rows(known, bricks_of(read_brick_table(sv["root"]), known["ra"], known["dec"]))
        done = []
        for brick in sorted({r["brickname"] for r in rows}):
            done += process_brick(brick, [r for r in rows if r["brickname"] == brick], "data/coadds", inj,
                                  tuple(sv["bands"]))
        for r in done:
            r["is_control"] = 0  # cut without injection, but they are lenses
        known_stats = write_file(out, "known", 0, done, paired=False)
        injection_gallery(gallery, os.path.join(out, "gallery.png"))

    summary = summarize_stats(stats)
    summary.update(known_lenses={"rows": known_stats["rows"], "cutout_ok": known_stats["cutout_ok"],
                                 "no_brick": n_nobrick},
                   psf_model=inj["psf_model"], engine=inj["engine"], supersample=inj["supersample"])
    write_json(summary, "metrics/stamps.json")
    print(summary)


if __name__ == "__main__":
    run("stamps", main)
