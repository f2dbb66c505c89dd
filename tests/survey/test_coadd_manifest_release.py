"""The README's real-data recipe on a tree laid out like the DR10 release: only ``survey.root`` changed,
`dvc repro stamps` runs parent -> manifest -> coadds -> stamps with ``survey.coadd_mode: auto`` resolving
to ``manifest``: data/coadds holds only the manifest (no copied images), the coadds are read in place from
survey.root, and the stamps are those of the mock's copy mode (the same pixels, read from the same files).

The tree is the mock survey written by stage survey, rearranged as the release is: the region directory
``dr10/south`` with the gzip brick table ``survey-bricks-dr10-south.fits.gz`` (lower-case columns), the
all-sky ``survey-bricks.fits.gz`` one level up, sweeps in ``sweep/10.1/`` beside ``sweep/10.1-extra/*-ex.fits``,
fpack coadds (HDU 1) under ``coadd/``; its known-lens table has one more lens on no brick (counted, not fetched).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

import _dr10 as D
import _tinyrepo as T

pytestmark = pytest.mark.slow


def _release_tree(survey: Path, dest: Path) -> Path:
    south = dest / "dr10" / "south"
    with fits.open(survey / "survey-bricks.fits") as h:
        t = h[1].data
        rows = [(str(r["BRICKNAME"]).strip(), 400000 + i, float(r["RA"]), float(r["DEC"]), float(r["RA1"]),
                 float(r["RA2"]), float(r["DEC1"]), float(r["DEC2"])) for i, r in enumerate(t)]
    D.write_brick_table(south / "survey-bricks-dr10-south.fits.gz", rows, upper=False, gz=True)
    D.write_brick_table(dest / "dr10" / "survey-bricks.fits.gz", rows, upper=True, gz=True)
    for sw in sorted((survey / "sweep").glob("sweep-*.fits")):
        (south / "sweep" / "10.1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sw, south / "sweep" / "10.1" / sw.name)
        D.write_sweep(south / "sweep" / "10.1-extra" / sw.name.replace(".fits", "-ex.fits"),
                      {"RELEASE": np.zeros(3, np.int16)})
    shutil.copytree(survey / "coadd", south / "coadd", copy_function=shutil.copyfile)
    # the mock's lens-impostor side table (survey.impostors, relative to the root): the same negatives
    shutil.copyfile(survey / "impostors.fits", south / "impostors.fits")
    with fits.open(survey / "known_lenses.fits") as h:
        k = h[1].data
        cols = [fits.Column(name=c.name, format=c.format, array=np.concatenate(
            [np.asarray(k[c.name]), np.asarray([b"OUTSIDE" if c.format.endswith("A") else
                                                 (10.0 if c.name == "RA" else -60.0 if c.name == "DEC" else 0.0)],
                                                dtype=np.asarray(k[c.name]).dtype)])) for c in k.columns]
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(south / "known_lenses.fits")
    return south


def _assert_same_table(a, b, name: str) -> None:
    """The same columns and values (NaN where the other has NaN: the known lenses' unknown columns)."""
    assert a.schema == b.schema and a.num_rows == b.num_rows, name
    for col in a.schema.names:
        x, y = a.column(col), b.column(col)
        if x.equals(y):
            continue
        assert pa.types.is_floating(x.type), (name, col)
        assert np.array_equal(x.to_numpy(), y.to_numpy(), equal_nan=True), (name, col)


def _stamp_tables(work: Path) -> dict:
    return {p.relative_to(work / "data" / "stamps").as_posix(): pq.read_table(p)
            for p in sorted((work / "data" / "stamps").rglob("*.parquet"))}


def test_release_tree_runs_to_stamps_with_only_the_root_changed(tmp_path_factory, tmp_path):
    # the mock, coadd_mode auto -> copy: the session's shared full run (tests/_tinyrepo.py), in a copy
    shared, _ = T.shared_full_repo(tmp_path_factory)
    work = T.clone_repo(shared, tmp_path / "repo")
    params = T.full_params()
    cache = tmp_path / "coadd-cache"
    params["survey"]["coadd_cache"]["dir"] = str(cache)
    assert json.loads((work / "metrics" / "coadds.json").read_text())["mode"] == "copy"
    baseline = _stamp_tables(work)
    assert baseline

    south = _release_tree(work / "data" / "survey", tmp_path / "release")
    params["survey"]["root"] = str(south)
    T.write_params(work, params)
    out = T.dvc(["repro", "stamps"], work, timeout=900)
    # manifest reruns only when the parent table's bytes change (here they do not: the same sweeps)
    assert {"parent", "coadds", "stamps"} <= T.ran_stages(out), out
    assert "manifest" in T.ran_stages(out) or "Stage 'manifest' didn't change" in out, out

    # data/coadds: the manifest only; metrics: what the run needs
    assert sorted(p.name for p in (work / "data" / "coadds").iterdir()) == ["coadd_manifest.parquet"]
    man = pq.read_table(work / "data" / "coadds" / "coadd_manifest.parquet").to_pylist()
    files = sorted(p for p in (south / "coadd").rglob("*.fits.fz"))
    assert sorted(r["relpath"] for r in man) == sorted(p.relative_to(south).as_posix() for p in files)
    m = json.loads((work / "metrics" / "coadds.json").read_text())
    n_bricks = len({p.parent.name for p in files})
    assert (m["mode"], m["n_bricks"], m["n_files"], m["n_missing"]) == ("manifest", n_bricks, 6 * n_bricks, 0)
    assert m["n_bytes"] == sum(p.stat().st_size for p in files)
    assert m["known_lenses_no_brick"] == 1
    assert not cache.exists()  # a local root is read in place

    # every LRG of the stamps on a brick with coadds got its cutout (only the brick edge may lose one),
    # and the stamps are those of the copy mode
    got = _stamp_tables(work)
    assert sorted(got) == sorted(baseline)
    for name, t in got.items():
        reasons = set(t.column("fail_reason").to_pylist())
        assert reasons <= {"", "off_brick_edge"}, (name, reasons)
        ok = np.asarray(t.column("cutout_ok").to_pylist())
        assert (ok == 1).sum() == sum(r == "" for r in t.column("fail_reason").to_pylist())
        _assert_same_table(t, baseline[name], name)
    parent_bricks = set(pq.read_table(work / "data" / "parent" / "parent.parquet").column("brickname").to_pylist())
    stamp_bricks = {b for t in got.values() for b in t.column("brickname").to_pylist()}
    assert stamp_bricks <= parent_bricks | {p.parent.name for p in files}
    assert json.loads((work / "metrics" / "stamps.json").read_text())["known_lenses"]["no_brick"] == 1
