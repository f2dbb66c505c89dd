"""The fast ``stamp_npz`` decoder (darkhaloscope.stamps.seeds.decode_stamp_npz) against the np.load path.

Every blob is decoded both ways; the arrays must be bit-identical (NaN payloads,
-0.0 and denormals included), the band masks equal, and a blob one rejects the
other rejects too (ValueError). Blobs the fast path does not handle itself are
handed to np.load, so some tests check that the fast path really decoded the
common blobs (with np.load made unavailable) and others that unusual blobs still
give np.load's answer.
"""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pyarrow as pa
import pytest

from darkhaloscope.hashing import hash_int63
from darkhaloscope.stamps import seeds as S

RNG = np.random.default_rng(7)


def _img(dtype=np.float32, order="C") -> np.ndarray:
    a = RNG.normal(0.0, 0.01, (64, 64)) + RNG.uniform(0, 1)
    if np.dtype(dtype).kind in "iu":
        a = RNG.integers(0, 100, (64, 64))
    return np.asarray(a.astype(dtype), order=order)


def _npz(arrays: dict, compressed: bool = True) -> bytes:
    bio = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(bio, **arrays)
    return bio.getvalue()


def _zip(members: list[tuple[str, bytes]], compression=zipfile.ZIP_DEFLATED, comment: bytes = b"",
         seekable: bool = True) -> bytes:
    class Unseekable(io.RawIOBase):
        def __init__(self):
            self.b = bytearray()

        def writable(self):
            return True

        def write(self, d):
            self.b += d
            return len(d)

    sink = io.BytesIO() if seekable else Unseekable()
    with warnings_ok():
        with zipfile.ZipFile(sink, "w", compression=compression) as z:
            for name, data in members:
                with z.open(name, "w", force_zip64=True) as f:
                    f.write(data)
            z.comment = comment
    return sink.getvalue() if seekable else bytes(sink.b)


def warnings_ok():
    import warnings

    cm = warnings.catch_warnings()
    cm.__enter__()
    warnings.simplefilter("ignore")  # zipfile warns on duplicate names

    class _Ctx:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            cm.__exit__(*a)

    return _Ctx()


def _npy(a: np.ndarray, version=None) -> bytes:
    bio = io.BytesIO()
    np.lib.format.write_array(bio, a, version=version)
    return bio.getvalue()


def _outcome(fn, blob):
    try:
        arr, mask = fn(blob)
    except ValueError as exc:
        return ("error", type(exc).__name__)
    assert arr.dtype == np.float32 and arr.shape == (3, 64, 64)
    return ("ok", arr.view(np.uint32).tobytes(), mask)


def _same(blob) -> tuple:
    fast, ref = _outcome(S.decode_stamp_npz, blob), _outcome(S.decode_stamp_npz_reference, blob)
    assert fast == ref
    return fast


def _valid_blobs() -> dict[str, bytes]:
    special = _img()
    special.view(np.uint32)[0, :4] = [0x7FC00001, 0xFFC12345, 0x80000000, 0x00000001]  # NaN payloads, -0.0, denormal
    return {
        "float32": _npz({"image_g": _img(), "image_r": _img(), "image_z": _img()}),
        "special_bits": _npz({"image_g": special, "image_r": _img(), "image_z": _img()}),
        "float64": _npz({"image_g": _img(np.float64), "image_r": _img(np.float64), "image_z": _img(np.float64)}),
        "float16_uint8": _npz({"image_g": _img(np.float16), "image_r": _img(np.uint8), "image_z": _img()}),
        "int16_int64": _npz({"image_g": _img(np.int16), "image_r": _img(np.int64), "image_z": _img(np.int32)}),
        "big_endian": _npz({"image_g": _img(">f4"), "image_r": _img(">f8"), "image_z": _img(">i2")}),
        "fortran": _npz({"image_g": _img(order="F"), "image_r": _img(np.float64, "F"), "image_z": _img()}),
        "r_only": _npz({"image_r": _img()}),
        "g_z_only": _npz({"image_g": _img(), "image_z": _img()}),
        "no_band": _npz({"other": _img()}),
        "extra_members": _npz({"image_g": _img(), "meta": np.arange(3), "image_r": _img(), "image_z": _img()}),
        "member_order": _npz({"image_z": _img(), "image_r": _img(), "image_g": _img()}),
        "stored": _npz({"image_g": _img(), "image_r": _img(), "image_z": _img()}, compressed=False),
        "data_descriptor": _zip([("image_r.npy", _npy(_img()))], seekable=False),
        "npy_2_0": _zip([("image_r.npy", _npy(_img(), version=(2, 0)))]),
        "utf8_extra_name": _zip([("bänd.npy", _npy(_img())), ("image_g.npy", _npy(_img()))]),
    }


def test_fast_path_decodes_common_blobs_itself(monkeypatch):
    """With np.load unavailable, the fast path still decodes every ordinary blob (it does not just defer)."""
    blobs = _valid_blobs()
    want = {k: _outcome(S.decode_stamp_npz_reference, b) for k, b in blobs.items()}

    def no_reference(*a, **k):
        raise AssertionError("deferred to np.load")

    monkeypatch.setattr(S, "decode_stamp_npz_reference", no_reference)
    for k, b in blobs.items():
        assert want[k][0] == "ok", k
        assert _outcome(S.decode_stamp_npz, b) == want[k], k
        assert _outcome(S.decode_stamp_npz, memoryview(b)) == want[k], k  # (the converter passes memoryviews)


def test_np_savez_writes_zip64_local_headers():
    """np.savez writes every member with a zip64 extra field and 0xFFFFFFFF sizes in the local header."""
    b = _valid_blobs()["float32"]
    sig, _, _, _, _, _, _, _, csize, usize, fn_len, ex_len = struct.unpack_from("<4s2B4HL2L2H", b, 0)
    assert sig == b"PK\x03\x04" and (csize, usize) == (0xFFFFFFFF, 0xFFFFFFFF) and ex_len == 20
    assert struct.unpack_from("<H", b, 30 + fn_len)[0] == 1  # the zip64 extra field id
    assert _same(b)[0] == "ok"


def test_values_masks_and_bits_identical():
    blobs = _valid_blobs()
    masks = {}
    for k, b in blobs.items():
        res = _same(b)
        assert res[0] == "ok", k
        masks[k] = res[2]
    assert masks["float32"] == masks["float64"] == masks["stored"] == masks["fortran"] == 0b111
    assert masks["r_only"] == masks["data_descriptor"] == masks["npy_2_0"] == 0b010
    assert masks["g_z_only"] == 0b101 and masks["no_band"] == 0 and masks["utf8_extra_name"] == 0b001
    arr, _ = S.decode_stamp_npz(blobs["special_bits"])
    assert arr[0].view(np.uint32)[0, :4].tolist() == [0x7FC00001, 0xFFC12345, 0x80000000, 0x00000001]
    arr, _ = S.decode_stamp_npz(blobs["r_only"])
    assert np.isnan(arr[[0, 2]]).all() and (arr[[0, 2]].view(np.uint32) == 0x7FC00000).all()
    null, mask = S.decode_stamp_npz(None)
    assert mask == 0 and (null.view(np.uint32) == 0x7FC00000).all()


def test_unusual_blobs_get_np_load_answer():
    """Blobs the fast path leaves to np.load: the same result as np.load, whether it decodes or rejects them."""
    r = _npy(_img())
    cases = {
        "bzip2": _zip([("image_r.npy", r)], compression=zipfile.ZIP_BZIP2),
        "lzma": _zip([("image_r.npy", r)], compression=zipfile.ZIP_LZMA),
        "comment": _zip([("image_r.npy", r)], comment=b"a zip comment"),
        "prepended": b"PK\x03\x04" + b"\0" * 60 + _zip([("image_r.npy", r)]),
        "bare_name": _zip([("image_r", r), ("image_r.npy", _npy(_img()))]),
        "duplicate_name": _zip([("image_r.npy", r), ("image_r.npy", _npy(_img()))]),
        "npy_3_0": _zip([("image_r.npy", _npy(_img(), version=(3, 0)))]),
        "not_npy_member": _zip([("image_r.npy", b"just some bytes, no npy magic")]),
        "bool": _npz({"image_r": np.zeros((64, 64), bool)}),
        "complex": _npz({"image_r": np.zeros((64, 64), np.complex64)}),
        "object": _zip([("image_r.npy", _npy(np.array([None] * 4096, dtype=object).reshape(64, 64)))]),
        "shape": _npz({"image_r": np.zeros((32, 32), np.float32)}),
        "3d": _npz({"image_r": np.zeros((1, 64, 64), np.float32)}),
        "scalar": _npz({"image_r": np.float32(1)}),
        "structured": _npz({"image_r": np.zeros((64, 64), [("a", "<f4")])}),
        "junk": b"not a zip at all",
        "empty": b"",
        "pk_only": b"PK\x03\x04",
    }
    huge = bytearray(_npz({"image_r": _img()}))  # the directory claims a 4 GB member: np.load streams it
    cd = huge.index(b"PK\x01\x02")
    huge[cd + 24:cd + 28] = struct.pack("<L", 0xFFFFFFF0)
    cases["huge_size"] = bytes(huge)
    outcomes = {k: _same(b) for k, b in cases.items()}
    assert outcomes["bzip2"][0] == outcomes["lzma"][0] == outcomes["comment"][0] == "ok"
    assert outcomes["prepended"][0] == outcomes["bare_name"][0] == outcomes["duplicate_name"][0] == "ok"
    assert outcomes["npy_3_0"][0] == "ok"
    for k in ("not_npy_member", "bool", "complex", "object", "shape", "3d", "scalar", "structured", "junk",
              "empty", "pk_only"):
        assert outcomes[k][0] == "error", k


def test_corrupt_blobs_rejected_like_np_load():
    good = _valid_blobs()["float32"]
    stored = _valid_blobs()["stored"]
    # truncated anywhere, a flipped byte in the deflate data, in a stored member, in the CRC, in the headers
    for b in (good, stored):
        for cut in (10, 30, 100, len(b) // 2, len(b) - 23, len(b) - 1):
            assert _same(b[:cut])[0] == "error"
    flipped = bytearray(good)
    flipped[200] ^= 0xFF
    assert _same(bytes(flipped))[0] == "error"
    flipped = bytearray(stored)
    flipped[len(stored) // 3] ^= 0x01  # a pixel of a stored member: only the CRC tells
    assert _same(bytes(flipped))[0] == "error"
    # the encryption flag on a member (local header and central directory)
    info = zipfile.ZipFile(io.BytesIO(good)).getinfo("image_r.npy")
    enc = bytearray(good)
    enc[info.header_offset + 6] |= 1
    cd = good.index(b"PK\x01\x02" + good[good.index(b"PK\x01\x02") + 4:][:2])
    while good[cd + 46:cd + 57] != b"image_r.npy":
        cd = good.index(b"PK\x01\x02", cd + 1)
    enc[cd + 8] |= 1
    assert _same(bytes(enc))[0] == "error"


def test_random_corruption_same_decision():
    """Random byte changes anywhere in a blob: the fast decoder and np.load agree on every outcome."""
    rng = np.random.default_rng(3)
    base = [_valid_blobs()[k] for k in ("float32", "stored", "r_only", "fortran")]
    n_err = n_ok = 0
    for t in range(300):
        b = bytearray(base[t % len(base)])
        for _ in range(1 + t % 3):
            # half the changes in the zip structure (headers, directory), half anywhere
            pos = int(rng.integers(len(b) - 200, len(b))) if t % 2 else int(rng.integers(0, len(b)))
            b[pos] = int(rng.integers(0, 256))
        res = _same(bytes(b))
        n_err += res[0] == "error"
        n_ok += res[0] == "ok"
    assert n_err > 20 and n_ok > 20  # both decisions were exercised


def test_corrupt_blob_error_names_file_row_and_column(tmp_path):
    import pyarrow.parquet as pq

    d = tmp_path / "region_split=train"
    d.mkdir()
    blobs = [_npz({"image_r": _img()}) for _ in range(3)]
    blobs[2] = blobs[2][:-40]
    pq.write_table(pa.table({"brickname": ["b"] * 3, "ra": [1.0, 2.0, 3.0], "dec": [0.0] * 3,
                             "is_control": [0] * 3, "cutout_ok": [1] * 3,
                             "stamp_npz": pa.array(blobs, pa.binary())}), d / "p.parquet", row_group_size=2)
    with pytest.raises(S.SeedsDataError, match=r"p\.parquet: row 2 column 'stamp_npz': .*expected an "
                                               r"np\.savez_compressed blob"):
        S.read_seeds_split(tmp_path, "train")


def test_blob_column_types_and_offsets():
    """binary, large_binary and fixed_size_binary chunks, sliced (non-zero offsets), with nulls."""
    blobs = [_npz({"image_r": _img()}) for _ in range(5)]
    want = [S.decode_stamp_npz_reference(b) for b in blobs]
    fixed = [_npz({"image_g": _img(), "image_r": _img(), "image_z": _img()}, compressed=False) for _ in range(4)]
    assert len({len(b) for b in fixed}) == 1
    cases = [
        (pa.array(blobs, pa.binary()).slice(1, 3), want[1:4]),
        (pa.array(blobs, pa.large_binary()).slice(2), want[2:]),
        (pa.array([None, blobs[0], None], pa.binary()), [S.decode_stamp_npz(None), want[0], S.decode_stamp_npz(None)]),
        (pa.array(fixed, pa.binary(len(fixed[0]))).slice(1, 2), [S.decode_stamp_npz_reference(b) for b in fixed[1:3]]),
    ]
    for chunk, expect in cases:
        n = len(chunk)
        out = np.empty((n, 3, 64, 64), np.float32)
        masks, present = np.zeros(n, np.int8), np.zeros(n, bool)
        S._decode_chunk(chunk, out, masks, present, lambda j: f"row {j}", "fast")
        for i, (arr, mask) in enumerate(expect):
            assert out[i].view(np.uint32).tobytes() == arr.view(np.uint32).tobytes()
            assert masks[i] == mask and present[i] == chunk[i].is_valid


def test_fast_hashes_equal_hash_int63():
    t = pa.table({
        "brickname": pa.array(["1500p005", None, "bänd", "x\x1fy"]),
        "ra": pa.array([150.1, 0.1 + 0.2, float("nan"), -0.0]),
        "dec": pa.array([1.5, None, 2.0, 1e-300]),
        "is_control": pa.array([0, 1, 1, 0], pa.int8()),
        "theta_e_arcsec": pa.array([1.1, 0.0, 2.5, 3.0], pa.float32()),
        "shear": pa.array([0.01, None, 0.02, 0.0]),
    })
    vals = {c: t.column(c).to_pylist() for c in t.column_names}
    cols = [c for c in S.ID_COLUMNS if c in t.column_names]
    want = [hash_int63("seeds-sample", "val", *(repr(vals[c][i]) for c in cols)) for i in range(t.num_rows)]
    assert S._base_ids("val", t).tolist() == want
    want = [hash_int63("seeds-galaxy", *(repr(vals[c][i]) for c in ("brickname", "ra", "dec")))
            for i in range(t.num_rows)]
    assert S._row_ids(t).tolist() == want
    base = np.array([5, 7, 5, 5, 7, 9], np.int64)
    assert S._occurrences(base).tolist() == [0, 0, 1, 2, 1, 0]
    assert S._disambiguate(base).tolist() == [5, 7, hash_int63("seeds-sample-dup", 5, 1),
                                              hash_int63("seeds-sample-dup", 5, 2),
                                              hash_int63("seeds-sample-dup", 7, 1), 9]
