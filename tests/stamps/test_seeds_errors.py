"""Layouts, checks before any work, error messages, the CLI, the lock file and the progress bar of
darkhaloscope.stamps.seeds (the seeds' ``stamp_npz`` parquet converter)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from darkhaloscope.stamps import seeds as S
from darkhaloscope.stamps.format import list_stamp_files, write_stamp_file

REPO = Path(__file__).resolve().parents[2]


def _blob(arrays: dict) -> bytes:
    bio = io.BytesIO()
    np.savez_compressed(bio, **arrays)
    return bio.getvalue()


def _table(n: int, seed: int, *, paired: bool = False, **over) -> pa.Table:
    rng = np.random.default_rng(seed)
    img = (rng.normal(0, 0.01, (n, 3, 64, 64)) + 0.1).astype(np.float32)
    cols = {
        "brickname": pa.array([f"b{seed}_{i % 3}" for i in range(n)], pa.string()),
        "ra": rng.uniform(150, 151, n), "dec": rng.uniform(0, 1, n),
        "is_control": (np.arange(n) % 2).astype(np.int32), "cutout_ok": np.ones(n, np.int32),
        "theta_e_arcsec": rng.uniform(0.5, 2, n), "psfsize_r": rng.uniform(0.9, 1.5, n),
        "stamp_npz": pa.array([_blob({"image_g": x[0], "image_r": x[1], "image_z": x[2]}) for x in img], pa.binary()),
    }
    if paired:
        cols["ctrl_stamp_npz"] = pa.array([_blob({"image_r": x[1]}) for x in img], pa.binary())
    cols.update(over)
    return pa.table(cols)


def _write(root: Path, form: str = "hive", sizes=None, **kw) -> Path:
    """A small seeds set: ``hive`` (region_split=<split>/) or ``plain`` (<split>/), gzip / snappy parts."""
    sizes = sizes or {"train": (7, 5, 6), "val": (4,), "test": (5,)}
    for split, ns in sizes.items():
        d = root / (f"region_split={split}" if form == "hive" else split)
        d.mkdir(parents=True, exist_ok=True)
        (d / "_SUCCESS").write_text("")
        for f, n in enumerate(ns):
            pq.write_table(_table(n, 100 * f + len(split), **kw), d / f"part-{f:05d}-c000.parquet",
                           compression=("gzip", "snappy")[f % 2], row_group_size=3)
    return root


@pytest.fixture(scope="module")
def hive(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("hive") / "seeds")


def _corrupt_copy(src: Path, dst: Path, rel: str, mutate) -> Path:
    shutil.copytree(src, dst)
    mutate(dst / rel)
    return dst


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nothing_written(parent: Path, name: str = "out") -> bool:
    return not (parent / name).exists() and not [p for p in os.listdir(parent) if p.startswith(f"{name}.")]


def _ours(root: Path) -> Path:
    write_stamp_file(root / "train" / "part-00000.parquet",
                     {"sample_id": [1, 2], "is_control": [0, 1], "cutout_ok": [1, 1]},
                     np.zeros((2, 3, 64, 64), np.float32))
    return root


# ----------------------------------------------------------------------------- layouts


def test_gen5_prime_plain_layout_converts_like_hive(hive, tmp_path):
    plain = tmp_path / "plain"
    for split in ("train", "val", "test"):
        shutil.copytree(hive / f"region_split={split}", plain / split)
    layout = S.detect_seeds_layout(plain)
    assert layout is not None and layout.form == "plain" and sorted(layout.dirs) == ["test", "train", "val"]
    assert S.is_seeds_layout(plain) and S.seeds_splits(plain) == ["test", "train", "val"]
    a = S.convert_seeds_to_stamps(hive, tmp_path / "a", progress=False)
    b = S.convert_seeds_to_stamps(plain, tmp_path / "b", progress=False)
    assert {s: r["counts"] for s, r in a["splits"].items()} == {s: r["counts"] for s, r in b["splits"].items()}
    assert sorted(b["source"]) == ["test", "train", "val"] and b["source"]["val"][0]["file"].startswith("val/")
    for split in ("train", "val", "test"):
        ta = pa.concat_tables([pq.read_table(f) for f in list_stamp_files(tmp_path / "a", split)])
        tb = pa.concat_tables([pq.read_table(f) for f in list_stamp_files(tmp_path / "b", split)])
        for c in ta.column_names:  # the same ids and stamps; only src_file says where each row came from
            if c != "src_file":
                assert ta.column(c).equals(tb.column(c)), c
        assert tb.column("src_file")[0].as_py().startswith(f"{split}/")
    assert S.conversion_is_current(plain, tmp_path / "b")
    assert S.resolve_stamp_root(plain, tmp_path / "b") == str(tmp_path / "b")


def test_our_format_is_never_taken_for_seeds(tmp_path):
    ours = _ours(tmp_path / "ours")
    write_stamp_file(ours / "known" / "part-00000.parquet",
                     {"sample_id": [3], "is_control": [1], "cutout_ok": [1]}, np.zeros((1, 3, 64, 64), np.float32))
    assert S.detect_seeds_layout(ours) is None and not S.is_seeds_layout(ours)
    assert S.resolve_stamp_root(ours, tmp_path / "cache") == os.fspath(ours)
    with pytest.raises(S.SeedsDataError, match=r"own stamp format .*train/part-00000\.parquet has a 'stamp' column"):
        S.convert_seeds_to_stamps(ours, tmp_path / "out", progress=False)
    assert _nothing_written(tmp_path)


def test_neither_layout_and_missing_root(tmp_path):
    (tmp_path / "src" / "misc").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "src" / "misc" / "a.parquet")
    with pytest.raises(S.SeedsDataError, match=r"not a seeds stamp set: found entries \['misc'\]; expected parquet "
                                               r"files with a binary 'stamp_npz' column"):
        S.convert_seeds_to_stamps(tmp_path / "src", tmp_path / "out")
    (tmp_path / "src" / "train").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "src" / "train" / "a.parquet")
    with pytest.raises(S.SeedsDataError, match=r"found train/ \(parquet without 'stamp_npz'\)"):
        S.convert_seeds_to_stamps(tmp_path / "src", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"nope: no such directory; expected a seeds stamp set"):
        S.convert_seeds_to_stamps(tmp_path / "nope", tmp_path / "out")
    assert _nothing_written(tmp_path)


def test_both_layouts_refused(hive, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(hive, src)
    shutil.copytree(hive / "region_split=val", src / "val")
    assert S.is_seeds_layout(src)
    with pytest.raises(S.SeedsDataError, match="expected one layout, not both"):
        S.convert_seeds_to_stamps(src, tmp_path / "out")
    assert _nothing_written(tmp_path)


# ----------------------------------------------------------------------------- split names


def test_unknown_split_fails_before_any_work(hive, tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(hive, src)
    os.rename(src / "region_split=val", src / "region_split=validation")

    def no_work(*a, **k):
        raise AssertionError("a file was read")

    monkeypatch.setattr(S, "_plan_task", no_work)
    monkeypatch.setattr(S, "_convert_group", no_work)
    with pytest.raises(S.SeedsDataError) as e:
        S.convert_seeds_to_stamps(src, tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "region_split=validation" in msg and "unknown split name(s) ['validation']" in msg
    assert "one of train, val, test" in msg and "--ignore-split validation" in msg
    assert _nothing_written(tmp_path)
    with pytest.raises(S.SeedsDataError, match=r"ignore_splits names \['valid'\], but there is no such split"):
        S.convert_seeds_to_stamps(src, tmp_path / "out", ignore_splits=["valid"])
    monkeypatch.undo()
    # left out explicitly: converted without it, and the report says so
    rep = S.convert_seeds_to_stamps(src, tmp_path / "out", ignore_splits=["validation"], progress=False)
    assert sorted(rep["splits"]) == ["test", "train"] and rep["ignored_splits"] == ["validation"]
    assert rep["settings"]["ignore_splits"] == ["validation"]
    assert S.conversion_is_current(src, tmp_path / "out", ignore_splits=["validation"])
    assert not S.conversion_is_current(src, tmp_path / "out")


def test_unknown_plain_split_and_stray_root_file(hive, tmp_path):
    src = tmp_path / "plain"
    shutil.copytree(hive / "region_split=train", src / "train")
    shutil.copytree(hive / "region_split=val", src / "holdout")
    with pytest.raises(S.SeedsDataError, match=r"holdout: unknown split name\(s\) \['holdout'\]; expected <split>"):
        S.convert_seeds_to_stamps(src, tmp_path / "out")
    shutil.rmtree(src / "holdout")
    shutil.copy(S.list_seeds_files(hive, "val")[0], src / "loose.parquet")
    with pytest.raises(S.SeedsDataError, match=r"\['loose\.parquet'\] lie directly under the root, in no split"):
        S.convert_seeds_to_stamps(src, tmp_path / "out")
    assert _nothing_written(tmp_path)


# ----------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("case", ["truncated", "not_parquet", "missing_column", "blob_type", "flag_type",
                                  "flag_value", "flag_null", "added_column", "own_id_dup", "paired_mix"])
def test_bad_source_file_named_before_any_output(hive, tmp_path, case):
    rel = "region_split=train/part-00001-c000.parquet"

    def rewrite(**over):
        def go(p):
            t = pq.read_table(p)
            for k, v in over.items():
                t = t.drop_columns([k]) if v is None else (t.set_column(t.column_names.index(k), k, v)
                                                           if k in t.column_names else t.append_column(k, v))
            pq.write_table(t, p)
        return go

    n = 5
    muts = {
        "truncated": (_truncate, r"not a readable parquet file .*expected a seeds stamp file"),
        "not_parquet": (lambda p: p.write_text("hello"), r"not a readable parquet file"),
        "missing_column": (rewrite(cutout_ok=None), r"required seeds column\(s\) \['cutout_ok'\] missing"),
        "blob_type": (rewrite(stamp_npz=pa.array(["x"] * n)), r"column 'stamp_npz' has type string, expected binary"),
        "flag_type": (rewrite(is_control=pa.array(["0"] * n)), r"column 'is_control' has type string, expected "
                                                                r"integer 0 / 1"),
        "flag_value": (rewrite(is_control=pa.array([0, 1, 2, 0, 1])), r"column 'is_control': row 2 holds 2, "
                                                                       r"expected 0 or 1"),
        "flag_null": (rewrite(cutout_ok=pa.array([1, None, 1, 1, 1])), r"column 'cutout_ok' has 1 null values "
                                                                        r"\(first at row 1\)"),
        "added_column": (rewrite(band_mask=pa.array([7] * n)), r"\['band_mask'\] would be overwritten"),
        "own_id_dup": (None, r"sample_id value\(s\) occur more than once, e\.g\. 5 at train: "
                             r"region_split=train/part-00001-c000\.parquet row 0 and train: "
                             r"region_split=train/part-00001-c000\.parquet row 4"),
        "paired_mix": (rewrite(ctrl_stamp_npz=pa.array([None] * n, pa.binary())),
                       r"some files have 'ctrl_stamp_npz' \(region_split=train/part-00001-c000\.parquet\) and others "
                       r"do not"),
    }
    mutate, pattern = muts[case]
    if case == "own_id_dup":
        mutate = rewrite(sample_id=pa.array([5, 6, 7, 8, 5]), row_id=pa.array([1, 2, 3, 4, 5]))
    src = _corrupt_copy(hive, tmp_path / "src", rel, mutate)
    with pytest.raises(S.SeedsDataError, match=pattern) as e:
        S.convert_seeds_to_stamps(src, tmp_path / "out", progress=False, workers=2)
    if case not in ("own_id_dup", "paired_mix"):
        assert str(src / rel) in str(e.value)
    assert _nothing_written(tmp_path)


def test_corrupt_blob_mid_conversion_leaves_previous_output(hive, tmp_path):
    """A blob that only decoding finds bad: the error names file, row and column; nothing half-written stays."""
    out = tmp_path / "out"
    S.convert_seeds_to_stamps(hive, out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rel = "region_split=train/part-00001-c000.parquet"

    def corrupt(p):
        t = pq.read_table(p)
        blobs = t.column("stamp_npz").to_pylist()
        blobs[3] = blobs[3][:100] + b"\x00" * 50 + blobs[3][150:]
        pq.write_table(t.set_column(t.column_names.index("stamp_npz"), "stamp_npz", pa.array(blobs, pa.binary())), p)

    src = _corrupt_copy(hive, tmp_path / "src", rel, corrupt)
    for workers in (1, 2):
        with pytest.raises(S.SeedsDataError, match=rf"{rel}: row 3 column 'stamp_npz': .*expected an "
                                                    r"np\.savez_compressed blob"):
            S.convert_seeds_to_stamps(src, out, progress=False, workers=workers)
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched
        assert sorted(os.listdir(tmp_path)) == ["out", "src"]  # no temporary directory left
    with pytest.raises(S.SeedsDataError):
        S.convert_seeds_to_stamps(src, tmp_path / "fresh", progress=False)
    assert _nothing_written(tmp_path, "fresh")


def test_destination_checks(hive, tmp_path):
    ours = _ours(tmp_path / "ours")
    with pytest.raises(FileExistsError, match=r"exists and is not a seeds conversion \(no seeds_conversion\.json\)"):
        S.convert_seeds_to_stamps(hive, ours)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a directory"):
        S.convert_seeds_to_stamps(hive, tmp_path / "file")
    with pytest.raises(S.SeedsDataError, match="may not be the source, nor lie in"):
        S.convert_seeds_to_stamps(hive, hive / "region_split=train" / "out")
    with pytest.raises(S.SeedsDataError, match="may not contain the source"):
        S.convert_seeds_to_stamps(hive, hive.parent)
    assert list_stamp_files(ours, "train")  # untouched


# ----------------------------------------------------------------------------- report, workers, progress


def test_duplicates_counted_and_warned(tmp_path, caplog):
    src = tmp_path / "src"
    d = src / "region_split=train"
    d.mkdir(parents=True)
    t = _table(6, 1)
    rows = t.to_pylist()
    rows[4] = dict(rows[1])  # an exact repeat (another blob is fine: identity values only)
    rows[4]["stamp_npz"] = rows[5]["stamp_npz"]
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), d / "a.parquet")
    pq.write_table(pa.Table.from_pylist([rows[1]], schema=t.schema), d / "b.parquet")
    with caplog.at_level("WARNING", logger="darkhaloscope.stamps.seeds"):
        rep = S.convert_seeds_to_stamps(src, tmp_path / "out", progress=False)
    assert rep["splits"]["train"]["counts"][S.DUPLICATE_COUNT] == 2
    assert "2 row(s) repeat the identity values" in caplog.text and "region_split=train/a.parquet row 4" in caplog.text
    sid = pa.concat_tables([pq.read_table(f) for f in list_stamp_files(tmp_path / "out", "train")]).column("sample_id")
    assert len(set(sid.to_pylist())) == 7
    assert json.loads((tmp_path / "out" / S.MANIFEST_NAME).read_text())["splits"]["train"]["counts"][
        S.DUPLICATE_COUNT] == 2


def test_same_bytes_for_any_workers_and_decoder(hive, tmp_path):
    outs = []
    for i, kw in enumerate([dict(workers=1), dict(workers=2), dict(workers=3), dict(),
                            dict(workers=1, decoder="reference")]):
        dst = tmp_path / f"o{i}"
        rep = S.convert_seeds_to_stamps(hive, dst, files_per_split=2, progress=False, **kw)
        files = sorted(p for p in dst.rglob("*.parquet"))
        outs.append(([p.relative_to(dst) for p in files], [p.read_bytes() for p in files],
                     json.dumps({k: v for k, v in rep.items() if k != "source_root"}, sort_keys=True)))
    assert all(o == outs[0] for o in outs[1:])
    assert [str(p) for p in outs[0][0]] == ["test/part-00000.parquet", "train/part-00000.parquet",
                                            "train/part-00001.parquet", "val/part-00000.parquet"]
    assert S.available_cores() == len(os.sched_getaffinity(0))


def test_progress_bar_on_stderr(hive, tmp_path, capsys):
    S.convert_seeds_to_stamps(hive, tmp_path / "out", workers=2)
    err = capsys.readouterr().err
    assert "seeds: checking files" in err and "5/5" in err
    assert "seeds: converting" in err and "27/27" in err
    S.convert_seeds_to_stamps(hive, tmp_path / "out2", progress=False)
    assert "seeds:" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- lock


def test_no_lock_file_left_and_concurrent_callers_convert_once(hive, tmp_path, monkeypatch):
    cache = tmp_path / "caches" / "conv"
    calls = []
    real = S.convert_seeds_to_stamps

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(S, "convert_seeds_to_stamps", counting)
    got, errors = [], []

    def worker():
        try:
            got.append(S.resolve_stamp_root(hive, cache, workers=1, progress=False))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == [str(cache)] * 3 and len(calls) == 1
    assert os.listdir(tmp_path / "caches") == ["conv"]  # no .lock (nor temporary) file beside the cache
    assert not [p for p in os.listdir(hive.parent) if p.endswith(".lock")]
    assert S.lock_path(cache) == str(tmp_path / "caches" / ".conv.lock")


def test_lock_excludes_and_survives_unlink_race(tmp_path):
    path = str(tmp_path / ".x.lock")
    order = []
    first = S._exclusive_lock(path).__enter__()
    started = threading.Event()

    def other():
        started.set()
        with S._exclusive_lock(path):
            order.append("other")

    t = threading.Thread(target=other)
    t.start()
    started.wait()
    t.join(0.3)
    assert t.is_alive()  # blocked while the first holds the lock
    order.append("first")
    first.__exit__(None, None, None)
    t.join(5)
    assert order == ["first", "other"] and not os.path.exists(path)


# ----------------------------------------------------------------------------- CLI


def _cli(capsys, *args) -> tuple[int, str, str]:
    rc = S.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_errors_are_one_line(hive, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DHS_TRACEBACK", raising=False)
    trunc = _corrupt_copy(hive, tmp_path / "trunc", "region_split=val/part-00000-c000.parquet", _truncate)
    ours = _ours(tmp_path / "ours")
    cases = [
        ((tmp_path / "nope", tmp_path / "o1"), 1, "nope: no such directory"),
        ((tmp_path / "ours", tmp_path / "o2"), 1, "own stamp format"),
        ((hive, ours), 1, "exists and is not a seeds conversion"),
        ((trunc, tmp_path / "o3"), 1, "region_split=val/part-00000-c000.parquet: not a readable parquet file"),
        ((hive, tmp_path / "o4", "--workers", "0"), 2, "argument --workers: expected a positive integer, got 0"),
        ((hive,), 2, "the following arguments are required: dst"),
        ((hive, tmp_path / "o5", "--bogus"), 2, "unrecognized arguments: --bogus"),
    ]
    for args, code, text in cases:
        rc, out, err = _cli(capsys, *args)
        lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("seeds_format: error: ")]
        assert rc == code and len(errors) == 1, (args, err)
        assert all(ln.startswith("seeds: ") for ln in lines if ln not in errors), (args, err)  # progress bars only
        assert text in errors[0] and "Traceback" not in err, (args, err)
    assert not [p for p in os.listdir(tmp_path) if p.startswith("o") and p != "ours"]
    monkeypatch.setenv("DHS_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        S.main([str(tmp_path / "nope"), str(tmp_path / "o1")])


def test_cli_converts_and_reports(hive, tmp_path, capsys):
    rc, out, err = _cli(capsys, hive, tmp_path / "cli", "--files-per-split", "1", "--workers", "2")
    assert rc == 0 and json.loads(out)["train"]["rows"] == 18 and "seeds: converting" in err
    rc, out, _ = _cli(capsys, hive, tmp_path / "cli", "--files-per-split", "1")
    assert rc == 0 and "already a current conversion" in out


def test_cli_entry_point_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    env.pop("DHS_TRACEBACK", None)
    p = subprocess.run([sys.executable, "-m", "darkhaloscope.stamps.seeds", str(tmp_path / "nope"),
                        str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1 and p.stderr.startswith("seeds_format: error: ") and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
