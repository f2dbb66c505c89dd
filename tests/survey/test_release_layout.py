"""The DR10 release as it is laid out, and real files written by the Legacy Surveys' own software.

Real files (tests/data/realdata/, see its README for origins and licences): legacypipe brick tables
(gzip, lower-case columns), desitarget's DR8 sweeps and tractor catalogues (96 upper-case columns, no
DR10 shape/PSF columns), and a legacypipe runbrick coadd of brick 1102p240 with its tractor catalogue
(the pipeline's own pixel positions bx, by).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import _dr10 as D
from darkhaloscope.errors import SurveyError
from darkhaloscope.survey import fs
from darkhaloscope.survey.bricks import (bricks_of, brick_table_candidates, find_brick_table, read_brick_file,
                                         read_brick_table)
from darkhaloscope.survey.coadds import find_coadd, read_coadd
from darkhaloscope.survey.sweeps import (DEFAULT_SWEEP_GLOB, REQUIRED_COLUMNS, SweepFile, list_sweeps,
                                         read_sweep)

REAL = D.REALDATA
DR8_SWEEPS = sorted((REAL / "desitarget").glob("sweep-*.fits"))
BRICK_6 = REAL / "legacypipe" / "survey-bricks-testcase6.fits.gz"   # brick 1102p240
OBIWAN = REAL / "obiwan_1102p240"


def test_real_files_are_present_with_their_licences():
    assert len(DR8_SWEEPS) == 3 and len(list((REAL / "legacypipe").glob("*.fits.gz"))) == 9
    for lic in ("desitarget-LICENSE.rst", "legacypipe-LICENSE", "obiwan-LICENSE.rst"):
        assert (REAL / "licenses" / lic).read_text().strip()
    readme = (REAL / "README.md").read_text()
    for origin in ("desihub/desitarget", "legacysurvey/legacypipe", "legacysurvey/obiwan"):
        assert origin in readme


# --------------------------------------------------------------------------- brick tables
def _region(tmp_path: Path) -> tuple[Path, Path]:
    """dr10/ with an all-sky table (upper case, every real brick) and dr10/south/ with the region's own
    table (the real legacypipe file of brick 1102p240: gzip, lower case)."""
    dr10 = tmp_path / "dr10"
    south = dr10 / "south"
    south.mkdir(parents=True)
    shutil.copy(BRICK_6, south / "survey-bricks-dr10-south.fits.gz")
    D.write_brick_table(dr10 / "survey-bricks.fits.gz", D.real_brick_rows(), upper=True, gz=True)
    return dr10, south


def test_brick_table_lookup_order_on_the_release_layout(tmp_path):
    dr10, south = _region(tmp_path)
    assert brick_table_candidates(str(south)) == [
        f"{south}/survey-bricks-dr10-south.fits.gz", f"{dr10}/survey-bricks.fits.gz",
        f"{south}/survey-bricks.fits", f"{south}/survey-bricks.fits.gz"]
    # 1. the region's own table (lower-case columns, only the bricks with data)
    t = read_brick_table(str(south))
    assert t["brickname"].tolist() == ["1102p240"] and t["brickid"].tolist() == [465217]
    np.testing.assert_allclose([t["ra1"][0], t["ra2"][0], t["dec1"][0], t["dec2"][0]],
                               [110.07587253414266, 110.34901365705616, 23.875, 24.125], rtol=0, atol=1e-12)
    # 2. without it, the all-sky table one level up (upper-case columns)
    (south / "survey-bricks-dr10-south.fits.gz").unlink()
    t = read_brick_table(str(south))
    assert sorted(t["brickname"].tolist()) == sorted(r[0] for r in D.real_brick_rows())
    # a trailing slash names the same region
    assert find_brick_table(str(south) + "/") == f"{dr10}/survey-bricks.fits.gz"
    # 3. without both, the root's own survey-bricks.fits (the mock's)
    (dr10 / "survey-bricks.fits.gz").unlink()
    D.write_brick_table(south / "survey-bricks.fits", D.real_brick_rows()[:2], upper=True, gz=False)
    assert len(read_brick_table(str(south))["brickname"]) == 2
    (south / "survey-bricks.fits").unlink()
    with pytest.raises(SurveyError) as e:
        read_brick_table(str(south))
    for cand in brick_table_candidates(str(south)):
        assert cand in str(e.value)


def test_dr9_north_region_table_name(tmp_path):
    north = tmp_path / "dr9" / "north"
    north.mkdir(parents=True)
    shutil.copy(REAL / "legacypipe" / "survey-bricks-mzlsbass2.fits.gz", north / "survey-bricks-dr9-north.fits.gz")
    assert read_brick_table(str(north))["brickname"].tolist() == ["1773p595"]


def test_every_real_legacypipe_brick_table_reads(tmp_path):
    for p in sorted((REAL / "legacypipe").glob("*.fits.gz")):
        t = read_brick_file(str(p))
        with fits.open(p) as h:  # astropy decompresses by the name: the reference
            ref = h[1].data
        assert t["brickname"].tolist() == [str(x).strip() for x in ref["brickname"]]
        for c in ("ra1", "ra2", "dec1", "dec2"):
            np.testing.assert_array_equal(t[c], ref[c])
        assert bricks_of(t, (t["ra1"] + t["ra2"]) / 2, (t["dec1"] + t["dec2"]) / 2) == t["brickname"].tolist()


def test_brick_table_gzip_or_not_whatever_the_name(tmp_path):
    raw = gzip.decompress(BRICK_6.read_bytes())
    plain_named_gz = tmp_path / "a" / "survey-bricks.fits.gz"
    plain_named_gz.parent.mkdir()
    plain_named_gz.write_bytes(raw)             # not compressed, named .gz
    assert read_brick_table(str(tmp_path / "a"))["brickname"].tolist() == ["1102p240"]
    gz_named_plain = tmp_path / "b" / "survey-bricks.fits"
    gz_named_plain.parent.mkdir()
    gz_named_plain.write_bytes(BRICK_6.read_bytes())   # compressed, named .fits
    assert read_brick_table(str(tmp_path / "b"))["brickname"].tolist() == ["1102p240"]


@pytest.mark.parametrize("case", ["truncated_gzip", "not_fits", "no_table", "missing_columns"])
def test_bad_brick_tables_name_the_file(tmp_path, case):
    path = tmp_path / "survey-bricks.fits.gz"
    if case == "truncated_gzip":
        path.write_bytes(BRICK_6.read_bytes()[:300])
        want = "truncated"
    elif case == "not_fits":
        path.write_bytes(gzip.compress(b"brickname,ra1\n1102p240,110.07\n" * 40))
        want = "not a readable FITS brick table"
    elif case == "no_table":
        fits.PrimaryHDU(np.zeros((3, 3))).writeto(path)
        want = "no binary table HDU"
    else:
        fits.BinTableHDU.from_columns([fits.Column("brickname", "8A", array=np.array([b"1102p240"])),
                                       fits.Column("ra1", "D", array=np.array([110.0]))]).writeto(path)
        want = "lacks column(s) RA2, DEC1, DEC2"
    with pytest.raises(SurveyError) as e:
        read_brick_table(str(tmp_path))
    assert str(path) in str(e.value) and want in str(e.value), str(e.value)


def _release_grid(dec_step: float = 0.25) -> dict:
    """A release-like all-sky brick grid: rows of dec_step deg, ~0.25 deg / cos(dec) wide bricks."""
    names, r1, r2, d1, d2 = [], [], [], [], []
    for k, dlo in enumerate(np.arange(-90.0, 90.0, dec_step)):
        dmid = dlo + dec_step / 2
        n = max(1, int(round(360.0 * np.cos(np.radians(dmid)) / 0.25)))
        edges = np.linspace(0.0, 360.0, n + 1)
        for i in range(n):
            names.append(f"r{k}b{i}")
            r1.append(edges[i]), r2.append(edges[i + 1]), d1.append(dlo), d2.append(dlo + dec_step)
    return {"brickname": np.array(names), "ra1": np.array(r1), "ra2": np.array(r2), "dec1": np.array(d1),
            "dec2": np.array(d2)}


def test_bricks_of_binary_search_equals_the_scan():
    t = _release_grid()
    rng = np.random.default_rng(4)
    ra = np.r_[rng.uniform(0, 360, 300), t["ra1"][::997], t["ra2"][::991] - 1e-12, 0.0, 359.9999999, np.nan]
    dec = np.r_[rng.uniform(-90, 90, 300), t["dec1"][::997], t["dec1"][::991], -90.0, 89.9999999, 0.0]
    fast = bricks_of(t, ra, dec)
    slow = []
    for r, d in zip(ra, dec):
        hit = np.flatnonzero((t["ra1"] <= r) & (r < t["ra2"]) & (t["dec1"] <= d) & (d < t["dec2"]))
        slow.append(str(t["brickname"][hit[0]]) if len(hit) else None)
    assert fast == slow and sum(x is None for x in fast) == 1   # only the NaN position is on no brick
    # overlapping bricks (not a grid): the first brick in table order, as the scan
    o = {"brickname": np.array(["a", "b"]), "ra1": np.array([0.0, 0.5]), "ra2": np.array([1.0, 1.5]),
         "dec1": np.array([0.0, 0.0]), "dec2": np.array([1.0, 1.0])}
    assert bricks_of(o, [0.7, 1.2, 2.0], [0.5, 0.5, 0.5]) == ["a", "b", None]


# --------------------------------------------------------------------------- sweeps: names, layout
def _release_tree(root: Path) -> Path:
    """dr10/south/sweep/ as the release lays it out: 10.1/ sweeps and their -ex / -lc / -pz companions."""
    rows = D.sweep_rows(20)
    D.write_sweep(root / "sweep" / "10.1" / "sweep-150p000-155p005.fits", rows)
    D.write_sweep(root / "sweep" / "10.1" / "sweep-155p000-160p005.fits", D.sweep_rows(10, ra0=155.5, seed=1))
    for sub, end in (("10.1-extra", "-ex"), ("10.1-lightcurves", "-lc"), ("10.1-photo-z", "-pz")):
        D.write_sweep(root / "sweep" / sub / f"sweep-150p000-155p005{end}.fits",
                      {"RELEASE": rows["RELEASE"], "OBJID": rows["OBJID"]})
    return root


def test_default_glob_finds_only_the_sweeps_of_the_release(tmp_path):
    root = _release_tree(tmp_path / "dr10" / "south")
    hits = list_sweeps(str(root), DEFAULT_SWEEP_GLOB)
    assert [Path(p).relative_to(root).as_posix() for p, _ in hits] == [
        "sweep/10.1/sweep-150p000-155p005.fits", "sweep/10.1/sweep-155p000-160p005.fits"]
    assert [n for _, n in hits] == [Path(p).stat().st_size for p, _ in hits]
    # and the mock's layout (sweeps directly in sweep/) with the same glob
    mock = tmp_path / "mock"
    D.write_sweep(mock / "sweep" / "sweep-150p000-155p005.fits", D.sweep_rows(3))
    assert len(list_sweeps(str(mock), DEFAULT_SWEEP_GLOB)) == 1


@pytest.mark.parametrize("pattern, culprit, why", [
    ("sweep/**/*.fits", "sweep-150p000-155p005-ex.fits", "sweep-extra file"),
    ("sweep/10.1-lightcurves/*.fits", "sweep-150p000-155p005-lc.fits", "light-curve file"),
    ("sweep/*/sweep-150p000-155p005-pz.fits", "sweep-150p000-155p005-pz.fits", "photo-z file"),
])
def test_a_glob_matching_non_sweeps_is_refused_by_name(tmp_path, pattern, culprit, why, monkeypatch):
    root = _release_tree(tmp_path / "dr10" / "south")
    opened = []
    monkeypatch.setattr(SweepFile, "open", classmethod(lambda cls, p, size=None: opened.append(p)))
    with pytest.raises(SurveyError) as e:
        list_sweeps(str(root), pattern)
    msg = str(e.value)
    assert culprit in msg.split(":")[0] and why in msg and "survey.sweep_glob" in msg, msg
    assert opened == []  # nothing was read


def test_tractor_catalogues_are_not_sweeps(tmp_path):
    with pytest.raises(SurveyError, match=r"tractor-3301m002\.fits: .*not a sweep: its name is not a sweep's"):
        list_sweeps(str(REAL), "desitarget/*.fits")


def test_two_versions_of_a_sweep_box_are_refused(tmp_path):
    root = tmp_path / "south"
    D.write_sweep(root / "sweep" / "10.0" / "sweep-150p000-155p005.fits", D.sweep_rows(3))
    D.write_sweep(root / "sweep" / "10.1" / "sweep-150p000-155p005.fits", D.sweep_rows(3))
    with pytest.raises(SurveyError) as e:
        list_sweeps(str(root), DEFAULT_SWEEP_GLOB)
    msg = str(e.value)
    assert "10.0/sweep-150p000-155p005.fits" in msg and "10.1/sweep-150p000-155p005.fits" in msg
    assert "matched twice" in msg


def test_no_sweeps_names_root_glob_and_the_release_layout(tmp_path):
    with pytest.raises(SurveyError) as e:
        list_sweeps(str(tmp_path), DEFAULT_SWEEP_GLOB)
    msg = str(e.value)
    assert f"{tmp_path}/{DEFAULT_SWEEP_GLOB}" in msg and f"{tmp_path}/sweep/10.1/sweep-*.fits" in msg


# --------------------------------------------------------------------------- real DR8 sweeps
@pytest.mark.parametrize("path", DR8_SWEEPS, ids=lambda p: p.name)
def test_real_dr8_sweeps_are_refused_naming_the_missing_dr10_columns(path):
    with pytest.raises(SurveyError) as e:
        read_sweep(str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}: missing DR10 sweep column(s) PSFSIZE_G, PSFSIZE_R, PSFSIZE_Z, SHAPE_R, SHAPE_E1, "
                          f"SHAPE_E2, SERSIC;"), msg


@pytest.mark.parametrize("path", DR8_SWEEPS + sorted((REAL / "desitarget").glob("tractor-*.fits"))
                         + [OBIWAN / "tractor-i-1102p240.fits"], ids=lambda p: p.name)
@pytest.mark.parametrize("chunk_bytes", [1, 1000, 1 << 25])
def test_streaming_reader_equals_astropy_on_real_files(path, chunk_bytes):
    """Every column the Legacy Surveys wrote (padded 4A TYPE, int16 MASKBITS, K REF_ID, L, B with
    TZERO -128, 5E DCHISQ, 8E APFLUX), read in row blocks of chunk_bytes, as astropy reads it whole."""
    sw = SweepFile.open(str(path))
    names = list(sw.columns)
    got = sw.read(names, chunk_bytes=chunk_bytes)
    with fits.open(path) as h:
        ref = h[1].data
        assert sw.n_rows == len(ref) and sw.row_bytes == h[1].header["NAXIS1"]
        for n in names:
            want = np.asarray(ref[sw.columns[n].name])
            if want.dtype.kind in "SU":
                want = np.char.strip(want.astype("U"))
            a = got[n]
            assert a.dtype.byteorder in ("=", "|"), n
            np.testing.assert_array_equal(a, want.reshape(a.shape), err_msg=n)


def test_real_dr8_sweep_through_phase3_names_the_file(tmp_path):
    from darkhaloscope.catalog.parent import select_file

    with pytest.raises(SurveyError, match=r"sweep-310m005-320p000\.fits: missing DR10 sweep column\(s\) PSFSIZE_G"):
        select_file(str(DR8_SWEEPS[0]), "v3_color_relaxed", False, {"v3_color_relaxed": {
            "z_max": 20.4, "rz_min": 0.4, "zw1_min": 0.8}})


# --------------------------------------------------------------------------- real coadds
def test_cutout_position_of_real_tractor_sources_to_a_thousandth_of_a_pixel():
    """legacypipe's own pixel positions (bx, by: 0-based, in the coadd's pixel grid) against the project's
    (the coadd's TAN WCS through stamps.cutout.cutout_origin), on a runbrick zoom of brick 1102p240."""
    from darkhaloscope.stamps.cutout import cutout_origin

    path = find_coadd(str(OBIWAN), "1102p240", "z", "image")
    assert path == str(OBIWAN / "coadd/110/1102p240/legacysurvey-1102p240-image-z.fits.fz")
    img, wcs = read_coadd(path)
    assert img.shape == (100, 100) and img.dtype == np.float32 and np.isfinite(img).all()
    iv, none = read_coadd(find_coadd(str(OBIWAN), "1102p240", "z", "invvar"), need_wcs=False)
    assert none is None and iv.shape == (100, 100) and (iv >= 0).all() and (iv > 0).any()
    with fits.open(path) as h:
        assert h[1].header["BUNIT"].strip() == "nanomaggy" and h[1].header["CRPIX1"] == 1300.5
    with fits.open(OBIWAN / "tractor-i-1102p240.fits") as h:
        t = h[1].data
        ra, dec, bx, by = (np.asarray(t[c], np.float64) for c in ("ra", "dec", "bx", "by"))
    assert len(ra) == 2
    for r, d, x_true, y_true in zip(ra, dec, bx, by):
        x0, y0, dx, dy = cutout_origin(wcs, r, d, 64)
        assert abs(x0 + 32 + dx - x_true) < 1e-3 and abs(y0 + 32 + dy - y_true) < 1e-3
    # and the brick table maps the sources to their brick
    assert bricks_of(read_brick_file(str(BRICK_6)), ra, dec) == ["1102p240", "1102p240"]


# --------------------------------------------------------------------------- truncated sweeps
@pytest.mark.parametrize("cut", ["in_primary_header", "after_primary", "in_table_header", "in_rows", "last_row"])
def test_truncated_sweep_is_a_survey_error_naming_the_file(tmp_path, cut):
    full = D.write_sweep(tmp_path / "full.fits", D.sweep_rows(50))
    raw = full.read_bytes()
    sw = SweepFile.open(str(full))
    at = {"in_primary_header": 1000, "after_primary": 2880, "in_table_header": 2880 + 900,
          "in_rows": sw.data_offset + 10 * sw.row_bytes + 7, "last_row": sw.data_offset + 50 * sw.row_bytes - 1}[cut]
    path = tmp_path / "sweep" / "sweep-150p000-155p005.fits"
    path.parent.mkdir()
    path.write_bytes(raw[:at])
    for call in (lambda: read_sweep(str(path)), lambda: SweepFile.open(str(path))):
        with pytest.raises(SurveyError) as e:
            call()
        assert str(e.value).startswith(f"{path}: ") and ("truncated" in str(e.value)), str(e.value)
    from darkhaloscope.catalog.parent import build_parent

    p = {"survey": {"root": str(tmp_path), "sweep_glob": DEFAULT_SWEEP_GLOB, "known_lenses": "x.fits"},
         "selection": {"variant": "v3_color_relaxed", "deredden": False, "engine": "inprocess",
                       "variants": {"v3_color_relaxed": {"z_max": 20.4, "rz_min": 0.4, "zw1_min": 0.8}}}}
    with pytest.raises(SurveyError, match="truncated") as e:
        build_parent(p)
    assert str(path) in str(e.value)


def test_the_file_shrinking_while_it_is_read_is_named(tmp_path, monkeypatch):
    path = D.write_sweep(tmp_path / "sweep-150p000-155p005.fits", D.sweep_rows(40))
    sw = SweepFile.open(str(path))
    path.write_bytes(path.read_bytes()[: sw.data_offset + 5 * sw.row_bytes])  # after the header was read
    with pytest.raises(SurveyError, match=r"truncated while reading: rows 0-39 of 40") as e:
        list(sw.iter_records(["RA"]))
    assert str(path) in str(e.value)


# --------------------------------------------------------------------------- never the whole file
def test_sweeps_are_never_read_whole(tmp_path, monkeypatch):
    path = D.write_sweep(tmp_path / "sweep-150p000-155p005.fits", D.sweep_rows(300))

    def refuse(p):
        raise AssertionError(f"fs.read_bytes({p}) called: a sweep must be read column-wise")

    monkeypatch.setattr(fs, "read_bytes", refuse)
    sizes = []
    sw = SweepFile.open(str(path))
    for rec in sw.iter_records(list(REQUIRED_COLUMNS), chunk_bytes=40 * sw.row_bytes):
        sizes.append(len(rec))
    assert sizes == [40] * 7 + [20]
    out = read_sweep(str(path))
    assert len(out["RA"]) == 300 and out["TYPE"].dtype.kind == "U"


@pytest.mark.parametrize("case", ["gzip", "truncated", "not_fits"])
def test_known_lens_tables_gzip_or_broken(tmp_path, case):
    from darkhaloscope.survey.known_lenses import read_known_lenses

    buf = tmp_path / "plain.fits"
    fits.BinTableHDU.from_columns([fits.Column("RA", "D", array=np.array([150.0])),
                                   fits.Column("DEC", "D", array=np.array([0.5]))]).writeto(buf)
    path = tmp_path / "known.fits.gz"
    if case == "gzip":
        path.write_bytes(gzip.compress(buf.read_bytes()))
        assert read_known_lenses(str(tmp_path), "known.fits.gz")["ra"].tolist() == [150.0]
        return
    path.write_bytes(gzip.compress(buf.read_bytes())[:100] if case == "truncated" else b"RA,DEC\n150,0.5\n" * 200)
    with pytest.raises(SurveyError) as e:
        read_known_lenses(str(tmp_path), "known.fits.gz")
    assert str(e.value).startswith(f"{path}: "), str(e.value)
