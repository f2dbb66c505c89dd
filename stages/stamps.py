"""Stage `stamps` (Phase 4c): 64x64 g/r/z cutouts with injected arcs, under Spark (manifest splits,
un-injected parent galaxies and known lenses in one job)."""

from _common import run  # first: pins numpy's SIMD dispatch before numpy loads  # isort: skip

from darkhaloscope.outputs import atomic_dir, write_json
from darkhaloscope.stamps.pipeline import run_stamps_stage


def main(p: dict) -> None:
    with atomic_dir("data/stamps") as out:
        summary = run_stamps_stage(p, "data/manifest/manifest.parquet", "data/parent/parent.parquet",
                                   "data/coadds", out)
        write_json(summary, "metrics/stamps.json")  # inside: if this fails, no data/stamps is left either
    print(summary)


if __name__ == "__main__":
    run("stamps", main)
