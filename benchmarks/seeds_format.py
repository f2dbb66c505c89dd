"""Benchmark the seeds' ``stamp_npz`` converter (darkhaloscope.stamps.seeds) against its single-process reference.

Usage: python benchmarks/seeds_format.py [--rows 20000] [--rows-per-file 1000] [--unique 3000]
                                         [--reference-rows 6000] [--workers N] [--repeats 2]
                                         [--seed 0] [--workdir DIR]

The script

1. generates a synthetic seeds stamp set in a temporary directory (nothing is
   committed): Hive directories ``region_split=train|val|test/`` (60/20/20 %),
   parquet parts of ``--rows-per-file`` rows in 4 row groups, one in three gzip
   (level 1, to keep generation short; the level does not change the reading
   cost), the others snappy, with the seeds' metadata columns and one
   ``np.savez_compressed`` blob per row (float32 (64, 64) ``image_g/_r/_z`` in
   nanomaggies: sky noise at DR10-like levels, a galaxy, an arc in half of them;
   2 % r-only rows, 1 % failed cutouts). ``--unique`` distinct images are
   compressed (in parallel) and reused ``--rows / --unique`` times, each copy in
   another file, so every blob is still inflated on its own;
2. measures the REFERENCE: the single-process converter with the ``np.load``
   decoder (``convert_seeds_to_stamps(workers=1, decoder="reference")``, the path
   the converter had before the fast decoder) on ~``--reference-rows`` rows (whole
   files, the same share of gzip files as the whole set), and for information the
   fast decoder in one process on the same files; checks that both wrote
   byte-identical files;
3. measures the PRE-ISSUE converter: ``src/darkhaloscope`` as it was at commit
   :data:`PRE_ISSUE_REV` (the last one before issue 13 was filed, which measured
   "4.3 ms/row in one process"), extracted with ``git archive`` into the temporary
   directory and run in a subprocess on the same files, once as it ran by default
   (one process) and once with ``workers=<cores>`` (an option it had); checks that
   it wrote the same bytes (skipped, with the reason, where git or the commit is
   not available);
4. measures the converter as shipped (``workers=None``: a process per available
   core plus one, or ``--workers``) on the whole set, best of ``--repeats`` runs.

Rates are rows per second of wall-clock time, including reading the parquet,
writing our format (with its fsync) and the report; the machine's other load
counts too, so compare the ratios, which are measured in the same run. The last
lines printed are ``convert_rows_per_s=``, ``reference_rows_per_s=``,
``pre_issue_rows_per_s=``, ``speedup_vs_pre_issue_converter=`` (vs its default, one
process), ``speedup_vs_pre_issue_converter_all_cores=`` and
``speedup_vs_single_process_reference=``.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

try:
    import darkhaloscope  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from darkhaloscope.stamps.seeds import SPLIT_KEY, available_cores, convert_seeds_to_stamps  # noqa: E402

#: the last commit before issue 13 was filed: its converter is "today's" in the issue's "10x today's rows per second"
PRE_ISSUE_REV = "650ecdf"
REPO = Path(__file__).resolve().parents[1]
SPLIT_FRACTIONS = (("train", 0.6), ("val", 0.2), ("test", 0.2))
SKY = np.array([0.004, 0.006, 0.015], np.float32)  # DR10-like per-pixel noise (g, r, z), nanomaggies
COLOUR = np.array([0.35, 1.0, 1.9], np.float32)  # LRG-like flux ratios
ARC_COLOUR = np.array([1.6, 1.1, 0.6], np.float32)  # a blue source


# ----------------------------------------------------------------------------- data


def _templates(rng: np.random.Generator, n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit-flux galaxy profiles (de Vaucouleurs, random axis ratio / angle / size) and ``n`` arcs."""
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float64) - 32.0
    gals, arcs = [], []
    for _ in range(n):
        q, phi, re = rng.uniform(0.5, 1.0), rng.uniform(0, np.pi), rng.uniform(2.0, 6.0)
        xr = xx * np.cos(phi) + yy * np.sin(phi)
        yr = -xx * np.sin(phi) + yy * np.cos(phi)
        g = np.exp(-7.67 * ((np.sqrt(xr**2 * q + yr**2 / q) / re) ** 0.25 - 1.0))
        gals.append(g / g.sum())
        dang = np.angle(np.exp(1j * (np.arctan2(yy, xx) - rng.uniform(-np.pi, np.pi))))
        ring = np.exp(-0.5 * ((np.hypot(xx, yy) - rng.uniform(4, 10)) / 0.9) ** 2)
        arcs.append(ring * np.exp(-0.5 * (dang / 0.6) ** 2))
    return np.array(gals, np.float32), np.array(arcs, np.float32)


def _images(args: tuple[int, int]) -> list[bytes]:
    """``np.savez_compressed`` blobs of ``n`` synthetic stamps (seeded by ``seed``): a galaxy, an arc in
    every other one, DR10-like sky noise; every 50th r-only, every 100th a failed cutout (zero r band)."""
    n, seed = args
    rng = np.random.default_rng(seed)
    gals, arcs = _templates(rng)
    out = []
    for i in range(n):
        img = rng.normal(0, 1, (3, 64, 64)).astype(np.float32) * SKY[:, None, None]
        img += np.float32(rng.uniform(5, 60)) * gals[i % len(gals)][None] * COLOUR[:, None, None]
        if i % 2:
            img += np.float32(rng.uniform(0.02, 0.2)) * arcs[(i // 2) % len(arcs)][None] * ARC_COLOUR[:, None, None]
        bio = io.BytesIO()
        if i % 50 == 7:
            np.savez_compressed(bio, image_r=img[1])
        elif i % 100 == 13:
            np.savez_compressed(bio, image_r=np.zeros((64, 64), np.float32))
        else:
            np.savez_compressed(bio, image_g=img[0], image_r=img[1], image_z=img[2])
        out.append(bio.getvalue())
    return out


_BLOBS: list[bytes] = []  # the distinct blobs, inherited by the (forked) file writers


def _write_file(spec: tuple[str, np.ndarray, int, bool]) -> None:
    path, idx, seed, gz = spec
    rng = np.random.default_rng(seed)
    m = len(idx)
    is_ctrl = rng.integers(0, 2, m).astype(np.int32)
    failed = (idx % 100) == 13  # (see _images)
    table = pa.table({
        "brickname": [f"{1500 + seed % 300:04d}p{(seed + i) % 997:03d}" for i in range(m)],
        "ra": rng.uniform(150, 151, m), "dec": rng.uniform(0, 1, m),
        "is_control": is_ctrl, "cutout_ok": (~failed).astype(np.int32),
        "theta_e_arcsec": np.where(is_ctrl == 1, 0.0, rng.uniform(0.5, 2.5, m)),
        "src_dmag": rng.uniform(0, 2, m), "src_reff_arcsec": rng.uniform(0.1, 0.5, m),
        "src_e": rng.uniform(0, 0.5, m), "shear": rng.uniform(0, 0.1, m),
        "psfsize_r": rng.uniform(0.9, 1.6, m), "psfdepth_r": rng.uniform(100, 1000, m),
        "arc_snr": np.where(is_ctrl == 1, 0.0, rng.uniform(5, 50, m)),
        "stamp_npz": pa.array([_BLOBS[i] for i in idx], pa.binary()),
    })
    pq.write_table(table, path, compression="gzip" if gz else "snappy", compression_level=1 if gz else None,
                   row_group_size=max(1, -(-m // 4)))


def write_seeds(root: Path, rows: int, rows_per_file: int, unique: int, seed: int, workers: int) -> list[Path]:
    """The synthetic seeds set (see the module docstring); blobs and files are made in ``workers`` processes."""
    global _BLOBS
    ctx = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    chunk = 250
    jobs = [(min(chunk, unique - a), seed * 1_000_003 + a) for a in range(0, unique, chunk)]
    with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        _BLOBS = [b for part in ex.map(_images, jobs) for b in part]
    specs, start, f = [], 0, 0
    for split, frac in SPLIT_FRACTIONS:
        n_split = int(round(rows * frac))
        d = root / f"{SPLIT_KEY}={split}"
        d.mkdir(parents=True)
        (d / "_SUCCESS").write_text("")
        for a in range(0, n_split, rows_per_file):
            m = min(rows_per_file, n_split - a)
            idx = (start + a + np.arange(m)) % unique  # a blob's copies lie `unique` rows apart: other files
            gz = f % 3 == 0
            specs.append((str(d / f"part-{f:05d}-7c1e.c000.{'gz' if gz else 'snappy'}.parquet"), idx,
                          seed * 7919 + f, gz))
            f += 1
        start += n_split
    with ProcessPoolExecutor(workers, mp_context=ctx) as ex:  # (forked after _BLOBS is set)
        list(ex.map(_write_file, specs))
    _BLOBS = []
    return [Path(p) for p, _, _, _ in specs]


# ----------------------------------------------------------------------------- timing


def _cpu_s() -> float:
    """User + system CPU seconds of this process and its finished children (the worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed_convert(src: Path, dst: Path, **kw) -> tuple[float, int, float]:
    """(wall seconds, rows, CPU seconds) of one conversion."""
    shutil.rmtree(dst, ignore_errors=True)
    c0, t0 = _cpu_s(), time.perf_counter()
    rep = convert_seeds_to_stamps(src, dst, progress=False, **kw)
    dt, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return dt, sum(s["counts"]["rows"] for s in rep["splits"].values()), cpu


PRE_ISSUE_RUN = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import darkhaloscope
from darkhaloscope.stamps.seeds import convert_seeds_to_stamps
assert darkhaloscope.__file__.startswith(sys.argv[1]), darkhaloscope.__file__  # the old tree, not this one
def cpu():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
c0, t0 = cpu(), time.perf_counter()
rep = convert_seeds_to_stamps(sys.argv[2], sys.argv[3], workers=int(sys.argv[4]))
dt, c = time.perf_counter() - t0, cpu() - c0
print(json.dumps({"s": dt, "cpu": c, "rows": sum(s["counts"]["rows"] for s in rep["splits"].values())}))
"""


def pre_issue_tree(dest: Path) -> Path | None:
    """``src/`` of :data:`PRE_ISSUE_REV` extracted into ``dest`` (None, with the reason printed, without git)."""
    try:
        res = subprocess.run(["git", "-C", str(REPO), "archive", PRE_ISSUE_REV, "src/darkhaloscope"],
                             capture_output=True, check=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        print(f"pre-issue converter: skipped (git archive {PRE_ISSUE_REV} failed: {exc} {err.decode()[:200]})")
        return None
    shutil.rmtree(dest, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(res.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def timed_pre_issue(tree: Path, src: Path, dst: Path, workers: int) -> tuple[float, int, float]:
    """(wall seconds, rows, CPU seconds) of the pre-issue converter on ``src`` (in a subprocess, timed there)."""
    shutil.rmtree(dst, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", PRE_ISSUE_RUN, str(tree), str(src), str(dst), str(workers)],
                         capture_output=True, text=True, env=env, timeout=3600, check=False)
    if res.returncode:
        raise SystemExit(f"the pre-issue converter failed (rc {res.returncode}):\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out["s"], out["rows"], out["cpu"]


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000, help="rows of the synthetic seeds set")
    ap.add_argument("--rows-per-file", type=int, default=1000)
    ap.add_argument("--unique", type=int, default=3000, help="distinct images (each reused rows/unique times)")
    ap.add_argument("--reference-rows", type=int, default=6000, help="rows the slow reference converts")
    ap.add_argument("--workers", type=int, default=None, help="converter processes (default: every core)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of the converter (the best is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="keep the files here (default: a temporary directory)")
    args = ap.parse_args(argv)
    cores = available_cores()

    with tempfile.TemporaryDirectory(prefix="dhs_seeds_bench_") as tmp:
        work = Path(args.workdir or tmp)
        src = work / "seeds"
        shutil.rmtree(src, ignore_errors=True)
        t0 = time.perf_counter()
        files = write_seeds(src, args.rows, args.rows_per_file, min(args.unique, args.rows), args.seed, cores)
        gen_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in files)
        n_gz = sum(".gz." in p.name for p in files)
        print(f"rows={args.rows} in {len(files)} parquet files ({n_gz} gzip, {len(files) - n_gz} snappy, "
              f"{args.rows_per_file} rows each, {size / 2**20:.0f} MiB), {min(args.unique, args.rows)} distinct "
              f"images; {cores} core(s) available (numpy {np.__version__}, pyarrow {pa.__version__}); "
              f"generated in {gen_s:.1f} s")

        # the reference: np.load decoding, one process, on a subset of whole files with the same share of
        # gzip files as the whole set (gzip parquet costs more to read than snappy)
        sub = work / "seeds_subset"
        shutil.rmtree(sub, ignore_errors=True)
        gz_files = [p for p in files if ".gz." in p.name]
        other = [p for p in files if ".gz." not in p.name]
        n_sub = min(len(files), max(1, round(args.reference_rows / args.rows_per_file)))
        k = min(len(gz_files), round(n_sub * len(gz_files) / len(files)))
        for p in gz_files[:k] + other[:n_sub - k]:
            (sub / p.parent.name).mkdir(parents=True, exist_ok=True)
            os.link(p, sub / p.parent.name / p.name)
        ref_s, ref_n, ref_cpu = timed_convert(sub, work / "ref", workers=1, decoder="reference")
        ref_rate = ref_n / ref_s
        print(f"reference (np.load decoder, 1 process), {ref_n} rows: {ref_s:.2f} s = {ref_rate:.0f} rows/s "
              f"(CPU {1000 * ref_cpu / ref_n:.3f} ms/row)")
        one_s, one_n, one_cpu = timed_convert(sub, work / "one", workers=1)
        print(f"fast decoder, 1 process, same rows: {one_s:.2f} s = {one_n / one_s:.0f} rows/s "
              f"(CPU {1000 * one_cpu / one_n:.3f} ms/row; {ref_s / one_s:.2f}x the reference, for information)")
        a, b = _bytes(work / "ref"), _bytes(work / "one")
        if a != b or len(a) == 0:
            raise SystemExit("MISMATCH: the fast decoder's output differs from the reference's")
        print(f"check: both wrote byte-identical files ({len(a)} files, {sum(map(len, a.values())) / 2**20:.0f} MiB)")
        shutil.rmtree(work / "one")

        pre = {}  # workers -> (seconds, rows, cpu)
        tree = pre_issue_tree(work / "pre_issue")
        if tree is not None:
            for w in sorted({1, cores}):
                pre[w] = p_s, p_n, p_cpu = timed_pre_issue(tree, sub, work / "pre", w)
                same = _bytes(work / "pre") == a
                print(f"pre-issue converter ({PRE_ISSUE_REV}, workers={w}{', its default' if w == 1 else ''}), "
                      f"{p_n} rows: {p_s:.2f} s = {p_n / p_s:.0f} rows/s (CPU {1000 * p_cpu / p_n:.3f} ms/row); "
                      f"output {'byte-identical' if same else 'DIFFERENT (a CONVERSION_VERSION change?)'}")
                shutil.rmtree(work / "pre")
        shutil.rmtree(work / "ref")

        times, cpus = [], []
        for _ in range(max(1, args.repeats)):
            dt, n, cpu = timed_convert(src, work / "ours", workers=args.workers)
            assert n == args.rows, (n, args.rows)
            times.append(dt)
            cpus.append(cpu)
        shutil.rmtree(work / "ours")
        rate = args.rows / min(times)
        workers = args.workers or f"default, {cores} cores"
        print(f"converter (workers={workers}), {args.rows} rows: {', '.join(f'{t:.2f}' for t in times)} s "
              f"(best {min(times):.2f} s; CPU {1000 * min(cpus) / args.rows:.3f} ms/row over all processes)")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} (other jobs on the same cores slow every "
              f"figure above)")
        if 1 in pre:
            p_s, p_n, p_cpu = pre[1]
            ours = min(cpus) / args.rows
            print(f"CPU per row (less sensitive to the other jobs): pre-issue {1000 * p_cpu / p_n:.3f} ms, "
                  f"the converter {1000 * ours:.3f} ms over all its processes ({p_cpu / p_n / ours:.2f}x less); "
                  f"with {cores} free core(s) that is at most {cores / ours:.0f} rows/s against "
                  f"{p_n / p_cpu:.0f} for the pre-issue default")
    speedup = rate / ref_rate
    pre_rate = {w: n / t for w, (t, n, _) in pre.items()}
    nan = float("nan")
    print(f"convert_rows_per_s={rate:.1f}")
    print(f"reference_rows_per_s={ref_rate:.1f}")
    print(f"pre_issue_rows_per_s={pre_rate.get(1, nan):.1f}")
    print(f"speedup_vs_pre_issue_converter={rate / pre_rate.get(1, nan):.2f}")
    print(f"speedup_vs_pre_issue_converter_all_cores={rate / pre_rate.get(cores, nan):.2f}")
    print(f"speedup_vs_single_process_reference={speedup:.2f}")
    return speedup


if __name__ == "__main__":
    main()
