"""Stage `manifest` (Phase 4a): which galaxies get which injection, and the controls."""

from _common import run  # first: pins numpy's SIMD dispatch before numpy loads  # isort: skip

import pyarrow.parquet as pq

from darkhaloscope.catalog.manifest import build_manifest
from darkhaloscope.outputs import write_json, write_parquet


def main(p: dict) -> None:
    table, summary = build_manifest(pq.read_table("data/parent/parent.parquet"), p)
    write_parquet(table, "data/manifest/manifest.parquet")
    write_json(summary, "metrics/manifest.json")
    print(summary)


if __name__ == "__main__":
    run("manifest", main)
