"""The DR10 release layout read from S3 (a moto server on 127.0.0.1): brick-table lookup, the default
sweep glob, sweeps streamed by ranged reads (never downloaded whole), and the same parent table as
from a local copy."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import _dr10 as D

pytestmark = pytest.mark.slow

BUCKET = "dhs-release"


@pytest.fixture
def s3_release(tmp_path, monkeypatch):
    """A local dr10/ tree, uploaded to s3://dhs-release/dr10/; yields (local south, s3 south)."""
    from _s3 import s3_bucket

    dr10 = tmp_path / "local" / "dr10"
    south = dr10 / "south"
    shutil.copy(D.REALDATA / "legacypipe" / "survey-bricks-testcase6.fits.gz",
                (south.mkdir(parents=True) or south) / "survey-bricks-dr10-south.fits.gz")
    D.write_brick_table(dr10 / "survey-bricks.fits.gz", D.real_brick_rows(), upper=True, gz=True)
    D.write_sweep(south / "sweep" / "10.1" / "sweep-150p000-155p005.fits", D.sweep_rows(500, seed=1))
    D.write_sweep(south / "sweep" / "10.1" / "sweep-155p000-160p005.fits", D.sweep_rows(300, ra0=155.2, seed=2))
    D.write_sweep(south / "sweep" / "10.1-extra" / "sweep-150p000-155p005-ex.fits",
                  {"RELEASE": np.zeros(3, np.int16)})
    fits.BinTableHDU.from_columns([fits.Column("RA", "D", array=np.array([150.1])),
                                   fits.Column("DEC", "D", array=np.array([0.1]))]).writeto(south / "known_lenses.fits")
    with s3_bucket(tmp_path, monkeypatch, BUCKET) as (_, client):
        for f in sorted(p for p in dr10.rglob("*") if p.is_file()):
            client.upload_file(str(f), BUCKET, f"dr10/{f.relative_to(dr10).as_posix()}")
        yield south, f"s3://{BUCKET}/dr10/south", client


def test_release_layout_on_s3(s3_release, shipped_params_raw, monkeypatch):
    from darkhaloscope.catalog.parent import build_parent
    from darkhaloscope.errors import SurveyError
    from darkhaloscope.params import validate
    from darkhaloscope.survey import fs
    from darkhaloscope.survey.bricks import find_brick_table, read_brick_table
    from darkhaloscope.survey.sweeps import DEFAULT_SWEEP_GLOB, list_sweeps

    local, remote, client = s3_release
    hits = list_sweeps(remote, DEFAULT_SWEEP_GLOB)
    assert [p for p, _ in hits] == [f"{remote}/sweep/10.1/sweep-150p000-155p005.fits",
                                    f"{remote}/sweep/10.1/sweep-155p000-160p005.fits"]
    assert [n for _, n in hits] == [(local / "sweep" / "10.1" / Path(p).name).stat().st_size for p, _ in hits]
    with pytest.raises(SurveyError, match=r"sweep-150p000-155p005-ex\.fits: matched by survey\.sweep_glob"):
        list_sweeps(remote, "sweep/**/*.fits")
    assert read_brick_table(remote)["brickname"].tolist() == ["1102p240"]

    # sweeps are streamed by ranged reads: never fetched whole
    real_read_bytes = fs.read_bytes

    def no_whole_sweeps(path):
        assert "/sweep/" not in str(path), f"fs.read_bytes({path}): a sweep read whole"
        return real_read_bytes(path)

    monkeypatch.setattr(fs, "read_bytes", no_whole_sweeps)
    p = copy.deepcopy(shipped_params_raw)
    p["selection"]["split"]["nside"] = 4096
    p["survey"]["root"] = remote
    t_remote, s_remote = build_parent(validate(p), chunk_bytes=64 * 1024)
    p["survey"]["root"] = str(local)
    t_local, s_local = build_parent(validate(p))
    assert s_remote == s_local and t_remote.equals(t_local) and s_local["n_parent"] > 100

    # the all-sky table one level up once the region's own is gone
    client.delete_object(Bucket=BUCKET, Key="dr10/south/survey-bricks-dr10-south.fits.gz")
    assert find_brick_table(remote) == f"s3://{BUCKET}/dr10/survey-bricks.fits.gz"
    assert len(read_brick_table(remote)["brickname"]) == len(D.real_brick_rows())

    # a truncated sweep on S3 is named
    raw = (local / "sweep" / "10.1" / "sweep-150p000-155p005.fits").read_bytes()
    client.put_object(Bucket=BUCKET, Key="dr10/south/sweep/10.1/sweep-150p000-155p005.fits", Body=raw[:20000])
    fs.filesystem(remote).invalidate_cache()  # s3fs caches listings (sizes, ETags) within a process
    p["survey"]["root"] = remote
    with pytest.raises(SurveyError) as e:
        build_parent(validate(p))
    assert str(e.value).startswith(f"{remote}/sweep/10.1/sweep-150p000-155p005.fits: truncated"), str(e.value)
