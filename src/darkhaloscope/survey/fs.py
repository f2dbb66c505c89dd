"""Local-or-S3 file access through fsspec (s3fs is installed with dvc-s3)."""

from __future__ import annotations

import posixpath

import fsspec


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def join(root: str, *parts: str) -> str:
    return posixpath.join(str(root), *parts)


def filesystem(path: str):
    fs, _ = fsspec.core.url_to_fs(str(path))
    return fs


def exists(path: str) -> bool:
    return filesystem(path).exists(str(path))


def glob(root: str, pattern: str) -> list[str]:
    """Sorted paths under ``root`` matching ``pattern``, with the root's scheme kept."""
    fs, base = fsspec.core.url_to_fs(str(root))
    hits = sorted(fs.glob(posixpath.join(base, pattern)))
    if is_remote(root):
        scheme = str(root).split("://", 1)[0]
        return [f"{scheme}://{h}" for h in hits]
    return hits


def read_bytes(path: str) -> bytes:
    with fsspec.open(str(path), "rb") as f:
        return f.read()
