"""Stage coadds' manifest mode (survey.coadd_mode manifest): the manifest of the needed coadd files
(relative paths, sizes, identities; the same bytes on every machine), the local source checks and the
bounded download cache for s3-like roots (an in-memory fsspec filesystem that reports ETags)."""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from darkhaloscope.errors import SurveyError
from darkhaloscope.params import validate
from darkhaloscope.stamps import coadd_cache as C
from darkhaloscope.stamps.pipeline import coadd_source
from darkhaloscope.survey import fs
from darkhaloscope.survey.bricks import coadd_relpath

BANDS = ("g", "r", "z")


class ETagMemFS(MemoryFileSystem):
    """fsspec's memory filesystem, reporting an S3-like ETag (md5 of the content) in info and ls."""

    protocol = "etagmem"
    root_marker = "/"
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("etagmem://"):
            path = path[len("etagmem://"):]
        return MemoryFileSystem._strip_protocol(path)

    def _tag(self, entry: dict) -> dict:
        if entry.get("type") == "file":
            data = self.cat_file(entry["name"])
            entry = {**entry, "ETag": f'"{hashlib.md5(data).hexdigest()}"'}
        return entry

    def info(self, path, **kwargs):
        return self._tag(super().info(path, **kwargs))

    def ls(self, path, detail=True, **kwargs):
        out = super().ls(path, detail=detail, **kwargs)
        return [self._tag(e) for e in out] if detail else out


fsspec.register_implementation("etagmem", ETagMemFS, clobber=True)


def _write_brick(root: Path, brick: str, skip=(), fz_and_fits=(), size=1000, seed=0) -> None:
    for i, band in enumerate(BANDS):
        for kind in C.KINDS:
            if (band, kind) in skip:
                continue
            exts = (".fits.fz", ".fits") if (band, kind) in fz_and_fits else (".fits.fz",)
            for ext in exts:
                p = root / coadd_relpath(brick, band, kind, ext)
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(bytes((seed + i + j + len(ext)) % 251 for j in range(size + 7 * i)))


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "a" / "dr10" / "south"
    _write_brick(root, "1500p005", fz_and_fits=[("g", "image")], size=200_000)
    _write_brick(root, "1510p005", skip=[("z", "invvar")], seed=3)
    return root


def test_manifest_lists_found_files_relative_sorted_and_counts_the_missing(tree, tmp_path):
    out = tmp_path / "coadds"
    rep = C.manifest_coadds(str(tree), ["1510p005", "1500p005", "1510p005", "1520p005"], BANDS, str(out))
    assert sorted(os.listdir(out)) == [C.MANIFEST_NAME]  # no images copied
    t = pq.read_table(out / C.MANIFEST_NAME)
    assert t.schema.names == ["brick", "band", "kind", "relpath", "size", "identity"]
    rows = t.to_pylist()
    keys = [(r["brick"], r["band"], r["kind"]) for r in rows]
    assert keys == sorted(keys) and len(keys) == 11
    assert all(not r["relpath"].startswith("/") and str(tmp_path) not in r["relpath"] for r in rows)
    g = next(r for r in rows if r["brick"] == "1500p005" and r["band"] == "g" and r["kind"] == "image")
    assert g["relpath"] == "coadd/150/1500p005/legacysurvey-1500p005-image-g.fits.fz"  # .fz preferred
    for r in rows:
        assert r["size"] == (tree / r["relpath"]).stat().st_size
        assert r["identity"] == C.head_tail_identity(str(tree / r["relpath"]))
    assert rep["mode"] == "manifest" and rep["n_bricks"] == 3 and rep["n_files"] == 11
    assert rep["n_bytes"] == sum(r["size"] for r in rows)
    assert rep["n_bricks_complete"] == 1 and rep["n_missing"] == 7
    missing = {(m["brick"], m["band"], m["kind"]) for m in rep["missing"]}
    assert ("1510p005", "z", "invvar") in missing and all(("1520p005", b, k) in missing
                                                          for b in BANDS for k in C.KINDS)
    assert next(m["file"] for m in rep["missing"] if m["brick"] == "1510p005") == \
        str(tree / "coadd/151/1510p005/legacysurvey-1510p005-invvar-z.fits.fz")


def test_manifest_bytes_do_not_depend_on_the_machine_path_or_mtimes(tree, tmp_path):
    other = tmp_path / "elsewhere" / "mirror"
    shutil.copytree(tree, other, copy_function=shutil.copyfile)  # new mtimes
    for p in other.rglob("*.fits*"):
        os.utime(p, ns=(123, 456))
    a, b = tmp_path / "ca", tmp_path / "cb"
    C.manifest_coadds(str(tree), ["1500p005", "1510p005"], BANDS, str(a))
    C.manifest_coadds(str(other), ["1510p005", "1500p005"], BANDS, str(b))
    assert (a / C.MANIFEST_NAME).read_bytes() == (b / C.MANIFEST_NAME).read_bytes()
    # a changed byte in a file's tail (same size) changes the manifest
    f = other / coadd_relpath("1500p005", "r", "invvar")
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    C.manifest_coadds(str(other), ["1500p005", "1510p005"], BANDS, str(b))
    assert (a / C.MANIFEST_NAME).read_bytes() != (b / C.MANIFEST_NAME).read_bytes()


def test_head_tail_identity_reads_size_head_and_tail(tmp_path):
    p = tmp_path / "f.fits"
    base = bytes(range(256)) * 1024  # 256 KiB
    p.write_bytes(base)
    ident = C.head_tail_identity(str(p))
    assert ident.startswith("headtail-sha256:") and len(ident) == len("headtail-sha256:") + 64
    for pos in (0, len(base) - 1):
        changed = bytearray(base)
        changed[pos] ^= 1
        p.write_bytes(bytes(changed))
        assert C.head_tail_identity(str(p)) != ident, pos
    middle = bytearray(base)
    middle[len(base) // 2] ^= 1  # documented: the middle is not read (the size and fpack's header checksums are)
    p.write_bytes(bytes(middle))
    assert C.head_tail_identity(str(p)) == ident
    p.write_bytes(base + b"x")
    assert C.head_tail_identity(str(p)) != ident
    p.write_bytes(b"tiny")  # a file under 64 KiB is hashed whole
    small = tmp_path / "small"
    small.write_bytes(b"tinY")
    assert C.head_tail_identity(str(small)) != C.head_tail_identity(str(p))


def test_local_source_reads_in_place_and_stops_on_a_changed_file(tree, tmp_path):
    out = tmp_path / "coadds"
    C.manifest_coadds(str(tree), ["1500p005", "1510p005"], BANDS, str(out))
    src = C.CoaddSource(str(out / C.MANIFEST_NAME), str(tree), str(tmp_path / "cache"), 10**9)
    got = src.locate("1500p005", "r", "image")
    assert got == str(tree / coadd_relpath("1500p005", "r", "image"))
    assert src.locate("1510p005", "z", "invvar") is None  # missing at stage coadds
    assert src.locate("9999p999", "g", "image") is None
    assert not (tmp_path / "cache").exists()  # local roots are never copied

    f = tree / coadd_relpath("1500p005", "g", "invvar")
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(SurveyError, match=r"legacysurvey-1500p005-invvar-g\.fits\.fz: changed since stage "
                                          r"coadds .*identity .*rerun dvc repro coadds"):
        src.locate("1500p005", "g", "invvar")
    f.write_bytes(bytes(data) + b"more")
    with pytest.raises(SurveyError, match=r"invvar-g\.fits\.fz: changed since stage coadds.*size 200004 bytes, "
                                          r"the manifest says 200000"):
        src.locate("1500p005", "g", "invvar")
    f.unlink()
    with pytest.raises(SurveyError, match=r"invvar-g\.fits\.fz: changed since stage coadds.*gone"):
        src.locate("1500p005", "g", "invvar")


def test_source_without_manifest_names_it(tmp_path):
    with pytest.raises(SurveyError, match=r"coadd_manifest\.parquet: no coadd manifest.*dvc repro coadds"):
        C.CoaddSource(str(tmp_path / C.MANIFEST_NAME), "/x", str(tmp_path / "cache"), 10)


@pytest.fixture
def mem_tree(tree):
    """The local tree uploaded to etagmem://<unique>/dr10/south."""
    prefix = f"t{os.getpid()}{id(tree)}"
    mfs = ETagMemFS()
    for p in sorted(tree.rglob("*")):
        if p.is_file():
            mfs.pipe_file(f"/{prefix}/dr10/south/{p.relative_to(tree).as_posix()}", p.read_bytes())
    yield f"etagmem://{prefix}/dr10/south", mfs, prefix
    mfs.rm(f"/{prefix}", recursive=True)


def test_remote_manifest_uses_etags(mem_tree, tmp_path):
    root, mfs, _ = mem_tree
    rep = C.manifest_coadds(root, ["1500p005", "1510p005"], BANDS, str(tmp_path / "coadds"))
    rows = pq.read_table(tmp_path / "coadds" / C.MANIFEST_NAME).to_pylist()
    assert rep["n_files"] == 11 == len(rows) and rep["n_missing"] == 1
    r0 = rows[0]
    assert r0["relpath"] == coadd_relpath(r0["brick"], r0["band"], r0["kind"])
    assert r0["identity"] == "etag:" + hashlib.md5(mfs.cat_file(fs.join(root, r0["relpath"]))).hexdigest()


def test_remote_listing_without_etag_is_an_error(tree, tmp_path):
    mfs = MemoryFileSystem()
    prefix = f"noetag{os.getpid()}"
    for p in tree.rglob("*.fits.fz"):
        mfs.pipe_file(f"/{prefix}/{p.relative_to(tree).as_posix()}", p.read_bytes())
    try:
        with pytest.raises(SurveyError, match=r"memory://.*legacysurvey-1500p005-image-g\.fits\.fz: the S3 "
                                              r"listing gives no ETag"):
            C.manifest_coadds(f"memory://{prefix}", ["1500p005"], BANDS, str(tmp_path / "coadds"))
        assert not (tmp_path / "coadds").exists()  # no partial output
    finally:
        mfs.rm(f"/{prefix}", recursive=True)


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())


def test_cache_downloads_once_evicts_least_recently_used_and_checks_the_source(mem_tree, tmp_path, monkeypatch):
    root, mfs, prefix = mem_tree
    C.manifest_coadds(root, ["1500p005", "1510p005"], BANDS, str(tmp_path / "coadds"))
    cache = tmp_path / "cache"
    sizes = {k: 1000 + 7 * i for i, k in enumerate(BANDS)}  # brick 1510p005's file sizes per band
    limit = sizes["g"] + sizes["r"] + 10  # room for two of them
    src = C.CoaddSource(str(tmp_path / "coadds" / C.MANIFEST_NAME), root, str(cache), limit, grace_s=0)
    gets = []
    real_get = fs.get
    monkeypatch.setattr(fs, "get", lambda s, d: (gets.append(s), real_get(s, d)))

    pg = src.locate("1510p005", "g", "image")
    assert pg == str(cache / coadd_relpath("1510p005", "g", "image"))
    assert Path(pg).read_bytes() == mfs.cat_file(fs.join(root, coadd_relpath("1510p005", "g", "image")))
    os.utime(pg, (1000, 1000))
    pr = src.locate("1510p005", "r", "image")
    os.utime(pr, (2000, 2000))
    assert src.locate("1510p005", "g", "image") == pg and len(gets) == 2  # a hit: no second download
    os.utime(pg, (3000, 3000))  # g now the most recently used
    pz = src.locate("1510p005", "z", "image")  # r (least recently used) makes room
    files = _cache_files(cache)
    assert files == sorted([coadd_relpath("1510p005", b, "image") + s for b in ("g", "z") for s in ("", ".id")])
    assert sum(os.path.getsize(cache / f) for f in files if not f.endswith(".id")) <= limit
    assert not any(".part-" in f for f in files)
    assert Path(pz).read_bytes() == mfs.cat_file(fs.join(root, coadd_relpath("1510p005", "z", "image")))

    # the source changed after stage coadds: same size, other bytes -> other ETag
    rel = coadd_relpath("1510p005", "r", "invvar")
    old = mfs.cat_file(fs.join(root, rel))
    mfs.pipe_file(fs.join(root, rel), bytes(reversed(old)) if old != old[::-1] else old[:-1] + b"!")
    with pytest.raises(SurveyError, match=r"etagmem://.*legacysurvey-1510p005-invvar-r\.fits\.fz: changed since "
                                          r"stage coadds.*identity etag:"):
        src.locate("1510p005", "r", "invvar")
    mfs.pipe_file(fs.join(root, rel), old + b"longer")
    with pytest.raises(SurveyError, match=r"invvar-r\.fits\.fz: changed since stage coadds.*size 1013 bytes, "
                                          r"the manifest says 1007"):
        src.locate("1510p005", "r", "invvar")
    # a cached copy whose source changed is not served: the check runs on every miss, and a hit needs
    # the same size and identity as the manifest (a corrupted cached file is downloaded again)
    Path(pz).write_bytes(b"corrupt")
    n = len(gets)
    assert Path(src.locate("1510p005", "z", "image")).read_bytes() == \
        mfs.cat_file(fs.join(root, coadd_relpath("1510p005", "z", "image")))
    assert len(gets) == n + 1


def test_failed_download_leaves_no_temporary_or_cached_file(mem_tree, tmp_path, monkeypatch):
    root, _, _ = mem_tree
    C.manifest_coadds(root, ["1510p005"], BANDS, str(tmp_path / "coadds"))
    cache = tmp_path / "cache"
    src = C.CoaddSource(str(tmp_path / "coadds" / C.MANIFEST_NAME), root, str(cache), 10**6)

    def broken_get(s, d):
        Path(d).write_bytes(b"half")
        raise OSError("connection reset")

    monkeypatch.setattr(fs, "get", broken_get)
    with pytest.raises(OSError, match="connection reset"):
        src.locate("1510p005", "g", "image")
    assert _cache_files(cache) == []

    def short_get(s, d):
        Path(d).write_bytes(b"short")

    monkeypatch.setattr(fs, "get", short_get)
    with pytest.raises(SurveyError, match=r"image-g\.fits\.fz: changed since stage coadds.*downloaded 5 bytes"):
        src.locate("1510p005", "g", "image")
    assert _cache_files(cache) == []


def test_files_in_use_are_not_evicted(mem_tree, tmp_path):
    """Within the grace period (bricks in flight in other tasks) the cache may exceed its limit."""
    root, _, _ = mem_tree
    C.manifest_coadds(root, ["1510p005"], BANDS, str(tmp_path / "coadds"))
    cache = tmp_path / "cache"
    src = C.CoaddSource(str(tmp_path / "coadds" / C.MANIFEST_NAME), root, str(cache), 1500)
    for b in BANDS:
        src.locate("1510p005", b, "image")
    assert len([f for f in _cache_files(cache) if not f.endswith(".id")]) == 3


def test_params_coadd_mode_and_cache(params, tmp_path):
    v = validate(copy.deepcopy(params))
    assert v["survey"]["coadd_mode"] == "auto" and C.coadd_mode(v["survey"]) == "copy"
    assert coadd_source(v["survey"], "data/coadds") == "data/coadds"
    for root, mode in (("./data/survey", "copy"), ("/data/dr10/south", "manifest"),
                       ("s3://bucket/dr10/south", "manifest"), ("../dr10/south", "manifest")):
        assert C.coadd_mode({"coadd_mode": "auto", "root": root}) == mode, root
    assert C.coadd_mode({"coadd_mode": "copy", "root": "s3://b/x"}) == "copy"
    bad = copy.deepcopy(params)
    bad["survey"]["coadd_mode"] = "link"
    with pytest.raises(Exception, match=r"survey\.coadd_mode"):
        validate(bad)
    bad = copy.deepcopy(params)
    bad["survey"]["coadd_cache"]["max_gb"] = 0
    with pytest.raises(Exception, match=r"survey\.coadd_cache\.max_gb.*expected > 0"):
        validate(bad)
    # manifest mode: a CoaddSource over the manifest in the coadd directory, limit in GB
    (tmp_path / "coadds").mkdir()
    C.manifest_coadds(str(tmp_path), [], BANDS, str(tmp_path / "coadds"))
    sv = {**v["survey"], "coadd_mode": "manifest", "root": str(tmp_path),
          "coadd_cache": {"dir": "~/somewhere", "max_gb": 1.5}}
    s = coadd_source(sv, str(tmp_path / "coadds"))
    assert isinstance(s, C.CoaddSource) and s.max_bytes == 1_500_000_000
    assert s.cache_dir == os.path.expanduser("~/somewhere")


@pytest.mark.slow
def test_stage_stamps_stops_with_one_line_naming_a_file_changed_since_stage_coadds(tree, tmp_path, monkeypatch):
    """The SurveyError raised in a Spark task reaches the stage as its own one line; atomic_dir leaves nothing."""
    import _tinyrepo as T
    import darkhaloscope.stamps.pipeline as pipeline
    from darkhaloscope.outputs import atomic_dir
    from darkhaloscope.stamps.spark import OUTPUT_COLUMNS

    coadds = tmp_path / "coadds"
    C.manifest_coadds(str(tree), ["1500p005", "1510p005"], BANDS, str(coadds))
    f = tree / coadd_relpath("1500p005", "r", "image")
    f.write_bytes(f.read_bytes() + b"appended")
    p = copy.deepcopy(T.shipped_params())
    p["spark"].update(master="local[1]", partitions=2)
    p["inject"].update(files_per_split=1)
    p["survey"].update(root=str(tree), coadd_mode="auto", coadd_cache={"dir": str(tmp_path / "cache"), "max_gb": 1})
    p = validate(p, "test params")
    rows = []
    for i in range(4):
        r = {c: 0.0 for c in OUTPUT_COLUMNS}
        r.update(sample_id=i + 1, pair_id=i + 1, row_id=i + 1, replicate=0, split=("train", "val")[i % 2],
                 brickname=("1500p005", "1510p005")[i % 2], objid=i, ra=150.0, dec=0.5, is_control=1,
                 config_id="control", psfsize_g=1.3, psfsize_r=1.2, psfsize_z=1.1, psf_fallback="", fail_reason="")
        rows.append(r)

    class _Table:
        def to_pylist(self):
            return [dict(r) for r in rows]

    monkeypatch.setattr(pipeline.pq, "read_table", lambda *a, **k: _Table())
    monkeypatch.setattr(pipeline, "parent_rows", lambda *a, **k: [])
    monkeypatch.setattr(pipeline, "read_known_lenses", lambda *a, **k: {"ra": [], "dec": []})
    monkeypatch.setattr(pipeline, "read_brick_table", lambda *a, **k: None)
    monkeypatch.setattr(pipeline, "bricks_of", lambda *a, **k: [])
    monkeypatch.setattr(pipeline, "known_lens_rows", lambda *a, **k: ([], 0))
    final = tmp_path / "stamps"
    with pytest.raises(SurveyError) as e, atomic_dir(final) as out:
        pipeline.run_stamps_stage(p, "m.parquet", "p.parquet", str(coadds), out)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{f}: changed since stage coadds wrote "), msg
    assert f"size {f.stat().st_size} bytes, the manifest says {f.stat().st_size - 8}" in msg
    assert not final.exists() and not (tmp_path / "stamps.tmp").exists()


def test_spark_tasks_get_a_copy_of_the_source_with_its_local_root_absolute(tree, tmp_path, monkeypatch):
    """run_stamps hands the tasks an absolute local root (their Python workers may run elsewhere);
    the caller's source is not modified; s3-like roots and plain directories are handled the same way."""
    from darkhaloscope.stamps.spark import _absolute_root

    out = tmp_path / "coadds"
    C.manifest_coadds(str(tree), ["1500p005"], BANDS, str(out))
    monkeypatch.chdir(tree.parent)
    src = C.CoaddSource(str(out / C.MANIFEST_NAME), tree.name, str(tmp_path / "cache"), 10**9)
    task, given, local = _absolute_root(src)
    assert isinstance(task, C.CoaddSource) and task is not src
    assert (given, local, task.root, src.root) == (tree.name, str(tree), str(tree), tree.name)
    monkeypatch.chdir(tmp_path)  # where the tasks' workers might be
    assert task.locate("1500p005", "r", "image") == str(tree / coadd_relpath("1500p005", "r", "image"))
    remote = C.CoaddSource(str(out / C.MANIFEST_NAME), "s3://bucket/dr10", str(tmp_path / "cache"), 10**9)
    assert _absolute_root(remote)[1:] == ("s3://bucket/dr10", "s3://bucket/dr10")
    assert _absolute_root("rel/coadds") == (str(tmp_path / "rel/coadds"), "rel/coadds", str(tmp_path / "rel/coadds"))
