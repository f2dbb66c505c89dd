"""End-to-end test of the data half of the pipeline, read from the session's shared full `dvc repro`
of a tiny mock survey (tests/_tinyrepo.py: shared_full_repo, two stamp files per split): stage
counts and files, a no-op re-run, and the Spark partitioning invariance of the stamp files.
Forced and fresh re-runs reproducing the same md5s: tests/e2e/test_cross_machine_e2e.py.

Never touches the working repository's outputs: everything runs under tmp_path, in a clone.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

import _tinyrepo as T
from darkhaloscope.stamps.format import stamps_from_arrow
from darkhaloscope.stamps.spark import OUTPUT_COLUMNS

pytestmark = pytest.mark.slow

DATA_STAGES = ("survey", "parent", "manifest", "coadds", "stamps")
SPLITS = ("train", "val", "test")
run, dvc = T.run, T.dvc


def lock_md5s(work: Path) -> dict:
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    return {name: {o["path"]: o["md5"] for o in lock["stages"][name]["outs"]} for name in DATA_STAGES}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """(a clone of the shared full run, its `dvc repro` output)."""
    shared, out = T.shared_full_repo(tmp_path_factory)
    return T.clone_repo(shared, tmp_path_factory.mktemp("e2e") / "repo"), out


def test_stages_ran(pipeline):
    work, out = pipeline
    for stage in DATA_STAGES:
        assert f"Running stage '{stage}'" in out, out[-3000:]
    md5 = lock_md5s(work)
    for stage in DATA_STAGES:
        assert md5[stage][f"data/{stage}"].endswith(".dir") and len(md5[stage][f"data/{stage}"]) == 36
        assert len(md5[stage][f"metrics/{stage}.json"]) == 32
    survey = json.loads((work / "metrics/survey.json").read_text())
    impostors = survey.pop("impostors")
    assert survey == {"n_bricks": 4, "n_objects": survey["n_objects"], "n_known_lenses": 2, "brick_size_pix": 300}
    # one count per impostor class, each a non-negative int
    assert impostors and all(isinstance(v, int) and v >= 0 for v in impostors.values()), impostors
    assert len(list((work / "data/survey/coadd").rglob("*.fits.fz"))) == 4 * 3 * 2


def test_parent_and_manifest_counts(pipeline):
    work, _ = pipeline
    parent = pq.read_table(work / "data/parent/parent.parquet")
    pm = json.loads((work / "metrics/parent.json").read_text())
    assert parent.num_rows == pm["n_parent"] > 20
    assert sum(pm["splits"].values()) == pm["n_parent"]
    assert pm["cuts"]["after_z_minus_w1_gt_0.8"] - sum(pm["duplicates_removed"].values()) == pm["n_parent"]
    assert pm["cuts"]["input"] == json.loads((work / "metrics/survey.json").read_text())["n_objects"]
    # parent rows satisfy the v3_color_relaxed cuts
    t = {c: parent.column(c).to_numpy(zero_copy_only=False) for c in ("mag_r", "mag_z", "mag_w1", "type")}
    assert (t["mag_z"] < 20.4).all() and (t["mag_r"] - t["mag_z"] > 0.4).all()
    assert (t["mag_z"] - t["mag_w1"] > 0.8).all() and "PSF" not in set(t["type"])
    assert pm["near_known_lens"] >= 2  # each known lens sits on a parent LRG
    man = pq.read_table(work / "data/manifest/manifest.parquet")
    mm = json.loads((work / "metrics/manifest.json").read_text())
    assert man.num_rows == mm["n_rows"] == sum(mm["splits"][s]["rows"] for s in SPLITS)
    split = np.asarray(man.column("split").to_pylist())
    for s in SPLITS:
        assert (split == s).sum() == mm["splits"][s]["rows"]
        # train keeps injected and control galaxies disjoint; with eval_negatives every val / test
        # galaxy is also an un-injected negative, so there the injected galaxies all appear in both
        both = mm["splits"][s]["galaxies_in_both"]
        if s == "train" or not mm["eval_negatives"]:
            assert both == 0
        else:
            assert both == mm["splits"][s]["injected_galaxies"] > 0
    assert mm["excluded_near_known_lens"] == pm["near_known_lens"]
    assert set(man.column("row_id").to_pylist()) <= set(parent.column("row_id").to_pylist())


def test_stamp_files(pipeline):
    work, _ = pipeline
    man = pq.read_table(work / "data/manifest/manifest.parquet")
    man_split = np.asarray(man.column("split").to_pylist())
    man_sid = man.column("sample_id").to_numpy()
    expected = list(OUTPUT_COLUMNS) + ["stamp"]
    for col in ("stamp", "sample_id", "is_control", "cutout_ok", "theta_e_arcsec", "arc_snr", "magnification",
                "theta_e_over_psf", "psf_fwhm_used_r", "psf_fallback", "fail_reason", "x_offset_pix"):
        assert col in expected
    stats = json.loads((work / "metrics/stamps.json").read_text())
    n_nonempty = 0
    for s in SPLITS:
        files = sorted((work / "data/stamps" / s).glob("part-*.parquet"))
        assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
        sids, n = [], 0
        for f in files:
            t = pq.read_table(f)
            assert t.column_names == expected
            st = stamps_from_arrow(t.column("stamp"))
            assert st.shape == (t.num_rows, 3, 64, 64) and st.dtype == np.float32
            assert np.isfinite(st).all()
            d = {c: t.column(c).to_numpy(zero_copy_only=False) for c in expected if c != "stamp"}
            assert (np.diff(d["sample_id"]) > 0).all()
            assert (d["sample_id"] % 2 == int(f.name[5:10])).all()   # file = sample_id mod files_per_split
            ctrl, ok = d["is_control"] == 1, d["cutout_ok"] == 1
            assert (d["theta_e_arcsec"][ctrl] == 0).all() and (d["arc_snr"][ctrl] == 0).all()
            assert (d["magnification"][~ctrl & ok] > 1).all() and (d["arc_snr"][~ctrl & ok] > 0).all()
            np.testing.assert_allclose(d["theta_e_over_psf"][~ctrl & ok],
                                       d["theta_e_arcsec"][~ctrl & ok] / d["psf_fwhm_used_r"][~ctrl & ok])
            assert set(d["fail_reason"][~ok]) <= {"off_brick_edge"}
            assert not st[~ok].any() and all(st[i].std() > 0 for i in np.flatnonzero(ok))
            assert (d["psf_fwhm_used_z"] > 0).all()
            sids += d["sample_id"].tolist()
            n += t.num_rows
        assert n == (man_split == s).sum() == stats["splits"][s]["rows"]
        assert sorted(sids) == sorted(man_sid[man_split == s].tolist())
        n_nonempty += n > 0
    assert n_nonempty >= 2
    # split `parent`: one un-injected cutout of every train-split parent galaxy that carries no injection
    parent = pq.read_table(work / "data/parent/parent.parquet")
    injected = set(man.filter(pc.equal(man.column("is_control"), 0)).column("row_id").to_pylist())
    want = sorted(r for r, s in zip(parent.column("row_id").to_pylist(), parent.column("split").to_pylist())
                  if s == "train" and r not in injected)
    par = pq.read_table(work / "data/stamps/parent", columns=["row_id", "is_control", "theta_e_arcsec"])
    assert sorted(par.column("row_id").to_pylist()) == want and len(want) > 0
    assert set(par.column("is_control").to_pylist()) == {1} and set(par.column("theta_e_arcsec").to_pylist()) == {0}
    assert stats["n_rows"] == man.num_rows + len(want)
    # one brick reports PSFSIZE_Z = 0: its rows use the r-band FWHM and say so
    assert sum(stats["splits"][s]["psf_fallback_rows"] for s in SPLITS) > 0
    # split `known`: the survey's known lenses, cut without injection in the same Spark job, labelled lenses
    known = pq.read_table(work / "data/stamps/known/part-00000.parquet")
    assert known.num_rows == 2 and known.column("cutout_ok").to_pylist() == [1, 1]
    assert known.column("is_control").to_pylist() == [0, 0] and known.column("sample_id").to_pylist() == [0, 1]
    assert known.column("magnification").to_pylist() == [0.0, 0.0]
    assert [p.name for p in (work / "data/stamps/known").iterdir()] == ["part-00000.parquet"]
    assert stats["known_lenses"] == {"rows": 2, "cutout_ok": 2, "no_brick": 0} and "known" not in stats["splits"]
    assert (stats["engine"], stats["psf_model"], stats["supersample"]) == ("fast", "moffat", 4)
    assert (work / "data/stamps/gallery.png").stat().st_size > 1000


def test_second_repro_is_a_noop(pipeline):
    work, _ = pipeline
    before = lock_md5s(work)
    out = dvc(["repro", "stamps"], work)
    assert "Running stage" not in out
    for stage in DATA_STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert "Data and pipelines are up to date" in out
    status = dvc(["status", "stamps"], work)   # the data stages (dvc.yaml may hold later ones)
    assert "Data and pipelines are up to date" in status, status
    assert lock_md5s(work) == before


# the stage's own pipeline (stages/stamps.py: run_stamps_stage), with spark.master / partitions overridden
SPARK_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, "src")
    import pyarrow.parquet as pq
    from darkhaloscope.params import load_params
    from darkhaloscope.constants import SPLITS
    from darkhaloscope.stamps.pipeline import run_stamps_stage
    p = load_params("params.yaml")
    p["spark"]["master"], p["spark"]["partitions"] = sys.argv[2], int(sys.argv[3])
    summary = run_stamps_stage(p, "data/manifest/manifest.parquet", "data/parent/parent.parquet", "data/coadds",
                               sys.argv[1])
    n_manifest = pq.read_metadata("data/manifest/manifest.parquet").num_rows
    print("ROWS", sum(summary["splits"][s]["rows"] for s in SPLITS), n_manifest)
""")


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_spark_partitions_and_master_do_not_change_bytes(pipeline, tmp_path):
    work, _ = pipeline
    n_man = pq.read_metadata(work / "data/manifest/manifest.parquet").num_rows
    outs = {}
    for master, parts in (("local[1]", 1), ("local[2]", 5)):
        out_dir = tmp_path / f"stamps_{parts}"
        res = run([sys.executable, "-c", SPARK_SCRIPT, str(out_dir), master, str(parts)], work, timeout=240)
        assert f"ROWS {n_man} {n_man}" in res.stdout
        outs[parts] = _files(out_dir)
    assert sorted(outs[1]) == ["known/part-00000.parquet"] + [f"{s}/part-0000{i}.parquet"
                                                              for s in ("parent", "test", "train", "val")
                                                              for i in (0, 1)]
    assert outs[1] == outs[5]
    # and the stage's own output (the run's spark.partitions and master) has the same bytes
    assert _files(work / "data/stamps") == outs[1]
