"""Stage `score`: score val, test and the known lenses with the checkpoint's own preprocessing."""

from _common import setup

from darkhaloscope.outputs import atomic_dir, write_json, write_parquet
from darkhaloscope.score import score_files
from darkhaloscope.stamp_format import list_stamp_files

p = setup("score")
report = {}
with atomic_dir("data/scores") as out:
    for split in ("val", "test", "known"):
        table, summary = score_files("data/model/best.pt", list_stamp_files("data/stamps", split))
        write_parquet(table, f"{out}/{split}.parquet")
        report[split] = summary
write_json(report, "metrics/score.json")
print({k: (v["kept"], v["dropped"]) for k, v in report.items()})
