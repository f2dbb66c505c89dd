"""Stage `mine`: hard negatives from a previous generation's model (mine.model), with known-lens exclusion."""

from _common import run

from darkhaloscope.model.mining import run_mining
from darkhaloscope.outputs import write_json, write_parquet


def main(p: dict) -> None:
    table, report = run_mining(p, "data/stamps")
    write_parquet(table, "data/hard_negatives/hard_negatives.parquet")
    write_json(report, "metrics/mine.json")
    print({k: v for k, v in report.items() if k != "index"})


if __name__ == "__main__":
    run("mine", main)
