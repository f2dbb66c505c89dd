"""The inspection page in a real browser: headless Chromium driven over WebDriver (chromedriver).

The test opens the page from disk, grades three candidates with the keyboard (one with a note
holding a comma and quotes), exports, and checks the downloaded CSV, which stage mine then reads
(``mine.grades``). It skips, saying why, only when Chromium or its driver is not installed; CI
installs both (``.ci/run``: Debian's chromium and chromium-driver).
"""

from __future__ import annotations

import csv
import glob
import os
import time

import numpy as np
import pyarrow as pa
import pytest

import _searchdata as SD
import _stamps as S
from _webdriver import Chrome, find_browser
from darkhaloscope.model.mining import GRADE_COLUMNS, read_grades
from darkhaloscope.search import inspect as I

pytestmark = pytest.mark.usefixtures("cpu_only")
BROWSER = find_browser()
needs_browser = pytest.mark.skipif(BROWSER[0] is None, reason=f"no browser for the page test: {BROWSER[1]}")


def _page(tmp_path, n=6) -> str:
    rng = np.random.default_rng(0)
    t = pa.table({"rank": pa.array(np.arange(1, n + 1), pa.int64()), "source": ["parent", "cut"] * (n // 2),
                  "sample_id": pa.array(2**61 + np.arange(n), pa.int64()), "row_id": pa.array(900 + np.arange(n)),
                  "split": ["train", "val", "test"] * (n // 3), "brickname": ["1500p005"] * n,
                  "objid": pa.array(np.arange(n)), "ra": 150.0 + rng.uniform(0, 1, n), "dec": rng.uniform(0, 1, n),
                  "logit_0": pa.array(np.linspace(3, 1, n), pa.float32()), "prob_0": np.linspace(0.95, 0.7, n),
                  "ensemble_score": np.linspace(0.95, 0.7, n), "probability": np.linspace(0.96, 0.71, n),
                  "known_name": ["MOCK-1500p005"] + [""] * (n - 1), "known_grade": [""] * n, "known_type": [""] * n,
                  "known_reference": [""] * n, "known_sep_arcsec": [0.0] + [np.nan] * (n - 1)})
    out = str(tmp_path / "inspect")
    I.write_page(out, t, S.ring_stamps(np.zeros(n, np.int8), rng=1), None, SD.checkpoint(tmp_path / "m.pt"), 1,
                 "test0001")
    return out


def _wait_file(pattern: str, timeout: float = 30.0) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        done = [f for f in glob.glob(pattern) if not f.endswith(".crdownload")]
        if done and os.path.getsize(done[0]) > 0:
            return done[0]
        time.sleep(0.1)
    raise AssertionError(f"no download matching {pattern} within {timeout} s")


@needs_browser
def test_grade_three_candidates_with_the_keyboard_and_export_csv(tmp_path):
    page = _page(tmp_path)
    dl = str(tmp_path / "downloads")
    os.makedirs(dl)
    with Chrome(dl) as c:
        c.get("file://" + os.path.join(page, "index.html"))
        c.wait_for("return document.body.dataset.ready === '1'")
        assert c.execute("return document.querySelectorAll('.card').length") == 6
        # rank 1 A (moves on), rank 2 X, then skip to rank 4: a note with a comma and quotes, and C
        c.press("a", "x", "j", "n")
        c.wait_for("return document.activeElement.id === 'noteinput'")
        c.press('faint arc, "blue" knot', "Enter")
        c.press("c")
        grades = c.execute("return [...document.querySelectorAll('.card')].map(e => e.dataset.grade)")
        assert grades == ["A", "X", "", "C", "", ""]
        # grades survive a reload (kept in the browser)
        c.get("file://" + os.path.join(page, "index.html"))
        c.wait_for("return document.body.dataset.ready === '1'")
        assert c.execute("return [...document.querySelectorAll('.card')].map(e => e.dataset.grade)") == grades
        c.press("e")
        c.wait_for("return document.body.dataset.exported === '3'")
        # everything the page loads lies in its directory and loaded (the browser has no network: see Chrome)
        urls = c.execute("return [...document.querySelectorAll('[src], link[href]')].map(e => e.src || e.href)")
        assert len(urls) == 1 + 3 * 6 and all(u.startswith("file://" + page + "/") for u in urls), urls
        assert c.execute("return [...document.images].every(i => i.complete && i.naturalWidth === 64)")
        path = _wait_file(os.path.join(dl, "grades-test0001*.csv"))
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == list(GRADE_COLUMNS)
    got = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert [(r["rank"], r["grade"], r["note"]) for r in got] == [("1", "A", ""), ("2", "X", ""),
                                                                ("4", "C", 'faint arc, "blue" knot')]
    assert got[0]["sample_id"] == str(2**61) and got[0]["known_name"] == "MOCK-1500p005"  # exact int64 ids
    assert got[1]["source"] == "cut" and got[1]["objid"] == "1" and got[1]["row_id"] == "901"
    # what stage mine reads from it
    g = read_grades(path)
    assert g["grade"].tolist() == ["A", "X", "C"] and g["objid"].tolist() == [0, 1, 3]
    assert g["note"].tolist()[2] == 'faint arc, "blue" knot'
