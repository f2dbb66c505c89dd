"""A small stamp set in the seeds' Phase 4c layout, for tests that read it through the real entry points.

``write_seeds_set(root)`` writes what the seeds' Spark job wrote: Hive directories
``region_split=train|val|test/`` of gzip parquet parts with Spark-like names and bookkeeping
files (``_SUCCESS``, ``.crc``), a binary ``stamp_npz`` column of ``np.savez_compressed`` blobs
(float32 (64, 64) ``image_g/_r/_z`` in nanomaggies), r-only rows (only ``image_r``), failed
cutouts (zero ``image_r``, ``cutout_ok = 0``) and, with ``paired=True``, ``ctrl_stamp_npz`` with
some null controls. Positives carry a faint ring (an arc-like signal at 6-10 px) so a model can
learn something. Returns the truth per split: rows, r_only, failed, no_ctrl (null control
among rows that are neither failed nor r-only), kept (what the stamp index keeps).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS = {"train": (48, 40), "val": (36,), "test": (36,)}  # rows per part file


def blob(arrays: dict) -> bytes:
    bio = io.BytesIO()
    np.savez_compressed(bio, **arrays)
    return bio.getvalue()


def _ring(rng) -> np.ndarray:
    y, x = np.mgrid[:64, :64] - 31.5
    r = np.hypot(x, y)
    radius = rng.uniform(6, 10)
    return np.exp(-0.5 * ((r - radius) / 1.2) ** 2).astype(np.float32)


def write_seeds_set(root: Path, *, paired: bool = False, seed: int = 0, rows: dict = ROWS) -> dict:
    rng = np.random.default_rng(seed)
    root = Path(root)
    truth = {}
    for split, sizes in rows.items():
        d = root / f"region_split={split}"
        d.mkdir(parents=True)
        (d / "_SUCCESS").write_text("")
        t = dict(rows=0, r_only=0, failed=0, no_ctrl=0, kept=0, kept_pos=0)
        for f, n in enumerate(sizes):
            is_ctrl = (np.arange(n) % 2).astype(np.int32)
            kind = np.array(["ok"] * n, dtype=object)
            kind[3] = "r_only"
            kind[6] = "failed"
            if paired:
                kind[[4, n - 1]] = "no_ctrl"
            psf = rng.uniform(0.9, 1.6, n)
            theta = np.where(is_ctrl == 1, 0.0, rng.uniform(0.6, 2.0, n))
            blobs, ctrl_blobs = [], []
            for i in range(n):
                base = (rng.normal(0.0, 0.02, (3, 64, 64)) + rng.uniform(0.0, 0.1)).astype(np.float32)
                img = base + (0.0 if is_ctrl[i] else np.float32(0.3) * _ring(rng)[None])
                if kind[i] == "r_only":
                    blobs.append(blob({"image_r": img[1]}))
                elif kind[i] == "failed":
                    blobs.append(blob({"image_r": np.zeros((64, 64), np.float32)}))
                else:
                    blobs.append(blob({"image_g": img[0], "image_r": img[1], "image_z": img[2]}))
                ctrl_blobs.append(None if kind[i] == "no_ctrl" else
                                  blob({"image_g": base[0], "image_r": base[1], "image_z": base[2]}))
            cols = {
                "brickname": pa.array([f"150{f}p00{i % 3}" for i in range(n)], pa.string()),
                "ra": rng.uniform(150, 151, n), "dec": rng.uniform(0, 1, n),
                "is_control": is_ctrl,
                "cutout_ok": (kind != "failed").astype(np.int32),
                "theta_e_arcsec": theta,
                "src_dmag": rng.uniform(0.5, 2, n), "src_reff_arcsec": rng.uniform(0.06, 0.2, n),
                "src_e": rng.uniform(0, 0.4, n), "shear": rng.uniform(0, 0.04, n),
                "psfsize_r": psf, "psfdepth_r": rng.uniform(100, 1000, n),
                "arc_snr": np.where(is_ctrl == 1, 0.0, rng.uniform(5, 50, n)),
                "stamp_npz": pa.array(blobs, pa.binary()),
            }
            if paired:
                cols["ctrl_stamp_npz"] = pa.array(ctrl_blobs, pa.binary())
            pq.write_table(pa.table(cols), d / f"part-{f:05d}-3f2a9c.c000.gz.parquet", compression="gzip",
                           row_group_size=16)
            (d / f".part-{f:05d}-3f2a9c.c000.gz.parquet.crc").write_text("crc")
            keep = (kind != "r_only") & (kind != "failed")
            t["rows"] += n
            t["r_only"] += int((kind == "r_only").sum())
            t["failed"] += int((kind == "failed").sum())
            t["no_ctrl"] += int((kind == "no_ctrl").sum())
            t["kept"] += int(keep.sum())
            t["kept_pos"] += int((keep & (is_ctrl == 0)).sum())
        truth[split] = t
    return truth
