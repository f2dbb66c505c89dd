"""Stage `score`: score val, test and the known lenses of `stamp_set.root` with the checkpoint's own preprocessing."""

import os

from _common import run

from darkhaloscope.outputs import atomic_dir, write_json, write_parquet
from darkhaloscope.model.score import score_files, score_known_files
from darkhaloscope.stamps.format import list_stamp_files
from darkhaloscope.stamps.sets import stamp_set_root


def main(p: dict) -> None:
    root = stamp_set_root(p)  # stamp_set.root; a seeds-layout or s3:// set is converted / mirrored once into stamp_set.cache
    report = {}
    with atomic_dir("data/scores") as out:
        for split in ("val", "test", "known"):
            # the known lenses have no catalogue row: a metadata model scores them with the training means;
            # a stamp set without known lenses (the seeds' data) gives an empty table (known_n: 0)
            if split == "known":
                files = list_stamp_files(root, split) if os.path.isdir(os.path.join(root, split)) else []
                table, summary = score_known_files("data/model/best.pt", files)
                if not summary["kept"]:
                    print(f"[score] known: no known-lens stamps in {root}; evaluate reports known_n 0")
            else:
                table, summary = score_files("data/model/best.pt", list_stamp_files(root, split), progress=f"score {split}")
            write_parquet(table, f"{out}/{split}.parquet")
            report[split] = summary
    write_json(report, "metrics/score.json")
    print({k: (v["kept"], v["dropped"]) for k, v in report.items()})


if __name__ == "__main__":
    run("score", main)
