"""Phase 4b: the coadds of the needed bricks, copied (``survey.coadd_mode: copy``) or listed
in a manifest and read from ``survey.root`` through a bounded local cache (``manifest``).

``survey.coadd_mode: auto`` (the default) is ``copy`` for the mock's root ``data/survey`` and
``manifest`` for any other root (:func:`coadd_mode`).

``copy``: every needed brick's g/r/z image and invvar file is copied into
the DVC-tracked ``data/coadds`` in the DR10 layout; stage ``stamps`` reads that copy.

``manifest`` (real data, 10^5 bricks): stage ``coadds`` writes only
``data/coadds/coadd_manifest.parquet``, one row per needed file found under ``survey.root``:
``brick, band, kind`` (image / invvar), ``relpath`` (relative to ``survey.root``, DR10 layout),
``size`` (bytes) and ``identity``, a content identity that is the same on every machine
and costs no full read:

* local files: ``headtail-sha256:<hex>``, the SHA-256 of the decimal size, a NUL, the first
  64 KiB and the last 64 KiB of the file (128 KiB read per file; a full hash of ~1.5 TB of
  coadds is exactly the cost this mode avoids). fpack coadds carry their per-HDU CHECKSUM /
  DATASUM in the first 64 KiB, so a rewritten file shows there as well;
* ``s3://`` objects: ``etag:<ETag>`` from the brick directory's listing (one LIST per brick).

No mtimes and no absolute paths enter the manifest: the same survey files give the same bytes.
Stage ``stamps`` then opens local files in place (after checking size and identity) and
downloads ``s3://`` files into :class:`CoaddSource`'s cache directory (``survey.coadd_cache``:
``dir``, ``max_gb``), least recently used files evicted. A file whose size or identity no longer
matches the manifest stops the run with a :class:`~darkhaloscope.errors.SurveyError` naming it.
Files missing at stage ``coadds`` are not in the manifest; they are listed in the report (and
``metrics/coadds.json``) and their bricks' stamps get ``cutout_ok = 0``, ``missing_coadd``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from darkhaloscope.errors import SurveyError
from darkhaloscope.outputs import atomic_dir, write_parquet
from darkhaloscope.survey import fs
from darkhaloscope.survey.bricks import coadd_relpath
from darkhaloscope.survey.coadds import EXTENSIONS, find_coadd

KINDS = ("image", "invvar")
MANIFEST_NAME = "coadd_manifest.parquet"
CHANGED = "changed since stage coadds"
HEAD_TAIL = 64 * 1024
MANIFEST_SCHEMA = pa.schema([("brick", pa.string()), ("band", pa.string()), ("kind", pa.string()),
                             ("relpath", pa.string()), ("size", pa.int64()), ("identity", pa.string())])
#: files touched (fetched or used) within this many seconds are never evicted: they belong to
#: bricks in flight in other Spark tasks, so the cache may exceed ``max_gb`` by those bricks' files
EVICT_GRACE_S = 600.0


#: the survey root stage ``survey`` writes the mock into (``coadd_mode: auto`` copies its coadds)
MOCK_ROOT = "data/survey"


def coadd_mode(sv: dict) -> str:
    """``copy`` or ``manifest``: ``survey.coadd_mode``, with ``auto`` resolved to ``copy`` for the mock's
    root (``data/survey``) and ``manifest`` for any other ``survey.root`` (a release tree, local or s3://)."""
    mode = sv["coadd_mode"]
    if mode != "auto":
        return mode
    root = str(sv["root"])
    return "copy" if not fs.is_remote(root) and os.path.normpath(fs.local_path(root)) == MOCK_ROOT else "manifest"


def cache_coadds(root: str, bricks: list[str], bands, out_dir: str) -> dict:
    """Copy each brick's coadds from ``root`` (local or s3://) to ``out_dir`` in the DR10 layout.

    Missing files are not an error here: they are listed in the returned report (brick,
    band, kind and the expected ``file`` path) and Phase 4c marks the affected stamps
    ``cutout_ok = 0`` with the reason.
    The copy goes to a temporary directory renamed at the end (:class:`~darkhaloscope.outputs.atomic_dir`).
    """
    missing: list[dict] = []
    with atomic_dir(out_dir) as tmp:
        _copy_bricks(root, bricks, bands, tmp, missing)
        n_files, n_bytes = _count_files(tmp)
    return {"mode": "copy", "n_bricks": len(set(bricks)), "n_files": n_files, "n_bytes": n_bytes,
            "n_missing": len(missing), "missing": missing}


def _count_files(d: str) -> tuple[int, int]:
    sizes = [os.path.getsize(os.path.join(dp, f)) for dp, _, fs_ in os.walk(d) for f in fs_]
    return len(sizes), sum(sizes)


def _missing(root: str, brick: str, band: str, kind: str) -> dict:
    return {"brick": brick, "band": band, "kind": kind,
            "file": fs.join(root, coadd_relpath(brick, band, kind, EXTENSIONS[0]))}


def _copy_bricks(root: str, bricks: list[str], bands, tmp: str, missing: list) -> None:
    """Copy every (brick, band, image/invvar) file found under ``root`` into ``tmp``; append the others to ``missing``."""
    for brick in sorted(set(bricks)):
        for band in bands:
            for kind in KINDS:
                src = find_coadd(root, brick, band, kind)
                if src is None:
                    missing.append(_missing(root, brick, band, kind))
                    continue
                ext = ".fits.fz" if src.endswith(".fits.fz") else ".fits"
                dst = os.path.join(tmp, coadd_relpath(brick, band, kind, ext))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                if fs.is_remote(src):
                    fs.get(src, dst)
                else:
                    shutil.copyfile(src, dst)


# ---------------------------------------------------------------------------------------------
# manifest mode


def head_tail_identity(path: str, size: int | None = None) -> str:
    """``headtail-sha256:<hex>`` of a local file: SHA-256 of its size, a NUL, its first and last 64 KiB."""
    p = fs.local_path(path)
    size = os.path.getsize(p) if size is None else size
    h = hashlib.sha256(f"{size}".encode() + b"\0")
    with open(p, "rb") as f:
        h.update(f.read(HEAD_TAIL))
        if size > HEAD_TAIL:
            f.seek(max(HEAD_TAIL, size - HEAD_TAIL))
            h.update(f.read(HEAD_TAIL))
    return "headtail-sha256:" + h.hexdigest()


def _etag(info: dict) -> str | None:
    for k in ("ETag", "etag", "e_tag"):
        if info.get(k):
            return "etag:" + str(info[k]).strip('"')
    return None


def _brick_listing(root: str, brick: str) -> dict[str, dict]:
    """{file name: fsspec info} of a brick's coadd directory under ``root`` (empty if it has none)."""
    d = fs.join(root, posix_dirname(coadd_relpath(brick, "g", "image")))
    filesystem = fs.filesystem(d)
    try:
        if fs.is_remote(d):
            entries = filesystem.ls(d, detail=True)
        else:
            local = fs.local_path(d)
            entries = [{"name": os.path.join(local, n), "size": os.path.getsize(os.path.join(local, n)),
                        "type": "file"} for n in os.listdir(local) if os.path.isfile(os.path.join(local, n))]
    except FileNotFoundError:
        return {}
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in entries if e.get("type") == "file"}


def posix_dirname(p: str) -> str:
    return p.rsplit("/", 1)[0]


#: bricks listed (and, for local roots, their files' heads and tails read) at the same time
LIST_THREADS = 16


def _brick_entries(root: str, brick: str, bands) -> tuple[list[tuple], list[dict]]:
    """The manifest rows ``(brick, band, kind, relpath, size, identity)`` of one brick's files under
    ``root`` and its missing files; one directory listing per brick."""
    listing = _brick_listing(root, brick)
    rows, missing = [], []
    for band in bands:
        for kind in KINDS:
            hit = None
            for ext in EXTENSIONS:
                rel = coadd_relpath(brick, band, kind, ext)
                info = listing.get(rel.rsplit("/", 1)[-1])
                if info is not None:
                    hit = rel, info
                    break
            if hit is None:
                missing.append(_missing(root, brick, band, kind))
                continue
            rel, info = hit
            size = int(info.get("size") or 0)
            if fs.is_remote(root):
                ident = _etag(info)
                if ident is None:
                    raise SurveyError(f"{fs.join(root, rel)}: the S3 listing gives no ETag for this object; "
                                      f"survey.coadd_mode manifest needs one to tell a changed file "
                                      f"(use survey.coadd_mode copy for this store)")
            else:
                ident = head_tail_identity(fs.join(root, rel), size)
            rows.append((brick, band, kind, rel, size, ident))
    return rows, missing


def list_coadds(root: str, bricks: list[str], bands) -> tuple[pa.Table, list[dict]]:
    """The manifest table (rows sorted by brick, band, kind) of the needed files under ``root``,
    and the missing files (as :func:`cache_coadds` reports them). ``.fits.fz`` is preferred to ``.fits``.
    Bricks are listed by :data:`LIST_THREADS` threads; the result does not depend on their order."""
    from concurrent.futures import ThreadPoolExecutor

    names = sorted(set(bricks))
    with ThreadPoolExecutor(max_workers=max(1, min(LIST_THREADS, len(names)))) as pool:
        per_brick = list(pool.map(lambda b: _brick_entries(root, b, bands), names))
    rows = [r for rs, _ in per_brick for r in rs]
    missing = [m for _, ms in per_brick for m in ms]
    cols = {k: [r[i] for r in rows] for i, k in enumerate(MANIFEST_SCHEMA.names)}
    return pa.table(cols, schema=MANIFEST_SCHEMA), missing


def manifest_coadds(root: str, bricks: list[str], bands, out_dir: str) -> dict:
    """Write ``out_dir/coadd_manifest.parquet`` (nothing else) and return the report:
    ``n_bricks`` needed, ``n_files`` and ``n_bytes`` (the files found: what stage stamps reads),
    ``n_bricks_complete`` (bricks with all their files), ``n_missing`` and ``missing``."""
    table, missing = list_coadds(root, bricks, bands)
    with atomic_dir(out_dir) as tmp:
        write_parquet(table, os.path.join(tmp, MANIFEST_NAME))
    incomplete = {m["brick"] for m in missing}
    return {"mode": "manifest", "n_bricks": len(set(bricks)), "n_files": table.num_rows,
            "n_bytes": int(sum(table.column("size").to_pylist())),
            "n_bricks_complete": len(set(bricks) - incomplete),
            "n_missing": len(missing), "missing": missing}


_MANIFESTS: dict = {}


def _load_manifest(path: str) -> dict:
    """{(brick, band, kind): (relpath, size, identity)} of a manifest file, read once per process."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _MANIFESTS:
        t = pq.read_table(path)
        if t.schema.names != MANIFEST_SCHEMA.names:
            raise SurveyError(f"{path}: columns {t.schema.names}, expected {MANIFEST_SCHEMA.names}; "
                              f"rerun dvc repro coadds")
        c = t.to_pydict()
        _MANIFESTS.clear()
        _MANIFESTS[key] = {(b, ba, k): (r, int(s), i) for b, ba, k, r, s, i in
                           zip(c["brick"], c["band"], c["kind"], c["relpath"], c["size"], c["identity"])}
    return _MANIFESTS[key]


class CoaddSource:
    """Where stage stamps gets a brick's coadd files in manifest mode (picklable: Spark tasks get it).

    ``locate(brick, band, kind)`` returns a local path to read, or None when stage coadds found
    no such file (it is not in the manifest). Local ``root``: the file itself, after its size and
    identity are checked against the manifest. ``s3://`` root: a copy in ``cache_dir`` (downloaded
    to a temporary name, checked, renamed), then least recently used files are evicted until the
    cache holds at most ``max_bytes`` (files used within :data:`EVICT_GRACE_S` are kept).
    """

    def __init__(self, manifest_path: str, root: str, cache_dir: str, max_bytes: int,
                 grace_s: float = EVICT_GRACE_S):
        self.manifest_path = os.path.abspath(manifest_path)
        self.root = str(root)
        self.cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
        self.max_bytes = int(max_bytes)
        self.grace_s = float(grace_s)
        if self.max_bytes <= 0:
            raise SurveyError(f"survey.coadd_cache.max_gb: expected > 0, got a limit of {max_bytes} bytes")
        if not os.path.isfile(self.manifest_path):
            raise SurveyError(f"{manifest_path}: no coadd manifest (survey.coadd_mode manifest); "
                              f"run dvc repro coadds first")

    def relpath(self, brick: str, band: str, kind: str) -> str:
        e = _load_manifest(self.manifest_path).get((brick, band, kind))
        return e[0] if e else coadd_relpath(brick, band, kind)

    def locate(self, brick: str, band: str, kind: str) -> str | None:
        e = _load_manifest(self.manifest_path).get((brick, band, kind))
        if e is None:
            return None
        rel, size, ident = e
        src = fs.join(self.root, rel)
        if not fs.is_remote(self.root):
            self._check_local(src, size, ident)
            return fs.local_path(src)
        return self._cached(src, rel, size, ident)

    def _changed(self, src: str, what: str) -> SurveyError:
        return SurveyError(f"{src}: {CHANGED} wrote {self.manifest_path} ({what}); "
                           f"rerun dvc repro coadds (and stamps) against the current survey.root")

    def _check_local(self, src: str, size: int, ident: str) -> None:
        p = fs.local_path(src)
        try:
            got = os.path.getsize(p)
        except FileNotFoundError:
            raise self._changed(src, "the file is gone") from None
        if got != size:
            raise self._changed(src, f"size {got} bytes, the manifest says {size}")
        now = head_tail_identity(p, got)
        if now != ident:
            raise self._changed(src, f"identity {now}, the manifest says {ident}")

    def _cached(self, src: str, rel: str, size: int, ident: str) -> str:
        dst = os.path.join(self.cache_dir, rel)
        idf = dst + ".id"
        with contextlib.suppress(FileNotFoundError):
            if os.path.getsize(dst) == size and open(idf).read() == ident:
                os.utime(dst)  # most recently used
                return dst
        try:
            filesystem = fs.filesystem(src)
            filesystem.invalidate_cache(src)  # the object as it is now, not a listing cached by this process
            info = filesystem.info(src)
        except FileNotFoundError:
            raise self._changed(src, "the object is gone") from None
        got_size, got_id = int(info.get("size") or 0), _etag(info)
        if got_size != size:
            raise self._changed(src, f"size {got_size} bytes, the manifest says {size}")
        if got_id != ident:
            raise self._changed(src, f"identity {got_id}, the manifest says {ident}")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        self._evict(size)
        tmp = f"{dst}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            fs.get(src, tmp)
            if os.path.getsize(tmp) != size:
                raise self._changed(src, f"downloaded {os.path.getsize(tmp)} bytes, the manifest says {size}")
            with open(tmp + ".id", "w") as f:
                f.write(ident)
            os.replace(tmp + ".id", idf)
            os.replace(tmp, dst)
        except BaseException:
            for p in (tmp, tmp + ".id"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(p)
            raise
        return dst

    def _evict(self, incoming: int) -> None:
        """Remove least recently used cached files until ``incoming`` more bytes fit in ``max_bytes``."""
        files = []
        for dp, _, names in os.walk(self.cache_dir):
            for n in names:
                if n.endswith(".id") or ".part-" in n:
                    continue
                p = os.path.join(dp, n)
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(p)
                    files.append((st.st_mtime, p, st.st_size))
        total = sum(s for _, _, s in files)
        now = time.time()
        for mtime, p, s in sorted(files):
            if total + incoming <= self.max_bytes:
                break
            if now - mtime < self.grace_s:
                break  # in use by a brick in flight
            for q in (p + ".id", p):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(q)
            total -= s
