"""Stage `survey`: write the embedded mock DR10 survey (sweeps, coadds, known lenses)."""

from _common import run

from tqdm import tqdm

from darkhaloscope.outputs import write_json
from darkhaloscope.survey.mock import MockSurvey


def main(p: dict) -> None:
    survey = MockSurvey(p["survey"]["mock"], bands=p["survey"]["bands"])
    summary = survey.write("data/survey", progress=lambda it: tqdm(it, desc="bricks", unit="brick"))
    write_json(summary, "metrics/survey.json")
    print(summary)


if __name__ == "__main__":
    run("survey", main)
