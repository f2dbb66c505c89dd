"""Stage `mine`: hard negatives from a previous generation's model (mine.model), with known-lens exclusion."""

from _common import run

from darkhaloscope.model.mining import run_mining
from darkhaloscope.outputs import write_json, write_parquet
from darkhaloscope.stamps.sets import stamp_set_root


def main(p: dict) -> None:
    m = p["mine"]
    # stamps are read only to mine (a model) or to add graded candidates; else no set is resolved or converted
    enabled = (bool(m["model"]) and m["top_k"] > 0) or bool(m["grades"])
    table, report = run_mining(p, stamp_set_root(p) if enabled else p["stamp_set"]["root"])
    write_parquet(table, "data/hard_negatives/hard_negatives.parquet")
    write_json(report, "metrics/mine.json")
    print({k: v for k, v in report.items() if k != "index"})


if __name__ == "__main__":
    run("mine", main)
