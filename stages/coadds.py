"""Stage `coadds` (Phase 4b): cache the g/r/z coadds of the bricks the manifest and known lenses need."""

from _common import run  # first: pins numpy's SIMD dispatch before numpy loads  # isort: skip

import pyarrow.parquet as pq

from darkhaloscope.stamps.coadd_cache import cache_coadds
from darkhaloscope.outputs import write_json
from darkhaloscope.survey.bricks import bricks_of, read_brick_table
from darkhaloscope.survey.known_lenses import read_known_lenses


def main(p: dict) -> None:
    sv = p["survey"]
    bricks = set(pq.read_table("data/manifest/manifest.parquet", columns=["brickname"]).column(0).to_pylist())
    known = read_known_lenses(sv["root"], sv["known_lenses"])
    known_bricks = [b for b in bricks_of(read_brick_table(sv["root"]), known["ra"], known["dec"]) if b]
    report = cache_coadds(sv["root"], sorted(bricks | set(known_bricks)), sv["bands"], "data/coadds")
    report["known_lens_bricks"] = len(set(known_bricks))
    write_json(report, "metrics/coadds.json")
    print({k: v for k, v in report.items() if k != "missing"})
    if report["n_missing"]:
        print(f"[coadds] WARNING: {report['n_missing']} coadd files missing, listed in metrics/coadds.json: "
              + ", ".join(m["file"] for m in report["missing"][:5]) + (" ..." if report["n_missing"] > 5 else ""))


if __name__ == "__main__":
    run("coadds", main)
