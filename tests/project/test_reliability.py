"""Reliability, fast half: bad input gives a message naming the file / column / key and what
was expected (or is skipped and counted in the stage's metrics), the stage scripts print that
message as one line instead of a traceback, and the splits, controls, mined negatives,
metadata and normalisation do not leak.

The slow half (`dvc repro` determinism, SIGKILL recovery, unreachable S3 through a stage) is
tests/e2e/test_reliability_e2e.py. Everything here runs on CPU under tmp_path; the stage scripts
run in a copy of stages/ and src/ (tests/_tinyrepo.py), never in the working repository.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import math
import shutil
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from astropy.io import fits

import _stamps as S
import _tinyrepo as T
import darkhaloscope.model.train as train_mod
from darkhaloscope.model import mining
from darkhaloscope.stamps import seeds as seeds_format
from darkhaloscope.model.checkpoint import load_checkpoint, save_checkpoint
from darkhaloscope.stamps.coadd_cache import cache_coadds
from darkhaloscope.model.loader import StampDataset, StampIndex, make_loader
from darkhaloscope.model.preprocess import NormConfig
from darkhaloscope.catalog.manifest import build_manifest
from darkhaloscope.model.nets import ALLOWED_META_COLS, build_model
from darkhaloscope.params import ParamsError, validate
from darkhaloscope.catalog.parent import build_parent
from darkhaloscope.model.score import score_files
from darkhaloscope.stamps.spark import OUTPUT_COLUMNS, summarize_stats, write_file
from darkhaloscope.stamps.format import list_stamp_files, write_stamp_file
from darkhaloscope.stamps.cutout import process_brick
from darkhaloscope.survey import REQUIRED_COLUMNS, SurveyError, read_coadd
from darkhaloscope.survey.bricks import brick_wcs, coadd_relpath
from darkhaloscope.survey.mock import MockSurvey
from darkhaloscope.model.inference import predict, sigmoid
from darkhaloscope.model.train import Setup, train

TRACEBACK = "Traceback (most recent call last)"
pytestmark = pytest.mark.usefixtures("cpu_only")  # CPU float32 (tests/conftest.py): the score equalities are exact


# ============================================================================ helpers and fixtures


def params_for(**changes) -> dict:
    """The shipped params (validated copy) with dotted-key changes, e.g. {"train.arch": "x"}."""
    p = copy.deepcopy(T.shipped_params())
    for key, value in changes.items():
        *head, last = key.split(".")
        d = p
        for k in head:
            d = d[k]
        d[last] = value
    return p


def stamp_columns(n: int, sid0: int = 1, pos_every: int = 2, **extra) -> dict:
    is_ctrl = (np.arange(n) % pos_every != 0).astype(np.int8)  # every pos_every-th row is a positive
    cols = {"sample_id": np.arange(sid0, sid0 + n, dtype=np.int64),
            "row_id": np.arange(sid0, sid0 + n, dtype=np.int64) * 7,
            "is_control": is_ctrl, "cutout_ok": np.ones(n, np.int8),
            "theta_e_over_psf": np.where(is_ctrl == 0, 0.8, 0.0),
            "arc_snr": np.where(is_ctrl == 0, 12.0, 0.0),
            "brickname": np.array(["1500p005"] * n), "psfsize_r": np.full(n, 1.2),
            "psfdepth_r": np.full(n, 500.0)}
    cols.update(extra)
    return cols


def write_split(root: Path, split: str, n: int, sid0: int, seed: int, **extra) -> str:
    return S.make_stamp_file(root / split / "part-00000.parquet", columns=stamp_columns(n, sid0, **extra),
                             stamps="ring", rng=seed, row_group_size=32).path


def tiny_train_params(**train_changes) -> dict:
    p = T.tiny_params(epochs=1)
    p["train"].update(arch="small_cnn", width=8, batch_size=16, augment=False, monitor="auroc", seed=5)
    p["train"].update(train_changes)
    return validate(p, "test params")


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    """stages/ and src/ of the working tree: enough to run a stage script (no DVC, no data)."""
    return T.copy_sources(tmp_path_factory.mktemp("mini") / "repo", only=("stages/", "src/"))


def run_stage(mini: Path, stage: str, params: dict, tmp_path: Path, timeout: float = 180):
    """`python stages/<stage>.py` in the mini copy with ``params`` (through DHS_PARAMS); must fail."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    res = T.stage_main(mini, stage, timeout, DHS_PARAMS=str(path))
    assert res.returncode != 0, f"stage {stage} succeeded:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    assert TRACEBACK not in res.stderr, res.stderr[-4000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith(f"[{stage}] ")]
    assert lines, res.stderr[-4000:]
    return lines[-1], res


# sweeps in DR10's column names and formats
_FMT = {"RA": "D", "DEC": "D", "TYPE": "4A", "BRICKNAME": "8A", "OBJID": "J", "MASKBITS": "I",
        **{f"NOBS_{b}": "I" for b in "GRZ"}}


def write_sweep(path: Path, drop: tuple = (), n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    cols = []
    for c in REQUIRED_COLUMNS:
        if c in drop:
            continue
        f = _FMT.get(c, "E")
        arr = {"TYPE": np.array([b"DEV"] * n, "S4"), "BRICKNAME": np.array([b"1500p005"] * n, "S8"),
               "RA": 150 + rng.uniform(0, 0.01, n), "DEC": 0.5 + rng.uniform(0, 0.01, n),
               "OBJID": np.arange(n, dtype=np.int32)}.get(c)
        if arr is None:
            arr = rng.integers(1, 4, n).astype(np.int16) if f == "I" else rng.uniform(1, 10, n).astype(np.float32)
        cols.append(fits.Column(name=c, format=f, array=arr))
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path, overwrite=True)
    return path


# one hand-made brick for the cutout cases (cf. tests/stamps/test_stamps_cutout.py)
BRICK, RA_C, DEC_C, NPIX = "1500p005", 150.0, 0.5, 200


def write_brick(root: Path, bands="grz", wcs: bool = True) -> Path:
    w = brick_wcs(RA_C, DEC_C, NPIX)
    rng = np.random.default_rng(3)
    for b in bands:
        for kind in ("image", "invvar"):
            path = root / coadd_relpath(BRICK, b, kind, ".fits")
            path.parent.mkdir(parents=True, exist_ok=True)
            data = (rng.normal(0, 0.01, (NPIX, NPIX)) if kind == "image" else np.full((NPIX, NPIX), 1e4))
            hdr = w.to_header() if wcs else fits.Header()
            fits.PrimaryHDU(data.astype(np.float32), header=hdr).writeto(path, overwrite=True)
    return root


def sky(x: float, y: float) -> tuple[float, float]:
    ra, dec = brick_wcs(RA_C, DEC_C, NPIX).all_pix2world([x], [y], 0)
    return float(ra[0]), float(dec[0])


def manifest_row(sample_id: int, x: float, y: float, injected: bool = False, **kw) -> dict:
    """A full manifest-like row (every OUTPUT_COLUMNS input) at brick pixel (x, y)."""
    ra, dec = sky(x, y)
    row = {c: 0.0 for c in OUTPUT_COLUMNS}
    row.update(sample_id=sample_id, pair_id=sample_id, row_id=sample_id * 3, replicate=0, split="train",
               brickname=BRICK, objid=sample_id, ra=ra, dec=dec, is_control=0 if injected else 1,
               config_id="te1" if injected else "control", psfsize_g=1.4, psfsize_r=1.2, psfsize_z=1.1,
               host_mag_r=19.0)
    if injected:
        row.update(theta_e_arcsec=1.0, lens_q=0.8, lens_phi_deg=10.0, gamma1=0.0, gamma2=0.0, src_x_arcsec=0.1,
                   src_y_arcsec=0.0, src_reff_arcsec=0.15, src_e=0.1, src_phi_deg=0.0, src_mag_r=20.0,
                   src_gr=0.2, src_rz=0.1)
    row.update(kw)
    return row


# ============================================================================ stage scripts


def test_every_stage_script_runs_through_the_error_wrapper():
    """Each stage script does its work in main(params) and ends with run("<stage>", main)."""
    import ast

    for path in sorted((T.REPO / "stages").glob("*.py")):
        if path.name == "_common.py":
            continue
        tree = ast.parse(path.read_text())
        work = [n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.If,
                                                           ast.Assign, ast.Expr))]
        assert not work, f"{path.name}: statements outside main(): {[ast.dump(n)[:80] for n in work]}"
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), path.name
        last = tree.body[-1]
        assert isinstance(last, ast.If) and f"run({path.stem!r}, main)" in ast.unparse(last), path.name


def test_wrapper_reports_our_errors_and_keeps_library_tracebacks():
    spec = importlib.util.spec_from_file_location("stage_common", T.REPO / "stages" / "_common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    ours = pytest.raises(ValueError, NormConfig, method="median")  # raised in src/darkhaloscope/model/preprocess.py
    assert common.is_user_error(ours.value) and "median" in common.error_message(ours.value)
    assert common.is_user_error(ParamsError("params.yaml: seed: expected an integer"))
    assert common.is_user_error(SurveyError("x.fits: missing DR10 sweep column(s) RA"))
    with pytest.raises(ValueError) as lib:  # raised inside numpy: a bug, keep the traceback
        np.zeros(3).reshape(2)
    assert not common.is_user_error(lib.value)
    assert not common.is_user_error(ZeroDivisionError("x"))


def test_params_typo_names_valid_keys_and_close_match(mini, tmp_path):
    p = params_for()
    p["selection"]["variantt"] = p["selection"].pop("variant")
    with pytest.raises(ParamsError) as e:
        validate(copy.deepcopy(p), "params.yaml")
    msg = str(e.value)
    assert "selection: unknown key 'variantt' (did you mean 'variant'?)" in msg
    listed = msg.split("valid keys: ", 1)[1].split(", ")
    assert listed == sorted(listed) and {"deredden", "split", "variant", "variants"} <= set(listed)
    # the same through the real stage script: one line on stderr, exit 1, no traceback
    line, res = run_stage(mini, "parent", p, tmp_path)
    assert res.returncode == 1
    assert "unknown key 'variantt' (did you mean 'variant'?)" in line and "valid keys:" in line


def test_sweep_missing_dr10_column_names_file_and_column(mini, tmp_path):
    root = tmp_path / "survey"
    path = write_sweep(root / "sweep" / "sweep-150p000-155p005.fits", drop=("FLUX_W1",))
    with pytest.raises(SurveyError) as e:
        build_parent(params_for(**{"survey.root": str(root)}))
    assert str(path) in str(e.value) and "missing DR10 sweep column(s) FLUX_W1" in str(e.value)
    line, _ = run_stage(mini, "parent", params_for(**{"survey.root": str(root)}), tmp_path)
    assert str(path) in line and "FLUX_W1" in line


def test_non_fits_sweep_names_file(mini, tmp_path):
    root = tmp_path / "survey"
    path = root / "sweep" / "sweep-150p000-155p005.fits"
    path.parent.mkdir(parents=True)
    path.write_text("RA,DEC\n150.1,0.5\n")  # a CSV named .fits
    line, _ = run_stage(mini, "parent", params_for(**{"survey.root": str(root)}), tmp_path)
    assert str(path) in line and "not a readable FITS file" in line


def test_no_sweep_files_names_root_and_glob(tmp_path):
    root = tmp_path / "empty_survey"
    root.mkdir()
    with pytest.raises(SurveyError) as e:
        build_parent(params_for(**{"survey.root": str(root)}))
    assert f"{root}/sweep/sweep-*.fits" in str(e.value) and "survey.sweep_glob" in str(e.value)


# ============================================================================ params


def test_unknown_loss_names_valid_values():
    with pytest.raises(ParamsError) as e:
        validate(params_for(loss="hinge"), "params.yaml")
    assert str(e.value) == "params.yaml: loss: expected one of 'bce', 'focal', got 'hinge'"


def test_unknown_arch_names_valid_values():
    with pytest.raises(ParamsError) as e:
        validate(params_for(**{"train.arch": "resnet50"}), "params.yaml")
    assert str(e.value) == ("params.yaml: train.arch: expected one of 'small_cnn', 'resnet18', 'convnext_tiny', "
                            "got 'resnet50'")


def test_unknown_selection_variant_names_the_variants():
    with pytest.raises(ParamsError) as e:
        validate(params_for(**{"selection.variant": "v9"}), "params.yaml")
    assert "selection.variant" in str(e.value) and "'v9'" in str(e.value)
    assert "v1, v2, v3_color_relaxed, v4, v5" in str(e.value) and "desi_lrg" in str(e.value)


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ParamsError) as e:
        validate(params_for(**{"selection.split.fractions": {"train": 0.6, "val": 0.3, "test": 0.2}}), "params.yaml")
    assert "selection.split.fractions" in str(e.value) and "summing to 1" in str(e.value)


def test_grid_with_non_positive_theta_e():
    p = params_for()
    p["grids"]["grid_sota"]["theta_e_arcsec"] = [0.5, 0.0, -1.0]
    with pytest.raises(ParamsError) as e:
        validate(p, "params.yaml")
    assert str(e.value) == "params.yaml: grids.grid_sota.theta_e_arcsec: expected values > 0, got [0.0, -1.0]"


def test_forbidden_meta_column_refused_via_params(mini, tmp_path):
    """arc_snr is measured on the injected arc: through params.yaml it never reaches a model."""
    p = params_for(**{"train.meta_cols": ["psfsize_r", "arc_snr"]})
    validate(p)  # a list of strings: the schema accepts it, the training set-up must not
    with pytest.raises(ParamsError) as e:
        Setup.from_params(p)
    assert "train.meta_cols" in str(e.value) and "'arc_snr' is forbidden" in str(e.value)
    with pytest.raises(ParamsError):  # train() refuses before reading any data
        train(p, str(tmp_path / "no_stamps"), str(tmp_path / "model"))
    assert not (tmp_path / "model").exists()
    line, _ = run_stage(mini, "train", p, tmp_path)
    assert "train.meta_cols" in line and "arc_snr" in line and "leak" in line


# ============================================================================ stamp files


def test_corrupt_stamp_file_named_by_score(tmp_path):
    good = write_split(tmp_path, "val", 16, 1, seed=1)
    bad = write_split(tmp_path, "test", 16, 100, seed=2)
    Path(bad).write_bytes(Path(bad).read_bytes()[:3000])  # truncated
    ck = tmp_path / "ck.pt"
    m = build_model("small_cnn", 3, 0.0, 0, 4)
    save_checkpoint(str(ck), m, {"norm": NormConfig().to_dict(), "meta_cols": [], "input_channels": 3})
    with pytest.raises(ValueError) as e:
        score_files(str(ck), [good, bad])
    assert bad in str(e.value) and "not a readable stamp parquet file" in str(e.value)


def test_corrupt_stamp_file_named_by_index(tmp_path):
    bad = write_split(tmp_path, "train", 16, 1, seed=1)
    Path(bad).write_bytes(Path(bad).read_bytes()[:3000])
    with pytest.raises(ValueError, match="not a readable") as e:
        StampIndex.build([bad])
    assert bad in str(e.value)


def test_nonfinite_stamp_dropped_and_counted(tmp_path):
    cols = stamp_columns(12)
    st = S.ring_stamps(cols["is_control"], 4)
    st[1, 0, 10, 10] = np.nan   # controls marked cutout_ok = 1
    st[3, 2, 0, 0] = np.inf
    path = write_stamp_file(tmp_path / "val" / "part-00000.parquet", cols, st)
    idx = StampIndex.build([path])
    assert idx.counts["nonfinite_stamp"] == 2 and idx.n_samples == 10
    assert not set(idx.sample_ids.tolist()) & {2, 4}
    # the score stage reports the count in metrics/score.json (its summary)
    ck = tmp_path / "ck.pt"
    save_checkpoint(str(ck), build_model("small_cnn", 3, 0.0, 0, 4),
                    {"norm": NormConfig().to_dict(), "meta_cols": [], "input_channels": 3})
    table, summary = score_files(str(ck), [path])
    assert summary["dropped"]["nonfinite_stamp"] == 2 and table.num_rows == 10
    assert np.isfinite(table.column("score").to_numpy()).all()
    # and Phase 4c counts non-finite stamps per split in metrics/stamps.json
    rows = [manifest_row(i, 100, 100) | {"stamp": st[i], "cutout_ok": 1, "fail_reason": "", "psf_fallback": ""}
            for i in range(4)]
    stats = write_file(str(tmp_path / "out"), "train", 0, rows, paired=False)
    assert summarize_stats([stats])["splits"]["train"]["nonfinite_stamps"] == 2


def test_wrong_stamp_shape_refused_by_writer(tmp_path):
    cols = stamp_columns(2)
    with pytest.raises(ValueError) as e:
        write_stamp_file(tmp_path / "x.parquet", cols, np.zeros((2, 3, 32, 32), np.float32))
    assert str(e.value) == "stamps: expected shape (N, 3, 64, 64) (band g/r/z, row, col), got (2, 3, 32, 32)"
    with pytest.raises(ValueError, match=r"stamps: expected shape .* got \(2, 64, 64\)"):
        write_stamp_file(tmp_path / "x.parquet", cols, np.zeros((2, 64, 64), np.float32))
    assert not (tmp_path / "x.parquet").exists()


def test_missing_required_column_named(tmp_path):
    cols = stamp_columns(4)
    del cols["cutout_ok"]
    with pytest.raises(ValueError) as e:
        write_stamp_file(tmp_path / "w.parquet", cols, np.zeros((4, 3, 64, 64), np.float32))
    assert str(tmp_path / "w.parquet") in str(e.value) and "['cutout_ok']" in str(e.value)
    # a file written by something else without the column: the loader names file and column
    path = tmp_path / "train" / "part-00000.parquet"
    ok = write_stamp_file(path, stamp_columns(4), np.zeros((4, 3, 64, 64), np.float32))
    pq.write_table(pq.read_table(ok).drop(["cutout_ok"]), path)
    with pytest.raises(ValueError) as e:
        StampIndex.build([str(path)])
    assert str(path) in str(e.value) and "required column 'cutout_ok' missing" in str(e.value)


def _npz(arrays: dict) -> bytes:
    bio = io.BytesIO()
    np.savez_compressed(bio, **arrays)
    return bio.getvalue()


def test_r_only_seeds_stamp_dropped_and_counted(tmp_path):
    """The seeds' r-only rows (only image_r in the blob) convert to NaN g/z and are counted."""
    src = tmp_path / "seeds" / "region_split=train"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = 6
    img = rng.normal(0, 1, (n, 3, 64, 64)).astype(np.float32)
    blobs = [_npz({"image_g": img[i, 0], "image_r": img[i, 1], "image_z": img[i, 2]}) for i in range(n)]
    blobs[2] = _npz({"image_r": img[2, 1]})  # r-only, cutout_ok = 1
    pq.write_table(pa.table({
        "brickname": ["1500p005"] * n, "ra": 150 + np.arange(n) * 1e-3, "dec": np.full(n, 0.5),
        "is_control": np.arange(n) % 2, "cutout_ok": np.ones(n, np.int32), "theta_e_arcsec": np.ones(n),
        "psfsize_r": np.full(n, 1.2), "stamp_npz": pa.array(blobs, pa.binary())}), src / "part-00000.parquet")
    report = seeds_format.convert_seeds_to_stamps(tmp_path / "seeds", tmp_path / "conv")
    counts = report["splits"]["train"]["counts"]
    assert counts["r_only"] == 1 and counts["r_only_cutout_ok"] == 1 and counts["nonfinite_stamp_cutout_ok"] == 1
    idx = StampIndex.build(list_stamp_files(tmp_path / "conv", "train"))
    assert idx.counts["nonfinite_stamp"] == 1 and idx.n_samples == n - 1


def test_file_that_is_not_a_checkpoint(tmp_path):
    files = [write_split(tmp_path, "val", 8, 1, seed=1)]
    junk = tmp_path / "best.pt"
    junk.write_bytes(b"PK\x03\x04 this is not a torch checkpoint" * 10)
    with pytest.raises(ValueError) as e:
        score_files(str(junk), files)
    assert str(junk) in str(e.value) and "not a readable checkpoint" in str(e.value)
    other = tmp_path / "state_dict.pt"
    torch.save(build_model("small_cnn", 3, 0.0, 0, 4).state_dict(), other)  # weights only: no preprocessing
    with pytest.raises(ValueError) as e:
        score_files(str(other), files)
    assert str(other) in str(e.value) and "checkpoint lacks model_config" in str(e.value)
    with pytest.raises(FileNotFoundError, match="nowhere.pt: checkpoint not found"):
        score_files(str(tmp_path / "nowhere.pt"), files)


def test_empty_split_after_curriculum_filters_names_the_filters(tmp_path, monkeypatch):
    root = tmp_path / "stamps"
    write_split(root, "train", 32, 1, seed=1)
    write_split(root, "val", 16, 100, seed=2)
    p = tiny_train_params()
    p["train"]["curriculum"] = [{"name": "A1", "epochs": 1, "lr": 1e-3, "min_theta_over_psf": 0.5,
                                 "min_arc_snr": 1000.0}]  # every positive has arc_snr 12
    with pytest.raises(ValueError) as e:
        train(p, str(root), str(tmp_path / "model"), progress=False)
    msg = str(e.value)
    assert "train.curriculum stage 'A1'" in msg and "min_arc_snr 1000.0" in msg
    assert "no positive (injected) row is left" in msg and "'below_min_arc_snr': 16" in msg


# ============================================================================ coadds and cutouts


def test_off_brick_edge_counted_in_stamp_metrics(tmp_path, inj):
    root = write_brick(tmp_path / "coadds")
    rows = [manifest_row(1, 10.0, 100.0), manifest_row(2, 100.0, 100.0), manifest_row(3, 190.0, 100.0, True)]
    out = process_brick(BRICK, rows, str(root), inj)
    assert [r["cutout_ok"] for r in out] == [0, 1, 0]
    assert [r["fail_reason"] for r in out] == ["off_brick_edge", "", "off_brick_edge"]
    stats = write_file(str(tmp_path / "stamps"), "train", 0, out, paired=False)
    summary = summarize_stats([stats])
    assert summary["splits"]["train"]["fail_reasons"] == {"off_brick_edge": 2}
    assert summary["n_cutout_failed"] == 2
    t = pq.read_table(tmp_path / "stamps" / "train" / "part-00000.parquet", columns=["cutout_ok", "fail_reason"])
    assert t.column("fail_reason").to_pylist() == ["off_brick_edge", "", "off_brick_edge"]
    assert StampIndex.build([str(tmp_path / "stamps" / "train" / "part-00000.parquet")],
                            require_both_classes=False).counts["cutout_not_ok"] == 2


def test_missing_coadd_band_listed_and_rows_failed(tmp_path, inj):
    survey = write_brick(tmp_path / "survey")
    missing = survey / coadd_relpath(BRICK, "g", "image", ".fits")
    missing.unlink()
    report = cache_coadds(str(survey), [BRICK], ("g", "r", "z"), str(tmp_path / "cache"))
    assert report["n_missing"] == 1
    assert report["missing"] == [{"brick": BRICK, "band": "g", "kind": "image",
                                  "file": str(survey / coadd_relpath(BRICK, "g", "image", ".fits.fz"))}]
    out = process_brick(BRICK, [manifest_row(1, 100, 100), manifest_row(2, 90, 90, True)],
                        str(tmp_path / "cache"), inj)
    assert [r["cutout_ok"] for r in out] == [0, 0]
    assert all(r["fail_reason"].startswith("missing_coadd:image-g (coadd/") for r in out)
    stats = write_file(str(tmp_path / "stamps"), "train", 0, out, paired=False)
    assert summarize_stats([stats])["splits"]["train"]["fail_reasons"] == {"missing_coadd": 2}


def test_missing_coadd_reason_names_the_file(tmp_path, inj):
    survey = write_brick(tmp_path / "survey")
    (survey / coadd_relpath(BRICK, "g", "image", ".fits")).unlink()
    (res,) = process_brick(BRICK, [manifest_row(1, 100, 100)], str(survey), inj)
    assert f"legacysurvey-{BRICK}-image-g" in res["fail_reason"]


def test_fits_without_usable_wcs_named(tmp_path, inj):
    root = write_brick(tmp_path / "coadds", wcs=False)
    path = root / coadd_relpath(BRICK, "g", "image", ".fits")
    with pytest.raises(SurveyError) as e:
        read_coadd(str(path))
    assert str(path) in str(e.value) and "no usable celestial TAN WCS" in str(e.value)
    (res,) = process_brick(BRICK, [manifest_row(1, 100, 100)], str(root), inj)
    assert res["cutout_ok"] == 0 and res["fail_reason"].startswith("coadd_error: ")
    assert str(path) in res["fail_reason"] and "RA---TAN" in res["fail_reason"]


def test_psfsize_zero_fallback_recorded(tmp_path, inj):
    root = write_brick(tmp_path / "coadds")
    rows = [manifest_row(1, 100, 100, True, psfsize_z=0.0), manifest_row(2, 100, 100, psfsize_g=0.0),
            manifest_row(3, 100, 100)]
    out = process_brick(BRICK, rows, str(root), inj)
    assert [r["psf_fallback"] for r in out] == ["z", "g", ""]
    assert out[0]["psf_fwhm_used_z"] == out[0]["psf_fwhm_used_r"] == 1.2 and out[0]["cutout_ok"] == 1
    stats = write_file(str(tmp_path / "stamps"), "train", 0, out, paired=False)
    assert summarize_stats([stats])["splits"]["train"]["psf_fallback_rows"] == 2
    t = pq.read_table(tmp_path / "stamps" / "train" / "part-00000.parquet", columns=["psf_fallback"])
    assert t.column("psf_fallback").to_pylist() == ["z", "g", ""]


# ============================================================================ S3


def test_unreachable_s3_root_names_root_and_fix(monkeypatch):
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches filesystems by arguments, not by environment
    monkeypatch.setattr(s3fs.S3FileSystem, "cachable", False)
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
        for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_MAX_ATTEMPTS": "1", "AWS_CONFIG_FILE": "/nonexistent",
                     "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}.items():
            monkeypatch.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.delenv(k, raising=False)
        with pytest.raises(SurveyError) as e:
            build_parent(params_for(**{"survey.root": "s3://missing-bucket/x"}))
    msg = str(e.value)
    assert msg.startswith("s3://missing-bucket/x: cannot reach the S3 endpoint " + endpoint)
    assert "AWS_ENDPOINT_URL" in msg and "survey.root in params.yaml" in msg


# ============================================================================ leakage


@pytest.fixture(scope="module")
def mock_parent_manifest(tmp_path_factory):
    """The tiny e2e mock written by MockSurvey, its parent sample and manifest (default settings
    otherwise: v3_color_relaxed, unpaired controls, 3 replicates)."""
    p = T.tiny_params()
    p["manifest"]["replicates"] = 3
    root = tmp_path_factory.mktemp("mock") / "survey"
    MockSurvey(p["survey"]["mock"], bands=p["survey"]["bands"]).write(root)
    p["survey"]["root"] = str(root)
    validate(p)
    parent, _ = build_parent(p)
    manifest, summary = build_manifest(parent, p)
    return p, parent, manifest, summary


def test_splits_share_no_sky_region_and_no_galaxy(mock_parent_manifest):
    p, parent, manifest, _ = mock_parent_manifest
    split = np.asarray(parent.column("split").to_pylist())
    hp, rid = parent.column("healpix").to_numpy(), parent.column("row_id").to_numpy()
    present = [s for s in ("train", "val", "test") if (split == s).any()]
    assert len(present) >= 2, "the tiny mock must populate at least two splits"
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            assert not set(hp[split == a]) & set(hp[split == b]), (a, b)
            assert not set(rid[split == a]) & set(rid[split == b]), (a, b)
    # every manifest row keeps its galaxy's split
    of = dict(zip(rid.tolist(), split.tolist()))
    m_rid = manifest.column("row_id").to_pylist()
    assert [of[r] for r in m_rid] == manifest.column("split").to_pylist()
    msplit = np.asarray(manifest.column("split").to_pylist())
    mrid = np.asarray(m_rid)
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            assert not set(mrid[msplit == a]) & set(mrid[msplit == b])


def test_unpaired_controls_and_injected_galaxies_are_disjoint(mock_parent_manifest):
    p, _, manifest, summary = mock_parent_manifest
    assert p["manifest"]["control_type"] == "unpaired"
    ctrl = manifest.column("is_control").to_numpy() == 1
    rid = manifest.column("row_id").to_numpy()
    split = manifest.column("split").to_numpy(zero_copy_only=False).astype(str)
    assert ctrl.any() and (~ctrl).any()
    # training: a galaxy is either a control or injected, never both
    tr = split == "train"
    assert not set(rid[tr & ctrl]) & set(rid[tr & ~ctrl])
    assert summary["splits"]["train"]["galaxies_in_both"] == 0
    # val / test with manifest.eval_negatives: every galaxy is also an un-injected evaluation negative,
    # so the injected galaxies there are exactly those that also appear as controls
    assert p["manifest"]["eval_negatives"]
    for s in ("val", "test"):
        sel = split == s
        inj, neg = set(rid[sel & ~ctrl]), set(rid[sel & ctrl])
        assert inj and inj <= neg
        assert summary["splits"][s]["galaxies_in_both"] == len(inj)


def _sep_arcsec(ra1, dec1, ra2, dec2) -> float:
    r1, d1, r2, d2 = map(math.radians, (ra1, dec1, ra2, dec2))
    h = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(math.sqrt(h))) * 3600.0


def test_mined_hard_negatives_lie_outside_the_exclusion_radius(tmp_path, trained):
    ckpt, _ = trained
    survey_lens, lenscat_lens = (150.2, 0.3), (150.5, 0.6)
    offsets = {survey_lens: [0.5, 5.0, 9.9, 10.1, 20.0], lenscat_lens: [3.0, 9.99, 10.5, 60.0]}
    ra, dec = [], []
    for (lra, ldec), offs in offsets.items():
        for o in offs:
            ra.append(lra)
            dec.append(ldec + o / 3600.0)
    ra += [151.0, 151.1]
    dec += [0.9, 0.95]
    n = len(ra)
    cols = stamp_columns(n, 500, pos_every=10 ** 6)  # all controls (non-injected)
    cols.update(is_control=np.ones(n, np.int8), ra=np.array(ra), dec=np.array(dec))
    path = S.make_stamp_file(tmp_path / "parent" / "part-00000.parquet", columns=cols, stamps="ring", rng=9).path
    known = {"name": np.array(["S"]), "ra": np.array([survey_lens[0]]), "dec": np.array([survey_lens[1]])}
    lenscat = {"name": np.array(["L"]), "ra": np.array([lenscat_lens[0]]), "dec": np.array([lenscat_lens[1]])}
    table, report = mining.mine([path], ckpt, top_k=100, min_score=0.0, radius_arcsec=10.0, known=known,
                                lenscat=lenscat)
    assert report["n_scored"] == n and report["n_above_min_score"] == n
    assert report["excluded_near_known_lens"] == {"survey_list": 3, "lenscat": 2}
    assert table.num_rows == n - 5
    for r, d in zip(table.column("ra").to_pylist(), table.column("dec").to_pylist()):
        for lens in (survey_lens, lenscat_lens):
            assert _sep_arcsec(r, d, *lens) > 10.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch small_cnn trained with clip (-5, 20) on ring stamps; (best.pt, stamps root)."""
    cpu = lambda: (torch.device("cpu"), None)  # noqa: E731
    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "device_and_amp", cpu)
    try:
        base = tmp_path_factory.mktemp("trained")
        root = base / "stamps"
        write_split(root, "train", 64, 1, seed=1)
        write_split(root, "val", 32, 1000, seed=2)
        write_split(root, "test", 32, 2000, seed=3)
        cols = stamp_columns(2, 3000, pos_every=1)
        S.make_stamp_file(root / "known" / "part-00000.parquet", columns=cols, stamps="ring", rng=4)
        p = tiny_train_params(clip=[-5.0, 20.0], norm_method="outer")
        train(p, str(root), str(base / "model"), progress=False)
    finally:
        mp.undo()
    return str(base / "model" / "best.pt"), root


def _scores_with(ckpt: str, files: list[str], norm: NormConfig) -> np.ndarray:
    from darkhaloscope.model.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(ckpt)
    ds = StampDataset(StampIndex.build(files), 64, norm, 3, shuffle=False, augment=False, rank=0, world_size=1)
    _, _, logits = predict(model, make_loader(ds, 0), torch.device("cpu"), None)
    return sigmoid(logits)


def test_scoring_uses_the_training_normalisation(trained, tmp_path):
    ckpt, root = trained
    ck = load_checkpoint(ckpt)
    assert ck["norm"] == {"method": "outer", "outer_radius": 16.0, "clip": [-5.0, 20.0]}
    files = list_stamp_files(root, "val")
    table, _ = score_files(ckpt, files)
    s = table.column("score").to_numpy()
    np.testing.assert_array_equal(s, _scores_with(ckpt, files, NormConfig("outer", 16.0, (-5.0, 20.0))))
    assert not np.allclose(s, _scores_with(ckpt, files, NormConfig("outer", 16.0, (-10.0, 10.0))))
    # the score stage with params.yaml saying clip (-10, 10) still scores with the checkpoint's (-5, 20)
    assert "params" not in yaml.safe_load((T.REPO / "dvc.yaml").read_text())["stages"]["score"]
    work = T.copy_sources(tmp_path / "repo", only=("stages/", "src/"))
    shutil.copytree(root, work / "data" / "stamps")
    (work / "data" / "model").mkdir(parents=True)
    shutil.copy2(ckpt, work / "data" / "model" / "best.pt")
    T.write_params(work, tiny_train_params(clip=[-10.0, 10.0], norm_method="outer"))
    T.stage_main(work, "score", timeout=180, check=True)
    staged = pq.read_table(work / "data" / "scores" / "val.parquet")
    assert staged.column("sample_id").to_pylist() == table.column("sample_id").to_pylist()
    np.testing.assert_array_equal(staged.column("score").to_numpy(), s)
    assert json.loads((work / "metrics" / "score.json").read_text())["val"]["kept"] == table.num_rows


def test_no_forbidden_column_reaches_a_trained_model(trained):
    ck = load_checkpoint(trained[0])
    assert set(ck["meta_cols"]) <= ALLOWED_META_COLS
    assert ck["model_config"]["n_meta"] == len(ck["meta_cols"])


def test_checkpoint_bytes_do_not_depend_on_object_identity(tmp_path):
    """A resumed run's checkpoints hold unpickled (not interned) strings; the bytes must not care,
    or `dvc status` would call a resumed, value-identical model modified."""
    model = build_model("small_cnn", 3, 0.0, 0, 4)
    shared = {"a": {"lr": 1.0, "stage": "main"}, "b": [{"lr": 2.0, "stage": "main"}]}
    fresh = {"a": {"".join(["l", "r"]): 1.0, "stage": "".join(["ma", "in"])},
             "b": [{"".join(["l", "r"]): 2.0, "stage": "".join(["ma", "in"])}]}
    assert fresh == shared and fresh["a"] is not shared["a"]
    for d, state in (("a", shared), ("b", fresh)):  # same file name: torch.save puts it into the archive
        (tmp_path / d).mkdir()
        save_checkpoint(str(tmp_path / d / "last.pt"), model, {"train_state": state, "norm": NormConfig().to_dict()})
    assert (tmp_path / "a" / "last.pt").read_bytes() == (tmp_path / "b" / "last.pt").read_bytes()
