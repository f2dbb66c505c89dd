"""Benchmark darkhaloscope.metrics against scikit-learn on a large score set.

Usage: python benchmarks/metrics.py [--n 10000000] [--repeats 2] [--seed 0]

Generates n scores (half positives, label 1 = lens; float32-rounded normal
scores, so there are ties as with real CNN outputs) and times, in the same
process:

* sklearn: ``roc_curve(drop_intermediate=False)`` + ``roc_auc_score``;
* ours: ``compute_roc`` (one sort) and, from it, the ROC arrays, ``auroc`` and
  ``tpr_at_fpr`` / ``fpr_at_tpr`` at all default targets (the full set of eval
  metrics except the bootstrap).

Each side runs once untimed first (warm-up: first-touch page faults on a fresh
VM are expensive and would otherwise penalise whichever runs first; the
warm-up results are also checked for identity), then ``--repeats`` interleaved
timed runs; the minimum is reported.  For information, the module-level
convenience functions (each rebuilding the curve) are timed once too.  The
last line printed is ``speedup_vs_sklearn=<sklearn time / our time>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

try:
    import darkhaloscope.metrics as M
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import darkhaloscope.metrics as M

from sklearn import metrics as skm

FPR_TARGETS = M.DEFAULT_FPR_TARGETS
TPR_TARGETS = M.DEFAULT_TPR_TARGETS


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.int64)
    y[: n // 2] = 1
    rng.shuffle(y)
    s = (rng.normal(size=n) + 1.5 * y).astype(np.float32).astype(np.float64)
    return y, s


def run_ours(y: np.ndarray, s: np.ndarray):
    c = M.compute_roc(y, s)
    fpr, tpr, thr = c.fpr, c.tpr, c.thresholds
    a = c.auroc()
    rates = [c.tpr_at_fpr(t) for t in FPR_TARGETS] + [c.fpr_at_tpr(t) for t in TPR_TARGETS]
    return fpr, tpr, thr, a, rates


def run_ours_standalone(y: np.ndarray, s: np.ndarray):
    fpr, tpr, thr = M.roc_curve(y, s)
    a = M.auroc(y, s)
    rates = [M.tpr_at_fpr(y, s, t) for t in FPR_TARGETS] + [M.fpr_at_tpr(y, s, t) for t in TPR_TARGETS]
    return fpr, tpr, thr, a, rates


def run_sklearn(y: np.ndarray, s: np.ndarray):
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    a = skm.roc_auc_score(y, s)
    return fpr, tpr, thr, a


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def check(ours, ref) -> None:
    fpr, tpr, thr, a, rates = ours
    f2, t2, th2, a2 = ref
    assert np.array_equal(fpr, f2), "fpr arrays differ"
    assert np.array_equal(tpr, t2), "tpr arrays differ"
    assert np.array_equal(thr, th2), "threshold arrays differ"
    assert abs(a - a2) <= 1e-12, f"auroc differs: {a!r} vs {a2!r}"
    ref_rates = [float(t2[f2 <= t].max()) for t in FPR_TARGETS] + [
        float(f2[t2 >= t].min()) for t in TPR_TARGETS
    ]
    assert rates == ref_rates, f"rates differ: {rates} vs {ref_rates}"


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000, help="number of scores (half positives)")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats per method (min is reported)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    y, s = make_data(args.n, args.seed)
    print(f"n={args.n} n_pos={int(y.sum())} distinct_scores={len(np.unique(s))} "
          f"(generated in {time.perf_counter() - t0:.2f} s)")

    # warm-up + correctness
    t_sk0, ref = timed(run_sklearn, y, s)
    t_our0, ours = timed(run_ours, y, s)
    check(ours, ref)
    print(f"warm-up: sklearn {t_sk0:.3f} s, ours {t_our0:.3f} s; results identical "
          f"(auroc={ours[3]:.12f}, {len(ours[0])} ROC points)")
    for name, v in zip(
        [M.metric_name("tpr@fpr", t) for t in FPR_TARGETS] + [M.metric_name("fpr@tpr", t) for t in TPR_TARGETS],
        ours[4],
    ):
        print(f"  {name} = {v:.6g}")
    del ref, ours

    t_sk, t_our = [], []
    for _ in range(args.repeats):
        t, out = timed(run_sklearn, y, s)
        t_sk.append(t)
        del out
        t, out = timed(run_ours, y, s)
        t_our.append(t)
        del out
    t_alone, out = timed(run_ours_standalone, y, s)
    del out

    sk, our = min(t_sk), min(t_our)
    print(f"sklearn roc_curve + roc_auc_score:            {sk:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in t_sk)})")
    print(f"ours compute_roc + auroc + {len(FPR_TARGETS) + len(TPR_TARGETS)} rates (one sort): "
          f"{our:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in t_our)})")
    print(f"ours module-level functions (curve rebuilt per call, {2 + len(FPR_TARGETS) + len(TPR_TARGETS)} calls): "
          f"{t_alone:.3f} s")
    speedup = sk / our
    print(f"total wall time {time.perf_counter() - t0:.1f} s")
    print(f"speedup_vs_sklearn={speedup:.3f}")
    return speedup


if __name__ == "__main__":
    main()
