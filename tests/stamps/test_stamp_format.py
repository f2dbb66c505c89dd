"""Tests of the stamp storage contract (darkhaloscope.stamps.format)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from darkhaloscope.stamps import format as sf
from darkhaloscope.stamps.format import (
    STAMP_BANDS,
    STAMP_SIZE,
    legacy_stamp_arrow_type,
    list_stamp_files,
    read_columns,
    stamp_arrow_type,
    stamps_and_valid,
    stamps_from_arrow,
    write_stamp_file,
)


def _inputs(n: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    stamps = rng.normal(size=(n, 3, 64, 64)).astype(np.float32)
    ctrl = rng.normal(size=(n, 3, 64, 64)).astype(np.float32)
    cols = {
        "sample_id": np.arange(100, 100 + n),  # int64
        "row_id": np.arange(n) * 3,
        "is_control": np.array([i % 2 for i in range(n)]),  # given as int64, stored int8
        "cutout_ok": np.ones(n, dtype=np.int64),
        "theta_e_arcsec": rng.uniform(0.5, 2.0, n),
        "brickname": np.array([f"1500p00{i}" for i in range(n)]),
        "extra_list": [float(i) for i in range(n)],
        "tags": [[i, i + 1] for i in range(n)],  # a nested extra column
        "psfsize_r": rng.uniform(0.9, 1.8, n).astype(np.float32),
    }
    return cols, stamps, ctrl


def test_constants_and_type():
    assert STAMP_BANDS == ("g", "r", "z")
    assert STAMP_SIZE == 64
    # the contract (changed deliberately): fixed-size binary of little-endian float32 bytes
    t = stamp_arrow_type()
    assert isinstance(t, pa.FixedSizeBinaryType)
    assert t.byte_width == 3 * 64 * 64 * 4
    assert stamp_arrow_type(6, 32).byte_width == 6 * 32 * 32 * 4
    assert sf.STAMP_DTYPE == np.dtype("<f4")
    # the previous layout, still readable
    lt = legacy_stamp_arrow_type()
    assert isinstance(lt, pa.FixedSizeListType)
    assert lt.list_size == 3 * 64 * 64 and lt.value_type == pa.float32()


def test_round_trip_stamps_and_columns(tmp_path):
    cols, stamps, ctrl = _inputs()
    valid = np.array([True, True, False, True, True, False, True])
    path = str(tmp_path / "train" / "part-00000.parquet")
    write_stamp_file(path, cols, stamps, ctrl, row_group_size=3, ctrl_valid=valid)
    assert os.path.exists(path) and not os.path.exists(path + ".tmp")

    pf = pq.ParquetFile(path)
    assert pf.metadata.num_row_groups == 3
    assert pf.schema_arrow.names == list(cols) + ["stamp", "ctrl_stamp"]
    t = pq.read_table(path)
    # contract types are enforced
    assert t.schema.field("is_control").type == pa.int8()
    assert t.schema.field("cutout_ok").type == pa.int8()
    assert t.schema.field("sample_id").type == pa.int64()
    assert t.schema.field("psfsize_r").type == pa.float64()
    assert t.schema.field("brickname").type == pa.string()
    assert t.schema.field("stamp").type == stamp_arrow_type()
    for name in ("sample_id", "row_id", "is_control", "theta_e_arcsec"):
        np.testing.assert_array_equal(t.column(name).to_numpy(), cols[name])
    assert t.column("brickname").to_pylist() == list(cols["brickname"])
    assert t.column("extra_list").to_pylist() == cols["extra_list"]

    got = stamps_from_arrow(t.column("stamp"))
    assert got.dtype == np.float32 and got.shape == stamps.shape
    np.testing.assert_array_equal(got, stamps)
    with pytest.raises(ValueError, match="ctrl_stamp"):
        stamps_from_arrow(t.column("ctrl_stamp"), name="ctrl_stamp")
    c, v = stamps_and_valid(t.column("ctrl_stamp"), name="ctrl_stamp")
    np.testing.assert_array_equal(v, valid)
    np.testing.assert_array_equal(c[v], ctrl[v])

    assert t.column("tags").to_pylist() == cols["tags"]
    # stamp columns uncompressed (and without statistics), the others zstd
    md = pf.metadata.row_group(0)
    assert md.num_columns == len(cols) + 2
    for j in range(md.num_columns):
        col = md.column(j)
        top = col.path_in_schema.split(".")[0]
        if top in ("stamp", "ctrl_stamp"):
            assert col.compression == "UNCOMPRESSED", col.path_in_schema
            assert not col.is_stats_set
        else:
            assert col.compression == "ZSTD", col.path_in_schema


def test_deterministic_bytes(tmp_path):
    cols, stamps, ctrl = _inputs()
    a = write_stamp_file(tmp_path / "a" / "part-00000.parquet", cols, stamps, ctrl, 4)
    cols2, stamps2, ctrl2 = _inputs()  # equal, but distinct objects
    b = write_stamp_file(tmp_path / "b" / "part-00000.parquet", cols2, stamps2, ctrl2, 4)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()
    # ... and a different input gives a different file
    stamps2[0, 0, 0, 0] += 1
    c = write_stamp_file(tmp_path / "c.parquet", cols2, stamps2, ctrl2, 4)
    with open(a, "rb") as fa, open(c, "rb") as fc:
        assert fa.read() != fc.read()


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 3, 64, 64), np.float64), "float32"),
        (np.zeros((2, 3, 32, 32), np.float32), "shape"),
        (np.zeros((2, 4, 64, 64), np.float32), "shape"),
        (np.zeros((3, 64, 64), np.float32), "shape"),
        ([[0.0]], "numpy"),
    ],
)
def test_stamp_shape_dtype_errors(tmp_path, bad, match):
    cols = {"sample_id": [1, 2], "is_control": [0, 1], "cutout_ok": [1, 1]}
    path = tmp_path / "x.parquet"
    with pytest.raises(ValueError, match=match):
        write_stamp_file(path, cols, bad)
    assert not path.exists()


def test_column_errors(tmp_path):
    cols, stamps, ctrl = _inputs(4)
    p = tmp_path / "x.parquet"
    with pytest.raises(ValueError, match="ctrl_stamps"):
        write_stamp_file(p, cols, stamps, ctrl[:2])
    with pytest.raises(ValueError, match="'row_id'.*length"):
        write_stamp_file(p, {**cols, "row_id": np.arange(3)}, stamps)
    with pytest.raises(ValueError, match="required columns missing.*cutout_ok"):
        write_stamp_file(p, {k: v for k, v in cols.items() if k != "cutout_ok"}, stamps)
    with pytest.raises(ValueError, match="reserved"):
        write_stamp_file(p, {**cols, "stamp": np.arange(4)}, stamps)
    with pytest.raises(ValueError, match="'is_control'.*0 or 1"):
        write_stamp_file(p, {**cols, "is_control": np.array([0, 1, 2, 0])}, stamps)
    with pytest.raises(ValueError, match="sample_id.*unique"):
        write_stamp_file(p, {**cols, "sample_id": np.array([1, 1, 2, 3])}, stamps)
    with pytest.raises(ValueError, match="'sample_id'.*cast"):
        write_stamp_file(p, {**cols, "sample_id": np.array([0.5, 1, 2, 3])}, stamps)
    assert not p.exists() and not os.path.exists(str(p) + ".tmp")


def test_crash_leaves_no_file(tmp_path, monkeypatch):
    cols, stamps, _ = _inputs(4)
    path = str(tmp_path / "part-00000.parquet")
    real_write = pq.write_table

    def crashing_write(table, where, **kw):
        real_write(table, where, **kw)  # a complete-looking file at the temporary path ...
        assert where == path + ".tmp"
        raise RuntimeError("simulated crash")  # ... then the process dies

    monkeypatch.setattr(sf.pq, "write_table", crashing_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_stamp_file(path, cols, stamps)
    assert not os.path.exists(path)
    assert not os.path.exists(path + ".tmp")

    # an existing file is replaced only by a complete new one
    monkeypatch.setattr(sf.pq, "write_table", real_write)
    write_stamp_file(path, cols, stamps)
    before = open(path, "rb").read()
    monkeypatch.setattr(sf.pq, "write_table", crashing_write)
    with pytest.raises(RuntimeError):
        write_stamp_file(path, cols, stamps * 2)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["part-00000.parquet"]


def test_stamps_from_arrow_views_and_chunks():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(5, 3, 64, 64)).astype(np.float32)
    arr = sf._stamp_array(s)
    assert arr.type == stamp_arrow_type()
    # the bytes are exactly the little-endian float32 C-order array
    assert arr[1].as_py() == s[1].astype("<f4").tobytes()
    got = stamps_from_arrow(arr)
    np.testing.assert_array_equal(got, s)
    # zero copy: the result views the Arrow buffer, read-only
    assert not got.flags.owndata and not got.flags.writeable
    # slices honour the offset
    np.testing.assert_array_equal(stamps_from_arrow(arr.slice(2, 2)), s[2:4])
    # chunked arrays are combined
    chunked = pa.chunked_array([arr.slice(0, 2), arr.slice(2, 3)])
    np.testing.assert_array_equal(stamps_from_arrow(chunked), s)
    # a variable-size binary column of equal-length rows works too
    np.testing.assert_array_equal(stamps_from_arrow(arr.cast(pa.binary())), s)
    np.testing.assert_array_equal(stamps_from_arrow(arr.cast(pa.large_binary()).slice(1, 3)), s[1:4])
    with pytest.raises(ValueError, match="list size"):
        stamps_from_arrow(arr, n_channels=6)
    with pytest.raises(ValueError, match="'mystamp'"):
        stamps_from_arrow(pa.array([1.0, 2.0]), name="mystamp")
    with pytest.raises(ValueError, match="'mystamp'.*whole number of float32"):
        stamps_from_arrow(pa.array([b"abc"], type=pa.binary(3)), name="mystamp")
    with pytest.raises(ValueError, match="different byte lengths"):
        stamps_from_arrow(pa.array([b"abcd", b"abcdefgh"]))
    # nulls are an error naming the column
    nulled = sf._stamp_array(s, np.array([True, False, True, True, True]))
    assert nulled.null_count == 1
    with pytest.raises(ValueError, match="'ctrl_stamp'.*null"):
        stamps_from_arrow(nulled, name="ctrl_stamp")
    c, v = stamps_and_valid(nulled.slice(1, 3), name="ctrl_stamp")
    np.testing.assert_array_equal(v, [False, True, True])
    np.testing.assert_array_equal(c[1:], s[2:4])


def test_legacy_list_layout_still_reads(tmp_path):
    """Columns of the previous layout (fixed_size_list<float32>, or list<float32>) read as before."""
    rng = np.random.default_rng(4)
    s = rng.normal(size=(5, 3, 64, 64)).astype(np.float32)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(s.reshape(-1)), type=legacy_stamp_arrow_type())
    got = stamps_from_arrow(arr)
    np.testing.assert_array_equal(got, s)
    assert not got.flags.owndata  # still a view
    np.testing.assert_array_equal(stamps_from_arrow(arr.slice(2, 2)), s[2:4])
    lst = pa.ListArray.from_arrays(
        pa.array(np.arange(6) * 12288, type=pa.int32()), pa.array(s.reshape(-1))
    )
    np.testing.assert_array_equal(stamps_from_arrow(lst), s)
    with pytest.raises(ValueError, match="list size"):
        stamps_from_arrow(arr, n_channels=6)
    nulled = pa.FixedSizeListArray.from_arrays(
        arr.values, type=legacy_stamp_arrow_type(), mask=pa.array([False, True, False, False, False])
    )
    with pytest.raises(ValueError, match="'ctrl_stamp'.*null"):
        stamps_from_arrow(nulled, name="ctrl_stamp")
    c, v = stamps_and_valid(nulled, name="ctrl_stamp")
    np.testing.assert_array_equal(v, [True, False, True, True, True])
    np.testing.assert_array_equal(c[v], s[v])
    # ... and a whole legacy file, as the previous writer made it
    path = tmp_path / "part-00000.parquet"
    pq.write_table(
        pa.table({"sample_id": np.arange(5), "stamp": arr, "ctrl_stamp": nulled}),
        path, compression="none", use_dictionary=False, write_statistics=False,
    )
    t = pq.read_table(path)
    np.testing.assert_array_equal(stamps_from_arrow(t.column("stamp")), s)
    c, v = stamps_and_valid(t.column("ctrl_stamp"), name="ctrl_stamp")
    np.testing.assert_array_equal(c[v], s[v])


def test_list_stamp_files(tmp_path):
    cols, stamps, _ = _inputs(2)
    for i in (2, 0, 1):
        write_stamp_file(tmp_path / "val" / f"part-{i:05d}.parquet", cols, stamps)
    (tmp_path / "val" / "notes.txt").write_text("x")
    (tmp_path / "val" / "part-00003.parquet.tmp").write_text("partial")
    files = list_stamp_files(tmp_path, "val")
    assert [os.path.basename(f) for f in files] == [f"part-{i:05d}.parquet" for i in range(3)]
    with pytest.raises(FileNotFoundError, match="test"):
        list_stamp_files(tmp_path, "test")
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        list_stamp_files(tmp_path, "train")


def test_read_columns(tmp_path):
    cols, stamps, _ = _inputs(4)
    a = write_stamp_file(tmp_path / "part-00000.parquet", cols, stamps)
    cols2 = {**cols, "sample_id": cols["sample_id"] + 10}
    b = write_stamp_file(tmp_path / "part-00001.parquet", cols2, stamps)
    t = read_columns([a, b], ["sample_id", "brickname"])
    assert t.column_names == ["sample_id", "brickname"]
    np.testing.assert_array_equal(
        t.column("sample_id").to_numpy(), np.concatenate([cols["sample_id"], cols2["sample_id"]])
    )
    with pytest.raises(ValueError, match="part-00000.parquet.*'nope'"):
        read_columns([a, b], ["sample_id", "nope"])
    with pytest.raises(ValueError, match="stamp"):
        read_columns([a], ["sample_id", "stamp"])


def _is_mapped(a: np.ndarray) -> bool:
    import mmap

    while a is not None:
        if isinstance(a, mmap.mmap):
            return True
        a = a.obj if isinstance(a, memoryview) else getattr(a, "base", None)
    return False


def test_stamp_file_zero_copy_and_fallbacks(tmp_path):
    """StampFile maps the stamps of our files without decoding and reads any other layout through Arrow."""
    from darkhaloscope.stamps.format import StampFile

    cols, stamps, ctrl = _inputs(7)
    valid = np.array([True, True, False, True, True, False, True])
    path = write_stamp_file(tmp_path / "ours.parquet", cols, stamps, ctrl, row_group_size=3, ctrl_valid=valid)
    with StampFile(path) as f:
        assert f.metadata.num_row_groups == 3
        for rg, sl in enumerate((slice(0, 3), slice(3, 6), slice(6, 7))):
            got, v = f.stamps(rg)
            assert _is_mapped(got) and not got.flags.writeable  # zero copy, read-only
            assert v.all()
            np.testing.assert_array_equal(got, stamps[sl])
            c, cv = f.stamps(rg, "ctrl_stamp")  # nulls: read through Arrow
            np.testing.assert_array_equal(cv, valid[sl])
            np.testing.assert_array_equal(c[cv], ctrl[sl][cv])
            assert f.read_row_group(rg, ["sample_id"]).column(0).to_pylist() == cols["sample_id"][sl].tolist()
    # a large row group (more values than Arrow's default write batch) is still one page
    big = np.random.default_rng(1).normal(size=(1100, 3, 64, 64)).astype(np.float32)
    p = write_stamp_file(tmp_path / "big.parquet", {"sample_id": np.arange(1100), "is_control": np.arange(1100) % 2,
                                                    "cutout_ok": np.ones(1100)}, big, row_group_size=1100)
    with StampFile(p) as f:
        got, _ = f.stamps(0)
        assert _is_mapped(got)
        np.testing.assert_array_equal(got, big)
    del got

    # other layouts: same values through Arrow (never a wrong view)
    arr = sf._stamp_array(stamps)
    variants = {
        "page_v2": (dict(data_page_version="2.0", compression="none", use_dictionary=False), True),
        "zstd": (dict(compression="zstd", use_dictionary=False), False),
        "dictionary": (dict(compression="none", use_dictionary=True), False),
        "many_pages": (dict(compression="none", use_dictionary=False, data_page_size=1, write_batch_size=2), False),
    }
    for name, (kw, mapped) in variants.items():
        q = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"sample_id": cols["sample_id"], "stamp": arr}), q, row_group_size=4, **kw)
        with StampFile(q) as f:
            for rg, sl in enumerate((slice(0, 4), slice(4, 7))):
                got, v = f.stamps(rg)
                assert v.all() and _is_mapped(got) == mapped, name
                np.testing.assert_array_equal(got, stamps[sl])
    legacy = tmp_path / "legacy.parquet"
    pq.write_table(pa.table({"stamp": pa.FixedSizeListArray.from_arrays(
        pa.array(stamps.reshape(-1)), type=legacy_stamp_arrow_type())}), legacy, compression="none")
    with StampFile(legacy) as f:
        got, _ = f.stamps(0)
        assert not _is_mapped(got)
        np.testing.assert_array_equal(got, stamps)
    # a page header that does not describe the expected page is not trusted
    import mmap

    cc = pq.ParquetFile(path).metadata.row_group(0).column(len(cols))
    raw = bytearray(open(path, "rb").read())
    for pos, byte in ((cc.data_page_offset, 0xFF), (cc.data_page_offset + 1, 0x02)):  # garbage / page type 1
        bad = bytearray(raw)
        bad[pos] = byte
        mm = mmap.mmap(-1, len(bad))
        mm.write(bytes(bad))
        assert sf._stamp_page_view(mm, cc, 3, 49152) is None
    mm = mmap.mmap(-1, len(raw))
    mm.write(bytes(raw))
    assert sf._stamp_page_view(mm, cc, 3, 49152) is not None
    assert sf._stamp_page_view(mm, cc, 3, 6 * 64 * 64 * 4) is None  # wrong width


def test_files_fingerprint_identity_and_errors(tmp_path):
    import _stamps as S

    a = S.make_stamp_file(tmp_path / "train" / "part-00000.parquet", 8, rng=1).path
    fp = sf.files_fingerprint([a])
    assert fp == sf.files_fingerprint([a]) and len(fp) == 64
    S.make_stamp_file(tmp_path / "train" / "part-00000.parquet", 8, rng=1, sample_ids=100)
    assert sf.files_fingerprint([a]) != fp  # other rows, same pixels
    with open(a, "r+b") as fh:  # truncated: the footer is gone
        fh.truncate(100)
    with pytest.raises(ValueError, match="part-00000.parquet"):
        sf.files_fingerprint([a])
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        sf.files_fingerprint([str(tmp_path / "missing.parquet")])
