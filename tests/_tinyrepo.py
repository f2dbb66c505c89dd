"""Tiny temporary copies of the repository for tests that run stage scripts or `dvc repro`.

A copy holds the working tree's source files (tracked and untracked-but-not-ignored, as git
lists them, plus ``.dvc/config``), never the working repository's outputs, and a
``params.yaml`` for a tiny mock survey. Everything a test runs there stays under its
temporary directory; the working repository is only read.

Used by tests/project/ (test_reliability.py, test_gens.py), every test in tests/e2e/ and
tests/search/test_search_e2e.py; :func:`shared_full_repo` is one full run they share.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
GIT = ["git", "-c", "user.name=dhs-test", "-c", "user.email=dhs-test@example.invalid",
       "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]
_DROP_ENV = ("DHS_PARAMS", "DHS_RESUME", "DHS_TRACEBACK", "PYTHONPATH", "SPARK_HOME", "WORLD_SIZE",
             "LOCAL_RANK", "RANK", "MASTER_ADDR", "MASTER_PORT")


def env(**extra: str) -> dict:
    """The environment for subprocesses: the venv first on PATH, CPU only, no stray overrides."""
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    for k in _DROP_ENV:
        e.pop(k, None)
    e["CUDA_VISIBLE_DEVICES"] = ""  # CPU float32: the equalities the tests check are exact there
    e["DVC_NO_ANALYTICS"] = "1"
    e.update(extra)
    return e


def source_files() -> list[str]:
    """Paths (relative to the repository) of the working tree's source files."""
    listed: list[str] = []
    for args in (["ls-files", "-z"], ["ls-files", "-z", "--others", "--exclude-standard"]):
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=True).stdout
        listed += [f for f in out.decode().split("\0") if f]
    return sorted(set(listed)) + [".dvc/config"]


def copy_sources(dest: Path, only: Iterable[str] | None = None) -> Path:
    """Copy the source files into ``dest`` (only those under the prefixes ``only``, if given)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    prefixes = tuple(only) if only is not None else None
    for rel in source_files():
        if prefixes is not None and not rel.startswith(prefixes):
            continue
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the working tree is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def shipped_params() -> dict:
    with open(REPO / "params.yaml") as f:
        return yaml.safe_load(f)


def tiny_params(epochs: int = 2, patience: int = 50) -> dict:
    """A tiny but complete configuration: 2x2 bricks of 300 pixels, a few-epoch small_cnn."""
    p = copy.deepcopy(shipped_params())
    p["survey"]["mock"].update(n_bricks_ra=2, n_bricks_dec=2, brick_size_pix=300, n_lrg_per_brick=40,
                               n_blue_per_brick=10, n_star_per_brick=5, n_known_lenses=2)
    p["selection"]["split"]["nside"] = 8192  # ~0.4 arcmin regions: the tiny sky holds ~30 of them
    # the tiny sky trains on most of its regions (the shipped fractions favour val / test, for their negatives)
    p["selection"]["split"]["fractions"] = {"train": 0.6, "val": 0.2, "test": 0.2}
    p["manifest"]["replicates"] = 2
    p["inject"]["files_per_split"] = 1
    p["spark"].update(master="local[2]", partitions=4)
    p["train"].update(width=8, batch_size=32, patience=int(patience), num_workers=0)
    p["train"]["curriculum"] = [{"name": "main", "epochs": int(epochs), "lr": 1.0e-3, "min_theta_over_psf": 0.0,
                                 "min_arc_snr": 0.0}]
    return p


def full_params() -> dict:
    """The configuration of the shared full run (:func:`shared_full_repo`): :func:`tiny_params` with a
    2-epoch training, a 12-candidate search page and two stamp files per split (so the Spark
    partitioning test of tests/e2e/test_pipeline_data_e2e.py sees rows routed to several files)."""
    p = tiny_params(epochs=2)
    p["search"].update(top_k=12, min_score=0.6)
    p["inject"]["files_per_split"] = 2
    return p


def shared_full_repo(tmp_path_factory) -> tuple[Path, str]:
    """(repository, `dvc repro` output) of one full `dvc repro` of :func:`full_params`, built once per
    test session by whichever xdist worker asks first (the others wait on a file lock) and shared by
    the modules that read it (tests/e2e/test_pipeline_e2e.py, test_pipeline_data_e2e.py,
    test_reliability_e2e.py, test_cross_machine_e2e.py, tests/search/test_search_e2e.py,
    tests/survey/test_coadd_manifest_release.py).

    It is a reference: a test that changes anything works in its own :func:`clone_repo` of it.
    A failed build is not cached: the next module to ask builds again (and fails the same way)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the per-worker basetemps share this directory
    base = root / "shared-full"
    with FileLock(str(base) + ".lock"):
        done = base / "repro.out"
        if not done.is_file():
            shutil.rmtree(base, ignore_errors=True)
            work = make_repo(base / "repo", full_params())
            out = dvc(["repro"], work, timeout=1800)
            done.write_text(out)
    return base / "repo", done.read_text()


def write_params(work: Path, params: dict) -> None:
    with open(Path(work) / "params.yaml", "w") as f:
        yaml.safe_dump(params, f, sort_keys=False)


def run(cmd, cwd, timeout: float = 300, check: bool = True, **env_extra) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env(**env_extra), capture_output=True, text=True,
                         timeout=timeout)
    if check:
        assert res.returncode == 0, (f"{cmd} failed ({res.returncode}):\n{res.stdout[-4000:]}\n"
                                     f"{res.stderr[-6000:]}")
    return res


def dvc(args, cwd, timeout: float = 300, check: bool = True) -> str:
    res = run([VENV_BIN / "dvc", *args], cwd, timeout, check)
    return res.stdout + res.stderr


def make_repo(dest: Path, params: dict, git: bool = True) -> Path:
    """A copy of the sources with ``params`` as params.yaml (and, with ``git``, a git repository)."""
    work = copy_sources(dest)
    assert not (work / "data" / "survey").exists()  # outputs never travel, only sources
    # nor does the shipped dvc.lock: it names outputs whose cache objects the copy does not have
    # (a `dvc exp run` that never re-runs a data stage would try to load them and fail)
    (work / "dvc.lock").unlink(missing_ok=True)
    write_params(work, params)
    if git:
        run(GIT + ["init", "-q"], work)
        run(GIT + ["add", "-A"], work)
        run(GIT + ["commit", "-q", "-m", "tiny test copy"], work)
    return work


def clone_repo(src: Path, dest: Path) -> Path:
    """A full copy of a test repository (git, DVC cache, outputs) to change without touching ``src``."""
    shutil.copytree(src, dest, symlinks=True)
    return Path(dest)


def lock(work: Path) -> dict:
    return yaml.safe_load((Path(work) / "dvc.lock").read_text())["stages"]


def out_md5s(work: Path, stages: Iterable[str]) -> dict:
    """{stage: {out path: md5}} from dvc.lock."""
    lk = lock(work)
    return {s: {o["path"]: o["md5"] for o in lk[s].get("outs", [])} for s in stages}


def ran_stages(out: str) -> set:
    """The stages a `dvc repro` / `dvc exp run` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", out))


def stage_main(work: Path, stage: str, timeout: float = 300, check: bool = False,
               **env_extra) -> subprocess.CompletedProcess:
    """Run ``python stages/<stage>.py`` in ``work`` (no DVC involved)."""
    return run([sys.executable, f"stages/{stage}.py"], work, timeout, check, **env_extra)


def spawn(cmd, cwd, log: Path, **env_extra) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so the whole tree can be killed), output to ``log``."""
    fh = open(log, "w")
    try:
        return subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env(**env_extra), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        fh.close()


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300,
              poll: float = 0.02) -> float:
    """SIGKILL ``proc``'s process group as soon as ``ready()`` is true; return the seconds waited.

    Fails (after killing the group) if the process ends first or ``timeout`` passes.
    """
    t0 = time.monotonic()
    try:
        while True:
            if ready():
                break
            if proc.poll() is not None:
                raise AssertionError(f"the process ended (rc {proc.returncode}) before the kill point")
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"no kill point within {timeout} s")
            time.sleep(poll)
        assert proc.poll() is None, "the process ended before it could be killed"
        return time.monotonic() - t0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)


def processes_under(work: Path) -> list[int]:
    """Pids of live processes whose working directory lies inside ``work`` (Linux /proc)."""
    work = str(Path(work).resolve())
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(d / "cwd")
        except OSError:
            continue
        if cwd == work or cwd.startswith(work + os.sep):
            pids.append(int(d.name))
    return pids


def reap_leftovers(work: Path, timeout: float = 30) -> list[int]:
    """Wait for processes started inside ``work`` to exit; SIGKILL by pid those that do not.

    Returns the pids that had to be killed (a killed `dvc`/Spark run may leave, e.g., Spark's
    Python daemon behind for a moment until it notices its JVM is gone).
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        left = processes_under(work)
        if not left:
            return []
        time.sleep(0.2)
    left = processes_under(work)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left
