"""Benchmark the search's scoring end to end: read stamps, preprocess, score (stamps per second).

Usage: python benchmarks/search.py [--n 8192] [--arch small_cnn] [--width 32] [--models 1]
                                   [--batch-size 1024] [--threads 0] [--repeats 2] [--workdir DIR]

The script

1. writes ``--n`` synthetic 64x64 g/r/z stamps (sky noise, a galaxy, an arc in a quarter of
   them; float32 nanomaggies) as a stamp set's ``parent`` split in our format (4 files of
   row groups of 512, as stage stamps writes them);
2. builds ``--models`` checkpoints of ``--arch`` (random weights, the shipped outer-annulus
   recipe): an ensemble when more than one;
3. times, in one process, :func:`darkhaloscope.search.scan.score_unit` over those files (the
   stage's own path: memory-mapped reads, the drop checks, each model's preprocessing, the
   forward passes: on CUDA ``--batch-size`` stamps under bf16 autocast, on the CPU fixed
   float32 micro-batches of 64), after one untimed warm-up pass; the best of ``--repeats`` is
   reported; and, as the in-process reference, stage score's path
   (:func:`darkhaloscope.model.score.score_files`: StampIndex + StampDataset + predict) on the
   same files with the first model.

``--threads`` sets torch's intra-op threads (0: torch's default). The device is the search's:
CUDA when available, else the CPU. Output lines: the device, ``score_files_stamps_per_s=``,
``speedup_vs_score_files=``, and last ``search_stamps_per_s=<float>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from darkhaloscope.model.checkpoint import save_checkpoint  # noqa: E402
from darkhaloscope.model.inference import device_and_amp  # noqa: E402
from darkhaloscope.model.nets import build_model  # noqa: E402
from darkhaloscope.model.preprocess import NormConfig  # noqa: E402
from darkhaloscope.model.score import score_files  # noqa: E402
from darkhaloscope.search import scan  # noqa: E402
from darkhaloscope.search.ensemble import file_sha256  # noqa: E402
from darkhaloscope.stamps.format import write_stamp_file  # noqa: E402


def synthetic_stamps(n: int, seed: int) -> np.ndarray:
    """(n, 3, 64, 64) float32 nanomaggies: noise, a de Vaucouleurs-like galaxy, an arc in every 4th."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    r = np.hypot(yy - 32, xx - 32)
    gal = np.exp(-7.67 * ((r + 0.5) / 6.0) ** 0.25).astype(np.float32)
    st = rng.normal(0, 0.01, (n, 3, 64, 64)).astype(np.float32)
    st += (rng.uniform(0.5, 3.0, (n, 1, 1, 1)) * np.array([0.4, 1.0, 1.6], np.float32)[:, None, None] * gal[None])
    arc = np.exp(-0.5 * ((r - 9.0) / 1.2) ** 2) * (np.cos(np.arctan2(yy - 32, xx - 32)) > 0.3)
    st[::4] += (0.15 * arc * np.array([1.0, 0.8, 0.5])[:, None, None]).astype(np.float32)
    return st


def write_set(root: str, n: int, seed: int = 0, files: int = 4) -> list[str]:
    os.makedirs(os.path.join(root, "parent"), exist_ok=True)
    paths = []
    for k, idx in enumerate(np.array_split(np.arange(n), files)):
        m = len(idx)
        cols = {"sample_id": idx.astype(np.int64), "row_id": idx.astype(np.int64),
                "is_control": np.ones(m, np.int8), "cutout_ok": np.ones(m, np.int8),
                "brickname": np.array(["1500p005"] * m), "objid": idx.astype(np.int64),
                "ra": 150.0 + idx * 1e-4, "dec": np.full(m, 0.5)}
        paths.append(write_stamp_file(os.path.join(root, "parent", f"part-{k:05d}.parquet"), cols,
                                      synthetic_stamps(m, seed + k), row_group_size=512))
    return paths


def checkpoints(d: str, arch: str, width: int, k: int) -> list[str]:
    out = []
    for i in range(k):
        torch.manual_seed(i)
        path = os.path.join(d, f"m{i}.pt")
        save_checkpoint(path, build_model(arch, 3, 0.1, 0, width),
                        {"norm": NormConfig(method="outer", outer_radius=16).to_dict(), "meta_cols": [],
                         "input_channels": 3})
        out.append(path)
    return out


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192, help="stamps (count)")
    ap.add_argument("--arch", default="small_cnn", choices=("small_cnn", "resnet18", "convnext_tiny"))
    ap.add_argument("--width", type=int, default=32, help="small_cnn base width (count)")
    ap.add_argument("--models", type=int, default=1, help="ensemble members (count)")
    ap.add_argument("--batch-size", type=int, default=1024, help="stamps per forward pass on CUDA (count)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes (the best is reported)")
    ap.add_argument("--workdir", default=None, help="where the synthetic stamp set is written (default: a temp dir)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device, amp = device_and_amp()
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        files = write_set(tmp, a.n)
        ckpts = checkpoints(tmp, a.arch, a.width, a.models)
        scorer = scan.Scorer.load(ckpts, [file_sha256(c) for c in ckpts], a.batch_size)
        unit = scan.Unit("parent-00000", "parent", files, None, a.n, "bench")
        print(f"device={scorer.layout()} arch={a.arch} width={a.width} models={a.models} n={a.n} "
              f"torch_threads={torch.get_num_threads()}")

        def search_pass() -> float:
            t0 = time.perf_counter()
            table, summ = scan.score_unit(unit, scorer, {}, {}, tmp)
            dt = time.perf_counter() - t0
            assert summ["kept"] == a.n and table.num_rows == a.n, summ
            return dt

        def reference_pass() -> float:
            t0 = time.perf_counter()
            table, _ = score_files(ckpts[0], files)
            dt = time.perf_counter() - t0
            assert table.num_rows == a.n
            return dt

        search_pass(), reference_pass()  # warm-up (page cache, kernels, cudnn autotuning)
        ts, tr = [], []
        for _ in range(max(1, a.repeats)):
            ts.append(search_pass())
            tr.append(reference_pass())
        if device.type == "cuda":
            torch.cuda.synchronize()
    rate, ref = a.n / min(ts), a.n / min(tr)
    print(f"score_files_stamps_per_s={ref:.1f}  (stage score's path, model 0 only)")
    print(f"speedup_vs_score_files={rate * a.models / ref:.3f}  (per model scored)")
    print(f"search_stamps_per_s={rate:.1f}")
    return rate


if __name__ == "__main__":
    main()
