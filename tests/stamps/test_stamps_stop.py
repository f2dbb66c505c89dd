"""Stage `stamps` stops with one clear line and no output that looks valid: on a full disk (ENOSPC in
an executor, arriving inside a Spark exception, or in the driver), on Ctrl-C / SIGINT during the Spark
job, and when more than ``inject.max_failed_frac`` of a split's stamps failed.

The Spark cases (slow: they start a JVM) run a tiny job in this process on ``local[1]`` (rows on a
brick without coadds: no injection work). The real disk-full is /dev/full: the part file's temporary
name is a symlink to it. The rest is fast.
The stage-script cases (SIGINT to the process group, a corrupted coadd) are the slow
tests/project/test_stamps_stage_stops.py.
"""

from __future__ import annotations

import copy
import errno
import importlib.util
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import _tinyrepo as T
import darkhaloscope.stamps.pipeline as pipeline
import darkhaloscope.stamps.spark as spark_mod
from darkhaloscope.errors import SurveyError
from darkhaloscope.outputs import atomic_dir
from darkhaloscope.params import ParamsError, validate
from darkhaloscope.stamps.spark import (
    OUTPUT_COLUMNS,
    DiskFullError,
    StampsInterrupted,
    disk_full,
    run_stamps,
    too_many_failures,
)

HAVE_DEV_FULL = os.path.exists("/dev/full")


def _common():
    spec = importlib.util.spec_from_file_location("stage_common", T.REPO / "stages" / "_common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _params(**inject) -> dict:
    p = copy.deepcopy(T.shipped_params())
    p["spark"].update(master="local[1]", partitions=2)
    p["inject"].update(files_per_split=1, **inject)
    return validate(p, "test params")


def _rows(n: int = 6, bricks=("1500p005", "1510p005")) -> list[dict]:
    """Manifest-like rows on bricks that have no coadds: each is a failed (missing_coadd) row, cheaply."""
    rows = []
    for i in range(n):
        r = {c: 0.0 for c in OUTPUT_COLUMNS}
        r.update(sample_id=i + 1, pair_id=i + 1, row_id=i + 1, replicate=0, split=("train", "val")[i % 2],
                 brickname=bricks[i % len(bricks)], objid=i, ra=150.0, dec=0.5, is_control=1, config_id="control",
                 psfsize_g=1.3, psfsize_r=1.2, psfsize_z=1.1, psf_fallback="", fail_reason="")
        rows.append(r)
    return rows


# ============================================================================ failed fraction


def _stats(split, rows, fail_reasons=None, nonfinite=0, first=()):
    return {"split": split, "file": f"{split}/part-00000.parquet", "rows": rows, "cutout_ok": rows - sum((fail_reasons or {}).values()),
            "fail_reasons": fail_reasons or {}, "nonfinite_stamps": nonfinite, "first_failures": list(first),
            "psf_fallback_rows": 0}


def test_failed_fraction_above_the_threshold_names_split_fraction_reasons_and_key():
    stats = [_stats("train", 10, {"off_brick_edge": 9}),  # over the edge: expected, never counted
             _stats("val", 4, {"missing_coadd": 2}, nonfinite=1, first=["missing_coadd:image-g (coadd/x.fits)"]),
             _stats("val", 4, {"coadd_error": 1}, first=["coadd_error: bad.fits: not a FITS file"]),
             _stats("test", 8, {"coadd_error": 4})]
    assert too_many_failures(stats, 0.5) is None  # val 4/8, test 4/8: not MORE than half
    msg = too_many_failures(stats, 0.4)
    assert msg.startswith("split val: 4 of 8 stamps failed (50% of its rows: 3 missing or unreadable coadds, "
                          "1 non-finite); split test: 4 of 8 stamps failed (50%")
    assert "more than inject.max_failed_frac 0.4 allows" in msg
    assert ("first reasons: ['missing_coadd:image-g (coadd/x.fits)', 'coadd_error: bad.fits: not a FITS file']"
            in msg)
    assert "split train" not in msg and "no output written" in msg
    assert too_many_failures(stats, 0.0).startswith("split val")
    assert too_many_failures([_stats("known", 0)], 0.0) is None  # an empty split fails nothing
    assert too_many_failures([_stats("known", 2, {"missing_coadd": 2})], 1.0) is None


@pytest.mark.parametrize("value, ok", [(0.0, True), (1.0, True), (0.5, True), (-0.1, False), (1.5, False),
                                       ("half", False)])
def test_max_failed_frac_is_validated(value, ok):
    p = copy.deepcopy(T.shipped_params())
    assert p["inject"]["max_failed_frac"] == 0.5  # shipped default
    p["inject"]["max_failed_frac"] = value
    if ok:
        validate(p, "params.yaml")
        return
    with pytest.raises(ParamsError) as e:
        validate(p, "params.yaml")
    assert "inject.max_failed_frac" in str(e.value)
    assert ("[0, 1]" if isinstance(value, float) else "a number") in str(e.value)


def test_stage_fails_above_the_threshold_before_writing_the_gallery(monkeypatch, tmp_path):
    """run_stamps_stage raises the SurveyError after the WARN lines; atomic_dir leaves nothing."""
    stats = [_stats("train", 4, {"coadd_error": 3}, first=["coadd_error: x: truncated"]), _stats("known", 0)]
    monkeypatch.setattr(pipeline, "run_stamps", lambda *a, **k: (stats, []))
    monkeypatch.setattr(pipeline.pq, "read_table", lambda *a, **k: _Table([]))
    monkeypatch.setattr(pipeline, "parent_rows", lambda *a, **k: [])
    monkeypatch.setattr(pipeline, "read_known_lenses", lambda *a, **k: {"ra": [], "dec": []})
    monkeypatch.setattr(pipeline, "read_brick_table", lambda *a, **k: None)
    monkeypatch.setattr(pipeline, "bricks_of", lambda *a, **k: [])
    monkeypatch.setattr(pipeline, "known_lens_rows", lambda *a, **k: ([], 0))
    drawn = []
    monkeypatch.setattr(pipeline, "injection_gallery", lambda *a, **k: drawn.append(a))
    final = tmp_path / "stamps"
    with pytest.raises(SurveyError) as e, atomic_dir(final) as out:
        pipeline.run_stamps_stage(_params(), "m.parquet", "p.parquet", "coadds", out)
    assert str(e.value).startswith("split train: 3 of 4 stamps failed (75% of its rows")
    assert "inject.max_failed_frac 0.5" in str(e.value) and "coadd_error: x: truncated" in str(e.value)
    assert not drawn and not final.exists() and not (tmp_path / "stamps.tmp").exists()
    assert _common().is_user_error(e.value)  # one line from stages/_common.py
    # at 0.8 the same stage goes on (and warns)
    with atomic_dir(final) as out:
        pipeline.run_stamps_stage(_params(max_failed_frac=0.8), "m.parquet", "p.parquet", "coadds", out)
    assert drawn and final.is_dir()


class _Table:
    def __init__(self, rows):
        self.rows = rows

    def to_pylist(self):
        return list(self.rows)


# ============================================================================ disk full, Ctrl-C: the wrapper


def test_disk_full_is_recognised_inside_wrapped_exceptions():
    e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/d/x.parquet")
    assert disk_full(e) == (True, "/d/x.parquet")
    wrapped = RuntimeError("An exception was thrown from the Python worker: Traceback ...\n"
                           "OSError: [Errno 28] No space left on device: 'data/stamps.tmp/val/part-00001.parquet'\n")
    assert disk_full(wrapped) == (True, "data/stamps.tmp/val/part-00001.parquet")
    jvm = RuntimeError("py4j.protocol.Py4JJavaError: ... java.io.IOException: No space left on device\n\tat ...")
    assert disk_full(jvm) == (True, None)
    try:
        try:
            raise e
        except OSError as inner:
            raise ValueError("writing failed") from inner
    except ValueError as outer:
        assert disk_full(outer) == (True, "/d/x.parquet")
    assert disk_full(OSError(errno.EACCES, "Permission denied", "/d")) == (False, None)
    assert disk_full(ValueError("no")) == (False, None)


def test_driver_side_disk_full_and_interrupt_become_one_line(monkeypatch, tmp_path):
    common = _common()

    def full(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "stamps.tmp" / "gallery.png"))

    monkeypatch.setattr(pipeline, "_run_stamps_stage", full)
    with pytest.raises(DiskFullError) as e, atomic_dir(tmp_path / "stamps") as out:
        pipeline.run_stamps_stage(_params(), "m", "p", "c", out)
    msg = str(e.value)
    assert msg.startswith(f"disk full writing {tmp_path / 'stamps.tmp' / 'gallery.png'} (no space left on device): "
                          f"free space on that disk or move data/ to a disk with room")
    assert msg.endswith(f"no output written (the unfinished stamps in {tmp_path / 'stamps.tmp'} are discarded)")
    assert e.value.errno == errno.ENOSPC and "\n" not in msg
    assert common.is_user_error(e.value) and common.error_message(e.value) == msg
    assert not (tmp_path / "stamps").exists() and not (tmp_path / "stamps.tmp").exists()

    def ctrl_c(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_run_stamps_stage", ctrl_c)
    with pytest.raises(StampsInterrupted) as e, atomic_dir(tmp_path / "stamps") as out:
        pipeline.run_stamps_stage(_params(), "m", "p", "c", out)
    assert str(e.value).startswith("interrupted (Ctrl-C / SIGINT): no output written")
    assert common.is_user_error(e.value)
    assert not (tmp_path / "stamps").exists() and not (tmp_path / "stamps.tmp").exists()

    def other(*a):
        raise PermissionError(errno.EACCES, "Permission denied", "x")

    monkeypatch.setattr(pipeline, "_run_stamps_stage", other)
    with pytest.raises(PermissionError):  # any other OSError is left alone
        pipeline.run_stamps_stage(_params(), "m", "p", "c", str(tmp_path / "o"))


# ============================================================================ the Spark job (in this process)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_DEV_FULL, reason="needs /dev/full")
def test_disk_full_in_an_executor_names_the_file_and_leaves_nothing(tmp_path):
    final = tmp_path / "data" / "stamps"
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(DiskFullError) as e, atomic_dir(final) as out:
        victim = Path(out) / "val" / "part-00000.parquet"
        victim.parent.mkdir(parents=True)
        os.symlink("/dev/full", str(victim) + ".tmp")  # write_stamp_file writes <path>.tmp, then renames
        run_stamps(_rows(), str(tmp_path / "no_coadds"), out, _params(), splits=("train", "val"))
    msg = str(e.value)
    assert msg.startswith(f"disk full writing {victim} (no space left on device): free space on that disk")
    assert "re-run stage stamps" in msg and "no output written" in msg and "\n" not in msg
    assert e.value.path == str(victim)
    assert not final.exists() and not Path(out).exists()
    assert signal.getsignal(signal.SIGINT) is before  # the handler is back
    # the very same job without the full disk works (and the session was stopped cleanly)
    with atomic_dir(final) as out:
        stats, _ = run_stamps(_rows(), str(tmp_path / "no_coadds"), out, _params(), splits=("train", "val"))
    assert sorted(s["file"] for s in stats) == ["train/part-00000.parquet", "val/part-00000.parquet"]
    assert sum(s["fail_reasons"]["missing_coadd"] for s in stats) == 6


def _slow_process_brick(brick, rows, *args, marker: str, **kwargs):
    """Stands in for process_brick in the Spark tasks: says it started, then takes its time."""
    import pathlib
    import time as _time

    pathlib.Path(marker).touch()
    _time.sleep(120)
    return []


@pytest.mark.slow
def test_ctrl_c_during_the_job_cancels_it_and_says_so(tmp_path, monkeypatch):
    import functools

    from pyspark import cloudpickle

    marker = tmp_path / "started"
    monkeypatch.setattr(spark_mod, "process_brick", functools.partial(_slow_process_brick, marker=str(marker)))
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)  # the workers cannot import this test module
    before = signal.getsignal(signal.SIGINT)
    done = threading.Event()

    def interrupt_when_started():
        t0 = time.monotonic()
        while not marker.exists() and not done.is_set() and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    final = tmp_path / "stamps"
    sender = threading.Thread(target=interrupt_when_started, daemon=True)
    try:
        sender.start()
        t0 = time.monotonic()
        with pytest.raises(StampsInterrupted) as e, atomic_dir(final) as out:
            run_stamps(_rows(), str(tmp_path / "no_coadds"), out, _params(), splits=("train", "val"))
        took = time.monotonic() - t0
    finally:
        done.set()
        cloudpickle.unregister_pickle_by_value(module)
        sender.join(timeout=130)
    assert marker.exists(), "the tasks never started"
    assert took < 90, f"the interrupted job took {took:.0f} s (the tasks sleep 120 s)"
    assert str(e.value) == spark_mod.interrupted_message(str(final) + ".tmp")
    assert str(e.value).startswith("interrupted (Ctrl-C / SIGINT): no output written (the Spark job was cancelled")
    assert not final.exists() and not (tmp_path / "stamps.tmp").exists()
    assert signal.getsignal(signal.SIGINT) is before


def _probe_process_brick(brick, rows, coadd_root, *args, marker: str, **kwargs):
    """Stands in for process_brick in the Spark tasks: records whether ``coadd_root`` is a directory
    where the task runs."""
    import os as _os
    import pathlib

    pathlib.Path(marker, brick).write_text(f"{_os.path.isdir(coadd_root)} {coadd_root}")
    return []


@pytest.mark.slow
def test_relative_paths_reach_the_tasks_after_a_change_of_directory(tmp_path, monkeypatch):
    """A JVM outlives spark.stop() and its Python workers keep the directory it started in: a relative
    survey root or output directory given after a chdir must still name the driver's files (the search
    e2e test cut zeros once when another test had started the JVM elsewhere)."""
    import functools

    from pyspark import cloudpickle

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    (second / "coadds").mkdir(parents=True)
    monkeypatch.chdir(first)
    run_stamps(_rows(2), "no_coadds", "out", _params(), splits=("train", "val"))  # the JVM runs here now
    marker = tmp_path / "seen"
    marker.mkdir()
    monkeypatch.setattr(spark_mod, "process_brick", functools.partial(_probe_process_brick, marker=str(marker)))
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)  # the workers cannot import this test module
    try:
        monkeypatch.chdir(second)
        stats, _ = run_stamps(_rows(2), "coadds", "out", _params(), splits=("train", "val"))
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    seen = {p.name: p.read_text() for p in marker.iterdir()}
    assert sorted(seen) == ["1500p005", "1510p005"]
    assert all(v == f"True {second / 'coadds'}" for v in seen.values()), seen
    assert sorted(s["file"] for s in stats) == ["train/part-00000.parquet", "val/part-00000.parquet"]
    assert (second / "out" / "train" / "part-00000.parquet").is_file()
