"""Stage `parent` (Phase 3): LRG parent sample with sky-region splits."""

from _common import run

from darkhaloscope.outputs import write_json, write_parquet
from darkhaloscope.catalog.parent import build_parent


def main(p: dict) -> None:
    table, summary = build_parent(p)
    write_parquet(table, "data/parent/parent.parquet")
    write_json(summary, "metrics/parent.json")
    print(summary)


if __name__ == "__main__":
    run("parent", main)
