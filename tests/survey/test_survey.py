"""Tests of DR10 survey access (darkhaloscope.survey): brick names, sweep and coadd
readers on hand-written DR10-schema files, and the embedded mock survey writer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from darkhaloscope.lensing.psf import moffat_kernel, noise_equivalent_area
from darkhaloscope.survey import (REQUIRED_COLUMNS, SurveyError, brick_name, brick_wcs, coadd_relpath,
                                  find_coadd, read_coadd, read_sweep, read_sweeps)
from darkhaloscope.survey.bricks import bricks_of, read_brick_table, sweep_name
from darkhaloscope.survey.fs import glob
from darkhaloscope.survey.known_lenses import match_within, read_known_lenses
from darkhaloscope.survey.mock import MASK_ALLMASK, MockSurvey

# DR10 sweep formats (TFORM) of the required columns
DR10_FORMATS = {"RA": "D", "DEC": "D", "TYPE": "4A", "BRICKNAME": "8A", "OBJID": "J", "EBV": "E",
                "MASKBITS": "I", "RELEASE": "I", **{f"NOBS_{b}": "I" for b in "GRZ"}}


def dr10_sweep_columns(n: int = 4) -> dict:
    rng = np.random.default_rng(1)
    cols = {}
    for c in REQUIRED_COLUMNS:
        fmt = DR10_FORMATS.get(c, "E")
        if c == "TYPE":
            cols[c] = np.array([b"PSF ", b"DEV ", b"REX ", b"SER "][:n] + [b"EXP "] * max(0, n - 4), dtype="S4")
        elif c == "BRICKNAME":
            cols[c] = np.array([b"0460m800"] * n, dtype="S8")
        elif fmt == "D":
            cols[c] = (rng.uniform(0, 1, n) + (46.0 if c == "RA" else -80.0)).astype(">f8")
        elif fmt == "J":
            cols[c] = np.arange(n, dtype=">i4") + 7
        elif c == "RELEASE":
            cols[c] = np.full(n, 10000, ">i2")
        elif fmt == "I":
            cols[c] = rng.integers(0, 5, n).astype(">i2")
        else:
            cols[c] = rng.normal(10, 5, n).astype(">f4")
    return cols


def write_sweep(path: Path, cols: dict) -> None:
    fcols = [fits.Column(name=k, format=DR10_FORMATS.get(k, "E"), array=v) for k, v in cols.items()]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(fcols)]).writeto(path)


# --------------------------------------------------------------------------- sweeps
def test_read_sweep_dr10_schema_round_trip(tmp_path):
    cols = dr10_sweep_columns(5)
    path = tmp_path / "sweep-045m085-050m080.fits"
    write_sweep(path, cols)
    # the file really holds big-endian binary table columns as FITS requires
    with fits.open(path) as h:
        assert h[1].data["FLUX_R"].dtype.byteorder == ">"
        assert h[1].columns["TYPE"].format == "4A"
    out = read_sweep(str(path))
    assert set(REQUIRED_COLUMNS) <= set(out)
    assert out["TYPE"].tolist() == ["PSF", "DEV", "REX", "SER", "EXP"]
    assert out["BRICKNAME"].tolist() == ["0460m800"] * 5
    native = {"D": np.float64, "E": np.float32, "J": np.int32, "I": np.int16}
    for c, v in cols.items():
        if c in ("TYPE", "BRICKNAME"):
            continue
        want = native[DR10_FORMATS.get(c, "E")]
        assert out[c].dtype == np.dtype(want), c
        assert out[c].dtype.byteorder in ("=", "|"), c
        np.testing.assert_array_equal(out[c], v.astype(want), err_msg=c)


def test_read_sweep_optional_and_extra_columns(tmp_path):
    cols = dr10_sweep_columns(3)
    cols["FIBERFLUX_Z"] = np.array([1.0, 2.0, 3.0], ">f4")
    cols["FITBITS"] = np.array([1, 2, 3], ">i2")
    path = tmp_path / "s.fits"
    fcols = [fits.Column(name=k, format={"FIBERFLUX_Z": "E", "FITBITS": "I"}.get(k, DR10_FORMATS.get(k, "E")),
                         array=v) for k, v in cols.items()]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(fcols)]).writeto(path)
    out = read_sweep(str(path))
    np.testing.assert_array_equal(out["FIBERFLUX_Z"], [1.0, 2.0, 3.0])
    assert out["RELEASE"].tolist() == [10000] * 3 and out["RELEASE"].dtype == np.int16
    assert "FITBITS" not in out  # neither required nor optional: not converted


def test_read_sweeps_concatenates_with_file_index(tmp_path):
    a, b = dr10_sweep_columns(3), dr10_sweep_columns(2)
    write_sweep(tmp_path / "a.fits", a)
    write_sweep(tmp_path / "b.fits", b)
    cat, idx = read_sweeps([str(tmp_path / "a.fits"), str(tmp_path / "b.fits")])
    assert len(cat["RA"]) == 5
    assert idx.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(cat["FLUX_Z"][3:], b["FLUX_Z"])
    with pytest.raises(SurveyError, match="no sweep files found"):
        read_sweeps([])


def test_sweep_missing_column_names_file_and_column(tmp_path):
    cols = dr10_sweep_columns(3)
    del cols["PSFDEPTH_Z"]
    path = tmp_path / "sweep-bad.fits"
    write_sweep(path, cols)
    with pytest.raises(SurveyError) as e:
        read_sweep(str(path))
    msg = str(e.value)
    assert str(path) in msg and "PSFDEPTH_Z" in msg


def test_sweep_bad_type_value(tmp_path):
    cols = dr10_sweep_columns(3)
    cols["TYPE"] = np.array([b"PSF ", b"GAL ", b"DEV "], dtype="S4")
    path = tmp_path / "sweep-type.fits"
    write_sweep(path, cols)
    with pytest.raises(SurveyError, match="GAL") as e:
        read_sweep(str(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("content", [b"this is not a FITS file\n" * 20, b""])
def test_non_fits_sweep_names_file(tmp_path, content):
    path = tmp_path / "sweep-000m005-005p000.fits"
    path.write_bytes(content)
    with pytest.raises(SurveyError) as e:
        read_sweep(str(path))
    assert str(path) in str(e.value)


def test_sweep_without_table_and_missing_file(tmp_path):
    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(path)
    with pytest.raises(SurveyError, match="no binary table") as e:
        read_sweep(str(path))
    assert str(path) in str(e.value)
    missing = tmp_path / "nope.fits"
    with pytest.raises(SurveyError, match="not found") as e:
        read_sweep(str(missing))
    assert str(missing) in str(e.value)


# --------------------------------------------------------------------------- bricks
@pytest.mark.parametrize("ra, dec, name", [
    (46.0, -80.0, "0460m800"),
    (150.0, 0.5, "1500p005"),
    (0.125, -0.25, "0001m002"),   # a real DR10 brick centre
    (359.875, 89.9, "3598p899"),
    (2.3, 4.6, "0023p046"),       # 2.3 * 10 = 22.999999999999996 in floating point
    (12.35, -0.05, "0123m000"),
    (0.0, 0.0, "0000p000"),
])
def test_brick_name(ra, dec, name):
    assert brick_name(ra, dec) == name


def test_coadd_relpath_and_sweep_name():
    assert coadd_relpath("0460m800", "r") == "coadd/046/0460m800/legacysurvey-0460m800-image-r.fits.fz"
    assert (coadd_relpath("1500p005", "z", "invvar", ".fits")
            == "coadd/150/1500p005/legacysurvey-1500p005-invvar-z.fits")
    with pytest.raises(ValueError, match="model"):
        coadd_relpath("1500p005", "g", "model")
    assert sweep_name(150.0, 0.0) == "sweep-150p000-155p005.fits"
    assert sweep_name(0.0, -5.0) == "sweep-000m005-005p000.fits"


def test_brick_wcs_geometry():
    w = brick_wcs(150.0, 0.5, 200)
    x, y = w.all_world2pix([150.0], [0.5], 0)
    assert x[0] == pytest.approx(99.5) and y[0] == pytest.approx(99.5)
    # RA increases to the left, 0.262 arcsec per pixel
    r1, d1 = w.all_pix2world([10.0, 11.0], [50.0, 50.0], 0)
    assert (r1[1] - r1[0]) * 3600 == pytest.approx(-0.262, rel=1e-4)
    r2, d2 = w.all_pix2world([10.0, 10.0], [50.0, 51.0], 0)
    assert (d2[1] - d2[0]) * 3600 == pytest.approx(0.262, rel=1e-4)


# --------------------------------------------------------------------------- coadds
def test_read_coadd_without_wcs_names_file(tmp_path):
    path = tmp_path / coadd_relpath("1500p005", "r", "image", ".fits")
    path.parent.mkdir(parents=True)
    fits.PrimaryHDU(np.ones((20, 20), np.float32)).writeto(path)
    with pytest.raises(SurveyError) as e:
        read_coadd(str(path))
    assert str(path) in str(e.value) and "WCS" in str(e.value)
    data, wcs = read_coadd(str(path), need_wcs=False)   # an invvar map needs no WCS
    assert wcs is None and data.shape == (20, 20) and data.dtype == np.float32
    with pytest.raises(SurveyError, match="not found"):
        read_coadd(str(tmp_path / "missing.fits"))
    bad = tmp_path / "garbage.fits"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(SurveyError) as e:
        read_coadd(str(bad))
    assert str(bad) in str(e.value)


def test_read_coadd_with_wcs_and_find_coadd_preference(tmp_path):
    w = brick_wcs(150.0, 0.5, 50)
    data = np.arange(2500, dtype=np.float32).reshape(50, 50)
    p_fits = tmp_path / coadd_relpath("1500p005", "g", "image", ".fits")
    p_fits.parent.mkdir(parents=True)
    fits.PrimaryHDU(data, header=w.to_header()).writeto(p_fits)
    assert find_coadd(str(tmp_path), "1500p005", "g") == str(p_fits)
    assert find_coadd(str(tmp_path), "1500p005", "r") is None
    got, wcs = read_coadd(str(p_fits))
    np.testing.assert_array_equal(got, data)
    np.testing.assert_allclose(wcs.all_world2pix([[150.0, 0.5]], 0), [[24.5, 24.5]], atol=1e-9)
    # an fpack-compressed file (image in HDU 1) is preferred when both exist
    p_fz = tmp_path / coadd_relpath("1500p005", "g", "image")
    hdu = fits.CompImageHDU(data * 2, header=w.to_header(), compression_type="GZIP_2", quantize_level=0.0)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(p_fz)
    assert find_coadd(str(tmp_path), "1500p005", "g") == str(p_fz)
    got, _ = read_coadd(str(p_fz))
    np.testing.assert_array_equal(got, data * 2)


# --------------------------------------------------------------------------- known lenses
def test_match_within_hand_values():
    ref_ra, ref_dec = np.array([150.0]), np.array([0.5])
    ra = np.array([150.0, 150.0, 150.0 + 6.0 / 3600.0])
    dec = np.array([0.5 + 4.9 / 3600.0, 0.5 + 5.1 / 3600.0, 0.5])
    near, sep = match_within(ra, dec, ref_ra, ref_dec, 5.0)
    assert near.tolist() == [True, False, False]
    np.testing.assert_allclose(sep, [4.9, 5.1, 6.0 * np.cos(np.radians(0.5))], rtol=1e-6)
    near, sep = match_within(ra, dec, np.array([]), np.array([]), 5.0)
    assert not near.any() and np.isinf(sep).all()


# --------------------------------------------------------------------------- mock survey
@pytest.fixture(scope="module")
def mock_survey(tmp_path_factory, tiny_mock):
    root = tmp_path_factory.mktemp("mock") / "survey"
    survey = MockSurvey(tiny_mock)
    summary = survey.write(root)
    return survey, root, summary


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_mock_survey_layout_and_byte_identical(mock_survey, tmp_path):
    survey, root, summary = mock_survey
    assert summary == {"n_bricks": 2, "n_objects": summary["n_objects"], "n_known_lenses": 1,
                       "brick_size_pix": 200,
                       "impostors": {c: 0 for c in ("ring", "spiral", "merger", "edge_on", "clumpy", "pair")}}
    assert [b[0] for b in survey.bricks] == ["1500p005", "1510p005"]
    first = _tree(root)
    for brick in ("1500p005", "1510p005"):
        for band in "grz":
            for kind in ("image", "invvar"):
                assert coadd_relpath(brick, band, kind) in first
    assert "known_lenses.fits" in first and "survey-bricks.fits" in first and "impostors.fits" in first
    assert any(k.startswith("sweep/sweep-") for k in first)
    # a second write of the same config gives the same bytes, file by file
    again = tmp_path / "again" / "survey"
    MockSurvey(dict(survey.p)).write(again)
    second = _tree(again)
    assert sorted(second) == sorted(first)
    for k in first:
        assert first[k] == second[k], k
    # a different seed gives different pixels
    other = tmp_path / "other" / "survey"
    MockSurvey({**survey.p, "seed": survey.p["seed"] + 1}).write(other)
    key = coadd_relpath("1500p005", "r", "image")
    assert (other / key).read_bytes() != first[key]


def _catalogue(root: Path) -> dict:
    cat, _ = read_sweeps(glob(str(root), "sweep/sweep-*.fits"))
    return cat


def test_mock_noise_matches_psfdepth(mock_survey):
    """sigma_pix = 1 / sqrt(PSFDEPTH * NEA), NEA = 1 / sum(P^2) of the brick's Moffat kernel."""
    survey, root, _ = mock_survey
    cat = _catalogue(root)
    n = survey.n
    for index, (brick, _, _) in enumerate(survey.bricks):
        cond = survey.render_brick(index)["cond"]
        sel = cat["BRICKNAME"] == brick
        for band in "grz":
            img, wcs = read_coadd(find_coadd(str(root), brick, band, "image"))
            iv, _ = read_coadd(find_coadd(str(root), brick, band, "invvar"), need_wcs=False)
            psfdepth = float(cat[f"PSFDEPTH_{band.upper()}"][sel][0])
            assert np.all(cat[f"PSFDEPTH_{band.upper()}"][sel] == psfdepth)
            psfsize = float(cat[f"PSFSIZE_{band.upper()}"][sel][0])
            if index in survey.psf0_bricks and band == "z":
                assert psfsize == 0.0  # as in real DR10; the truth comes from the brick conditions
                psfsize = cond.fwhm["z"]
            else:
                assert psfsize == pytest.approx(cond.fwhm[band], rel=1e-6)
            assert psfdepth == pytest.approx(cond.psfdepth(band), rel=1e-6)
            kernel = moffat_kernel(psfsize, beta=survey.p["moffat_beta"], pixel_scale=0.262, size=33, oversample=3)
            sigma_pix = 1.0 / np.sqrt(psfdepth * noise_equivalent_area(kernel))
            good = iv > 0
            np.testing.assert_allclose(iv[good], 1.0 / sigma_pix**2, rtol=1e-5)
            # object-free pixels: > 25 px from every catalogue object, unmasked
            x, y = wcs.all_world2pix(cat["RA"][sel], cat["DEC"][sel], 0)
            yy, xx = np.mgrid[0:n, 0:n]
            free = good.copy()
            for xo, yo in zip(x, y):
                free &= (xx - xo) ** 2 + (yy - yo) ** 2 > 25.0**2
            free[:, 1:] &= free[:, :-1]  # both pixels of each horizontal pair are free
            assert free.sum() > 10000
            # differences of neighbours cancel any smooth residual light; std / sqrt(2) is sigma
            d = (img[:, 1:] - img[:, :-1])[free[:, 1:]] / np.sqrt(2.0)
            measured = float(np.std(d))
            assert measured == pytest.approx(sigma_pix, rel=0.05), (brick, band, measured, sigma_pix)
            assert float(np.std(img[free])) == pytest.approx(sigma_pix, rel=0.05)


def test_mock_masked_pixels(mock_survey):
    survey, root, _ = mock_survey
    cat = _catalogue(root)
    for index, (brick, _, _) in enumerate(survey.bricks):
        masks = []
        for band in "grz":
            iv, _ = read_coadd(find_coadd(str(root), brick, band, "invvar"), need_wcs=False)
            img, wcs = read_coadd(find_coadd(str(root), brick, band, "image"))
            masked = iv == 0
            masks.append(masked)
            # the image is zeroed there (to within the RICE quantisation step, sigma_pix / 16)
            sigma_pix = 1.0 / np.sqrt(iv[~masked].max())
            assert masked.any() and np.abs(img[masked]).max() < 0.1 * sigma_pix
        np.testing.assert_array_equal(masks[0], masks[1])
        np.testing.assert_array_equal(masks[0], masks[2])
        m = masks[0]
        # one bleed trail (n_mask_trails 1): 2-5 columns wide, 80-99 rows long
        cols = np.flatnonzero(m.any(axis=0))
        assert 2 <= len(cols) <= 5
        assert 80 <= m[:, cols[0]].sum() < 100
        assert m.sum() == survey.render_brick(index)["n_masked"]
        # catalogue objects sitting on a masked pixel carry ALLMASK bits, the others none
        sel = cat["BRICKNAME"] == brick
        x, y = wcs.all_world2pix(cat["RA"][sel], cat["DEC"][sel], 0)
        on = m[np.clip(np.round(y).astype(int), 0, survey.n - 1), np.clip(np.round(x).astype(int), 0, survey.n - 1)]
        np.testing.assert_array_equal(cat["MASKBITS"][sel] == MASK_ALLMASK, on)


def test_mock_known_lenses_fall_in_their_brick(mock_survey):
    survey, root, _ = mock_survey
    known = read_known_lenses(str(root), "known_lenses.fits")
    assert len(known["ra"]) == 1
    with fits.open(root / "known_lenses.fits") as h:
        t = h[1].data
        bricks = [b.strip() for b in t["BRICKNAME"]]
        theta_e = np.asarray(t["THETA_E"])
        mag = np.asarray(t["MAGNIFICATION"])
    assert bricks == [survey.bricks[int(survey.lens_bricks[0])][0]]
    assert ((theta_e >= 1.0) & (theta_e <= 2.4)).all() and (mag > 1).all()
    table = read_brick_table(str(root))
    assert bricks_of(table, known["ra"], known["dec"]) == bricks
    cat = _catalogue(root)
    for ra, dec, brick in zip(known["ra"], known["dec"], bricks):
        _, wcs = read_coadd(find_coadd(str(root), brick, "r", "image"))
        x, y = wcs.all_world2pix([ra], [dec], 0)
        assert 0 <= x[0] <= survey.n - 1 and 0 <= y[0] <= survey.n - 1
        # placed >= n // 4 = 50 px from the edges on this 200-px brick (120 px on bricks >= 480 px)
        assert 50 <= x[0] <= 150 and 50 <= y[0] <= 150
        # the lens galaxy itself is in the catalogue: a bright extended (DEV) object at that position
        sel = cat["BRICKNAME"] == brick
        near, sep = match_within(cat["RA"][sel], cat["DEC"][sel], np.array([ra]), np.array([dec]), 0.01)
        assert near.sum() == 1 and cat["TYPE"][sel][near][0] == "DEV"
    # positions outside every brick map to None
    assert bricks_of(table, [10.0], [10.0]) == [None]


def test_mock_sweeps_readable_and_split_by_5deg_boxes(mock_survey):
    survey, root, summary = mock_survey
    paths = glob(str(root), "sweep/sweep-*.fits")
    cat, idx = read_sweeps(paths)
    assert len(cat["RA"]) == summary["n_objects"]
    for i, p in enumerate(paths):
        ra_lo = np.floor(cat["RA"][idx == i] / 5) * 5
        dec_lo = np.floor(cat["DEC"][idx == i] / 5) * 5
        assert len(set(zip(ra_lo.tolist(), dec_lo.tolist()))) == 1
        assert os.path.basename(p) == sweep_name(ra_lo[0], dec_lo[0])
    assert set(np.unique(cat["TYPE"])) <= {"PSF", "REX", "DEV", "EXP", "SER"}
    # PSFSIZE_Z is 0 on exactly psfsize_zero_bricks = 1 brick
    zero = {b for b, s in zip(cat["BRICKNAME"], cat["PSFSIZE_Z"]) if s == 0}
    assert len(zero) == 1


@pytest.mark.parametrize("ra, dec", [(400.0, 1.0), (-1.0, 1.0), (10.0, 91.0), (np.nan, 0.0)])
def test_known_lens_coordinates_out_of_range_name_the_file(tmp_path, ra, dec):
    path = tmp_path / "known.fits"
    fits.BinTableHDU.from_columns([fits.Column("RA", "D", array=np.array([150.0, ra])),
                                   fits.Column("DEC", "D", array=np.array([0.5, dec]))]).writeto(path)
    with pytest.raises(SurveyError, match=r"known.fits: 1 of 2 known lenses .*RA must be in \[0, 360\)"):
        read_known_lenses(str(tmp_path), "known.fits")


def test_reader_follows_the_fits_integer_and_scaling_conventions(tmp_path):
    """Unsigned integers (TZERO 2**15, 2**31, 2**63), a scaled column (TSCAL/TZERO -> float64), bool L,
    a vector column: the streaming reader gives what astropy gives, in row blocks of any size."""
    from darkhaloscope.survey.sweeps import SweepFile

    n = 7
    cols = [fits.Column("U16", "I", bzero=32768, array=np.array([0, 1, 40000, 65535, 7, 8, 9], np.uint16)),
            fits.Column("U32", "J", bzero=2**31, array=np.array([0, 1, 2**32 - 1, 5, 6, 7, 8], np.uint32)),
            fits.Column("U64", "K", bzero=2**63, array=np.array([0, 1, 2**64 - 1, 3, 4, 5, 2**63], np.uint64)),
            fits.Column("SCALED", "I", array=np.arange(n, dtype=np.int16)),   # TSCAL4 0.5, TZERO4 10 below
            fits.Column("FLAG", "L", array=np.array([True, False, True, True, False, False, True])),
            fits.Column("VEC", "3E", array=np.arange(3 * n, dtype=np.float32).reshape(n, 3)),
            fits.Column("NAME", "5A", array=np.array([b"ab", b" cd ", b"", b"abcde", b"x", b"y", b"z"]))]
    path = tmp_path / "conv.fits"
    hdu = fits.BinTableHDU.from_columns(cols)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    with fits.open(path, mode="update") as h:  # scale the raw int16 values 0..6 to 10, 10.5, ... 13
        h[1].header["TSCAL4"], h[1].header["TZERO4"] = 0.5, 10.0
    sw = SweepFile.open(str(path))
    with fits.open(path) as h:
        ref = h[1].data
        for chunk in (1, 3 * sw.row_bytes, 1 << 20):
            got = sw.read([c.name for c in cols], chunk_bytes=chunk)
            for c in cols:
                want = np.asarray(ref[c.name])
                if want.dtype.kind in "SU":
                    want = np.char.strip(want.astype("U"))
                np.testing.assert_array_equal(got[c.name], want, err_msg=c.name)
    assert got["U64"].dtype == np.uint64 and got["U16"].dtype == np.uint16 and got["SCALED"].dtype == np.float64
    assert got["SCALED"].tolist() == [10.0, 10.5, 11.0, 11.5, 12.0, 12.5, 13.0]
    assert got["U64"][2] == 2**64 - 1 and got["U32"][2] == 2**32 - 1 and got["U16"][3] == 65535
    with pytest.raises(SurveyError, match=r"conv.fits: column\(s\) VEC \(3E\) are not scalar"):
        sw.require(["U16", "VEC"])


def test_sweep_header_inconsistent_with_its_columns_is_named(tmp_path):
    path = tmp_path / "bad.fits"
    write_sweep(path, dr10_sweep_columns(3))
    raw = bytearray(path.read_bytes())
    i = raw.index(b"NAXIS1  =", 2880)
    raw[i:i + 80] = f"{'NAXIS1':8s}= {999:20d}".ljust(80).encode()
    path.write_bytes(bytes(raw))
    with pytest.raises(SurveyError, match=r"bad.fits: the TFORMs of its 33 columns add up to \d+ bytes per row but "
                                          r"NAXIS1 says 999"):
        read_sweep(str(path))
