"""The stamp set Phase 5 reads: ``stamp_set.root`` in params.yaml, in either layout, local or ``s3://``.

Stages ``mine``, ``train``, ``score`` and ``evaluate`` read their stamps from
``stamp_set.root`` (default ``data/stamps``, what stage ``stamps`` writes), so an
experiment can point at an existing set without touching ``data/stamps``::

    dvc exp run -S stamp_set.root=/data/seeds/v5_cosmos_paired

Two layouts are recognised from the files themselves (:func:`layout`):

- ``ours``: ``<root>/<split>/part-NNNNN.parquet`` (:mod:`darkhaloscope.stamps.format`),
  read in place;
- ``seeds``: the seeds' Phase 4c parquet with ``stamp_npz`` blobs, under ``region_split=<split>/``
  or plain ``<split>/`` (:mod:`darkhaloscope.stamps.seeds`), converted ONCE into
  ``<stamp_set.cache>/<name>-<hash>/`` (outside the repository by default: the
  conversion is ~1.1x the set's size) and read from there; a later run finds the
  conversion current and skips it.

An ``s3://bucket/prefix`` root is first mirrored into ``<stamp_set.cache>/<name>-<hash>/source``
(every ``*.parquet`` object under the prefix; objects whose size and ETag did not change
are not downloaded again, local files whose object is gone are removed), then treated
as a local set of the layout it holds. DVC tracks the root itself as the stages'
dependency, so a changed set re-runs them.

:func:`resolve_stamp_set` returns the local directory in our layout that the
stages read; every failure names ``stamp_set.root`` and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re

from darkhaloscope.stamps.format import list_stamp_files
from darkhaloscope.stamps.seeds import is_seeds_layout, resolve_stamp_root

log = logging.getLogger(__name__)

#: splits whose presence (with part files) marks our layout
_OUR_SPLITS = ("train", "val", "test", "known", "parent")
MIRROR_MANIFEST = ".dhs_s3_mirror.json"


def _is_remote(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


def layout(root: str) -> str | None:
    """``"ours"``, ``"seeds"`` or None (neither) for a local directory."""
    if is_seeds_layout(root):
        return "seeds"
    for split in _OUR_SPLITS:
        try:
            list_stamp_files(root, split)
            return "ours"
        except FileNotFoundError:
            continue
    return None


def cache_dir_for(source: str, cache: str) -> str:
    """Where ``source`` (a local path or URL) is mirrored / converted: ``<cache>/<name>-<sha256[:12]>``."""
    key = source if _is_remote(source) else os.path.abspath(source)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", key.rstrip("/").rsplit("/", 1)[-1]) or "stamps"
    return os.path.join(os.path.expanduser(cache), f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}")


class _s3_errors:
    """Re-raise an S3 access failure as an OSError naming ``stamp_set.root`` and the fix."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb) -> bool:
        if exc is None or isinstance(exc, (FileNotFoundError, KeyboardInterrupt)):
            return False
        names = {c.__name__ for c in type(exc).__mro__}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the AWS default"
        if isinstance(exc, PermissionError) or names & {"NoCredentialsError", "PartialCredentialsError"}:
            why = ("access refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and that "
                   "they may read the bucket")
        elif isinstance(exc, (ConnectionError, TimeoutError)) or names & {
                "EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"}:
            why = "cannot reach the S3 endpoint: check AWS_ENDPOINT_URL and that the server runs"
        else:
            return False
        raise OSError(f"stamp_set.root {self.url!r} (endpoint {endpoint}): {why} "
                      f"({type(exc).__name__}: {exc})") from exc


def mirror_s3(url: str, dest: str, *, progress: bool = True) -> dict:
    """Mirror every ``*.parquet`` object under ``url`` into ``dest`` (same relative paths).

    An object whose size and ETag match the previous mirror (``dest/.dhs_s3_mirror.json``)
    is not downloaded again; each download goes to a temporary name first, so an
    interrupted mirror never leaves a partial file under its real name; local files
    whose object no longer exists are removed. Returns ``{"objects", "downloaded",
    "removed", "bytes"}``. Access problems are an OSError naming ``stamp_set.root`` and the fix.
    """
    import fsspec

    url = url.rstrip("/")
    with _s3_errors(url):
        filesystem, base = fsspec.core.url_to_fs(url)
        found = filesystem.find(base, detail=True)
    objects = {}
    for path, info in sorted(found.items()):
        rel = posixpath.relpath(path, base)
        parts = rel.split("/")
        if not rel.endswith(".parquet") or any(p.startswith(("_", ".")) for p in parts):
            continue
        objects[rel] = {"size": int(info.get("size") or 0), "etag": str(info.get("ETag") or info.get("etag") or "")}
    if not objects:
        raise FileNotFoundError(f"stamp_set.root {url!r}: no *.parquet objects under this prefix "
                                f"(expected <split>/part-*.parquet or the seeds' region_split=<split>/ parquet)")
    os.makedirs(dest, exist_ok=True)
    manifest_path = os.path.join(dest, MIRROR_MANIFEST)
    try:
        with open(manifest_path) as fh:
            previous = json.load(fh)
    except (OSError, ValueError):
        previous = {}
    todo = [rel for rel, meta in objects.items()
            if previous.get(rel) != meta or not os.path.isfile(os.path.join(dest, rel))
            or os.path.getsize(os.path.join(dest, rel)) != meta["size"]]
    nbytes = sum(objects[r]["size"] for r in todo)
    from tqdm import tqdm

    with tqdm(total=nbytes, unit="B", unit_scale=True, desc=f"mirror {url}", disable=not progress or not todo) as bar:
        for rel in todo:
            local = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(local), exist_ok=True)
            tmp = f"{local}.part-{os.getpid()}"
            with _s3_errors(url):
                filesystem.get(f"{base}/{rel}", tmp)
            got = os.path.getsize(tmp)
            if got != objects[rel]["size"]:
                os.unlink(tmp)
                raise OSError(f"stamp_set.root {url!r}: {rel} downloaded {got} bytes, the listing said "
                              f"{objects[rel]['size']}: the object changed during the mirror; run again")
            os.replace(tmp, local)
            bar.update(got)
    removed = 0
    for dirpath, _, filenames in os.walk(dest):
        for f in filenames:
            rel = os.path.relpath(os.path.join(dirpath, f), dest).replace(os.sep, "/")
            if rel != MIRROR_MANIFEST and rel not in objects:
                os.unlink(os.path.join(dirpath, f))
                removed += 1
    tmp = f"{manifest_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(objects, fh, indent=1, sort_keys=True)
    os.replace(tmp, manifest_path)
    report = {"objects": len(objects), "downloaded": len(todo), "removed": removed, "bytes": nbytes}
    log.info("stamp set %s mirrored into %s: %s", url, dest, report)
    return report


def resolve_stamp_set(root: str, cache: str, *, workers: int | None = None) -> str:
    """The local directory, in our layout, that holds the stamp set ``root``.

    ``root``: ``stamp_set.root`` (a local directory or ``s3://bucket/prefix``) in our
    layout or the seeds'. ``cache``: ``stamp_set.cache``, the directory under which
    remote sets are mirrored and seeds sets converted (``~`` is expanded). Our layout
    on local disk is returned as it is.
    """
    root = str(root)
    if _is_remote(root):
        if not root.startswith("s3://"):
            raise ValueError(f"stamp_set.root {root!r}: only local paths and s3:// URLs are supported")
        home = cache_dir_for(root, cache)
        local = os.path.join(home, "source")
        mirror_s3(root, local)
        return _resolve_local(local, root, os.path.join(home, "converted"), workers)
    if not os.path.isdir(root):
        hint = " (stage `stamps` writes it: run `dvc repro stamps`)" if os.path.normpath(root) == "data/stamps" else ""
        raise FileNotFoundError(f"stamp_set.root {root!r} is not a directory{hint}")
    return _resolve_local(root, root, cache_dir_for(root, cache), workers)


def _resolve_local(local: str, shown: str, convert_to: str, workers: int | None) -> str:
    kind = layout(local)
    if kind == "ours":
        return local
    if kind == "seeds":
        kw = {} if workers is None else {"workers": int(workers)}
        return resolve_stamp_root(local, cache_dir=convert_to, **kw)
    entries = sorted(os.listdir(local))[:10]
    raise ValueError(
        f"stamp_set.root {shown!r} holds neither our stamp layout (<split>/part-NNNNN.parquet with split in "
        f"{list(_OUR_SPLITS)}) nor the seeds' Phase 4c layout (region_split=<split>/ or <split>/ parquet files "
        f"with a stamp_npz column, split in train, val, test); it contains {entries}")


def stamp_set_root(params: dict) -> str:
    """:func:`resolve_stamp_set` for the ``stamp_set`` section of validated params."""
    s = params["stamp_set"]
    return resolve_stamp_set(s["root"], s["cache"])


__all__ = ["layout", "cache_dir_for", "mirror_s3", "resolve_stamp_set", "stamp_set_root"]
