"""Hard negatives (mined ids from the parent split, repeated per epoch), exclude_bricks, and the
grades of inspected candidates (mine.grades)."""

import copy
import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import _stamps as S
from darkhaloscope.model import mining
from darkhaloscope.model.checkpoint import save_checkpoint
from darkhaloscope.model.loader import StampDataset, StampIndex, make_loader
from darkhaloscope.model.nets import build_model
from darkhaloscope.model.preprocess import NormConfig
from darkhaloscope.model.train import Setup, add_hard_negatives


@pytest.fixture()
def root(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "parent").mkdir()
    S.make_stamp_file(tmp_path / "train" / "part-00000.parquet", sample_ids=0, is_control=[0, 1] * 6,
                      columns={"brickname": np.array(["a"] * 6 + ["bad"] * 6)}, rng=1, row_group_size=4)
    S.make_stamp_file(tmp_path / "parent" / "part-00000.parquet", sample_ids=100, is_control=[1] * 10,
                      columns={"brickname": np.array(["p"] * 10)}, rng=2, row_group_size=4)
    return tmp_path


def _setup(repeat, exclude=()):
    from darkhaloscope.params import load_params

    p = load_params()
    p["train"].update(hard_negative_repeat=repeat, exclude_bricks=list(exclude))
    return Setup.from_params(p)


def test_exclude_bricks_drops_and_counts(root):
    idx = StampIndex.build([str(root / "train" / "part-00000.parquet")], exclude_bricks=("bad",))
    assert idx.counts["excluded_brick"] == 6
    assert sorted(idx.sample_ids.tolist()) == list(range(6))


def test_hard_negatives_repeated_exactly_per_epoch(root, tmp_path):
    hn_path = tmp_path / "hn.parquet"
    pq.write_table(pa.table({"sample_id": pa.array([101, 105, 107], pa.int64())}), hn_path)
    setup = _setup(repeat=3)
    base = StampIndex.build([str(root / "train" / "part-00000.parquet")])
    idx, n, _ = add_hard_negatives(base, setup, str(root), str(hn_path))
    assert n == 3
    assert idx.n_samples == 12 + 3 * 3 and idx.n_negative == 6 + 9
    ds = StampDataset(idx, 5, NormConfig(), shuffle=True, augment=False, seed=3, rank=0, world_size=1)
    seen = np.concatenate([sid.numpy() for _, _, _, sid in make_loader(ds, 0)])
    ids, counts = np.unique(seen, return_counts=True)
    got = dict(zip(ids.tolist(), counts.tolist()))
    assert {k: got[k] for k in (101, 105, 107)} == {101: 3, 105: 3, 107: 3}
    assert all(got[k] == 1 for k in range(12))
    assert not any(k in got for k in (100, 102, 103, 104, 106, 108, 109))
    # metadata reads follow the same order as the ids
    bricks = idx.read_kept_columns(["brickname"])["brickname"]
    assert len(bricks) == idx.n_samples and list(bricks[-9:]) == ["p"] * 9


def test_no_hard_negatives_file_is_a_no_op(root, tmp_path):
    base = StampIndex.build([str(root / "train" / "part-00000.parquet")])
    idx, n, _ = add_hard_negatives(base, _setup(2), str(root), str(tmp_path / "missing.parquet"))
    assert n == 0 and idx is base


def test_exclude_bricks_naming_no_brick_warns_and_is_reported(root, caplog):
    f = [str(root / "train" / "part-00000.parquet")]
    with caplog.at_level("WARNING", logger="darkhaloscope.model.loader"):
        idx = StampIndex.build(f, exclude_bricks=("bad", "1500p05"))
    assert idx.counts["excluded_brick"] == 6  # the real one still excludes
    assert "1500p05" in caplog.text and "exclude nothing" in caplog.text and "bad'" not in caplog.text
    assert idx.summary()["exclude_bricks_unmatched"] == ["1500p05"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="darkhaloscope.model.loader"):
        ok = StampIndex.build(f, exclude_bricks=("bad",))
    assert caplog.text == "" and "exclude_bricks_unmatched" not in ok.summary()


# ============================================================================ grades (mine.grades)

#: parent-split galaxies of the grade tests: (brickname, objid, ra, dec), sample ids 200, 201, ...
GALAXIES = [("1500p005", 1, 150.00, 0.50), ("1500p005", 2, 150.02, 0.50), ("1500p005", 3, 150.04, 0.50),
            ("1510p005", 4, 151.00, 0.50), ("1510p005", 5, 151.0015, 0.50), ("1520p005", 6, 152.00, 0.50)]


def _write_grades(path, rows, columns=mining.GRADE_COLUMNS):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return str(path)


def _graded(i, grade, note=""):
    b, o, ra, dec = GALAXIES[i]
    return {"rank": i + 1, "source": "parent", "row_id": 900 + i, "sample_id": 200 + i, "brickname": b, "objid": o,
            "ra": ra, "dec": dec, "ensemble_score": 0.9, "probability": 0.9, "known_name": "", "grade": grade,
            "note": note}


@pytest.fixture()
def graded_set(tmp_path, params):
    """A stamp set whose parent split holds GALAXIES (and a train split with one of them as a control),
    a survey whose known-lens list is one lens at (152.0, 0.5), and params without a mining model."""
    from astropy.io import fits

    n = len(GALAXIES)
    cols = {"sample_id": np.arange(200, 200 + n), "is_control": np.ones(n, np.int8),
            "brickname": np.array([g[0] for g in GALAXIES]), "objid": np.array([g[1] for g in GALAXIES]),
            "ra": np.array([g[2] for g in GALAXIES]), "dec": np.array([g[3] for g in GALAXIES]),
            "cutout_ok": np.array([1, 1, 1, 1, 1, 1], np.int8)}
    (tmp_path / "set" / "parent").mkdir(parents=True)
    (tmp_path / "set" / "train").mkdir()
    S.make_stamp_file(tmp_path / "set" / "parent" / "part-00000.parquet", columns=cols, rng=3)
    S.make_stamp_file(tmp_path / "set" / "train" / "part-00000.parquet", sample_ids=500, is_control=[1, 0],
                      columns={"brickname": np.array(["1500p005", "1500p005"]), "objid": np.array([1, 2])}, rng=4)
    (tmp_path / "survey").mkdir()
    fits.BinTableHDU.from_columns([fits.Column("RA", "D", array=[152.0]), fits.Column("DEC", "D", array=[0.5])]) \
        .writeto(tmp_path / "survey" / "known.fits")
    p = copy.deepcopy(params)
    p["survey"].update(root=str(tmp_path / "survey"), known_lenses="known.fits")
    p["mine"].update(model="", top_k=0, use_lenscat=False, exclusion_radius_arcsec=10.0)
    return p, str(tmp_path / "set")


def test_read_grades_validates_and_counts(tmp_path):
    path = _write_grades(tmp_path / "g.csv", [_graded(0, "a", 'arc, "faint"'), _graded(1, ""), _graded(2, "X"),
                                              _graded(2, "X")])
    g = mining.read_grades(path)
    assert g["grade"].tolist() == ["A", "X"] and g["note"].tolist() == ['arc, "faint"', ""]
    assert (g["n_rows"], g["n_ungraded"], g["n_duplicates"]) == (4, 1, 1)
    with pytest.raises(ValueError, match=r"g2.csv' line 3: grade 'Q' is not one of \['A', 'B', 'C', 'X'\]"):
        mining.read_grades(_write_grades(tmp_path / "g2.csv", [_graded(0, "A"), _graded(1, "Q")]))
    with pytest.raises(ValueError, match=r"column\(s\) \['objid'\] missing"):
        mining.read_grades(_write_grades(tmp_path / "g3.csv", [_graded(0, "A")],
                                         [c for c in mining.GRADE_COLUMNS if c != "objid"]))
    with pytest.raises(ValueError, match="graded A on an earlier line and X here"):
        mining.read_grades(_write_grades(tmp_path / "g4.csv", [_graded(0, "A"), _graded(0, "X")]))
    bad = _graded(1, "B")
    bad["dec"] = 95
    with pytest.raises(ValueError, match=r"line 2: RA must be in \[0, 360\) deg and Dec"):
        mining.read_grades(_write_grades(tmp_path / "g5.csv", [bad]))
    with pytest.raises(FileNotFoundError, match="mine.grades .*nope.csv.*not found"):
        mining.read_grades(str(tmp_path / "nope.csv"))


def test_grades_without_a_model_add_x_and_keep_a_b_out(tmp_path, graded_set, caplog):
    p, root = graded_set
    rows = [_graded(0, "A"), _graded(1, "X"),  # 72 arcsec from the A: added
            _graded(3, "B"), _graded(4, "X"),  # 5.4 arcsec from the B: excluded
            _graded(5, "X"),  # on the survey's known lens: excluded
            _graded(2, "C")]
    x_unknown = dict(_graded(2, "X"), objid=99, brickname="1530p005", ra=153.0)  # not in the parent split
    p["mine"]["grades"] = _write_grades(tmp_path / "g.csv", rows + [x_unknown])
    with caplog.at_level("WARNING", logger="darkhaloscope.model.mining"):
        table, report = mining.run_mining(p, root)
    assert table.column("sample_id").to_pylist() == [201] and table.column("source").to_pylist() == ["graded_x"]
    g = report["grades"]
    assert g["per_grade"] == {"A": 1, "B": 1, "C": 1, "X": 4}
    assert (g["x_added"], g["x_not_in_parent_split"], g["x_excluded_near_known_lens"], g["x_excluded_near_graded_ab"]) \
        == (1, 1, 1, 1)
    assert g["ab_in_known_lens_exclusion"] == 2 and report["n_hard_negatives"] == 1
    # galaxy 0 (graded A) is a control of the train split: counted and warned about
    assert g["ab_among_controls"] == {"train": 1, "val": None, "test": None}
    assert "graded A or B" in caplog.text
    pq.write_table(table, tmp_path / "hn.parquet")  # what stage train reads: the X galaxy's parent-split row
    base = StampIndex.build([root + "/train/part-00000.parquet"])
    idx, n, _ = add_hard_negatives(base, _setup(1), root, str(tmp_path / "hn.parquet"))
    assert n == 1 and 201 in idx.sample_ids.tolist()


def test_mined_candidates_near_a_graded_lens_are_excluded_and_x_joins_them(tmp_path, graded_set):
    p, root = graded_set
    torch.manual_seed(0)
    save_checkpoint(str(tmp_path / "m.pt"), build_model("small_cnn", 3, 0.0, 0, 4),
                    {"norm": NormConfig().to_dict(), "meta_cols": [], "input_channels": 3})
    p["mine"].update(model=str(tmp_path / "m.pt"), top_k=10, min_score=0.0)
    plain, rep0 = mining.run_mining(p, root)
    assert "grades" not in rep0 and rep0["excluded_near_known_lens"] == {"survey_list": 1, "lenscat": 0}
    assert sorted(plain.column("sample_id").to_pylist()) == [200, 201, 202, 203, 204]  # 205 lies on the known lens
    p["mine"]["grades"] = _write_grades(tmp_path / "g.csv", [_graded(3, "A"), _graded(1, "X")])
    table, rep = mining.run_mining(p, root)
    assert rep["excluded_near_known_lens"]["graded_ab"] == 2  # the A galaxy and its 5.4-arcsec neighbour
    got = dict(zip(table.column("sample_id").to_pylist(), table.column("source").to_pylist()))
    assert got == {200: "mined", 201: "graded_x", 202: "mined"}
    assert rep["grades"]["x_already_mined"] == 1 and rep["grades"]["x_added"] == 0
    assert rep["n_hard_negatives"] == 3
