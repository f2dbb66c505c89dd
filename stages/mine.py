"""Stage `mine`: hard negatives from a previous generation's model (mine.model), with known-lens exclusion."""

from _common import setup

from darkhaloscope.mining import run_mining
from darkhaloscope.outputs import write_json, write_parquet

p = setup("mine")
table, report = run_mining(p, "data/stamps")
write_parquet(table, "data/hard_negatives/hard_negatives.parquet")
write_json(report, "metrics/mine.json")
print({k: v for k, v in report.items() if k != "index"})
