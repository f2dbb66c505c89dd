"""Benchmark the arc injection: stage ``stamps``' path (fast engine) and the batch API vs lenstronomy.

Usage: python benchmarks/injection.py [--n-ref 50] [--n-fast 1000] [--seed 0] [--repeats 3]

In one process, single-threaded (OMP/MKL/OpenBLAS/numba threads 1, set before
numpy is imported; torch threads 1 if torch is installed), this draws
``--n-fast`` injections exactly as the manifest stage does (params.yaml:
``manifest`` section and its grid: grid config, source offset radius
``sqrt(u) * 0.8 * theta_E``, lens q, angles, shear angle, colours), host r
magnitudes uniform in [18, 21], sub-pixel lens centres ``32 + U(-0.5, 0.5)``,
and per-band PSF FWHMs in [0.9, 1.8] arcsec from 16 "bricks". It then times
3-band 64x64 stamps end to end (no I/O) at ``inject.supersample``, with the
params' PSF model and ``psf_flux_frac`` (sub-pixel-phase convolution, see
:mod:`darkhaloscope.lensing.injector`):

* lenstronomy: ``Injector(engine="lenstronomy").inject_batch`` brick by brick
  (lenstronomy's ray shooting and light profile on the grid of phases, scipy
  convolution: the reference engine, held to the same accuracy target), on the
  first ``--n-ref`` draws;
* pipeline path: ``Injector(engine="fast").inject_batch`` brick by brick --
  exactly the call ``stamps.process_brick`` makes once per brick (kernels from
  the Injector's (brick, band) cache, source fluxes, S/N and flux measurements);
* batch API: ``fast.render_phase_images`` + ``convolve.inject_phases_batch`` in
  chunks of 256 stamps, kernels of all bricks built once (untimed).

The engines are warmed up first (numba compilation or cache load, each
brick's kernels once). Each timing is the process CPU time (one core),
minimum over ``--repeats`` interleaved runs; the fast paths are timed on the
SAME draws as the reference (repeated ``--n-fast // --n-ref`` times), so the
ratios do not depend on which draws the reference got. The agreement with the
reference on the shared draws is printed. The last line is
``speedup_vs_lenstronomy=<reference time / pipeline-path time per stamp>``.
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

from darkhaloscope.lensing import Injector  # noqa: E402
from darkhaloscope.lensing import convolve, fast  # noqa: E402
from darkhaloscope.lensing.render import source_band_fluxes  # noqa: E402
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
    """n injections as the manifest draws them, plus centres, band fluxes and per-brick FWHMs."""
    m = params["manifest"]
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
    brick = rng.integers(0, n_bricks, n)
    for r, b in zip(rows, brick):
        r["brickname"] = f"brick{b:02d}"
    return {"params": p, "centers": centers, "fluxes": fluxes, "fw": fw, "brick": brick, "rows": rows,
            "fwhm": fw[brick].tolist()}


def by_brick(d: dict, idx) -> list[np.ndarray]:
    """``idx`` split into the groups ``process_brick`` meets: one per brick, in brick order."""
    idx = np.asarray(idx)
    b = d["brick"][idx]
    return [idx[b == k] for k in np.unique(b)]


def run_injector(d: dict, groups, injector: Injector, keep: int) -> np.ndarray:
    """``Injector.inject_batch`` once per brick group, as ``process_brick`` calls it; the first ``keep``
    arcs in the order of ``np.concatenate(groups)``."""
    n = injector.stamp_size
    kept = np.empty((keep, 3, n, n), np.float32)
    iv_r = np.full((n, n), 1e4, np.float32)
    rows, c, fw = d["rows"], d["centers"], d["fwhm"]
    done = 0
    for g in groups:
        arcs, _ = injector.inject_batch([rows[i] for i in g], c[g], [iv_r] * len(g), [fw[i] for i in g])
        if done < keep:
            kept[done:done + len(g)] = arcs[:keep - done]
        done += len(g)
    return kept


def run_batch_api(d: dict, idx, kernels: np.ndarray, n_pix: int, ps: float, ss: int, keep: int,
                  chunk: int = 256, split: list | None = None) -> np.ndarray:
    """``render_phase_images`` + ``inject_phases_batch`` in chunks of ``chunk`` stamps; the first ``keep``
    arcs. ``split``, if given, receives the CPU seconds of (ray shooting, PSF + bands)."""
    idx = np.asarray(idx)
    kept = np.empty((keep, 3, n_pix, n_pix), np.float32)
    kidx = d["brick"][:, None] * 3 + np.arange(3)[None, :]
    t_ray = t_conv = 0.0
    for s in range(0, len(idx), chunk):
        sel = idx[s:s + chunk]
        t0 = time.process_time()
        ph = fast.render_phase_images({k: v[sel] for k, v in d["params"].items()}, d["centers"][sel], n_pix, ps, ss)
        t1 = time.process_time()
        arcs = convolve.inject_phases_batch(ph, d["fluxes"][sel], kernels, kidx[sel])
        t_ray, t_conv = t_ray + t1 - t0, t_conv + time.process_time() - t1
        if s < keep:
            kept[s:s + len(sel)] = arcs[:keep - s]
    if split is not None:
        split[:] = [t_ray, t_conv]
    return kept


def timed(fn, *args):
    """(CPU seconds of this process, result); single-threaded, so CPU time = one core's time."""
    t0 = time.process_time()
    out = fn(*args)
    return time.process_time() - t0, out


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-ref", type=int, default=50, help="stamps rendered by the lenstronomy engine")
    ap.add_argument("--n-fast", type=int, default=1000, help="stamps rendered by the fast engine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed repeats (min per engine reported)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = ap.parse_args(argv)
    with open(args.params) as fh:
        params = yaml.safe_load(fh)
    inj = params["inject"]
    n_pix, ps, ss = int(inj["stamp_size"]), float(inj["pixel_scale"]), int(inj["supersample"])
    n_fast = max(args.n_fast, args.n_ref)
    d = draw(n_fast, args.seed, params)
    ref_inj = Injector.from_params({**inj, "engine": "lenstronomy"})
    fast_inj = Injector.from_params({**inj, "engine": "fast"})
    print(f"grid={params['manifest']['grid']} n_ref={args.n_ref} n_fast={n_fast} stamp={n_pix}x{n_pix}x3 "
          f"pixel_scale={ps} supersample={ss} phases={fast_inj.s_c}x{fast_inj.s_c} psf={inj['psf_model']} "
          f"psf_flux_frac={inj['psf_flux_frac']} (threads: 1)")
    # kernels of every brick for the batch API (the Injector builds its own per brick, in the warm-up)
    kernels = convolve.pad_kernels([fast_inj._kernel(b, float(f)) for fw in d["fw"] for b, f in zip("grz", fw)])
    t_w0 = time.perf_counter()
    run_batch_api(d, [0, 1], kernels, n_pix, ps, ss, 0)
    run_injector(d, by_brick(d, np.arange(n_fast)), fast_inj, 0)
    t_w1 = time.perf_counter()
    run_injector(d, by_brick(d, [0]), ref_inj, 0)
    print(f"warm-up: fast engine {t_w1 - t_w0:.2f} s (numba compile or cache load, kernels), "
          f"lenstronomy {time.perf_counter() - t_w1:.2f} s")

    ref_groups = by_brick(d, np.arange(args.n_ref))
    ref_order = np.concatenate(ref_groups)
    reps = max(1, n_fast // args.n_ref)
    same_groups = [np.tile(g, reps) for g in ref_groups]
    same = np.tile(ref_order, reps)
    t_ref, t_pipe, t_api, split_api = [], [], [], []
    for _ in range(args.repeats):
        t0 = time.process_time()
        arc_ref = run_injector(d, ref_groups, ref_inj, args.n_ref)
        t_ref.append((time.process_time() - t0) / args.n_ref)
        t0 = time.process_time()
        arc_pipe = run_injector(d, same_groups, fast_inj, 0)
        t_pipe.append((time.process_time() - t0) / len(same))
        sp = [0.0, 0.0]
        t0 = time.process_time()
        arc_api = run_batch_api(d, same, kernels, n_pix, ps, ss, args.n_ref, 256, sp)
        t_api.append((time.process_time() - t0) / len(same))
        split_api.append([v / len(same) for v in sp])
    arc_pipe = run_injector(d, ref_groups, fast_inj, args.n_ref)

    ref64 = arc_ref.astype(np.float64)
    peak = ref64.max(axis=(2, 3))
    err_p = (np.abs(arc_pipe - ref64).max(axis=(2, 3)) / peak).max()
    err_a = (np.abs(arc_api - ref64).max(axis=(2, 3)) / peak).max()
    ferr = np.abs(arc_pipe.sum(axis=(2, 3)) / ref64.sum(axis=(2, 3)) - 1).max()
    r_ref, r_pipe, r_api = min(t_ref), min(t_pipe), min(t_api)
    sa = split_api[int(np.argmin(t_api))]
    print(f"lenstronomy engine: {1 / r_ref:10.1f} stamps/s  ({r_ref * 1e3:.3f} ms/stamp, {args.n_ref} draws)")
    print(f"pipeline path:      {1 / r_pipe:10.1f} stamps/s  ({r_pipe * 1e3:.3f} ms/stamp, same draws x{reps}, "
          f"Injector.inject_batch per brick as stage stamps); ratio {r_ref / r_pipe:.1f}")
    print(f"batch API:          {1 / r_api:10.1f} stamps/s  ({r_api * 1e3:.3f} ms/stamp, same draws x{reps}, "
          f"chunks of 256); ratio {r_ref / r_api:.1f}; ray shooting {sa[0] * 1e3:.3f} + PSF/bands "
          f"{sa[1] * 1e3:.3f} ms/stamp")
    print(f"agreement on the {args.n_ref} shared draws (3 bands, float32): max |fast - lenstronomy| / peak = "
          f"{err_p:.2e} (pipeline path), {err_a:.2e} (batch API); max |flux ratio - 1| = {ferr:.2e}")
    speedup = r_ref / r_pipe
    print(f"speedup_vs_lenstronomy={speedup:.2f}")
    return speedup


if __name__ == "__main__":
    main()
