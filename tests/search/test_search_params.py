"""params.yaml's search section and mine.grades: every key documented, values the code cannot honour refused."""

from __future__ import annotations

import copy
import re

import pytest

from darkhaloscope.params import ParamsError, SCHEMA, validate


def _err(p) -> str:
    with pytest.raises(ParamsError) as e:
        validate(p, "params.yaml")
    return str(e.value)


def test_every_search_key_has_a_comment_with_its_unit(repo_root):
    text = (repo_root / "params.yaml").read_text()
    block = text[text.index("\nsearch:"):].split("\n\n")[0].splitlines()[1:]
    keys = [ln for ln in block if re.match(r"^  [a-z_]+:", ln)]
    assert sorted(k.split(":")[0].strip() for k in keys) == sorted(SCHEMA["search"])
    for ln in keys:
        assert "#" in ln and len(ln.split("#", 1)[1].strip()) > 10, ln
    grades = next(ln for ln in text.splitlines() if ln.startswith("  grades:"))
    assert "#" in grades


@pytest.mark.parametrize("key, value, expect", [
    ("models", [], "non-empty list"),
    ("models", ["data/model/best.pt", "data/model/best.pt"], "each model once"),
    ("combine", "median", "'mean_prob', 'rank_mean'"),
    ("min_score", 1.5, "in [0, 1]"),
    ("top_k", -1, ">= 0"),
    ("batch_size", 0, ">= 1"),
    ("cut_group_size", 0, ">= 1"),
    ("match_radius_arcsec", 0, "> 0 arcsec"),
    ("prevalence", 1.0, "fraction in (0, 1)"),
    ("work_dir", "s3://bucket/x", "local directory"),
    ("cut_missing", "yes", "true or false"),
])
def test_search_values_are_checked(params, key, value, expect):
    p = copy.deepcopy(params)
    p["search"][key] = value
    msg = _err(p)
    assert f"search.{key}" in msg and expect in msg, msg


def test_mine_grades_must_be_a_csv_in_grades(params):
    p = copy.deepcopy(params)
    for ok in ("", "grades/gen2.csv"):
        p["mine"]["grades"] = ok
        validate(p)
    p["mine"]["grades"] = "/home/me/Downloads/grades.csv"
    msg = _err(p)
    assert "mine.grades" in msg and "grades/" in msg and "dependency of stage mine" in msg
