"""Stage `stamps` through its real entry point (``python stages/stamps.py`` in a tiny copy of the
repository, tests/_tinyrepo.py) stops with one clear line and leaves no output that looks valid:

- Ctrl-C: SIGINT to the stage's process group (what a terminal sends) while the Spark job runs;
- a corrupted coadd cache: more than ``inject.max_failed_frac`` of a split's stamps fail.

Slow: the tiny survey, parent sample, manifest and coadd cache are made once by the stage scripts
(no DVC), then each test runs stage `stamps` in its own copy. The in-process cases (a full disk in an
executor, Ctrl-C in the driver) are tests/stamps/test_stamps_stop.py.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

import _tinyrepo as T

pytestmark = pytest.mark.slow

TRACEBACK = "Traceback (most recent call last)"
STAGES_BEFORE = ("survey", "parent", "manifest", "coadds")


@pytest.fixture(scope="module")
def upto_coadds(tmp_path_factory) -> Path:
    p = T.tiny_params()
    p["inject"]["engine"] = "lenstronomy"  # no numba compilation in the fresh copy
    work = T.make_repo(tmp_path_factory.mktemp("stamps_stops") / "repo", p, git=False)
    for stage in STAGES_BEFORE:
        T.stage_main(work, stage, timeout=400, check=True)
    (work / "metrics" / "stamps.json").unlink(missing_ok=True)  # the working tree's copy: not this run's
    assert any((work / "data" / "coadds").rglob("*-image-g.fits*"))
    return work


@pytest.fixture
def work(upto_coadds, tmp_path):
    w = T.clone_repo(upto_coadds, tmp_path / "repo")
    yield w
    left = T.reap_leftovers(w)
    assert not left, f"processes left running in {w}: {left}"


def _spark_workers_running(work: Path) -> bool:
    """A Spark Python worker daemon started by the stage's JVM runs: the job's tasks have begun."""
    for pid in T.processes_under(work):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"pyspark.daemon" in cmd:
            return True
    return False


def _assert_nothing_written(work: Path) -> None:
    assert not (work / "data" / "stamps").exists(), "a stopped stamps run left a data/stamps that looks complete"
    assert not (work / "data" / "stamps.tmp").exists(), "the unfinished output was left behind"
    assert not (work / "metrics" / "stamps.json").exists()


def test_ctrl_c_during_the_spark_job(work, tmp_path):
    log = tmp_path / "stamps.log"
    proc = T.spawn([sys.executable, "stages/stamps.py"], work, log)
    try:
        t0 = time.monotonic()
        while not _spark_workers_running(work):
            assert proc.poll() is None, f"the stage ended (rc {proc.returncode}) before its Spark job ran:\n" \
                                        f"{log.read_text()[-3000:]}"
            assert time.monotonic() - t0 < 300, "no Spark worker within 300 s"
            time.sleep(0.05)
        assert (work / "data" / "stamps.tmp").is_dir()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground process group
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    out = log.read_text()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert rc == 130, out[-4000:]  # the shell's status for SIGINT (stages/_common.INTERRUPTED_STATUS)
    assert lines[-1] == ("[stamps] interrupted (Ctrl-C / SIGINT): no output written (the Spark job was cancelled; "
                         "the unfinished stamps in data/stamps.tmp are discarded)"), out[-4000:]
    # nothing else but the JVM's start-up notice: no traceback, no py4j, no Spark task errors
    assert TRACEBACK not in out and "py4j" not in out.lower() and "KeyboardInterrupt" not in out, out[-4000:]
    assert not [ln for ln in lines if ln.startswith("[spark]")], out[-4000:]
    _assert_nothing_written(work)


def test_corrupted_coadds_above_max_failed_frac(work):
    """Every cached g-band image unreadable: every stamp fails, so the first split (train) is above
    inject.max_failed_frac (0.5 shipped); the stage exits 1 with one line and writes nothing."""
    images = sorted((work / "data" / "coadds").rglob("*-image-g.fits*"))
    for f in images:
        f.write_bytes(b"SIMPLE  = this is not a FITS file any more")
    res = T.stage_main(work, "stamps", timeout=400)
    assert res.returncode == 1 and TRACEBACK not in res.stderr, res.stderr[-4000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("[stamps] split train: "), line
    n = int(line.split("split train: ", 1)[1].split(" of ", 1)[0])
    assert f"split train: {n} of {n} stamps failed (100% of its rows: {n} missing or unreadable coadds" in line
    assert "more than inject.max_failed_frac 0.5 allows; first reasons: ['coadd_error: " in line
    assert "data/coadds/coadd/" in line and "raise inject.max_failed_frac in params.yaml" in line
    assert "no output written" in line
    # the per-split WARN lines come first, as before
    assert f"[stamps] WARN split train: {n} of {n} stamps failed" in res.stderr
    _assert_nothing_written(work)
