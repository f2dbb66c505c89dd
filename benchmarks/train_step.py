"""Benchmark one training step of the generations' architectures: ``train.stem`` adapted vs stock.

Usage: python benchmarks/train_step.py [--batch 64] [--steps 3] [--threads 2] [--archs resnet18,convnext_tiny]

For each architecture, in the same process, the script builds the classifier exactly as stage
``train`` does (:func:`darkhaloscope.model.nets.build_model`, 3 channels) with ``stem="adapted"``
(the small-stamp stems of the full-scale runs) and ``stem="stock"`` (torchvision's own stems, the
generations' CPU scale), and times ``--steps`` AdamW steps (forward, BCE loss, backward, update) on
a batch of ``--batch`` random 64x64 stamps after one untimed warm-up step, with ``--threads``
torch threads; the best step of each is reported (seconds per batch; the CPU's other load only
makes every figure an upper bound, and the ratio is taken between steps of the same run).

Per architecture it prints ``<arch> adapted_s_per_batch=... stock_s_per_batch=... ratio=...``
and an estimate of one epoch of the default train split (9,175 stamps) for each stem; the last
line is ``stock_speedup_vs_adapted=<smallest ratio over the architectures>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import torch  # noqa: E402

from darkhaloscope.model.nets import build_model  # noqa: E402

TRAIN_STAMPS = 9175  # the default train split's stamps (metrics/train.json train_index.kept)


def step_seconds(arch: str, stem: str, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(arch, input_channels=3, stem=stem).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-2)
    x = torch.randn(batch, 3, 64, 64)
    y = (torch.arange(batch) % 2).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best = float("inf")
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if i:  # the first step is the warm-up
            best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--archs", default="resnet18,convnext_tiny")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ratios = []
    for arch in a.archs.split(","):
        t_ad = step_seconds(arch, "adapted", a.batch, a.steps)
        t_st = step_seconds(arch, "stock", a.batch, a.steps)
        ratios.append(t_ad / t_st)
        n_batches = -(-TRAIN_STAMPS // a.batch)
        print(f"{arch} adapted_s_per_batch={t_ad:.3f} stock_s_per_batch={t_st:.3f} ratio={t_ad / t_st:.2f} "
              f"epoch_min(adapted)={n_batches * t_ad / 60:.1f} epoch_min(stock)={n_batches * t_st / 60:.1f} "
              f"(batch {a.batch}, {a.threads} threads)", flush=True)
    print(f"stock_speedup_vs_adapted={min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
