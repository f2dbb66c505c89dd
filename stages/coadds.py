"""Stage `coadds` (Phase 4b): the g/r/z coadds of the bricks the manifest and known lenses need, copied
into data/coadds (survey.coadd_mode copy; auto for the mock root data/survey) or listed in
data/coadds/coadd_manifest.parquet (manifest: stage stamps then reads survey.root). Known lenses on
no brick of the survey are counted (known_lenses_no_brick), not fetched."""

from _common import run  # first: pins numpy's SIMD dispatch before numpy loads  # isort: skip

import pyarrow.parquet as pq

from darkhaloscope.stamps.coadd_cache import cache_coadds, coadd_mode, manifest_coadds
from darkhaloscope.outputs import write_json
from darkhaloscope.survey.bricks import bricks_of, read_brick_table
from darkhaloscope.survey.known_lenses import read_known_lenses


def main(p: dict) -> None:
    sv = p["survey"]
    bricks = set(pq.read_table("data/manifest/manifest.parquet", columns=["brickname"]).column(0).to_pylist())
    known = read_known_lenses(sv["root"], sv["known_lenses"], sv["lenscat_recall"])
    of_known = bricks_of(read_brick_table(sv["root"]), known["ra"], known["dec"])
    known_bricks = [b for b in of_known if b]
    gather = manifest_coadds if coadd_mode(sv) == "manifest" else cache_coadds
    report = gather(sv["root"], sorted(bricks | set(known_bricks)), sv["bands"], "data/coadds")
    report["known_lens_bricks"] = len(set(known_bricks))
    report["known_lenses_no_brick"] = len(of_known) - len(known_bricks)
    write_json(report, "metrics/coadds.json")
    print({k: v for k, v in report.items() if k != "missing"})
    if report["n_missing"]:
        print(f"[coadds] WARNING: {report['n_missing']} coadd files missing, listed in metrics/coadds.json: "
              + ", ".join(m["file"] for m in report["missing"][:5]) + (" ..." if report["n_missing"] > 5 else ""))


if __name__ == "__main__":
    run("coadds", main)
