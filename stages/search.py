"""Stage `search`: score every parent galaxy (and the known lenses) with `search.models`, rank the
candidates, cross-match them with known lenses, write the catalogue and the offline inspection page."""

from _common import run

from darkhaloscope.outputs import atomic_dir, write_json
from darkhaloscope.search.pipeline import run_search


def main(p: dict) -> None:
    with atomic_dir("data/search") as out:
        report = run_search(p, "data/parent/parent.parquet", "data/scores", out)
    write_json(report, "metrics/search.json")
    print({"galaxies_scored": report["galaxies_scored"], "candidates": report["candidates"],
           "known_lens_ranks": [(r["name"], r["rank"]) for r in report["known_lens_ranks"]],
           "purity": report["purity"]["purity"]})


if __name__ == "__main__":
    run("search", main)
