"""Local-or-S3 file access through fsspec (s3fs is installed with dvc-s3).

For ``s3://`` paths the three problems a user can fix are reported as a
:class:`~darkhaloscope.errors.SurveyError` naming the path, the endpoint and
the fix: the endpoint cannot be reached, the bucket does not exist, access is denied.
A missing *file* in an existing bucket stays a ``FileNotFoundError`` (the readers
turn it into their own message).
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
from urllib.parse import urlsplit

import fsspec

from darkhaloscope.errors import SurveyError


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def join(root: str, *parts: str) -> str:
    return posixpath.join(str(root), *parts)


def s3_endpoint() -> str:
    """The S3 endpoint boto would use, as far as the environment tells (for messages)."""
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return f"{os.environ[var]} (from {var})"
    return "the default AWS S3 endpoint (AWS_ENDPOINT_URL is not set)"


def _unreachable(exc: BaseException) -> bool:
    """A connection-level failure (refused, timeout, unknown host), from botocore or aiohttp."""
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError",
                "ClientConnectorError", "ServerTimeoutError", "ProxyConnectionError"}:
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


def _survey_error(path: str, exc: BaseException):
    """The SurveyError for an S3 access failure of ``path``, or None when it is not one of ours."""
    bucket = urlsplit(str(path)).netloc
    where = f"{path}: "
    if _unreachable(exc):
        return SurveyError(
            f"{where}cannot reach the S3 endpoint {s3_endpoint()} ({type(exc).__name__}: {exc}). "
            f"Check AWS_ENDPOINT_URL (or the endpoint in your AWS config) and that the server is running, "
            f"or set survey.root in params.yaml to a local directory")
    text = str(exc)
    if isinstance(exc, FileNotFoundError) and ("bucket does not exist" in text.lower() or "NoSuchBucket" in text):
        return SurveyError(
            f"{where}bucket {bucket!r} does not exist at {s3_endpoint()}. Check survey.root in params.yaml "
            f"(s3://<bucket>/<prefix>) and the endpoint; this pipeline never creates buckets")
    if isinstance(exc, PermissionError) or type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        return SurveyError(
            f"{where}access to bucket {bucket!r} at {s3_endpoint()} was refused ({type(exc).__name__}: {exc}). "
            f"Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and that they may read the bucket")
    return None


@contextlib.contextmanager
def _s3_errors(path: str):
    try:
        yield
    except Exception as exc:
        err = _survey_error(path, exc) if is_remote(path) else None
        if err is None:
            raise
        raise err from exc


def _reports_s3_errors(func):
    @functools.wraps(func)
    def wrapper(path, *args, **kwargs):
        with _s3_errors(path):
            return func(path, *args, **kwargs)
    return wrapper


def filesystem(path: str):
    fs, _ = fsspec.core.url_to_fs(str(path))
    return fs


@_reports_s3_errors
def exists(path: str) -> bool:
    return filesystem(path).exists(str(path))


@_reports_s3_errors
def glob(root: str, pattern: str) -> list[str]:
    """Sorted paths under ``root`` matching ``pattern``, with the root's scheme kept."""
    fs, base = fsspec.core.url_to_fs(str(root))
    hits = sorted(fs.glob(posixpath.join(base, pattern)))
    if is_remote(root):
        scheme = str(root).split("://", 1)[0]
        return [f"{scheme}://{h}" for h in hits]
    return hits


@_reports_s3_errors
def glob_files(root: str, pattern: str) -> list[tuple[str, int]]:
    """Sorted ``(path, size in bytes)`` of the *files* under ``root`` matching ``pattern``
    (directories that match are left out), from one listing; the root's scheme is kept."""
    fs, base = fsspec.core.url_to_fs(str(root))
    if not is_remote(root):  # os.stat follows symbolic links (a linked sweep is a file), fsspec's detail does not
        out = []
        for name in fs.glob(posixpath.join(base, pattern)):
            if os.path.isfile(name):
                out.append((name, os.path.getsize(name)))
        return sorted(out)
    hits = fs.glob(posixpath.join(base, pattern), detail=True)
    scheme = str(root).split("://", 1)[0] + "://"
    return sorted((f"{scheme}{name}", int(info.get("size") or 0)) for name, info in hits.items()
                  if info.get("type") == "file")


@_reports_s3_errors
def size(path: str) -> int:
    """Size of a file in bytes (FileNotFoundError when it does not exist)."""
    if not is_remote(path):
        return os.path.getsize(local_path(path))
    return int(filesystem(path).size(str(path)))


def local_path(path: str) -> str:
    """A local path without a ``file://`` prefix."""
    p = str(path)
    return p[len("file://"):] if p.startswith("file://") else p


@contextlib.contextmanager
def open_read(path: str):
    """A binary file object for reading: the operating system's for a local path (no copy of
    the file is made), fsspec's for ``s3://`` (ranged requests with 1 MiB read-ahead: nothing is
    downloaded before it is read). S3 access problems become a SurveyError naming ``path``."""
    if not is_remote(path):
        with open(local_path(path), "rb") as f:
            yield f
        return
    with _s3_errors(path):
        f = filesystem(path).open(str(path), "rb", cache_type="readahead", block_size=2**20)
    try:
        yield f
    finally:
        f.close()


@_reports_s3_errors
def read_bytes(path: str) -> bytes:
    with fsspec.open(str(path), "rb") as f:
        return f.read()


@_reports_s3_errors
def get(path: str, local_path: str) -> None:
    """Copy a (remote) file to a local path."""
    filesystem(path).get(str(path), str(local_path))
