"""Phase 3 (stage ``parent``) at scale: streaming per-file selection against the whole-read approach.

Writes a scale simulation of DR10 sweeps (the release's full column set, ~150 columns, big-endian
FITS binary tables, 5 x 5 deg boxes under ``sweep/10.1/`` beside ``sweep/10.1-extra/*-ex.fits`` files
that must not be read), by default 20 files x 500,000 rows = 10 million rows (~6 GB), into a scratch
directory (never committed), then measures, each in a fresh child process:

* the streaming Phase 3 (``build_parent``, selection.engine inprocess: one core) on all files and on
  a quarter of them (peak memory must not grow with the number of files);
* the same on a subset of ``--whole-files`` files, and the previous whole-read approach (every sweep
  read whole with ``fs.read_bytes`` into astropy, all 32 columns converted, one concatenation, the cuts
  on the concatenation) on that subset; both must give the same parent table.

Every run is one single-threaded process, so its rows per CPU second (user + system time: reading from
the page cache included) is its rate per core; on a shared machine the wall time also counts the time
other processes held the cores, so both are printed, with the load average. The last lines are::

    parent_rows_per_s_core=<float>      (rows / CPU s of the streaming run on all files)
    parent_peak_rss_gb=<float>          (peak resident memory of the streaming run on all files)
    parent_speedup_vs_whole_read=<float>  (rows / CPU s, streaming over whole read, same subset)

Usage: ``python benchmarks/parent.py [--files 20] [--rows 500000] [--whole-files 2] [--dir DIR] [--keep]
[--spark]``. With ``--spark`` the streaming run is repeated with selection.engine spark (spark.master
local[*]) and its rate printed (after the session start, ~10 s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
PIN = "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"  # numpy's SIMD pin of the data stages (stages/_common.py)


# --------------------------------------------------------------------------- DR10 sweep schema
def dr10_schema() -> list[tuple[str, str]]:
    """(name, TFORM) of the DR10 sweep columns, in the release's order (DR10 data model)."""
    cols = [("RELEASE", "I"), ("BRICKID", "J"), ("BRICKNAME", "8A"), ("OBJID", "J"), ("BRICK_PRIMARY", "L"),
            ("MASKBITS", "J"), ("FITBITS", "I"), ("TYPE", "3A"), ("RA", "D"), ("DEC", "D"), ("RA_IVAR", "E"),
            ("DEC_IVAR", "E"), ("BX", "E"), ("BY", "E"), ("DCHISQ", "5E"), ("EBV", "E"), ("MJD_MIN", "D"),
            ("MJD_MAX", "D"), ("REF_CAT", "2A"), ("REF_ID", "K"), ("PMRA", "E"), ("PMDEC", "E"), ("PARALLAX", "E"),
            ("PMRA_IVAR", "E"), ("PMDEC_IVAR", "E"), ("PARALLAX_IVAR", "E"), ("REF_EPOCH", "E"),
            ("GAIA_PHOT_G_MEAN_MAG", "E"), ("GAIA_PHOT_G_MEAN_FLUX_OVER_ERROR", "E"), ("GAIA_PHOT_G_N_OBS", "I"),
            ("GAIA_PHOT_BP_MEAN_MAG", "E"), ("GAIA_PHOT_BP_MEAN_FLUX_OVER_ERROR", "E"), ("GAIA_PHOT_BP_N_OBS", "I"),
            ("GAIA_PHOT_RP_MEAN_MAG", "E"), ("GAIA_PHOT_RP_MEAN_FLUX_OVER_ERROR", "E"), ("GAIA_PHOT_RP_N_OBS", "I"),
            ("GAIA_PHOT_VARIABLE_FLAG", "L"), ("GAIA_ASTROMETRIC_EXCESS_NOISE", "E"),
            ("GAIA_ASTROMETRIC_EXCESS_NOISE_SIG", "E"), ("GAIA_ASTROMETRIC_N_OBS_AL", "I"),
            ("GAIA_ASTROMETRIC_N_GOOD_OBS_AL", "I"), ("GAIA_ASTROMETRIC_WEIGHT_AL", "E"),
            ("GAIA_DUPLICATED_SOURCE", "L"), ("GAIA_A_G_VAL", "E"), ("GAIA_E_BP_MIN_RP_VAL", "E"),
            ("GAIA_PHOT_BP_RP_EXCESS_FACTOR", "E"), ("GAIA_ASTROMETRIC_SIGMA5D_MAX", "E"),
            ("GAIA_ASTROMETRIC_PARAMS_SOLVED", "B")]
    for b in "GRIZ":
        cols += [(f"FLUX_{b}", "E"), (f"FLUX_IVAR_{b}", "E"), (f"FIBERFLUX_{b}", "E"), (f"FIBERTOTFLUX_{b}", "E"),
                 (f"MW_TRANSMISSION_{b}", "E"), (f"NOBS_{b}", "I"), (f"RCHISQ_{b}", "E"), (f"FRACFLUX_{b}", "E"),
                 (f"FRACMASKED_{b}", "E"), (f"FRACIN_{b}", "E"), (f"ANYMASK_{b}", "I"), (f"ALLMASK_{b}", "I"),
                 (f"PSFSIZE_{b}", "E"), (f"PSFDEPTH_{b}", "E"), (f"GALDEPTH_{b}", "E"), (f"NEA_{b}", "E"),
                 (f"BLOB_NEA_{b}", "E")]
    for w in ("W1", "W2", "W3", "W4"):
        cols += [(f"FLUX_{w}", "E"), (f"FLUX_IVAR_{w}", "E"), (f"MW_TRANSMISSION_{w}", "E"), (f"NOBS_{w}", "I"),
                 (f"RCHISQ_{w}", "E"), (f"FRACFLUX_{w}", "E"), (f"PSFDEPTH_{w}", "E")]
    cols += [("WISEMASK_W1", "B"), ("WISEMASK_W2", "B"), ("WISE_COADD_ID", "8A"), ("WISE_X", "E"), ("WISE_Y", "E"),
             ("SERSIC", "E"), ("SERSIC_IVAR", "E"), ("SHAPE_R", "E"), ("SHAPE_R_IVAR", "E"), ("SHAPE_E1", "E"),
             ("SHAPE_E1_IVAR", "E"), ("SHAPE_E2", "E"), ("SHAPE_E2_IVAR", "E")]
    return cols


def _np_format(tform: str) -> str:
    rep = "".join(ch for ch in tform if ch.isdigit())
    code = tform[len(rep):]
    base = {"I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8", "B": "u1", "L": "u1"}
    if code == "A":
        return f"S{rep}"
    return f"({rep},){base[code]}" if rep and int(rep) > 1 else base[code]


def write_sweeps(root: Path, n_files: int, n_rows: int, seed: int = 1) -> list[Path]:
    """Write ``n_files`` DR10-schema sweeps of ``n_rows`` rows each under ``root/sweep/10.1/`` (plus one
    ``-ex`` companion per file in ``sweep/10.1-extra/``, and a known-lens table); return the sweep paths."""
    import numpy as np
    from astropy.io import fits

    from darkhaloscope.constants import mag_to_nmgy

    schema = dr10_schema()
    dtype = np.dtype([(n, _np_format(t)) for n, t in schema])
    rng = np.random.default_rng(seed)
    block = 100_000
    # a template block for the columns Phase 3 never reads (their bytes do not matter to the reader)
    template = np.zeros(block, dtype)
    for n, t in schema:
        if t == "L":
            template[n] = ord("F")
        elif t.endswith("E") or t.endswith("D"):
            template[n] = rng.uniform(0, 1, template[n].shape)
    template["RELEASE"], template["REF_CAT"] = 10000, b"G3"
    for b in "GRZ":
        template[f"NOBS_{b}"] = rng.integers(1, 6, block)
        template[f"PSFSIZE_{b}"] = rng.uniform(0.9, 1.8, block)
        template[f"PSFDEPTH_{b}"] = rng.uniform(100, 2000, block)
        template[f"FLUX_IVAR_{b}"] = rng.uniform(10, 500, block)
    template["FLUX_IVAR_W1"] = 5.0
    paths = []
    (root / "sweep" / "10.1").mkdir(parents=True, exist_ok=True)
    (root / "sweep" / "10.1-extra").mkdir(parents=True, exist_ok=True)
    known = []
    for i in range(n_files):
        ra0, dec0 = 5.0 * (i % 36), -5.0 * (1 + i // 36)
        name = (f"sweep-{int(ra0):03d}m{int(-dec0):03d}-{int(ra0 + 5):03d}"
                f"{'m' if dec0 + 5 < 0 else 'p'}{int(abs(dec0 + 5)):03d}.fits")
        path = root / "sweep" / "10.1" / name
        cols = [fits.Column(name=n, format=t, array=np.zeros(1, _np_format(t).replace(">", "")))
                for n, t in schema]
        hdr = fits.BinTableHDU.from_columns(cols).header
        hdr["NAXIS2"] = n_rows
        with open(path, "wb") as f:
            f.write(fits.PrimaryHDU().header.tostring().encode())
            f.write(hdr.tostring().encode())
            done = 0
            while done < n_rows:
                n = min(block, n_rows - done)
                rec = template[:n].copy()
                rec["RA"] = ra0 + rng.uniform(0, 5, n)
                rec["DEC"] = dec0 + rng.uniform(0, 5, n)
                brick = (np.floor(rec["RA"] * 4)).astype(int)
                rec["BRICKNAME"] = np.char.add(np.char.zfill(brick.astype(str), 4).astype("S4"),
                                               f"m{int(-dec0) * 10:03d}".encode())
                rec["BRICKID"] = brick
                rec["OBJID"] = np.arange(done, done + n)
                kind = rng.uniform(size=n)
                rec["TYPE"] = np.where(kind < 0.4, b"PSF", np.where(kind < 0.7, b"REX",
                                       np.where(kind < 0.85, b"EXP", np.where(kind < 0.95, b"DEV", b"SER"))))
                # source counts rising as 10^(0.35 m) over 16 < z < 24 (most sweep rows are faint): ~5% have z < 20.4
                a, lo, hi = 0.35, 16.0, 24.0
                z = np.log10(10 ** (a * lo) + rng.uniform(size=n) * (10 ** (a * hi) - 10 ** (a * lo))) / a
                r = z + rng.normal(0.7, 0.5, n)
                w1 = z - rng.normal(0.6, 0.6, n)
                g = r + rng.normal(0.9, 0.5, n)
                ebv = rng.uniform(0.01, 0.1, n)
                rec["EBV"] = ebv
                for b, m, coeff in (("G", g, 3.214), ("R", r, 2.165), ("Z", z, 1.211), ("W1", w1, 0.184)):
                    rec[f"FLUX_{b}"] = mag_to_nmgy(m) + rng.normal(0, 0.05, n)
                    rec[f"MW_TRANSMISSION_{b}"] = 10 ** (-0.4 * coeff * ebv)
                rec["FIBERFLUX_Z"] = rec["FLUX_Z"] * 0.4
                rec["FIBERTOTFLUX_Z"] = rec["FLUX_Z"] * 0.45
                rec["GAIA_PHOT_G_MEAN_MAG"] = np.where(rec["TYPE"] == b"PSF", z + 0.5, 0.0)
                rec["SHAPE_R"] = np.where(rec["TYPE"] == b"PSF", 0.0, rng.uniform(0.3, 3, n))
                rec["SERSIC"] = np.where(rec["TYPE"] == b"DEV", 4.0, 1.0)
                rec["MASKBITS"] = np.where(rng.uniform(size=n) < 0.03, 1 << 1, 0)
                f.write(rec.tobytes())
                done += n
                if i < 2 and done == n:
                    known.append((float(rec["RA"][0]), float(rec["DEC"][0])))
            f.write(b"\0" * ((-f.tell()) % 2880))
        ex = root / "sweep" / "10.1-extra" / name.replace(".fits", "-ex.fits")
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
            [fits.Column(name="RELEASE", format="I", array=np.zeros(2, np.int16))])]).writeto(ex, overwrite=True)
        paths.append(path)
        print(f"  wrote {path.name}: {n_rows} rows, {path.stat().st_size / 1e9:.2f} GB", file=sys.stderr, flush=True)
    fits.BinTableHDU.from_columns([fits.Column("RA", "D", array=np.array([k[0] for k in known])),
                                   fits.Column("DEC", "D", array=np.array([k[1] for k in known]))]).writeto(
        root / "known_lenses.fits", overwrite=True)
    return paths


# --------------------------------------------------------------------------- measured runs (child processes)
def whole_read_parent(paths: list[str], params: dict):
    """The approach before streaming: each sweep read whole (fs.read_bytes -> astropy, all required columns
    converted), one concatenation, the cuts on the concatenation, then the same de-duplication and splits."""
    import io

    import numpy as np
    from astropy.io import fits

    from darkhaloscope.catalog import selection
    from darkhaloscope.catalog.parent import CARRY, KEEP_EXTRA, finish_parent
    from darkhaloscope.survey import fs
    from darkhaloscope.survey.sweeps import OPTIONAL_COLUMNS, REQUIRED_COLUMNS

    parts = []
    for p in paths:
        with fits.open(io.BytesIO(fs.read_bytes(p)), memmap=False) as hdul:
            data = next(h for h in hdul if isinstance(h, fits.BinTableHDU)).data
            names = {n.upper(): n for n in data.columns.names}
            out = {}
            for c in list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in names]:
                arr = np.asarray(data[names[c]])
                if arr.dtype.kind in "SU":
                    arr = np.char.strip(arr.astype("U"))
                elif arr.dtype.byteorder not in ("=", "|"):
                    arr = arr.astype(arr.dtype.newbyteorder("="))
                out[c] = arr
        parts.append(out)
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    sel = params["selection"]
    steps = selection.cut_steps(cat, sel["variant"], sel["deredden"], sel["variants"])
    counts = selection.cumulative_counts(steps, len(cat["RA"]))
    keep = np.ones(len(cat["RA"]), bool)
    for s in steps.values():
        keep &= s
    kept = {c: cat[c][keep] for c in CARRY + KEEP_EXTRA}
    return finish_parent(kept, counts, len(paths), params)


def child(args) -> None:
    """Run one measurement in this (fresh) process; print one JSON line."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from darkhaloscope.catalog.parent import build_parent
    from darkhaloscope.params import validate

    p = validate(yaml.safe_load((REPO / "params.yaml").read_text()))
    p["survey"]["root"] = args.dir
    p["survey"]["known_lenses"] = "known_lenses.fits"
    files = sorted(str(x) for x in (Path(args.dir) / "sweep" / "10.1").glob("sweep-*.fits"))[: args.n]
    if args.n < 10**9:  # a subset: a root of its own whose sweep/10.1/ links to those files only
        sub = Path(args.dir).parent / f"subset-{args.n}"
        if sub.exists():
            shutil.rmtree(sub)
        (sub / "sweep" / "10.1").mkdir(parents=True)
        for f in files:
            os.symlink(f, sub / "sweep" / "10.1" / Path(f).name)
        shutil.copy(Path(args.dir) / "known_lenses.fits", sub / "known_lenses.fits")
        p["survey"]["root"] = str(sub)
    p["spark"]["master"] = "local[*]"
    rows = sum(int(_naxis2(f)) for f in files)
    import sklearn.neighbors  # noqa: F401  (imported by both approaches; ~4 s here, not Phase 3's cost)
    t0, c0 = time.monotonic(), time.process_time()
    if args.mode == "whole":
        table, summary = whole_read_parent(files, p)
    else:
        table, summary = build_parent(p, engine=args.mode)
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB, before the checksum below
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=65536)
    digest = hashlib.md5(sink.getvalue().to_pybytes()).hexdigest()
    print(json.dumps({"mode": args.mode, "files": len(files), "rows": rows, "wall_s": wall, "cpu_s": cpu,
                      "peak_rss_gb": rss, "n_parent": summary["n_parent"], "md5": digest}))


def _naxis2(path: str) -> int:
    from darkhaloscope.survey.sweeps import SweepFile

    return SweepFile.open(path).n_rows


def measure(bench_dir: Path, mode: str, n: int) -> dict:
    env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=PIN, PYTHONPATH=str(REPO / "src"))
    res = subprocess.run([sys.executable, __file__, "--child", "--mode", mode, "--n", str(n), "--dir", str(bench_dir)],
                         env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"measurement {mode} on {n} files failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["rows_per_s"] = out["rows"] / out["wall_s"]
    out["rows_per_cpu_s"] = out["rows"] / out["cpu_s"]
    print(f"  {mode:9s} {out['files']:3d} files {out['rows']:>10d} rows: {out['wall_s']:7.1f} s wall "
          f"{out['cpu_s']:7.1f} s cpu; {out['rows_per_s']:>11,.0f} rows/s wall, {out['rows_per_cpu_s']:>11,.0f} "
          f"rows/cpu-s; peak RSS {out['peak_rss_gb']:.2f} GB; {out['n_parent']} parent rows, md5 {out['md5'][:12]}; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20, help="sweep files to simulate (>= 20 for the measurement)")
    ap.add_argument("--rows", type=int, default=500_000, help="rows per file")
    ap.add_argument("--whole-files", type=int, default=2, help="files in the whole-read comparison subset")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the simulated sweeps")
    ap.add_argument("--spark", action="store_true", help="also run selection.engine spark (local[*])")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="inprocess", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=10**9, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    scratch = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="dhs-bench-parent-"))
    bench = scratch / "dr10" / "south"
    try:
        if not (bench / "sweep" / "10.1").exists():
            t0 = time.monotonic()
            print(f"writing {args.files} x {args.rows} rows of DR10-schema sweeps into {bench}", file=sys.stderr)
            write_sweeps(bench, args.files, args.rows)
            print(f"  ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
        print(f"Phase 3 on simulated DR10 sweeps ({os.cpu_count()} cores on this machine, maybe shared):")
        full = measure(bench, "inprocess", 10**9)
        quarter = measure(bench, "inprocess", max(1, args.files // 4))
        sub_stream = measure(bench, "inprocess", args.whole_files)
        sub_whole = measure(bench, "whole", args.whole_files)
        if sub_stream["md5"] != sub_whole["md5"]:
            raise SystemExit("the streaming and whole-read parent tables differ on the subset")
        if args.spark:
            spark = measure(bench, "spark", 10**9)
            if spark["md5"] != full["md5"]:
                raise SystemExit("the Spark and in-process parent tables differ")
        print(f"peak RSS streaming: {quarter['peak_rss_gb']:.2f} GB on {quarter['files']} files, "
              f"{full['peak_rss_gb']:.2f} GB on {full['files']} files; whole read: {sub_whole['peak_rss_gb']:.2f} GB "
              f"on {sub_whole['files']} files")
        print(f"wall-time rates: streaming {full['rows_per_s']:,.0f} rows/s on one core, speedup over the whole "
              f"read {sub_stream['rows_per_s'] / sub_whole['rows_per_s']:.2f} (load average {os.getloadavg()})")
        print(f"parent_rows_per_s_core={full['rows_per_cpu_s']:.1f}")
        print(f"parent_peak_rss_gb={full['peak_rss_gb']:.3f}")
        print(f"parent_speedup_vs_whole_read={sub_stream['rows_per_cpu_s'] / sub_whole['rows_per_cpu_s']:.2f}")
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
