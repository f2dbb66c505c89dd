"""Stage `manifest` (Phase 4a): which galaxies get which injection, and the controls."""

import pyarrow.parquet as pq
from _common import setup

from darkhaloscope.manifest import build_manifest
from darkhaloscope.outputs import write_json, write_parquet

p = setup("manifest")
table, summary = build_manifest(pq.read_table("data/parent/parent.parquet"), p)
write_parquet(table, "data/manifest/manifest.parquet")
write_json(summary, "metrics/manifest.json")
print(summary)
