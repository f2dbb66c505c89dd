"""Atomic, deterministic writers for stage outputs (JSON metrics, parquet tables, directories).

One home for the write-to-a-temporary-then-rename rule: :func:`atomic_file` for a file,
:class:`atomic_dir` for a directory. A crash or an exception never leaves a file or
directory at the final path that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil

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


@contextlib.contextmanager
def atomic_file(path: str, suffix: str = ".tmp"):
    """``with atomic_file(path) as tmp:`` write ``tmp``; on success it is renamed to ``path``.

    The parent directory is created. On an exception ``tmp`` is removed and ``path`` is left
    as it was. ``suffix`` names the temporary (``path + suffix``, same directory, so the
    rename is atomic).
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + suffix
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def write_json(obj, path: str) -> None:
    """Write JSON (sorted keys, finite numbers only) atomically."""
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(_finite(obj), f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")


def write_parquet(table: pa.Table, path: str) -> None:
    """Write a parquet table atomically; same table -> same bytes."""
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=65536)


class atomic_dir:
    """``with atomic_dir(final) as tmp:`` write into ``tmp``; on success it replaces ``final``.

    On an exception the temporary directory is removed and ``final`` is left as it
    was, so a failed stage never leaves a directory that looks complete.

    The swap renames the old directory aside, the new one into place, then removes the old
    one, so ``final`` is missing only between two renames. ``suffix`` names the temporary
    (``final + suffix``, beside it).
    """

    def __init__(self, final: str, suffix: str = ".tmp"):
        self.final = os.fspath(final).rstrip("/")
        self.tmp = self.final + suffix

    def __enter__(self) -> str:
        if os.path.exists(self.tmp):
            shutil.rmtree(self.tmp)
        os.makedirs(self.tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        os.makedirs(os.path.dirname(self.final) or ".", exist_ok=True)
        old = None
        if os.path.exists(self.final):
            old = self.final + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False
