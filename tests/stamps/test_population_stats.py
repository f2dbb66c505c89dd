"""Stamp files carry the impostor class; metrics/stamps.json's negatives and population quantiles."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from darkhaloscope.constants import IMPOSTOR_CLASSES, PARENT_SPLIT
from darkhaloscope.stamps.cutout import parent_rows
from darkhaloscope.stamps.spark import (
    OUTPUT_COLUMNS,
    POPULATION_COLUMNS,
    summarize_stats,
    write_file,
)


def _rows(n: int, split: str, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        r = {c: 0.0 for c in OUTPUT_COLUMNS}
        inj = i % 3 != 0
        r.update(sample_id=i + 1 + 1000 * seed, pair_id=i + 1, row_id=i + 1, replicate=0, split=split,
                 brickname="1500p005", objid=i, is_control=0 if inj else 1,
                 config_id="x" if inj else "control", psf_fallback="", fail_reason="", cutout_ok=1,
                 impostor=("none", "ring", "pair")[(i // 3) % 3] if not inj else "none",
                 arc_snr=float(rng.uniform(0, 50)) if inj else 0.0,
                 magnification=float(rng.uniform(2, 30)) if inj else 0.0,
                 theta_e_over_psf=float(rng.uniform(0.3, 2)) if inj else 0.0,
                 stamp=np.zeros((3, 64, 64), np.float32))
        rows.append(r)
    rows[1]["cutout_ok"], rows[1]["fail_reason"] = 0, "off_brick_edge"  # a failed injected row is not counted
    return rows


def test_impostor_column_written_and_quantiles_reported(tmp_path):
    val, test = _rows(30, "val", 1), _rows(45, "test", 2)
    stats = [write_file(str(tmp_path), "val", 0, val, paired=False),
             write_file(str(tmp_path), "test", 0, test[:20], paired=False),
             write_file(str(tmp_path), "test", 1, test[20:], paired=False)]
    t = pq.read_table(tmp_path / "val" / "part-00000.parquet")
    assert t.schema.field("impostor").type == pa.string()
    by_id = {r["sample_id"]: r["impostor"] for r in val}
    assert [by_id[s] for s in t.column("sample_id").to_pylist()] == t.column("impostor").to_pylist()
    summ = summarize_stats(stats)
    for split, rows in (("val", val), ("test", test)):
        d = summ["splits"][split]
        ok_neg = [r for r in rows if r["cutout_ok"] and r["is_control"]]
        assert d["negatives"] == len(ok_neg)
        assert d["impostors"] == {c: sum(r["impostor"] == c for r in ok_neg) for c in IMPOSTOR_CLASSES}
        assert d["impostors"]["ring"] > 0 and d["impostors"]["pair"] > 0
        for c in POPULATION_COLUMNS:
            v = np.array([r[c] for r in rows if r["cutout_ok"] and not r["is_control"]])
            q = d["population_quantiles"][c]
            assert q["n"] == len(v) > 0
            np.testing.assert_allclose([q["q05"], q["q25"], q["q50"], q["q75"], q["q95"]],
                                       np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95]))
    # a split with no injections: quantiles None, not zeros
    only_neg = [r for r in _rows(9, "val", 3) if r["is_control"]]
    d = summarize_stats([write_file(str(tmp_path / "b"), "val", 0, only_neg, paired=False)])["splits"]["val"]
    assert d["population_quantiles"]["arc_snr"] == {"n": 0, "q05": None, "q25": None, "q50": None, "q75": None,
                                                    "q95": None}


def test_parent_split_rows_carry_the_impostor_class():
    parent = pa.table({"row_id": [1, 2, 3], "split": ["train", "train", "val"], "brickname": ["a", "b", "c"],
                       "objid": [1, 2, 3], "ra": [1.0, 2.0, 3.0], "dec": [0.0, 0.0, 0.0], "mag_r": [19.0] * 3,
                       "impostor": ["spiral", "none", "ring"],
                       **{f"psf{k}_{b}": [1.0] * 3 for k in ("size", "depth") for b in "grz"}})
    rows = parent_rows(parent, [], seed=1)
    assert [(r["row_id"], r["impostor"], r["split"]) for r in rows] == [(1, "spiral", PARENT_SPLIT),
                                                                        (2, "none", PARENT_SPLIT)]
