"""Injected stamps are the same bytes on any CPU: subprocesses on other code-generation targets.

The fast engine's numba kernels are compiled for the host CPU (AVX2, AVX-512, ...), numpy picks
SIMD code paths at import time. The engine is written so that neither changes a bit: no
reassociation or FMA contraction (so the SIMD width does not matter), no approximate
reciprocal / square-root instructions (``rcpps``, ``rsqrtps``, ``vrcp14ps``, ... whose bits
differ between CPU makers), its own exp / atan / atanh, float64 sums in a fixed order, scipy's
FFTs (no runtime dispatch) and numpy with the data stages' SIMD pin.

* :func:`test_stamps_identical_across_code_generation_targets`: the same stamps (Sersic sources,
  Gaussian and Moffat PSFs, supersample 2 and 4, ``Injector.inject_batch`` as stage ``stamps``
  calls it, and the batch API ``render_phase_images`` + ``inject_phases_batch``) from a fresh
  process with numba's ``generic`` x86-64 target and numpy narrowed to its x86-64-v2 baseline
  (``NPY_DISABLE_CPU_FEATURES``, as stage ``stamps`` runs), from a fresh process on the host
  target, and from this process (numba's cache): one SHA-256.
* :func:`test_no_cpu_dependent_instructions`: the kernels compiled (not run) for Skylake-AVX512,
  Haswell and Zen 3 contain none of those instructions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NUMPY_PIN = "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"   # stages/_common.NUMPY_SIMD_ABOVE_BASELINE

STAMPS = r"""
import hashlib
import numpy as np
from darkhaloscope.lensing import Injector, convolve, fast, psf
from darkhaloscope.lensing.injector import ROW_KEYS

rng = np.random.default_rng(123)
rows, centers, fwhm = [], [], []
for i in range(24):
    te = rng.uniform(0.5, 2.5)
    r, a = np.sqrt(rng.uniform()) * 0.8 * te, rng.uniform(0, 2 * np.pi)
    rows.append(dict(brickname=f"b{i // 8}", theta_e_arcsec=te, lens_q=rng.uniform(0.5, 1.0),
                     lens_phi_deg=rng.uniform(0, 180), gamma1=rng.uniform(-0.03, 0.03), gamma2=rng.uniform(-0.03, 0.03),
                     src_x_arcsec=r * np.cos(a), src_y_arcsec=r * np.sin(a), src_reff_arcsec=rng.uniform(0.06, 0.2),
                     src_e=rng.uniform(0, 0.4), src_phi_deg=rng.uniform(0, 180), src_mag_r=rng.uniform(20, 23),
                     src_gr=0.3, src_rz=0.2))
    centers.append(32 + rng.uniform(-0.5, 0.5, 2))
    fwhm.append(list(rng.uniform(0.7, 1.8, 3)) if i % 8 == 0 else fwhm[-1])
iv = [np.full((64, 64), 400.0)] * len(rows)
h = hashlib.sha256()
for i, row in enumerate(rows):
    row["sample_id"] = 1000 + i
for ss, model in ((4, "moffat"), (2, "gaussian"), (8, "moffat")):
    inj = Injector("fast", model, 3.5, ss, 0.998, 64, 0.262)
    k = len(rows) if ss < 8 else 8
    arcs, infos = inj.inject_batch(rows[:k], centers[:k], iv[:k], fwhm[:k])
    h.update(arcs.tobytes())
    h.update(repr([sorted(d.items()) for d in infos]).encode())
params = {k: np.array([r[c] for r in rows]) for k, c in zip(fast.PARAM_KEYS, ROW_KEYS)}
ph = fast.render_phase_images(params, centers, 64, 0.262, 4)
h.update(ph.tobytes())
kers = [psf.phase_kernels("moffat", f, 3.5, 0.262, 4, psf.kernel_size("moffat", f, 3.5, 0.262)) for f in fwhm[0]]
h.update(convolve.inject_phases_batch(ph, np.ones((len(rows), 3)), kers).tobytes())
print(h.hexdigest())
"""


def _run(code: str, tmp_path: Path, name: str, **env) -> str:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "NPY_"))}
    e.update(PYTHONPATH=str(REPO / "src"), NUMBA_CACHE_DIR=str(tmp_path / name), **env)
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_stamps_identical_across_code_generation_targets(tmp_path):
    here = {}
    exec(compile(STAMPS.replace("print(h.hexdigest())", "digest = h.hexdigest()"), "stamps", "exec"), here)
    generic = _run(STAMPS, tmp_path, "generic", NUMBA_CPU_NAME="generic", NUMBA_CPU_FEATURES="",
                   NPY_DISABLE_CPU_FEATURES=NUMPY_PIN)
    host = _run(STAMPS, tmp_path, "host")
    assert generic == host == here["digest"]


COMPILE_ONLY = r"""
import re, sys
import numba, numpy as np
from darkhaloscope.lensing import convolve, fast
p = dict(theta_e=1.2, lens_q=0.7, lens_phi_deg=20.0, gamma1=0.01, gamma2=-0.02, src_x=0.15, src_y=-0.1,
         src_reff=0.08, src_e=0.3, src_phi_deg=100.0)
P64 = fast.pack_params(p, [[32.2, 31.7]], dtype=np.float32)
args = (P64, P64.astype(np.float32), np.empty((1, 256, 256)), 1, True, True, fast._K32)
sig = tuple(numba.typeof(a) for a in args)
fast._render_batch.compile(sig)          # compiled for NUMBA_CPU_NAME, never run
asm = fast._render_batch.inspect_asm(sig)
F = np.empty((2, 16, 40, 21), np.complex64)
sig2 = tuple(numba.typeof(a) for a in (F, F, np.zeros((2, 3), np.int64), np.ones((2, 3), np.float32),
                                        np.empty((2, 3, 40, 21), np.complex64)))
convolve._phase_products.compile(sig2)
asm += convolve._phase_products.inspect_asm(sig2)
bad = sorted(set(re.findall(r"\b(v?rcp\w*|v?rsqrt\w*|vfn?m(?:add|sub)\w*)\b", asm)))
print(len(asm), ",".join(bad) or "none")
"""


@pytest.mark.slow
@pytest.mark.parametrize("cpu", ["skylake-avx512", "haswell", "znver3"])
def test_no_cpu_dependent_instructions(tmp_path, cpu):
    size, bad = _run(COMPILE_ONLY, tmp_path, cpu, NUMBA_CPU_NAME=cpu).split()
    assert int(size) > 10000 and bad == "none", bad
