"""Benchmark the stamp loader per core: the seeds' ``stamp_npz`` parquet vs our storage + StampDataset.

Usage: python benchmarks/loader.py [--n 4096] [--batch 256] [--repeats 3] [--seed 0]
                                   [--norm outer] [--workdir DIR]

Everything runs on ONE core: the thread counts of numpy/BLAS, torch and Arrow are
set to 1 before those libraries are imported. The script

1. generates ``--n`` synthetic 64x64 g/r/z stamps (fixed seed; sky noise, an
   early-type galaxy, an arc in half of them; float32 nanomaggies);
2. writes them in the seeds' Phase 4c format: Hive directory
   ``region_split=train/``, gzip parquet files of 1024 rows, one
   ``np.savez_compressed`` blob (``image_g``, ``image_r``, ``image_z``) per row in
   the binary column ``stamp_npz``, plus their metadata columns;
3. converts that into our format with ``darkhaloscope.stamps.seeds`` (one-time
   cost, reported), i.e. ``fixed_size_binary(49152)`` stamp columns, uncompressed;
4. times, in the same process, stamps/s from disk into a READY training batch
   (a normalised float32 ``torch.Tensor`` (B, 3, 64, 64), same ``NormConfig``):
   (a) a straightforward loader of the seeds' format: ``pq.read_table``, one
       ``np.load`` per blob, ``np.stack``, ``normalize`` (our normalisation, so the
       comparison is about the storage and the loader, not about the
       normalisation code), ``torch.from_numpy``; files and rows in order;
   (b) our ``StampDataset`` through ``make_loader(num_workers=0)`` with
       ``shuffle=True`` (chunk order and rows shuffled across 4 row groups) and
       ``augment=False`` (the seeds' loader has no augmentation; the rate with
       ``augment=True`` is printed for information);
   the epochs alternate (a), (b) ``--repeats`` times after one untimed warm-up
   epoch each; the best epoch of each is reported.
5. checks that both give the same normalised values for every row (matched
   through the converted ``src_file`` / ``src_row`` columns) in the warm-up epoch.

The one-time ``StampIndex.build`` (a pass over the files that counts and drops
unusable rows) is timed and printed separately; it is not part of the epoch
rate. The last line printed is ``speedup_vs_stamp_npz=<ours / seeds stamps/s>``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
           "VECLIB_MAXIMUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
torch.set_num_interop_threads(1)
pa.set_cpu_count(1)
pa.set_io_thread_count(1)

try:
    import darkhaloscope  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from darkhaloscope.model.loader import StampDataset, StampIndex, make_loader  # noqa: E402
from darkhaloscope.model.preprocess import NormConfig, normalize  # noqa: E402
from darkhaloscope.stamps.seeds import convert_seeds_to_stamps  # noqa: E402
from darkhaloscope.stamps.format import list_stamp_files  # noqa: E402

ROWS_PER_SEEDS_FILE = 1024


# ----------------------------------------------------------------------------- data


def make_stamps(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 64, 64) float32 nanomaggies and is_control (n,) int8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32) - 32.0
    out = np.empty((n, 3, 64, 64), np.float32)
    is_ctrl = (rng.random(n) < 0.5).astype(np.int8)
    sky = np.array([0.004, 0.006, 0.015], np.float32)  # DR10-like per-pixel noise (g, r, z)
    colour = np.array([0.35, 1.0, 1.9], np.float32)  # LRG-like flux ratios
    for i0 in range(0, n, 512):
        m = min(512, n - i0)
        q = rng.uniform(0.5, 1.0, (m, 1, 1)).astype(np.float32)
        phi = rng.uniform(0, np.pi, (m, 1, 1)).astype(np.float32)
        xr = xx * np.cos(phi) + yy * np.sin(phi)
        yr = -xx * np.sin(phi) + yy * np.cos(phi)
        r = np.sqrt(xr**2 * q + yr**2 / q)
        re = rng.uniform(2.0, 6.0, (m, 1, 1)).astype(np.float32)
        gal = np.exp(-7.67 * ((r / re) ** 0.25 - 1.0)).astype(np.float32)
        gal *= (rng.uniform(5, 60, (m, 1, 1)) / gal.sum(axis=(1, 2), keepdims=True)).astype(np.float32)
        te = rng.uniform(4, 10, (m, 1, 1)).astype(np.float32)
        ang = np.arctan2(yy, xx)[None] - rng.uniform(-np.pi, np.pi, (m, 1, 1)).astype(np.float32)
        dang = np.angle(np.exp(1j * ang))  # wrapped to (-pi, pi]
        arc = np.exp(-0.5 * ((np.hypot(xx, yy)[None] - te) / 0.9) ** 2) * np.exp(-0.5 * (dang / 0.6) ** 2)
        arc = (arc * rng.uniform(0.02, 0.2, (m, 1, 1)) * (1 - is_ctrl[i0:i0 + m, None, None])).astype(np.float32)
        for b in range(3):
            out[i0:i0 + m, b] = gal * colour[b] + arc * (1.6 - 0.5 * b) + rng.normal(0, sky[b], (m, 64, 64))
    return out, is_ctrl


def write_seeds(root: Path, stamps: np.ndarray, is_ctrl: np.ndarray, seed: int) -> list[str]:
    """The seeds' layout: region_split=train/part-*.gz.parquet with stamp_npz blobs (gzip parquet)."""
    rng = np.random.default_rng(seed + 1)
    d = root / "region_split=train"
    d.mkdir(parents=True)
    files = []
    for f, i0 in enumerate(range(0, len(stamps), ROWS_PER_SEEDS_FILE)):
        i1 = min(i0 + ROWS_PER_SEEDS_FILE, len(stamps))
        blobs = []
        for i in range(i0, i1):
            bio = io.BytesIO()
            np.savez_compressed(bio, image_g=stamps[i, 0], image_r=stamps[i, 1], image_z=stamps[i, 2])
            blobs.append(bio.getvalue())
        m = i1 - i0
        table = pa.table({
            "brickname": [f"{1500 + f}p00{i % 7}" for i in range(m)],
            "ra": rng.uniform(150, 151, m), "dec": rng.uniform(0, 1, m),
            "is_control": is_ctrl[i0:i1].astype(np.int32), "cutout_ok": np.ones(m, np.int32),
            "theta_e_arcsec": np.where(is_ctrl[i0:i1] == 1, 0.0, rng.uniform(0.5, 2.5, m)),
            "src_dmag": rng.uniform(0, 2, m), "src_reff_arcsec": rng.uniform(0.1, 0.5, m),
            "src_e": rng.uniform(0, 0.5, m), "shear": rng.uniform(0, 0.1, m),
            "psfsize_r": rng.uniform(0.9, 1.6, m), "psfdepth_r": rng.uniform(100, 1000, m),
            "arc_snr": np.where(is_ctrl[i0:i1] == 1, 0.0, rng.uniform(5, 50, m)),
            "stamp_npz": pa.array(blobs, pa.binary()),
        })
        path = d / f"part-{f:05d}-0b7c.c000.gz.parquet"
        pq.write_table(table, path, compression="gzip")
        files.append(str(path))
    return files


# ----------------------------------------------------------------------------- loaders


def seeds_epoch(files: list[str], batch: int, cfg: NormConfig, keep: list | None = None) -> int:
    """The straightforward loader of the seeds' format; returns the number of stamps."""
    n = 0
    for fi, f in enumerate(files):
        t = pq.read_table(f, columns=["stamp_npz", "is_control"], use_threads=False)
        blobs = t.column("stamp_npz").to_pylist()
        y = 1 - t.column("is_control").to_numpy()
        for s in range(0, len(blobs), batch):
            imgs = []
            for blob in blobs[s:s + batch]:
                with np.load(io.BytesIO(blob)) as z:
                    imgs.append(np.stack([z["image_g"], z["image_r"], z["image_z"]]))
            x = torch.from_numpy(normalize(np.stack(imgs), cfg))
            yt = torch.from_numpy(y[s:s + batch].astype(np.float32))
            n += x.shape[0]
            if keep is not None:
                keep.append((fi, s, x, yt))
    return n


def ours_epoch(ds: StampDataset, epoch: int, keep: list | None = None) -> int:
    ds.set_epoch(epoch)
    n = 0
    for x, y, meta, sid in make_loader(ds, 0):
        n += x.shape[0]
        if keep is not None:
            keep.append((x, sid))
    return n


def timed(fn, *a):
    t0 = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t0, out


def _size(paths) -> int:
    return sum(os.path.getsize(p) for p in paths)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="number of stamps")
    ap.add_argument("--batch", type=int, default=256, help="batch size (the seeds' training batch)")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per loader (the best is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--norm", choices=("outer", "full"), default="outer",
                    help="normalisation statistics (params.yaml: outer, radius 16, clip -10..10)")
    ap.add_argument("--workdir", default=None, help="keep the files here (default: a temporary directory)")
    args = ap.parse_args(argv)
    cfg = NormConfig(args.norm, 16, (-10.0, 10.0))

    with tempfile.TemporaryDirectory(prefix="dhs_loader_bench_") as tmp:
        work = Path(args.workdir or tmp)
        t0 = time.perf_counter()
        stamps, is_ctrl = make_stamps(args.n, args.seed)
        t1 = time.perf_counter()
        seeds_files = write_seeds(work / "seeds", stamps, is_ctrl, args.seed)
        t2 = time.perf_counter()
        convert_seeds_to_stamps(work / "seeds", work / "ours", row_group_size=512)
        t3 = time.perf_counter()
        our_files = list_stamp_files(work / "ours", "train")
        idx_t, index = timed(StampIndex.build, our_files)
        print(f"n={args.n} stamps, batch={args.batch}, norm={cfg.to_dict()}, 1 thread "
              f"(numpy {np.__version__}, pyarrow {pa.__version__}, torch {torch.__version__})")
        print(f"generated in {t1 - t0:.1f} s; seeds format written in {t2 - t1:.1f} s "
              f"({len(seeds_files)} gzip parquet files, {_size(seeds_files) / 2**20:.0f} MiB); "
              f"converted to ours in {t3 - t2:.1f} s = {args.n / (t3 - t2):.0f} stamps/s one-time "
              f"({len(our_files)} files, {_size(our_files) / 2**20:.0f} MiB uncompressed)")
        print(f"StampIndex.build (one-time per run): {idx_t:.2f} s = {args.n / idx_t:.0f} stamps/s; "
              f"kept {index.n_samples}, dropped {sum(index.counts.values())}")
        raw = stamps[:512].copy()
        del stamps

        ds = StampDataset(index, args.batch, cfg, shuffle=True, augment=False, seed=args.seed)
        ds_aug = StampDataset(index, args.batch, cfg, shuffle=True, augment=True, seed=args.seed)

        # warm-up epochs, also the correctness check: same normalised values for the same rows
        keep_s, keep_o = [], []
        seeds_epoch(seeds_files, args.batch, cfg, keep_s)
        ours_epoch(ds, 0, keep_o)
        t = pa.concat_tables([pq.read_table(f, columns=["sample_id", "src_file", "src_row"]) for f in our_files])
        rel = [os.path.relpath(f, work / "seeds") for f in seeds_files]
        pos = {(rel.index(f), r): s for s, f, r in
               zip(*(t.column(c).to_pylist() for c in ("sample_id", "src_file", "src_row")))}
        want = {}
        for fi, s0, x, _ in keep_s:
            for j in range(x.shape[0]):
                want[pos[(fi, s0 + j)]] = x[j]
        n_checked = 0
        for x, sid in keep_o:
            for j, s in enumerate(sid.tolist()):
                if not torch.equal(x[j], want[s]):
                    raise SystemExit(f"MISMATCH: sample {s} differs between the two loaders")
                n_checked += 1
        if n_checked != len(want) or n_checked != args.n:
            raise SystemExit(f"MISMATCH: ours yielded {n_checked} rows, seeds {len(want)}, expected {args.n}")
        print(f"check: both loaders give identical normalised tensors for all {n_checked} rows "
              f"(ours shuffled: {keep_o[0][1][:4].tolist()} ...)")
        del keep_s, keep_o, want

        ts, to, ta = [], [], []
        for r in range(args.repeats):
            dt, n = timed(seeds_epoch, seeds_files, args.batch, cfg)
            ts.append(dt)
            assert n == args.n
            dt, n = timed(ours_epoch, ds, r + 1)
            to.append(dt)
            assert n == index.n_samples
            dt, n = timed(ours_epoch, ds_aug, r + 1)
            ta.append(dt)
        seeds_rate = args.n / min(ts)
        ours_rate = index.n_samples / min(to)
        aug_rate = index.n_samples / min(ta)

        # for information: the normalisation alone (same rows, same config)
        tn = min(timed(normalize, raw, cfg)[0] for _ in range(3))

        print(f"seeds stamp_npz loader : {seeds_rate:9.0f} stamps/s  (best of {args.repeats} epochs: "
              f"{', '.join(f'{d:.2f}' for d in ts)} s)")
        print(f"ours, augment=False    : {ours_rate:9.0f} stamps/s  (shuffle=True; epochs "
              f"{', '.join(f'{d:.3f}' for d in to)} s)")
        print(f"ours, augment=True     : {aug_rate:9.0f} stamps/s  (for information)")
        print(f"normalize() alone      : {len(raw) / tn:9.0f} stamps/s  (for information)")
    speedup = ours_rate / seeds_rate
    print(f"speedup_vs_stamp_npz={speedup:.2f}")
    return speedup


if __name__ == "__main__":
    main()
