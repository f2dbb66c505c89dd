"""What the search scores, and the streaming, resumable scoring of it.

The scored population (:func:`plan`):

- every row of the stamp set's ``parent`` split (un-injected cutouts of parent galaxies, cut by
  stage ``stamps``), matched to the parent sample (``data/parent/parent.parquet``) by
  ``row_id`` (and ``brickname`` + ``objid``) for its sky split;
- for the galaxies still unmatched, their un-injected cutouts in the stamp set's train, val and
  test splits (``is_control == 1`` rows: controls, impostors and, with
  ``manifest.eval_negatives``, the evaluation negative of every val / test galaxy), source
  ``control``: stage ``stamps`` cut them as it cuts the parent split, so they are not cut again.
  Where the val / test logits of a member are already known (stage score's tables for the
  current model, the calibration's own scoring for the others: ``given_logits`` of
  :func:`run_units`), those rows are not run through the model again;
- with ``search.cut_missing``, every parent-sample galaxy without such a cutout (on the default
  pipeline: the train-region galaxies that carry an injection, and the val / test galaxies the
  manifest's caps left out), cut un-injected under Spark from ``survey.root`` exactly as stage
  ``stamps`` cuts (:func:`darkhaloscope.stamps.spark.run_stamps`), ``search.cut_group_size``
  galaxies per job; without it they are counted as ``not_cut``;
- the stamp set's ``known`` split (cutouts at the known lenses' positions), except a known lens
  whose galaxy is already planned (a parent galaxy within :data:`DUPLICATE_RADIUS_ARCSEC`):
  counted as ``known_duplicates``.

Each input (a parent-split file, a known-split file, a group of galaxies to cut) is one *unit*;
scoring a unit writes one parquet *part* into ``search.work_dir`` atomically, tagged with a
fingerprint of everything its content depends on (the unit's input: the files' sizes and
parquet footers via :func:`~darkhaloscope.stamps.format.files_fingerprint`, or the galaxies to
cut with the survey and inject settings; every model's checkpoint bytes; the device and batch
layout; the source of the code that computes it). A run finds the parts whose fingerprint
matches and scores only the others, so a killed run continues where it stopped and ends with the
bytes of an uninterrupted run; a part made from other data, models, settings or code is redone.

Scoring (:func:`score_unit`) streams each file row group by row group (bounded memory: one
block of stamps), drops and counts rows as the training loader does (``cutout_not_ok``,
``nonfinite_stamp``, ``duplicate_sample_id``), preprocesses with each model's own recipe
(:meth:`~darkhaloscope.model.preprocess.Preprocess.apply`: a 6-channel model sees a blank control
half, since a candidate has no control; missing metadata is imputed with the training means and
counted) and runs the models: on CUDA ``search.batch_size`` stamps per forward pass under bf16
autocast, on the CPU in float32 micro-batches of :data:`CPU_MICRO_BATCH` stamps, padded to
that size, so the logits do not depend on ``search.batch_size`` (nor, on this CPU, on the thread
count: the tests check both).
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import logging
import os
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from darkhaloscope.constants import KNOWN_SPLIT, NO_IMPOSTOR, PARENT_SPLIT, SPLITS
from darkhaloscope.model import inference
from darkhaloscope.model.checkpoint import model_from_checkpoint
from darkhaloscope.outputs import atomic_file
from darkhaloscope.stamps.format import STAMP_COLUMN, STAMP_SIZE, StampFile, files_fingerprint, list_stamp_files

log = logging.getLogger(__name__)

#: bump when the layout or meaning of a part changes (old parts are then redone)
PART_FORMAT = 1
#: stamps per forward pass on the CPU (padded): the logits do not depend on search.batch_size
CPU_MICRO_BATCH = 64
#: stamps read and preprocessed together on the CPU (any value gives the same bytes)
CPU_BLOCK = 256
#: a known-lens cutout this close to a scored parent galaxy is that galaxy (arcsec; ~4 pixels)
DUPLICATE_RADIUS_ARCSEC = 1.0
#: where a scored row's stamp came from
SOURCES = ("parent", "cut", "known", "control")
#: drop reasons of the streaming reader (the loader's names)
DROP_REASONS = ("cutout_not_ok", "nonfinite_stamp", "duplicate_sample_id")
#: parent-sample columns a cut needs (stage stamps' parent rows carry the same)
CUT_COLUMNS = ("row_id", "ra", "dec", "brickname", "objid", "split", "mag_r", "psfsize_g", "psfsize_r", "psfsize_z",
               "psfdepth_g", "psfdepth_r", "psfdepth_z")
#: what a train / val / test stamp file needs for its controls to stand in for cutting their galaxies
CONTROL_ID_COLUMNS = ("sample_id", "row_id", "brickname", "objid", "ra", "dec", "is_control")
#: identity columns of a scored row, in part order (then logit_<i> per model)
ID_COLUMNS = ("source", "sample_id", "row_id", "split", "brickname", "objid", "ra", "dec", "name")
FINGERPRINT_KEY = b"dhs_search_fingerprint"
SUMMARY_KEY = b"dhs_search_summary"

_SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # src/darkhaloscope
#: source files whose code decides a part's content (hashed into its fingerprint): the scorer's
#: (reading, preprocessing, the networks) and, for a cut unit, the cutting's (stage stamps' path)
SCORE_CODE = ("model/preprocess.py", "model/nets.py", "model/checkpoint.py", "model/inference.py", "search/scan.py",
              "stamps/format.py", "constants.py")
CUT_CODE = ("stamps/cutout.py", "stamps/spark.py", "lensing/*.py", "survey/*.py", "catalog/manifest.py", "hashing.py")


def code_fingerprint(patterns: Sequence[str]) -> str:
    """sha256 over the bytes of the package files matching ``patterns`` (relative to src/darkhaloscope)."""
    h = hashlib.sha256()
    for pat in patterns:
        for path in sorted(glob.glob(os.path.join(_SRC, pat))):
            h.update(os.path.relpath(path, _SRC).encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x1e")
    return h.hexdigest()


# ----------------------------------------------------------------------------- the plan


@dataclass
class Unit:
    """One input of the search: a stamp file of the parent or known split, or galaxies to cut."""

    name: str  # part name, e.g. parent-00000, known-00000, cut-00003
    source: str  # one of SOURCES
    files: list[str]  # the stamp files (a cut unit's are written when it is scored)
    include_ids: np.ndarray | None  # the sample ids to score (None: every row)
    n_rows: int  # rows planned (the progress bar's share)
    identity: str  # fingerprint of the unit's input
    rows: list[dict] | None = None  # cut: the manifest-like rows of the galaxies
    split: str = ""  # control: the stamp-set split its file belongs to


@dataclass
class Plan:
    units: list[Unit]
    counts: dict  # the population's bookkeeping (metrics/search.json "population")
    splits: dict = field(default_factory=dict)  # row_id -> sky split of the parent sample


def _read_meta(path: str, columns: Sequence[str]) -> pa.Table:
    names = pq.read_schema(path).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} missing (has {names}); the search needs them to identify "
                         f"the scored galaxies")
    return pq.read_table(path, columns=list(columns))


def cut_rows(cat: pa.Table, seed: int) -> list[dict]:
    """Manifest-like rows to cut the galaxies of ``cat`` un-injected (split ``parent``), as stage
    stamps builds its parent rows (:func:`darkhaloscope.stamps.cutout.parent_rows`: the same
    sample ids, ``hash_int63(seed, row_id, "parent")``, and columns)."""
    from darkhaloscope.catalog.manifest import INJECTION_COLUMNS
    from darkhaloscope.hashing import hash_int63

    out = []
    for r in cat.to_pylist():
        sid = hash_int63(seed, r["row_id"], "parent")
        out.append({"sample_id": sid, "pair_id": sid, "row_id": r["row_id"], "replicate": 0, "split": PARENT_SPLIT,
                    "brickname": r["brickname"], "objid": r["objid"], "ra": r["ra"], "dec": r["dec"],
                    "is_control": 1, "config_id": "parent", "host_mag_r": r["mag_r"],
                    "impostor": r.get("impostor", NO_IMPOSTOR),
                    **{k: 0.0 for k in INJECTION_COLUMNS},
                    **{k: r[k] for k in ("psfsize_g", "psfsize_r", "psfsize_z", "psfdepth_g", "psfdepth_r",
                                         "psfdepth_z")}})
    return out


def group_by_brick(bricks: np.ndarray, size: int) -> list[np.ndarray]:
    """Indices of rows packed into groups of at most ``size`` rows, whole bricks together (a brick
    with more rows is a group of its own), bricks in name order; indices ascending in a group."""
    order = np.lexsort((np.arange(len(bricks)), bricks))
    groups, cur, n = [], [], 0
    b_sorted = bricks[order]
    starts = np.flatnonzero(np.r_[True, b_sorted[1:] != b_sorted[:-1]]) if len(order) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(order)]
    for a, b in zip(starts, ends):
        if cur and n + (b - a) > size:
            groups.append(np.sort(np.concatenate(cur)))
            cur, n = [], 0
        cur.append(order[a:b])
        n += b - a
    if cur:
        groups.append(np.sort(np.concatenate(cur)))
    return groups


def _galaxy_keys(t: pa.Table) -> np.ndarray:
    """``brickname/objid`` of each row (a galaxy's identity in the sweeps)."""
    return np.char.add(np.char.add(np.asarray(t.column("brickname").to_pylist(), dtype=str), "/"),
                       t.column("objid").to_numpy().astype(str))


def _lookup(sorted_ids: np.ndarray, order: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row index (into the unsorted table) of each of ``ids``, -1 where absent."""
    if not len(sorted_ids):
        return np.full(len(ids), -1, np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, order[pos], -1).astype(np.int64)


def plan(params: dict, root: str, parent_path: str) -> Plan:
    """The units of a search of the stamp set ``root`` and the parent sample ``parent_path``."""
    s = params["search"]
    extra = ("impostor",) if "impostor" in pq.read_schema(parent_path).names else ()  # the cut stamps carry it
    cat = _read_meta(parent_path, CUT_COLUMNS + extra)
    cat_ids = cat.column("row_id").to_numpy().astype(np.int64)
    order = np.argsort(cat_ids, kind="stable")
    sorted_ids = cat_ids[order]
    cat_keys = _galaxy_keys(cat)

    def match(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Each row's index into the parent sample, and whether it is that galaxy (row_id, brickname + objid)."""
        idx = _lookup(sorted_ids, order, t.column("row_id").to_numpy().astype(np.int64))
        hit = idx >= 0
        hit[hit] = cat_keys[idx[hit]] == _galaxy_keys(t)[hit]
        return idx, hit

    matched = np.zeros(cat.num_rows, bool)
    units: list[Unit] = []
    counts = {"parent_sample": int(cat.num_rows), "stamp_set_parent_rows": 0, "stamp_set_parent_not_in_sample": 0,
              "stamp_set_parent_repeated": 0}
    seen_rows: set[int] = set()
    positions = []  # (ra, dec) of the scored galaxies (for the known-lens duplicates)
    split_dir = os.path.join(root, PARENT_SPLIT)
    for k, f in enumerate(list_stamp_files(root, PARENT_SPLIT) if os.path.isdir(split_dir) else []):
        t = _read_meta(f, ("sample_id", "row_id", "brickname", "objid", "ra", "dec"))
        rid = t.column("row_id").to_numpy().astype(np.int64)
        fresh = np.array([r not in seen_rows for r in rid.tolist()], bool)
        seen_rows.update(rid.tolist())
        counts["stamp_set_parent_rows"] += int(t.num_rows)
        counts["stamp_set_parent_repeated"] += int((~fresh).sum())
        idx, hit = match(t)
        matched[idx[hit & fresh]] = True
        counts["stamp_set_parent_not_in_sample"] += int((fresh & ~hit).sum())
        positions.append(np.column_stack([t.column("ra").to_numpy(), t.column("dec").to_numpy()])[fresh])
        include = None if fresh.all() else t.column("sample_id").to_numpy()[fresh]
        units.append(Unit(f"parent-{k:05d}", "parent", [f], include, int(fresh.sum()),
                          _sha(files_fingerprint([f]), None if include is None else include.tobytes())))
    counts["parent_sample_in_parent_split"] = int(matched.sum())
    counts["parent_sample_in_controls"] = counts["control_files_without_ids"] = 0
    for split in SPLITS:  # the un-injected cutouts stage stamps made of the galaxies still unmatched
        if not os.path.isdir(os.path.join(root, split)):
            continue
        for k, f in enumerate(list_stamp_files(root, split)):
            if not set(CONTROL_ID_COLUMNS) <= set(pq.read_schema(f).names):
                counts["control_files_without_ids"] += 1  # its galaxies are cut instead (or not_cut)
                continue
            t = _read_meta(f, CONTROL_ID_COLUMNS)
            idx, hit = match(t)
            take = np.flatnonzero(hit & (t.column("is_control").to_numpy() == 1))
            take = take[~matched[idx[take]]]
            take = take[np.unique(idx[take], return_index=True)[1]]  # one cutout per galaxy: the first
            take.sort()
            if not len(take):
                continue
            matched[idx[take]] = True
            counts["parent_sample_in_controls"] += int(len(take))
            sids = t.column("sample_id").to_numpy().astype(np.int64)[take]
            positions.append(np.column_stack([t.column("ra").to_numpy()[take], t.column("dec").to_numpy()[take]]))
            units.append(Unit(f"{split}-{k:05d}", "control", [f], sids, int(len(take)),
                              _sha(files_fingerprint([f]), sids.tobytes()), split=split))
    counts["parent_sample_in_stamp_set"] = int(matched.sum())
    missing = np.flatnonzero(~matched)
    if s["cut_missing"] and len(missing):
        sub = cat.take(missing)
        rows = cut_rows(sub, params["seed"])
        bricks = np.asarray(sub.column("brickname").to_pylist(), dtype=str)
        settings = {"survey_root": params["survey"]["root"], "bands": params["survey"]["bands"],
                    "inject": params["inject"]}
        for k, g in enumerate(group_by_brick(bricks, int(s["cut_group_size"]))):
            grows = [rows[i] for i in g]
            ident = _sha(settings, [(r["row_id"], r["brickname"], r["objid"], r["ra"], r["dec"], r["host_mag_r"],
                                     *(r[c] for c in CUT_COLUMNS[7:])) for r in grows])
            units.append(Unit(f"cut-{k:05d}", "cut", [], None, len(grows), ident, grows))
        positions.append(np.column_stack([sub.column("ra").to_numpy(), sub.column("dec").to_numpy()]))
    counts["to_cut"] = int(len(missing)) if s["cut_missing"] else 0
    counts["not_cut"] = 0 if s["cut_missing"] else int(len(missing))
    known_dir = os.path.join(root, KNOWN_SPLIT)
    gal = np.concatenate(positions) if positions else np.zeros((0, 2))
    counts["known_rows"] = counts["known_duplicates"] = 0
    from darkhaloscope.survey.known_lenses import match_within

    for k, f in enumerate(list_stamp_files(root, KNOWN_SPLIT) if os.path.isdir(known_dir) else []):
        t = _read_meta(f, ("sample_id", "ra", "dec"))
        dup, _ = match_within(t.column("ra").to_numpy(), t.column("dec").to_numpy(), gal[:, 0], gal[:, 1],
                              DUPLICATE_RADIUS_ARCSEC)
        counts["known_rows"] += int(t.num_rows)
        counts["known_duplicates"] += int(dup.sum())
        if dup.all():
            continue
        include = None if not dup.any() else t.column("sample_id").to_numpy()[~dup]
        units.append(Unit(f"known-{k:05d}", "known", [f], include, int((~dup).sum()),
                          _sha(files_fingerprint([f]), None if include is None else include.tobytes())))
    splits = dict(zip(cat_ids.tolist(), cat.column("split").to_pylist()))
    return Plan(units, counts, splits)


# ----------------------------------------------------------------------------- scoring


@dataclass
class Scorer:
    """The models of a search on one device, and how they run."""

    models: list  # (torch module, Preprocess) per member
    hashes: list[str]  # checkpoint sha256 per member
    device: torch.device
    amp: torch.dtype | None
    batch_size: int  # stamps per forward pass on CUDA

    @classmethod
    def load(cls, paths: Sequence[str], hashes: Sequence[str], batch_size: int) -> "Scorer":
        device, amp = inference.device_and_amp()
        models = []
        for path in paths:
            model, pre = model_from_checkpoint(path)
            models.append((model.to(device).eval(), pre))
        return cls(models, list(hashes), device, amp, int(batch_size))

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    @property
    def block_rows(self) -> int:
        return CPU_BLOCK if self.on_cpu else self.batch_size

    def layout(self) -> dict:
        """What the logits' bytes depend on besides the inputs: the device and the batch layout."""
        if self.on_cpu:
            return {"device": "cpu", "dtype": "float32", "micro_batch": CPU_MICRO_BATCH}
        return {"device": self.device.type, "dtype": str(self.amp), "batch_size": self.batch_size}

    @property
    def prep_workers(self) -> int:
        """Threads preparing the next blocks while the models run (the order, hence the bytes, is kept)."""
        return 1 if self.on_cpu else max(1, min(8, (os.cpu_count() or 2) - 1))

    @property
    def meta_cols(self) -> list[str]:
        return list(dict.fromkeys(c for _, pre in self.models for c in pre.meta_cols))

    def prepare(self, stamps: np.ndarray, meta: dict) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Per model: (inputs, scaled metadata, rows whose metadata was imputed)."""
        out = []
        for _, pre in self.models:
            m = np.column_stack([meta[c] for c in pre.meta_cols]).astype(np.float64) if pre.meta_cols else None
            n_imp = int((~np.isfinite(m)).any(axis=1).sum()) if m is not None else 0
            x, ms = pre.apply(stamps, None, m, impute_meta=n_imp > 0)
            out.append((x, ms, n_imp))
        return out

    def forward(self, j: int, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        """float32 logits of model ``j`` for prepared inputs."""
        n = len(x)
        step = CPU_MICRO_BATCH if self.on_cpu else max(1, self.batch_size)
        out = np.empty(n, np.float32)
        with torch.no_grad():
            for a in range(0, n, step):
                xb, mb = x[a:a + step], m[a:a + step]
                k = len(xb)
                if self.on_cpu and k < step:  # the same tensor shape for every micro-batch
                    xb = np.concatenate([xb, np.zeros((step - k,) + xb.shape[1:], xb.dtype)])
                    mb = np.concatenate([mb, np.zeros((step - k,) + mb.shape[1:], mb.dtype)])
                xt = torch.from_numpy(np.ascontiguousarray(xb)).to(self.device, non_blocking=True)
                mt = torch.from_numpy(np.ascontiguousarray(mb)).to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                    logit = self.models[j][0](xt, mt if mt.shape[1] else None)
                out[a:a + k] = logit.float().cpu().numpy()[:k]
        return out


@dataclass
class Block:
    """Rows read together: stamps (n, 3, 64, 64) float32 nanomaggies and their columns."""

    stamps: np.ndarray
    cols: dict


def stream_blocks(files: Sequence[str], include_ids: np.ndarray | None, columns: Sequence[str],
                  block_rows: int, counts: dict) -> Iterator[Block]:
    """The usable rows of ``files`` (file, row group, row order) in blocks of ``block_rows``.

    A row is used when ``cutout_ok == 1``, its stamp is all finite and its sample id was not used
    before (in these files); ``include_ids`` (if given) restricts the rows looked at, the others
    are not counted. Dropped rows are counted by reason into ``counts``
    (:data:`DROP_REASONS`); ``counts['rows_read']`` counts the rows looked at. ``columns``:
    metadata to carry (a column a file lacks is NaN for numbers; see :func:`_column`)."""
    include = None if include_ids is None else np.unique(np.asarray(include_ids, np.int64))
    seen: set[int] = set()
    buf_st: list[np.ndarray] = []
    buf_cols: list[dict] = []
    n_buf = 0
    for path in files:
        with StampFile(path) as sf:
            names = sf.schema_arrow.names
            for c in ("sample_id", "cutout_ok", STAMP_COLUMN):
                if c not in names:
                    raise ValueError(f"{path}: required column {c!r} missing (has {names})")
            want = ["sample_id", "cutout_ok"] + [c for c in columns if c in names and c not in ("sample_id",)]
            for rg in range(sf.metadata.num_row_groups):
                t = sf.read_row_group(rg, want)
                n = t.num_rows
                if n == 0:
                    continue
                sid = t.column("sample_id").to_numpy().astype(np.int64)
                look = np.isin(sid, include) if include is not None else np.ones(n, bool)
                counts["rows_read"] += int(look.sum())
                ok = look & (t.column("cutout_ok").to_numpy() == 1)
                counts["cutout_not_ok"] += int((look & ~ok).sum())
                stamps, valid = sf.stamps(rg, STAMP_COLUMN, 3, STAMP_SIZE)
                fin = np.zeros(n, bool)
                if ok.any():
                    r = np.flatnonzero(ok)
                    fin[r] = valid[r] & np.isfinite(stamps[r].reshape(len(r), -1)).all(axis=1)
                counts["nonfinite_stamp"] += int((ok & ~fin).sum())
                keep = np.flatnonzero(fin)
                fresh = np.array([int(v) not in seen for v in sid[keep]], bool)
                counts["duplicate_sample_id"] += int((~fresh).sum())
                keep = keep[fresh]
                seen.update(int(v) for v in sid[keep])
                if not len(keep):
                    continue
                buf_st.append(np.array(stamps[keep], dtype=np.float32))
                buf_cols.append({c: _column(t, c, keep) for c in columns})
                n_buf += len(keep)
                while n_buf >= block_rows:
                    yield _pop_block(buf_st, buf_cols, block_rows, columns)
                    n_buf -= block_rows
    if n_buf:
        yield _pop_block(buf_st, buf_cols, n_buf, columns)


def _column(t: pa.Table, name: str, rows: np.ndarray) -> np.ndarray:
    if name not in t.column_names:
        return np.full(len(rows), np.nan)
    v = t.column(name).to_numpy(zero_copy_only=False)[rows]
    return v.astype(object) if v.dtype.kind in "OUS" else v


def _pop_block(buf_st: list, buf_cols: list, k: int, columns) -> Block:
    """The first ``k`` buffered rows as one block (the buffers keep the rest)."""
    st, cols, got = [], [], 0
    while got < k:
        take = min(k - got, len(buf_st[0]))
        st.append(buf_st[0][:take])
        cols.append({c: v[:take] for c, v in buf_cols[0].items()})
        if take == len(buf_st[0]):
            buf_st.pop(0)
            buf_cols.pop(0)
        else:
            buf_st[0] = buf_st[0][take:]
            buf_cols[0] = {c: v[take:] for c, v in buf_cols[0].items()}
        got += take
    return Block(np.concatenate(st), {c: np.concatenate([x[c] for x in cols]) for c in columns})


def cut_galaxies(rows: list[dict], params: dict, out_dir: str) -> tuple[list[str], dict]:
    """Cut ``rows`` un-injected under Spark from ``survey.root`` into ``out_dir/parent/part-00000.parquet``
    (:func:`darkhaloscope.stamps.spark.run_stamps`, one file, no control column: a candidate has no
    control). Returns (files, {'rows', 'cutout_ok', 'fail_reasons'})."""
    from darkhaloscope.stamps.spark import failure_warnings, run_stamps

    pp = copy.deepcopy(params)
    pp["inject"]["files_per_split"] = 1
    pp["manifest"]["control_type"] = "unpaired"
    stats, _ = run_stamps(rows, params["survey"]["root"], out_dir, pp, frozenset(), (PARENT_SPLIT,))
    for line in failure_warnings(stats):
        log.warning(line)
    fails: dict[str, int] = {}
    for st in stats:
        for k, v in st["fail_reasons"].items():
            fails[k] = fails.get(k, 0) + v
    return (sorted(glob.glob(os.path.join(out_dir, PARENT_SPLIT, "part-*.parquet"))),
            {"rows": sum(st["rows"] for st in stats), "cutout_ok": sum(st["cutout_ok"] for st in stats),
             "fail_reasons": fails})


def stash_path(work_dir: str, unit: Unit) -> str:
    """Where a cut unit keeps the stamps of its best-scored galaxies (for the inspection page)."""
    return os.path.join(work_dir, "stash", f"{unit.name}.parquet")


def given_for(unit: Unit, given_logits: dict | None, n_models: int) -> list:
    """Per model, the (sorted sample ids, float32 logits) known for ``unit``'s rows, or None
    (``given_logits``: {split: per model None or (sample ids, logits) in any order})."""
    if unit.source != "control" or not given_logits or unit.split not in given_logits:
        return [None] * n_models
    g = list(given_logits[unit.split])
    if len(g) != n_models:
        raise ValueError(f"given logits of the {unit.split} split: {len(g)} entries for {n_models} models")
    return [None if x is None else _sorted_logits(*x) for x in g]


def _logits(scorer: "Scorer", j: int, x: np.ndarray, m: np.ndarray, sids: np.ndarray, given) -> tuple[np.ndarray, int]:
    """Model ``j``'s logits of a prepared block: the given ones where known, the model's elsewhere;
    and how many were given."""
    if given is None:
        return scorer.forward(j, x, m), 0
    gs, gl = given
    pos = _lookup(gs, np.arange(len(gs)), sids)
    hit = pos >= 0
    out = np.empty(len(sids), np.float32)
    out[hit] = gl[pos[hit]]
    miss = np.flatnonzero(~hit)
    if len(miss):
        out[miss] = scorer.forward(j, x[miss], m[miss])
    return out, int(hit.sum())


def score_unit(unit: Unit, scorer: Scorer, params: dict, splits: dict, work_dir: str, bar=None,
               workers: int = 1, stash_k: int = 0, given: list | None = None) -> tuple[pa.Table, dict]:
    """Score one unit: its part table (:data:`ID_COLUMNS`, then ``logit_<i>`` per model) and summary.

    ``given``: per model, None or (sorted sample ids, float32 logits) already known for rows of the
    unit (:func:`given_for`); those rows take them instead of a forward pass (counted per model as
    ``logits_given``).

    A cut unit's stamps are temporary; with ``stash_k`` the stamps of its ``stash_k`` best rows by
    each model's logit are kept in :func:`stash_path`, so the page need not cut them again (with
    one model they include every row the page can show; any other is cut again)."""
    summary: dict = {"rows_read": 0, **{r: 0 for r in DROP_REASONS}}
    files = unit.files
    tmp = None
    if unit.source == "cut":
        tmp = os.path.join(work_dir, "cut", unit.name)
        shutil.rmtree(tmp, ignore_errors=True)
        files, summary["cut"] = cut_galaxies(unit.rows, params, tmp)
    try:
        columns = ["sample_id", "row_id", "brickname", "objid", "ra", "dec", "name", *scorer.meta_cols]
        out = {c: [] for c in ID_COLUMNS}
        logits: list[list[np.ndarray]] = [[] for _ in scorer.models]
        imputed = [0] * len(scorer.models)
        n_given = [0] * len(scorer.models)
        given = given if given is not None else [None] * len(scorer.models)
        blocks = stream_blocks(files, unit.include_ids, columns, scorer.block_rows, summary)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending: deque = deque()

            def fill():
                while len(pending) < max(2, workers + 1):
                    try:
                        b = next(blocks)
                    except StopIteration:
                        return
                    pending.append((b, pool.submit(scorer.prepare, b.stamps, b.cols)))

            fill()
            while pending:
                b, fut = pending.popleft()
                prepared = fut.result()
                fill()
                sids = np.asarray(b.cols["sample_id"], np.int64)
                for j, (x, m, n_imp) in enumerate(prepared):
                    lg, k = _logits(scorer, j, x, m, sids, given[j])
                    logits[j].append(lg)
                    imputed[j] += n_imp
                    n_given[j] += k
                _collect(out, b.cols, unit.source, splits)
                if bar is not None:
                    bar.update(len(b.stamps))
        n = sum(len(v) for v in out["sample_id"])
        cols = _finish(out)
        for j in range(len(scorer.models)):
            cols[f"logit_{j}"] = pa.array(np.concatenate(logits[j]) if logits[j] else np.zeros(0, np.float32),
                                          pa.float32())
        summary["kept"] = int(n)
        summary["meta_imputed"] = imputed
        summary["logits_given"] = n_given
        if unit.source == "cut" and stash_k > 0 and n:
            _stash(unit, files, cols, len(scorer.models), stash_k, scorer.meta_cols, work_dir)
        if bar is not None:  # rows planned but not scored (dropped) still count as done
            bar.update(max(0, unit.n_rows - n))
        return pa.table(cols), summary
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _stash(unit: Unit, files, cols: dict, n_models: int, k: int, meta_cols, work_dir: str) -> None:
    from darkhaloscope.stamps.format import write_stamp_file

    sids = cols["sample_id"].to_numpy()
    keep = set()
    for j in range(n_models):
        lg = cols[f"logit_{j}"].to_numpy()
        keep.update(np.lexsort((sids, -lg))[:k].tolist())
    ids = sids[sorted(keep)]
    st, meta = read_stamps(files, ids, meta_cols)
    n = len(ids)
    path = stash_path(work_dir, unit)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_stamp_file(path, {"sample_id": ids, "is_control": np.ones(n, np.int8), "cutout_ok": np.ones(n, np.int8),
                            **{c: np.asarray(meta[c], np.float64) for c in meta_cols}}, st)


def _collect(out: dict, cols: dict, source: str, splits: dict) -> None:
    n = len(cols["sample_id"])
    out["source"].append(np.full(n, source, dtype=object))
    out["sample_id"].append(np.asarray(cols["sample_id"], np.int64))
    if source == "known":
        out["row_id"].append(np.full(n, -1, np.int64))
        out["split"].append(np.full(n, KNOWN_SPLIT, dtype=object))
        out["objid"].append(np.full(n, -1, np.int64))
        names = cols["name"]
        out["name"].append(np.array(["" if isinstance(v, float) else str(v) for v in names], dtype=object))
    else:
        rid = np.asarray(cols["row_id"], np.int64)
        out["row_id"].append(rid)
        out["split"].append(np.array([splits.get(int(r), "") for r in rid], dtype=object))
        out["objid"].append(np.asarray(cols["objid"], np.int64))
        out["name"].append(np.full(n, "", dtype=object))
    out["brickname"].append(np.array([str(v) for v in cols["brickname"]], dtype=object))
    out["ra"].append(np.asarray(cols["ra"], np.float64))
    out["dec"].append(np.asarray(cols["dec"], np.float64))


def _finish(out: dict) -> dict:
    types = {"source": pa.string(), "sample_id": pa.int64(), "row_id": pa.int64(), "split": pa.string(),
             "brickname": pa.string(), "objid": pa.int64(), "ra": pa.float64(), "dec": pa.float64(),
             "name": pa.string()}
    res = {}
    for c in ID_COLUMNS:
        v = np.concatenate(out[c]) if out[c] else np.zeros(0, object if types[c] == pa.string() else np.float64)
        res[c] = pa.array(v.tolist() if types[c] == pa.string() else v, types[c])
    return res


# ----------------------------------------------------------------------------- parts and resume


def unit_fingerprint(unit: Unit, scorer: Scorer, given: list | None = None) -> str:
    code = [SCORE_CODE] + ([CUT_CODE] if unit.source == "cut" else [])
    known = [None if g is None else _sha(np.ascontiguousarray(g[0]).tobytes(), np.ascontiguousarray(g[1]).tobytes())
             for g in (given or [])]
    return _sha({"format": PART_FORMAT, "unit": unit.identity, "source": unit.source, "models": scorer.hashes,
                 "layout": scorer.layout(), "code": [code_fingerprint(c) for c in code], "given": known})


def read_part_fingerprint(path: str) -> str | None:
    """The fingerprint stored in a part's parquet metadata (None when unreadable or absent)."""
    try:
        md = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    v = md.get(FINGERPRINT_KEY)
    return v.decode() if v else None


def read_part(path: str, columns: Sequence[str] | None = None) -> tuple[pa.Table, dict]:
    """(table, summary) of a part file."""
    t = pq.read_table(path, columns=None if columns is None else list(columns))
    md = pq.read_schema(path).metadata or {}
    return t, json.loads(md.get(SUMMARY_KEY, b"{}"))


def write_part(path: str, table: pa.Table, fingerprint: str, summary: dict) -> None:
    """Write a part atomically with its fingerprint and summary in the parquet metadata."""
    md = dict(table.schema.metadata or {})
    md[FINGERPRINT_KEY] = fingerprint.encode()
    md[SUMMARY_KEY] = json.dumps(summary, sort_keys=True).encode()
    with atomic_file(path) as tmp:
        pq.write_table(table.replace_schema_metadata(md), tmp, compression="zstd", row_group_size=65536)


def run_units(pl: Plan, scorer: Scorer, params: dict, work_dir: str, progress: bool = True,
              workers: int | None = None, stash_k: int = 0, given_logits: dict | None = None) -> tuple[list[str], dict]:
    """Score every unit of ``pl`` not already in ``work_dir/parts`` with a matching fingerprint.

    ``given_logits``: {split: per model None or (sample ids, float32 logits)} of stamp-set rows
    whose logits are already known (the val / test scores of :func:`~darkhaloscope.search.pipeline.calibrate`):
    a ``control`` unit of that split takes them (and they enter its fingerprint); a 6-channel
    (paired) model's are not used, since scoring showed it the row's control, the search a blank one.

    Returns (part paths in unit order, {'resumed': parts reused, 'scored': parts made}). Parts
    of units no longer planned are removed; a part whose fingerprint differs is redone."""
    from tqdm import tqdm

    parts_dir = os.path.join(work_dir, "parts")
    os.makedirs(parts_dir, exist_ok=True)
    names = {f"{u.name}.parquet" for u in pl.units}
    for d in (parts_dir, os.path.join(work_dir, "stash")):
        for f in os.listdir(d) if os.path.isdir(d) else []:
            path = os.path.join(d, f)
            if f not in names and os.path.isfile(path):
                os.remove(path)
    paths, done = [], {"resumed": 0, "scored": 0}
    with tqdm(total=sum(u.n_rows for u in pl.units), unit="stamp", desc="search", disable=not progress,
              mininterval=2.0) as bar:
        # a 6-channel model's val / test logits saw each row's stored control; the search shows it a
        # blank control half: its rows are run again
        given_logits = {sp: [None if scorer.models[j][1].paired else g for j, g in enumerate(gs)]
                        for sp, gs in (given_logits or {}).items()}
        for u in pl.units:
            path = os.path.join(parts_dir, f"{u.name}.parquet")
            given = given_for(u, given_logits, len(scorer.models))
            fp = unit_fingerprint(u, scorer, given)
            if os.path.isfile(path) and read_part_fingerprint(path) == fp:
                done["resumed"] += 1
                bar.update(u.n_rows)
            else:
                table, summary = score_unit(u, scorer, params, pl.splits, work_dir, bar,
                                            scorer.prep_workers if workers is None else workers, stash_k, given)
                write_part(path, table, fp, summary)
                done["scored"] += 1
            paths.append(path)
    if done["resumed"]:
        log.info("resumed: %d of %d parts in %s were already scored with these inputs, models and settings",
                 done["resumed"], len(pl.units), parts_dir)
    return paths, done


def _sorted_logits(sample_ids, logits) -> tuple[np.ndarray, np.ndarray]:
    sids = np.asarray(sample_ids, np.int64)
    lg = np.asarray(logits, np.float32)
    if sids.shape != lg.shape:
        raise ValueError(f"given logits: {len(lg)} logits for {len(sids)} sample ids")
    o = np.argsort(sids, kind="stable")
    return sids[o], lg[o]


def read_stamps(files: Sequence[str], sample_ids: np.ndarray, columns: Sequence[str] = (),
                missing_ok: bool = False) -> tuple[np.ndarray, dict]:
    """(stamps (n, 3, 64, 64) float32, {column: values}) of the given sample ids, in their order,
    reading only the row groups that hold them (a column a file lacks is NaN). A sample id found
    in no file is a ValueError naming the files; with ``missing_ok`` the values then hold
    ``'_found'`` (bool (n,)) instead."""
    want = np.asarray(sample_ids, np.int64)
    pos = {int(v): i for i, v in enumerate(want)}
    st = np.zeros((len(want), 3, STAMP_SIZE, STAMP_SIZE), np.float32)
    cols = {c: np.full(len(want), np.nan) for c in columns}
    found = np.zeros(len(want), bool)
    for path in files:
        with StampFile(path) as sf:
            for rg in range(sf.metadata.num_row_groups):
                sid = sf.read_row_group(rg, ["sample_id"]).column(0).to_numpy()
                hit = np.flatnonzero(np.isin(sid, want))
                if not len(hit):
                    continue
                x, _ = sf.stamps(rg, STAMP_COLUMN, 3, STAMP_SIZE)
                have = [c for c in columns if c in sf.schema_arrow.names]
                t = sf.read_row_group(rg, have) if have else None
                for r in hit:
                    i = pos[int(sid[r])]
                    st[i] = x[r]
                    found[i] = True
                    for c in have:
                        v = t.column(c)[int(r)].as_py()
                        cols[c][i] = np.nan if v is None else v
    if missing_ok:
        cols["_found"] = found
    elif not found.all():
        raise ValueError(f"sample ids {want[~found][:5].tolist()} are in none of {list(files)[:3]}: the stamp files "
                         f"changed during the search; run it again")
    return st, cols


__all__ = ["CPU_MICRO_BATCH", "DUPLICATE_RADIUS_ARCSEC", "ID_COLUMNS", "Plan", "Scorer", "Unit", "cut_galaxies",
           "cut_rows", "given_for", "group_by_brick", "plan", "read_part", "read_stamps", "run_units", "score_unit", "stream_blocks"]
