"""Phase 3 streamed per sweep file (darkhaloscope.catalog.parent): the same parent table as reading every
sweep whole, whatever the row-block size or engine; ids unique across releases and regions; DR9 north;
lenscat graded into known lenses (recall) and exclusions (every entry)."""

from __future__ import annotations

import copy
import io
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "survey"))
import _dr10 as D  # noqa: E402

from darkhaloscope.catalog import parent as P  # noqa: E402
from darkhaloscope.catalog import selection  # noqa: E402
from darkhaloscope.errors import ParamsError, SurveyError  # noqa: E402
from darkhaloscope.hashing import hash_int63  # noqa: E402
from darkhaloscope.params import validate  # noqa: E402
from darkhaloscope.survey.known_lenses import read_known_lenses, read_lenscat, select_lenscat  # noqa: E402
from darkhaloscope.survey.mock import MockSurvey  # noqa: E402
from darkhaloscope.survey.sweeps import OPTIONAL_COLUMNS, REQUIRED_COLUMNS  # noqa: E402


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=65536)  # as outputs.write_parquet
    return sink.getvalue().to_pybytes()


def whole_read_parent(paths: list[str], params: dict):
    """The reference: every sweep read whole by astropy (the approach before streaming), one concatenation,
    the cuts on it, then the same de-duplication, splits and known lenses."""
    parts = []
    for p in paths:
        with fits.open(io.BytesIO(Path(p).read_bytes()), memmap=False) as hdul:
            data = hdul[1].data
            names = {n.upper(): n for n in data.columns.names}
            out = {}
            for c in list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in names]:
                arr = np.asarray(data[names[c]])
                out[c] = (np.char.strip(arr.astype("U")) if arr.dtype.kind in "SU"
                          else arr.astype(arr.dtype.newbyteorder("=")))
        parts.append(out)
    keys = [k for k in parts[0] if all(k in q for q in parts)]
    cat = {k: np.concatenate([q[k] for q in parts]) for k in keys}
    sel = params["selection"]
    steps = selection.cut_steps(cat, sel["variant"], sel["deredden"], sel["variants"])
    counts = selection.cumulative_counts(steps, len(cat["RA"]))
    keep = np.ones(len(cat["RA"]), bool)
    for s in steps.values():
        keep &= s
    return P.finish_parent({c: cat[c][keep] for c in P.CARRY + P.KEEP_EXTRA}, counts, len(paths), params)


@pytest.fixture(scope="module")
def survey(tmp_path_factory, tiny_mock):
    """The tiny mock survey (written by MockSurvey) plus two DR10-layout sweeps of hand-made rows, with
    a duplicated row (same RELEASE, BRICKNAME, OBJID) and a close pair (< 0.2 arcsec)."""
    root = tmp_path_factory.mktemp("parent") / "survey"
    MockSurvey(tiny_mock).write(root)
    a = D.sweep_rows(400, ra0=150.2, dec0=0.6, seed=1, brick="1502p007")
    b = D.sweep_rows(300, ra0=150.6, dec0=0.6, seed=2, brick="1506p007")
    i, j = np.flatnonzero(a["TYPE"] == b"DEV")[:2]  # two of a's LRGs
    for k in b:  # row 0 of b repeats LRG i of a (same id); row 1 of b sits 0.1 arcsec from LRG j of a
        b[k][0] = a[k][i]
        if k not in ("RA", "DEC", "OBJID", "BRICKNAME"):
            b[k][1] = a[k][j]
    b["RA"][1], b["DEC"][1] = a["RA"][j] + 0.1 / 3600.0, a["DEC"][j]
    D.write_sweep(root / "sweep" / "10.1" / "sweep-160p000-165p005.fits", a)
    D.write_sweep(root / "sweep" / "10.1" / "sweep-140p000-145p005.fits", b)
    return root


def params_for(shipped_params_raw, root, **sel) -> dict:
    p = copy.deepcopy(shipped_params_raw)
    p["survey"]["root"] = str(root)
    p["selection"].update(sel)
    p["selection"]["split"]["nside"] = 4096
    return validate(p)


@pytest.mark.parametrize("variant, deredden", [("v3_color_relaxed", False), ("v1", True), ("desi_lrg", False)])
def test_streaming_equals_the_whole_read_whatever_the_block_size(survey, shipped_params_raw, variant, deredden):
    files = [p for p, _ in P.list_sweeps(str(survey), shipped_params_raw["survey"]["sweep_glob"])]
    mock_files = [f for f in files if "/10.1/" not in f]
    p = params_for(shipped_params_raw, survey, variant=variant, deredden=deredden, engine="inprocess")
    if variant == "desi_lrg":  # the mock's sweeps have no FIBERTOTFLUX_Z / Gaia columns: the DR10-layout ones only
        p["survey"]["sweep_glob"] = "sweep/10.1/sweep-*.fits"
        files = [f for f in files if "/10.1/" in f]
        with pytest.raises(SurveyError, match=r"selection.variant desi_lrg needs column\(s\) FIBERTOTFLUX_Z, "
                                              r"GAIA_PHOT_G_MEAN_MAG, which this sweep lacks"):
            P.select_file(mock_files[0], "desi_lrg", True, None)
    ref_table, ref_summary = whole_read_parent(files, p)
    assert ref_summary["n_parent"] > 100
    if variant == "v3_color_relaxed":
        assert ref_summary["duplicates_removed"] == {"same_brick_objid": 1, "within_0.2_arcsec": 1}
    ref = parquet_bytes(ref_table)
    for chunk in (1, 7 * 150, 1 << 25):
        table, summary = P.build_parent(p, chunk_bytes=chunk)
        assert summary == ref_summary
        assert parquet_bytes(table) == ref, (variant, chunk)


def test_per_file_counts_add_up_to_the_cut_flow(survey, shipped_params_raw):
    p = params_for(shipped_params_raw, survey)
    files = P.list_sweeps(str(survey), p["survey"]["sweep_glob"])
    results = P.select_all(files, p["selection"], "inprocess")
    assert [r["path"] for r in results] == [f for f, _ in files]
    _, summary = P.build_parent(p)
    for step, n in summary["cuts"].items():
        if step != "input":
            assert n == sum(r["counts"][step.removeprefix("after_")] for r in results)
    assert summary["cuts"]["input"] == sum(r["n_rows"] for r in results)
    for r in results:
        assert len(r["rows"]["RA"]) == list(r["counts"].values())[-1]


@pytest.mark.slow
def test_spark_engine_gives_the_same_bytes(survey, shipped_params_raw):
    p = params_for(shipped_params_raw, survey)
    p["spark"]["master"] = "local[2]"
    t1, s1 = P.build_parent(p, engine="inprocess")
    t2, s2 = P.build_parent(p, engine="spark")
    assert s1 == s2 and parquet_bytes(t1) == parquet_bytes(t2)
    # a bad file fails the same way on Spark: a SurveyError naming it
    bad = survey.parent / "bad" / "survey"
    D.write_sweep(bad / "sweep" / "sweep-150p000-155p005.fits", {k: v for k, v in D.sweep_rows(5).items()
                                                                 if k != "SERSIC"})
    p["survey"]["root"] = str(bad)
    with pytest.raises(SurveyError, match=r"sweep-150p000-155p005\.fits: missing DR10 sweep column\(s\) SERSIC"):
        P.build_parent(p, engine="spark")


def test_engine_choice_and_its_validation(shipped_params_raw):
    assert P.choose_engine("auto", 10**6) == "inprocess"
    assert P.choose_engine("auto", P.AUTO_SPARK_BYTES + 1) == "spark"
    assert P.choose_engine("spark", 1) == "spark" and P.choose_engine("inprocess", 10**15) == "inprocess"
    p = copy.deepcopy(shipped_params_raw)
    assert p["selection"]["engine"] == "auto"
    p["selection"]["engine"] = "cluster"
    with pytest.raises(ParamsError, match=r"selection.engine: expected one of 'auto', 'inprocess', 'spark'"):
        validate(p)


# --------------------------------------------------------------------------- ids across releases and regions
def test_row_ids_unique_across_releases_keep_the_dr10_ids():
    dr10 = selection.row_ids(["0460m800"], [3], [10000])
    assert int(dr10[0]) == 3109888783236064443 == hash_int63("dr10", "0460m800", 3)   # as before RELEASE
    assert selection.row_ids(["0460m800"], [3])[0] == dr10[0]
    assert selection.row_ids(["0460m800"], [3], [10999])[0] == dr10[0]                  # every DR10 value
    north, south9 = selection.row_ids(["0460m800"] * 2, [3, 3], [9011, 9010])
    assert north == hash_int63("ls9011", "0460m800", 3) and len({int(dr10[0]), int(north), int(south9)}) == 3
    assert selection.photsys([10000, 9010, 9011, 8001, 9012]).tolist() == ["S", "S", "N", "N", "S"]
    with pytest.raises(ValueError, match="RELEASE has 1 value.*e.g. 4242"):
        selection.photsys([10000, 4242])


def _north_south_root(tmp_path: Path) -> Path:
    """A DR10 south sweep and a DR9 north (BASS/MzLS, RELEASE 9011, int16 MASKBITS) sweep whose rows share
    BRICKNAME and OBJID (as north and south runs of one brick do), 36 arcsec apart."""
    root = tmp_path / "survey"
    south = D.sweep_rows(60, ra0=170.0, dec0=32.3, seed=3, brick="1701p325", brickid=500000)
    north = D.sweep_rows(60, ra0=170.0, dec0=32.3, seed=3, release=9011, brick="1701p325", brickid=500000)
    north["DEC"] = north["DEC"] + 0.01
    north["MASKBITS"] = north["MASKBITS"].astype(np.int16)
    D.write_sweep(root / "sweep" / "sweep-170p030-175p035.fits", south)
    D.write_sweep(root / "sweep" / "north" / "sweep-170p030-180p035.fits", north, tforms={"MASKBITS": "I"})
    fits.BinTableHDU.from_columns([fits.Column("RA", "D", array=np.zeros(0)),
                                   fits.Column("DEC", "D", array=np.zeros(0))]).writeto(root / "known_lenses.fits")
    return root


def test_dr9_north_with_desi_lrg_keeps_both_regions_with_distinct_ids(tmp_path, shipped_params_raw):
    root = _north_south_root(tmp_path)
    p = params_for(shipped_params_raw, root, variant="desi_lrg")
    table, summary = P.build_parent(p)
    ids = table.column("row_id").to_numpy()
    assert len(set(ids.tolist())) == len(ids) == summary["n_parent"]
    assert summary["duplicates_removed"]["same_brick_objid"] == 0
    names = table.column("brickname").to_pylist()
    objid = table.column("objid").to_numpy()
    dec = table.column("dec").to_numpy()
    pairs = {(n, int(o)) for n, o in zip(names, objid)}
    assert len(pairs) < len(ids)  # (BRICKNAME, OBJID) repeats between the regions; the ids do not
    assert (dec > 32.31).any() and (dec < 32.31).any()
    # the north rows took the north cuts: a row between the south and north zfiber limits (21.6 / 21.61)
    row = {k: v[:1].copy() for k, v in D.sweep_rows(1, lrg_frac=1.0, seed=9).items()}
    row["FIBERFLUX_Z"] = (D.nmgy(21.605) * 0.97).astype(np.float32)
    for rel, passes in ((10000, False), (9011, True)):
        row["RELEASE"] = np.array([rel], np.int16)
        steps = selection.cut_steps(row, "desi_lrg")
        assert bool(steps["zfiber_faint_limit"][0]) is passes, rel


def test_dr9_north_with_a_south_only_variant_is_refused(tmp_path, shipped_params_raw):
    root = _north_south_root(tmp_path)
    p = params_for(shipped_params_raw, root, variant="v3_color_relaxed")
    with pytest.raises(SurveyError) as e:
        P.build_parent(p)
    msg = str(e.value)
    assert msg.startswith(f"{root}/sweep/north/sweep-170p030-180p035.fits: 60 row(s) are BASS/MzLS (north) "
                          f"photometry (RELEASE 9011)"), msg
    assert "use selection.variant desi_lrg" in msg


def test_unknown_release_is_named_with_its_file(tmp_path, shipped_params_raw):
    root = tmp_path / "survey"
    D.write_sweep(root / "sweep" / "sweep-150p000-155p005.fits", D.sweep_rows(5, release=4242))
    with pytest.raises(SurveyError, match=r"sweep-150p000-155p005\.fits: column RELEASE has 5 value\(s\) this "
                                          r"pipeline does not know, e\.g\. 4242"):
        P.build_parent(params_for(shipped_params_raw, root))


# --------------------------------------------------------------------------- lenscat, graded
def test_lenscat_known_lenses_are_the_graded_subset():
    every = read_lenscat()
    assert len(every["ra"]) == 32838
    known = read_known_lenses("unused-root", "lenscat")
    assert len(known["ra"]) == 2038 and set(known["grading"]) == {"confident"} and set(known["type"]) == {"galaxy"}
    wide = read_known_lenses("unused-root", "lenscat", {"grading": ["confident", "probable"],
                                                         "type": ["galaxy", "group"]})
    assert len(wide["ra"]) == 2038 + 9 + 29717 + 51
    with pytest.raises(ValueError, match=r"survey.lenscat_recall.grading: expected a non-empty list"):
        select_lenscat(every, {"grading": ["certain"], "type": ["galaxy"]})


def test_parent_excludes_around_every_lenscat_entry_and_reports_the_grades(tmp_path, shipped_params_raw):
    every = read_lenscat()
    conf = int(np.flatnonzero((every["grading"] == "confident") & (every["type"] == "galaxy"))[0])
    prob = int(np.flatnonzero((every["grading"] == "probable") & (every["type"] == "galaxy"))[0])
    root = tmp_path / "survey"
    rows = D.sweep_rows(40, ra0=200.0, dec0=10.0, seed=5, lrg_frac=1.0)
    for i, k in enumerate((conf, prob)):  # an LRG 1 arcsec from each of the two entries
        rows["RA"][i], rows["DEC"][i] = every["ra"][k], every["dec"][k] + 1.0 / 3600.0
    D.write_sweep(root / "sweep" / "sweep-200p010-205p015.fits", rows)
    p = params_for(shipped_params_raw, root)
    p["survey"]["known_lenses"] = "lenscat"
    table, summary = P.build_parent(p)
    near = dict(zip(table.column("objid").to_pylist(), table.column("near_known_lens").to_pylist()))
    assert near[0] and near[1] and summary["near_known_lens"] == 2   # the probable one excludes too
    rep = summary["known_lenses"]
    assert rep["source"] == "lenscat" and sum(rep["entries"].values()) == 32838
    assert rep["entries"]["confident/galaxy"] == 2038 and rep["entries"]["probable/galaxy"] == 29717
    assert rep["recall"] == {"grading": ["confident"], "type": ["galaxy"], "entries": 2038}
    within = rep["entries_with_parent_within_5.0_arcsec"]
    assert within["confident/galaxy"] == 1 and within["probable/galaxy"] == 1 and sum(within.values()) == 2
    # a survey known-lens list: no lenscat report (metrics/parent.json unchanged)
    p["survey"]["known_lenses"] = "known.fits"
    fits.BinTableHDU.from_columns([fits.Column("RA", "D", array=np.array([rows["RA"][0]])),
                                   fits.Column("DEC", "D", array=np.array([rows["DEC"][0]]))]).writeto(root / "known.fits")
    _, summary = P.build_parent(p)
    assert "known_lenses" not in summary and summary["near_known_lens"] == 1


def test_close_duplicates_equals_the_haversine_balltree_over_every_row():
    """The KD-tree prefilter changes nothing: the same rows are dropped as querying every row through
    the haversine BallTree (the approach before), on clustered positions with pairs just inside and just
    outside the radius, groups of three and a pole."""
    from sklearn.neighbors import BallTree

    rng = np.random.default_rng(11)
    ra = rng.uniform(0, 360, 3000)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 3000)))
    k = np.arange(0, 600, 3)
    step = np.array([0.19, 0.21, 0.1]) / 3600.0  # deg: inside, outside, inside
    ra[k + 1] = ra[k] + step[k % 3] / np.cos(np.radians(dec[k]))
    dec[k + 1] = dec[k]
    ra[k + 2], dec[k + 2] = ra[k + 1], dec[k + 1] + 0.15 / 3600.0   # a chain: 0 ~ 1 ~ 2
    ra[-2:], dec[-2:] = [10.0, 190.0], [90.0 - 0.05 / 3600.0, 90.0 - 0.05 / 3600.0]  # 0.1 arcsec over the pole
    pos = np.radians(np.column_stack([dec, ra]))
    ref = np.zeros(len(ra), bool)
    for i, nb in enumerate(BallTree(pos, metric="haversine").query_radius(pos, r=np.radians(0.2 / 3600.0))):
        if not ref[i]:
            ref[nb[nb > i]] = True
    got = P.close_duplicates(ra, dec, 0.2)
    assert ref.sum() > 150 and ref[-1] and not ref[-2]
    np.testing.assert_array_equal(got, ref)
    assert not P.close_duplicates(ra[:1], dec[:1], 0.2).any() and len(P.close_duplicates([], [], 0.2)) == 0
