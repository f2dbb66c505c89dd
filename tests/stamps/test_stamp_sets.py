"""Tests of darkhaloscope.stamps.sets: the stamp set named by ``stamp_set.root`` (layout detection,
the seeds' layout converted once into ``stamp_set.cache``, an s3:// set mirrored, clear errors)."""

from __future__ import annotations

import os

import pytest

from _seeds import write_seeds_set
from _stamps import make_stamp_file
from darkhaloscope.stamps import sets as SS
from darkhaloscope.stamps.format import list_stamp_files, read_columns


def _ours(root, splits=("train", "val", "test")):
    for i, split in enumerate(splits):
        make_stamp_file(root / split / "part-00000.parquet", 6, sample_ids=100 * i)
    return root


def test_layout_detection(tmp_path):
    assert SS.layout(str(_ours(tmp_path / "ours"))) == "ours"
    write_seeds_set(tmp_path / "seeds", rows={"train": (8,), "val": (8,), "test": (8,)})
    assert SS.layout(str(tmp_path / "seeds")) == "seeds"
    (tmp_path / "empty" / "train").mkdir(parents=True)
    assert SS.layout(str(tmp_path / "empty")) is None


def test_our_layout_is_read_in_place(tmp_path):
    root = _ours(tmp_path / "set")
    assert SS.resolve_stamp_set(str(root), str(tmp_path / "cache")) == str(root)
    assert not (tmp_path / "cache").exists()  # nothing copied


def test_seeds_layout_converted_once_into_the_cache(tmp_path):
    src = tmp_path / "v5_cosmos_paired"
    truth = write_seeds_set(src, paired=True, rows={"train": (10, 8), "val": (8,), "test": (8,)})
    cache = tmp_path / "cache"
    got = SS.resolve_stamp_set(str(src), str(cache))
    assert got == SS.cache_dir_for(str(src), str(cache))
    assert os.path.dirname(got) == str(cache) and os.path.basename(got).startswith("v5_cosmos_paired-")
    for split, t in truth.items():
        assert read_columns(list_stamp_files(got, split), ["sample_id"]).num_rows == t["rows"]
    stamp = os.path.getmtime(os.path.join(got, "seeds_conversion.json"))
    assert SS.resolve_stamp_set(str(src), str(cache)) == got  # current: not converted again
    assert os.path.getmtime(os.path.join(got, "seeds_conversion.json")) == stamp
    # the same set under another path is another cache entry (the key is the absolute path)
    assert SS.cache_dir_for(str(tmp_path / "elsewhere" / "v5_cosmos_paired"), str(cache)) != got


def test_errors_name_stamp_set_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a checkout where stage stamps has not run
    with pytest.raises(FileNotFoundError, match=r"stamp_set.root 'data/stamps' is not a directory.*dvc repro stamps"):
        SS.resolve_stamp_set("data/stamps", str(tmp_path / "cache"))
    (tmp_path / "junk" / "notes").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"stamp_set.root .*junk.* holds neither our stamp layout .* seeds'"):
        SS.resolve_stamp_set(str(tmp_path / "junk"), str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="only local paths and s3://"):
        SS.resolve_stamp_set("gs://bucket/set", str(tmp_path / "cache"))


def test_params_validate_stamp_set(tmp_path):
    import copy

    from _tinyrepo import shipped_params
    from darkhaloscope.params import ParamsError, validate

    p = shipped_params()
    assert p["stamp_set"]["root"] == "data/stamps"
    for key, value, msg in (("root", "", "stamp_set.root"), ("cache", "s3://b/c", "stamp_set.cache"),
                            ("colour", "x", "stamp_set: unknown key .colour.")):
        q = copy.deepcopy(p)
        q["stamp_set"][key] = value
        with pytest.raises(ParamsError, match=msg):
            validate(q)


@pytest.mark.slow
def test_s3_set_mirrored_then_kept_in_step(tmp_path, monkeypatch):
    import s3fs

    from _s3 import s3_bucket

    local = _ours(tmp_path / "src")
    with s3_bucket(tmp_path, monkeypatch, "lenses") as (_, s3):
        for split in ("train", "val", "test"):
            s3.upload_file(str(local / split / "part-00000.parquet"), "lenses", f"sets/g5/{split}/part-00000.parquet")
        s3.put_object(Bucket="lenses", Key="sets/g5/train/_SUCCESS", Body=b"")
        cache = tmp_path / "cache"
        url = "s3://lenses/sets/g5"
        got = SS.resolve_stamp_set(url, str(cache))
        assert got == os.path.join(SS.cache_dir_for(url, str(cache)), "source")
        for split in ("train", "val", "test"):
            assert open(os.path.join(got, split, "part-00000.parquet"), "rb").read() == \
                open(local / split / "part-00000.parquet", "rb").read()
        assert not os.path.exists(os.path.join(got, "train", "_SUCCESS"))  # bookkeeping is not mirrored
        home = SS.cache_dir_for(url, str(cache))
        assert SS.mirror_s3(url, os.path.join(home, "source"), progress=False)["downloaded"] == 0
        make_stamp_file(tmp_path / "new.parquet", 4, sample_ids=900)
        s3.upload_file(str(tmp_path / "new.parquet"), "lenses", "sets/g5/val/part-00000.parquet")
        s3.delete_object(Bucket="lenses", Key="sets/g5/test/part-00000.parquet")
        s3.upload_file(str(tmp_path / "new.parquet"), "lenses", "sets/g5/test/part-00001.parquet")
        rep = SS.mirror_s3(url, os.path.join(home, "source"), progress=False)
        assert rep == {"objects": 3, "downloaded": 2, "removed": 1, "bytes": 2 * os.path.getsize(tmp_path / "new.parquet")}
        assert read_columns(list_stamp_files(got, "val"), ["sample_id"]).column(0).to_pylist() == [900, 901, 902, 903]
        with pytest.raises(FileNotFoundError, match="no \\*.parquet objects"):
            SS.resolve_stamp_set("s3://lenses/nothing-here", str(cache))
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches a filesystem with its credentials
        with pytest.raises(OSError, match="stamp_set.root 's3://lenses/sets/g5'.*AWS_ACCESS_KEY_ID"):
            SS.resolve_stamp_set(url, str(tmp_path / "cache2"))
