"""Benchmark the arc-injection engines: lenstronomy reference vs the numba fast engine.

Usage: python benchmarks/injection.py [--n-ref 100] [--n-fast 2000] [--seed 0] [--repeats 5]

In one process, single-threaded (OMP/MKL/OpenBLAS/numba threads 1, set before
numpy is imported; torch threads 1 if torch is installed), this draws
``--n-fast`` injections exactly as the manifest stage does (params.yaml:
``manifest`` section and its grid, ``grid_sota`` by default: grid config,
source offset radius ``sqrt(u) * 0.8 * theta_E``, lens q, angles, shear angle,
colours), host r magnitudes uniform in [18, 21], sub-pixel lens centres
``32 + U(-0.5, 0.5)``, and per-band PSF FWHMs in [0.9, 1.8] arcsec from 16
"bricks" (kernels from ``psf_kernel(params inject.psf_model, ...)``, built
once, untimed: the ``Injector`` caches them per brick and band too). It then times 3-band
64x64 stamp rendering end to end (unit image, band scaling, per-band PSF
convolution; no I/O) at ``inject.supersample``:

* lenstronomy: ``get_renderer(...).lensed_unit_image`` + ``render.inject_bands``
  (the parts of an ``Injector`` with ``engine: lenstronomy``), on the
  first ``--n-ref`` draws;
* fast, per stamp: ``get_engine("fast", ...).lensed_unit_image`` +
  ``convolve.inject_bands`` (single-stamp drop-ins);
* fast, Injector: ``Injector.inject`` with ``engine: fast``, the per-stamp call
  ``stamps.process_brick`` makes (the same two steps plus the PSF-kernel lookup of
  its (brick, band) cache, the source fluxes and the S/N and flux measurements;
  stamps taken brick by brick as ``process_brick`` does, kernels built untimed
  in the warm-up);
* fast, batch: ``fast.render_unit_images`` + ``convolve.inject_bands_batch``
  (chunks of 256 stamps into reused buffers).

The fast engines are warmed up first (numba compilation or cache load). Each
timing is the process CPU time (one core: everything runs single-threaded),
minimum over ``--repeats`` interleaved runs (other load on the machine
inflates single runs); the speed-ups are measured
on the SAME parameter sets as the reference (the first ``--n-ref`` draws,
rendered ``--n-fast // --n-ref`` times per repeat), so they do not depend on
which draws the reference happened to get; the fast rates over all
``--n-fast`` draws are printed too. The agreement with the reference on the
shared draws is checked (max |fast - ref| per stamp / its peak pixel, flux).
The last line printed is ``speedup_vs_lenstronomy=<reference time / fast
batch time per stamp>``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
           "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
try:
    import darkhaloscope  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(ROOT / "src"))

from darkhaloscope.lensing import Injector, get_engine, get_renderer, psf_kernel  # noqa: E402
from darkhaloscope.lensing import convolve, fast  # noqa: E402
from darkhaloscope.lensing.render import inject_bands, source_band_fluxes  # noqa: E402
from darkhaloscope.catalog.manifest import draw_injection, grid_configs  # noqa: E402

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # torch is optional here
    torch = None

KEYS = ("theta_e", "lens_q", "lens_phi_deg", "gamma1", "gamma2", "src_x", "src_y", "src_reff", "src_e",
        "src_phi_deg")
COLS = ("theta_e_arcsec", "lens_q", "lens_phi_deg", "gamma1", "gamma2", "src_x_arcsec", "src_y_arcsec",
        "src_reff_arcsec", "src_e", "src_phi_deg")


def draw(n: int, seed: int, params: dict) -> dict:
    """n injections as the manifest draws them, plus centres, band fluxes and PSF kernels per stamp."""
    m = params["manifest"]
    inj = params["inject"]
    configs = grid_configs(params["grids"][m["grid"]])
    rng = np.random.default_rng(seed)
    host = rng.uniform(18.0, 21.0, n)
    rows = [draw_injection(seed, i, configs, m, float(host[i])) for i in range(n)]
    p = {k: np.array([r[c] for r in rows], dtype=np.float64) for k, c in zip(KEYS, COLS)}
    fluxes = np.stack(source_band_fluxes(np.array([r["src_mag_r"] for r in rows]),
                                         np.array([r["src_gr"] for r in rows]),
                                         np.array([r["src_rz"] for r in rows])), axis=1)
    centers = 32.0 + rng.uniform(-0.5, 0.5, (n, 2))
    n_bricks = 16
    fw = rng.uniform(0.9, 1.8, (n_bricks, 3))
    kernels = np.array([psf_kernel(inj["psf_model"], f, float(inj["moffat_beta"]), float(inj["pixel_scale"]),
                                   int(inj["psf_kernel_size"]), 5) for f in fw.ravel()])
    brick = rng.integers(0, n_bricks, n)
    kidx = brick[:, None] * 3 + np.arange(3)[None, :]
    for r, b in zip(rows, brick):
        r["brickname"] = f"brick{b:02d}"
    return {"params": p, "centers": centers, "fluxes": fluxes, "kernels": kernels, "kidx": kidx,
            "configs": [r["config_id"] for r in rows], "rows": rows, "fwhm": fw[brick].tolist()}


def run_reference(d: dict, idx, renderer, keep: int, split: list | None = None) -> np.ndarray:
    """Render stamps ``idx`` one by one; returns the first ``keep`` (3, N, N) float32 arcs.

    ``split``, if given, receives the CPU seconds spent in (unit image, PSF + bands).
    """
    kept = np.empty((min(keep, len(idx)), 3, renderer.n_pix, renderer.n_pix), np.float32)
    p, c, f, k, ki = d["params"], d["centers"], d["fluxes"], d["kernels"], d["kidx"]
    t_unit = t_inj = 0.0
    for j, i in enumerate(idx):
        t0 = time.process_time()
        unit = renderer.lensed_unit_image(*[p[key][i] for key in KEYS], center=(c[i, 0], c[i, 1]))
        t1 = time.process_time()
        arc = inject_bands(unit, f[i], [k[ki[i, b]] for b in range(3)])
        t_unit, t_inj = t_unit + t1 - t0, t_inj + time.process_time() - t1
        if j < len(kept):
            kept[j] = arc
    if split is not None:
        split[:] = [t_unit, t_inj]
    return kept


def run_fast_single(d: dict, idx, renderer, keep: int) -> np.ndarray:
    """As :func:`run_reference` with the fast engine's single-stamp drop-ins."""
    kept = np.empty((min(keep, len(idx)), 3, renderer.n_pix, renderer.n_pix), np.float32)
    p, c, f, k, ki = d["params"], d["centers"], d["fluxes"], d["kernels"], d["kidx"]
    for j, i in enumerate(idx):
        unit = renderer.lensed_unit_image(*[p[key][i] for key in KEYS], center=(c[i, 0], c[i, 1]))
        arc = convolve.inject_bands(unit, f[i], [k[ki[i, b]] for b in range(3)])
        if j < len(kept):
            kept[j] = arc
    return kept


def by_brick(d: dict, idx) -> np.ndarray:
    """``idx`` in the order ``process_brick`` meets them: brick by brick."""
    idx = np.asarray(idx)
    return idx[np.argsort([d["rows"][i]["brickname"] for i in idx], kind="stable")]


def run_injector(d: dict, idx, injector: Injector, keep: int) -> np.ndarray:
    """``Injector.inject`` stamp by stamp (``idx`` as :func:`by_brick` orders them); the first ``keep`` arcs."""
    n = injector.stamp_size
    kept = np.empty((min(keep, len(idx)), 3, n, n), np.float32)
    iv_r = np.full((n, n), 1e4, np.float32)
    rows, c, fw = d["rows"], d["centers"], d["fwhm"]
    for j, i in enumerate(idx):
        arc, _ = injector.inject(rows[i], (c[i, 0], c[i, 1]), iv_r, fw[i])
        if j < len(kept):
            kept[j] = arc
    return kept


def run_fast_batch(d: dict, idx, n_pix: int, ps: float, ss: int, keep: int, chunk: int = 256,
                   split: list | None = None) -> np.ndarray:
    """Render stamps ``idx`` in batches of ``chunk`` into reused buffers (as a pipeline would
    consume them); returns the first ``keep`` arcs (``split`` as in :func:`run_reference`)."""
    idx = np.asarray(idx)
    kept = np.empty((min(keep, len(idx)), 3, n_pix, n_pix), np.float32)
    units = np.empty((min(chunk, len(idx)), n_pix, n_pix))
    arcs = np.empty((min(chunk, len(idx)), 3, n_pix, n_pix), np.float32)
    t_unit = t_inj = 0.0
    for s in range(0, len(idx), chunk):
        sel = idx[s:s + chunk]
        t0 = time.process_time()
        u = fast.render_unit_images({key: v[sel] for key, v in d["params"].items()}, d["centers"][sel],
                                    n_pix, ps, ss, out=units[:sel.size])
        t1 = time.process_time()
        convolve.inject_bands_batch(u, d["fluxes"][sel], d["kernels"], d["kidx"][sel], out=arcs[:sel.size])
        t_unit, t_inj = t_unit + t1 - t0, t_inj + time.process_time() - t1
        if s < len(kept):
            kept[s:] = arcs[:len(kept) - s]
    if split is not None:
        split[:] = [t_unit, t_inj]
    return kept


def timed(fn, *args):
    """(CPU seconds of this process, result); single-threaded, so CPU time = one core's time."""
    t0 = time.process_time()
    out = fn(*args)
    return time.process_time() - t0, out


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-ref", type=int, default=100, help="stamps rendered by the lenstronomy engine")
    ap.add_argument("--n-fast", type=int, default=2000, help="stamps rendered by the fast engine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timed repeats (min per engine reported)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = ap.parse_args(argv)
    with open(args.params) as fh:
        params = yaml.safe_load(fh)
    inj = params["inject"]
    n_pix, ps, ss = int(inj["stamp_size"]), float(inj["pixel_scale"]), int(inj["supersample"])
    n_fast = max(args.n_fast, args.n_ref)
    d = draw(n_fast, args.seed, params)
    print(f"grid={params['manifest']['grid']} n_ref={args.n_ref} n_fast={n_fast} stamp={n_pix}x{n_pix}x3 "
          f"pixel_scale={ps} supersample={ss} psf={inj['psf_model']} (threads: 1)")

    ref_engine = get_renderer(n_pix, ps, ss)
    fast_engine = get_engine("fast", n_pix, ps, ss)
    injector = Injector.from_params({**inj, "engine": "fast"})
    # warm-up: numba compile / cache load, lenstronomy imports, FFT plans
    t_w0 = time.perf_counter()
    run_fast_batch(d, [0, 1], n_pix, ps, ss, 0)
    run_fast_single(d, [0], fast_engine, 0)
    run_injector(d, by_brick(d, np.arange(n_fast)), injector, 0)  # also builds the last brick's kernels
    t_w1 = time.perf_counter()
    run_reference(d, [0], ref_engine, 0)
    print(f"warm-up: fast engine {t_w1 - t_w0:.2f} s (numba compile or cache load), "
          f"lenstronomy {time.perf_counter() - t_w1:.2f} s")

    ref_idx = np.arange(args.n_ref)
    reps = max(1, n_fast // args.n_ref)
    same = np.tile(ref_idx, reps)
    # interleaved repeats, minimum per engine: robust to other load on the machine
    same_inj = by_brick(d, same)
    t_ref, t_same_b, t_same_s, t_same_i, t_all_b, t_all_s = [], [], [], [], [], []
    split_ref, split_b = [], []
    for _ in range(args.repeats):
        sp = [0.0, 0.0]
        t, arc_ref = timed(run_reference, d, ref_idx, ref_engine, args.n_ref, sp)
        t_ref.append(t / args.n_ref)
        split_ref.append([v / args.n_ref for v in sp])
        t, arc_b = timed(run_fast_batch, d, same, n_pix, ps, ss, args.n_ref, 256, sp)
        t_same_b.append(t / len(same))
        split_b.append([v / len(same) for v in sp])
        t, arc_s = timed(run_fast_single, d, same, fast_engine, args.n_ref)
        t_same_s.append(t / len(same))
        t, _ = timed(run_injector, d, same_inj, injector, 0)
        t_same_i.append(t / len(same))
        t, _ = timed(run_fast_batch, d, np.arange(n_fast), n_pix, ps, ss, 0)
        t_all_b.append(t / n_fast)
        t, _ = timed(run_fast_single, d, np.arange(n_fast), fast_engine, 0)
        t_all_s.append(t / n_fast)

    # agreement on the shared draws (first repetition)
    arc_b, arc_s = arc_b.astype(np.float64), arc_s.astype(np.float64)
    ref64 = arc_ref.astype(np.float64)
    peak = ref64.max(axis=(2, 3))
    err_b = (np.abs(arc_b - ref64).max(axis=(2, 3)) / peak).max()
    err_s = (np.abs(arc_s - ref64).max(axis=(2, 3)) / peak).max()
    ferr = np.abs(arc_b.sum(axis=(2, 3)) / ref64.sum(axis=(2, 3)) - 1).max()

    r_ref = min(t_ref)
    rb, rs, ri = min(t_same_b), min(t_same_s), min(t_same_i)
    print(f"lenstronomy:        {1 / r_ref:10.1f} stamps/s  ({r_ref * 1e3:.3f} ms/stamp, {args.n_ref} draws)")
    print(f"fast, per stamp:    {1 / rs:10.1f} stamps/s  ({rs * 1e3:.3f} ms/stamp, same draws x{reps}); "
          f"all {n_fast} draws: {1 / min(t_all_s):.1f} stamps/s")
    print(f"fast, Injector:     {1 / ri:10.1f} stamps/s  ({ri * 1e3:.3f} ms/stamp, same draws x{reps}, "
          f"brick by brick; the stage's per-stamp call)")
    print(f"fast, batch:        {1 / rb:10.1f} stamps/s  ({rb * 1e3:.3f} ms/stamp, same draws x{reps}); "
          f"all {n_fast} draws: {1 / min(t_all_b):.1f} stamps/s")
    sr = split_ref[int(np.argmin(t_ref))]
    sb = split_b[int(np.argmin(t_same_b))]
    print(f"  breakdown (ms/stamp): lenstronomy unit image {sr[0] * 1e3:.3f} + PSF/bands {sr[1] * 1e3:.3f}; "
          f"fast batch unit image {sb[0] * 1e3:.3f} + PSF/bands {sb[1] * 1e3:.3f} "
          f"(unit image alone: {sr[0] / sb[0]:.1f}x, PSF/bands alone: {sr[1] / sb[1]:.1f}x)")
    print(f"agreement on the {args.n_ref} shared draws (3 bands, PSF-convolved, float32): "
          f"max |fast - ref| / peak = {err_b:.2e} (batch), {err_s:.2e} (per stamp); "
          f"max |flux ratio - 1| = {ferr:.2e}")
    print(f"speedup per stamp (drop-in) = {r_ref / rs:.1f}")
    speedup = r_ref / rb
    print(f"speedup_vs_lenstronomy={speedup:.2f}")
    return speedup


if __name__ == "__main__":
    main()
