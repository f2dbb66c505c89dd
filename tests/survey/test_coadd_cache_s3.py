"""The coadd manifest and the bounded cache against a real S3 API (a moto server on 127.0.0.1): ETags
from the brick listings, downloads into the cache, eviction to the limit, a changed object stops the run."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from darkhaloscope.errors import SurveyError
from darkhaloscope.stamps import coadd_cache as C
from darkhaloscope.survey.bricks import coadd_relpath

pytestmark = pytest.mark.slow

BUCKET = "dhs-coadds"
BRICKS = ("1500p005", "1510p005")


@pytest.fixture
def s3_coadds(tmp_path, monkeypatch):
    from _s3 import s3_bucket

    with s3_bucket(tmp_path, monkeypatch, BUCKET) as (_, client):
        content = {}
        for i, brick in enumerate(BRICKS):
            for j, band in enumerate("grz"):
                for kind in C.KINDS:
                    if (brick, band, kind) == ("1510p005", "z", "invvar"):
                        continue
                    rel = coadd_relpath(brick, band, kind)
                    content[rel] = bytes((i + j + n) % 256 for n in range(3000 + 100 * j))
                    client.put_object(Bucket=BUCKET, Key=f"dr10/south/{rel}", Body=content[rel])
        yield f"s3://{BUCKET}/dr10/south", client, content


def test_manifest_and_cache_on_s3(s3_coadds, tmp_path):
    root, client, content = s3_coadds
    out = tmp_path / "coadds"
    rep = C.manifest_coadds(root, list(BRICKS), "grz", str(out))
    assert (rep["n_files"], rep["n_missing"], rep["n_bricks_complete"]) == (11, 1, 1)
    assert rep["missing"] == [{"brick": "1510p005", "band": "z", "kind": "invvar",
                               "file": f"{root}/{coadd_relpath('1510p005', 'z', 'invvar')}"}]
    rows = pq.read_table(out / C.MANIFEST_NAME).to_pylist()
    for r in rows:
        head = client.head_object(Bucket=BUCKET, Key=f"dr10/south/{r['relpath']}")
        assert r["identity"] == "etag:" + head["ETag"].strip('"')
        assert r["size"] == len(content[r["relpath"]])

    cache = tmp_path / "cache"
    limit = 3100 + 3200 + 50  # r and z fit, not g, r and z
    src = C.CoaddSource(str(out / C.MANIFEST_NAME), root, str(cache), limit, grace_s=0)
    for band in "grz":
        p = src.locate("1500p005", band, "image")
        assert Path(p).read_bytes() == content[coadd_relpath("1500p005", band, "image")]
    held = sorted(cache.rglob("*.fits.fz"))
    assert sum(p.stat().st_size for p in held) <= limit
    assert [p.name for p in held] == [f"legacysurvey-1500p005-image-{b}.fits.fz" for b in "rz"]  # g evicted
    assert src.locate("1510p005", "z", "invvar") is None

    rel = coadd_relpath("1510p005", "g", "invvar")
    client.put_object(Bucket=BUCKET, Key=f"dr10/south/{rel}", Body=content[rel][::-1] + b"x")
    with pytest.raises(SurveyError, match=r"s3://dhs-coadds/dr10/south/coadd/151/1510p005/legacysurvey-1510p005-"
                                          r"invvar-g\.fits\.fz: changed since stage coadds.*size 3001 bytes"):
        src.locate("1510p005", "g", "invvar")
    client.put_object(Bucket=BUCKET, Key=f"dr10/south/{rel}", Body=content[rel][::-1])
    with pytest.raises(SurveyError, match=r"invvar-g\.fits\.fz: changed since stage coadds.*identity etag:"):
        src.locate("1510p005", "g", "invvar")
    assert not list(cache.rglob("*.part-*"))
