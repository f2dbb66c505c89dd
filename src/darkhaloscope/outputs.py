"""Atomic, deterministic writers for stage outputs (JSON metrics, parquet tables)."""

from __future__ import annotations

import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq


def _finite(obj):
    """Replace non-finite floats by None so the JSON has no Infinity/NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(obj, path: str) -> None:
    """Write JSON (sorted keys, finite numbers only) to a temp file, then rename into place."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_finite(obj), f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def write_parquet(table: pa.Table, path: str) -> None:
    """Write a parquet table atomically; same table -> same bytes."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    pq.write_table(table, tmp, compression="zstd", row_group_size=65536)
    os.replace(tmp, path)


class atomic_dir:
    """``with atomic_dir(final) as tmp:`` write into ``tmp``; on success it replaces ``final``.

    On an exception the temporary directory is removed and ``final`` is left as it
    was, so a failed stage never leaves a directory that looks complete.
    """

    def __init__(self, final: str):
        self.final = final.rstrip("/")
        self.tmp = self.final + ".tmp"

    def __enter__(self) -> str:
        import shutil

        if os.path.exists(self.tmp):
            shutil.rmtree(self.tmp)
        os.makedirs(self.tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        import shutil

        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if os.path.exists(self.final):
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        return False
