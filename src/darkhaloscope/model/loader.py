"""Training / evaluation loader of the stamp parquet files (see :mod:`darkhaloscope.stamps.format`).

Pieces:

- :class:`StampIndex`: one pass over the files deciding which rows are used; every
  dropped row is counted by reason (``counts``), never silently dropped; a ``sample_id``
  seen twice is used once (the first occurrence) and the repeats are counted and warned
  about; for a 6-channel (paired) model the kept rows without a control are counted
  (``kept_without_ctrl``).
- :class:`StampDataset`: an ``IterableDataset`` yielding ready batches
  ``(x, y, meta, sample_id)``; contiguous reads of (file, row group) chunks;
  chunks sharded round-robin over ``world_size * num_workers`` shards so every kept
  sample is yielded exactly once per epoch; the epoch lives in shared memory so
  :meth:`StampDataset.set_epoch` reaches persistent workers. Its batches are built with
  the rules of :class:`darkhaloscope.model.preprocess.Preprocess` (normalisation, the
  paired 6-channel layout, blank controls, metadata imputation and scaling), fed straight
  from the memory-mapped stamp buffers, plus :func:`~darkhaloscope.model.preprocess.augment`
  in training.
- :func:`make_loader`: ``DataLoader(batch_size=None)`` whose worker seeding does not
  touch torch's global RNG.

Stamps are float32 nanomaggies, (3, 64, 64) pixels per row (bands g, r, z).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from darkhaloscope.hashing import hash_u64
from darkhaloscope.model.distributed import rank_world
from darkhaloscope.model.preprocess import (
    CTRL_CHANNELS,
    STAMP_CHANNELS,
    NormConfig,
    Preprocess,
    augment,
    core_dropout,
    block_samples,
    normalize_blocks,
)
from darkhaloscope.stamps.format import (
    CTRL_STAMP_COLUMN,
    STAMP_BANDS,
    STAMP_COLUMN,
    STAMP_COLUMNS,
    STAMP_SIZE,
    StampFile,
)

log = logging.getLogger(__name__)

DROP_REASONS: tuple[str, ...] = (
    "cutout_not_ok",
    "missing_ctrl",
    "nonfinite_stamp",
    "nonfinite_meta",
    "below_min_theta_over_psf",
    "below_min_arc_snr",
    "excluded_brick",
)
#: the count of rows dropped because their sample_id repeats one kept before (in ``counts`` only when > 0)
DUPLICATE_REASON = "duplicate_sample_id"


# ----------------------------------------------------------------------------- index


@dataclass
class Chunk:
    """Kept rows of one (file, row group): the loader's contiguous work unit."""

    file_idx: int
    row_group: int
    rows: np.ndarray  # int64 positions within the row group, ascending
    n_rows_group: int  # rows in the row group (rows.size == n_rows_group: all kept)

    @property
    def n(self) -> int:
        return int(self.rows.size)


def _column_numpy(table, name: str, path: str) -> np.ndarray:
    col = table.column(name)
    if col.null_count:
        raise ValueError(f"{path}: column {name!r} has {col.null_count} null values")
    return col.to_numpy()


def _drop_repeats(files: Sequence[str], chunks: list[Chunk], sample_ids: np.ndarray, labels: np.ndarray,
                  ctrl_valid: np.ndarray | None, earlier: np.ndarray, counts: dict[str, int]):
    """Keep-first de-duplication of an index's kept rows (index order: file, row group, row).

    A row is a repeat when its sample id occurs at an earlier position, or in ``earlier``
    (the ids of the index the rows are being added to). Repeats are removed from the chunks
    and the per-row arrays, counted under :data:`DUPLICATE_REASON` in ``counts`` and reported
    in one WARN log line. Returns (chunks, sample_ids, labels, ctrl_valid, a few repeated ids).
    """
    n = int(sample_ids.size)
    if n == 0:
        return chunks, sample_ids, labels, ctrl_valid, ()
    order = np.argsort(sample_ids, kind="stable")  # stable: the first occurrence sorts first
    srt = sample_ids[order]
    rep_sorted = np.zeros(n, bool)
    rep_sorted[1:] = srt[1:] == srt[:-1]
    rep = np.empty(n, bool)
    rep[order] = rep_sorted
    if earlier.size:
        rep |= np.isin(sample_ids, earlier)
    if not rep.any():
        return chunks, sample_ids, labels, ctrl_valid, ()
    keep = ~rep
    kept_chunks: list[Chunk] = []
    where: list[str] = []
    off = 0
    for ch in chunks:
        seg = keep[off:off + ch.n]
        off += ch.n
        if not seg.all():
            where.append(files[ch.file_idx])
        if seg.any():
            kept_chunks.append(Chunk(ch.file_idx, ch.row_group, ch.rows[seg], ch.n_rows_group))
    ids = np.unique(sample_ids[rep])
    n_rep = int(rep.sum())
    counts[DUPLICATE_REASON] = counts.get(DUPLICATE_REASON, 0) + n_rep
    where = list(dict.fromkeys(where))
    shown = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
    log.warning("WARN %d stamp row(s) repeat a sample_id that is already used (%d distinct id(s), e.g. %s), in %s: "
                "only the first occurrence of each id is used, the repeats are dropped and counted as "
                "dropped.%s", n_rep, ids.size, ids[:5].tolist(), shown, DUPLICATE_REASON)
    return (kept_chunks, sample_ids[keep], labels[keep], None if ctrl_valid is None else ctrl_valid[keep],
            tuple(int(i) for i in ids[:5]))


@dataclass
class StampIndex:
    """Which rows of which files the loader uses, with every dropped row counted."""

    files: list[str]
    chunks: list[Chunk]
    sample_ids: np.ndarray  # int64 (n_samples,), index order (file, row group, row)
    labels: np.ndarray  # int8 (n_samples,), 1 = injected / positive
    counts: dict[str, int]  # dropped rows by reason (every DROP_REASONS reason, 0 if none; see build)
    n_rows_read: int
    min_theta_over_psf: float = 0.0
    min_arc_snr: float = 0.0
    require_ctrl: bool = False
    meta_cols: tuple[str, ...] = ()
    row_group_starts: list[np.ndarray] = field(default_factory=list)  # per file
    unmatched_excludes: tuple[str, ...] = ()  # exclude_bricks entries no row lies on (warned about)
    blank_missing_ctrl: bool = False
    #: bool (n_samples,): the kept row has a control stamp; None when controls were not looked at
    ctrl_valid: np.ndarray | None = None
    duplicate_examples: tuple[int, ...] = ()  # a few sample ids that repeated (warned about)

    @property
    def n_samples(self) -> int:
        return int(self.sample_ids.size)

    @property
    def n_positive(self) -> int:
        return int(self.labels.sum())

    @property
    def n_negative(self) -> int:
        return self.n_samples - self.n_positive

    @property
    def n_without_ctrl(self) -> int:
        """Kept rows without a control stamp (null ``ctrl_stamp``, or a file without the column):
        a 6-channel model sees them with a blank control half. 0 when controls were not looked at."""
        return 0 if self.ctrl_valid is None else int((~self.ctrl_valid).sum())

    def filters(self) -> dict[str, Any]:
        out = {
            "min_theta_over_psf": self.min_theta_over_psf,
            "min_arc_snr": self.min_arc_snr,
            "require_ctrl": self.require_ctrl,
            "meta_cols": list(self.meta_cols),
        }
        if self.blank_missing_ctrl:
            out["blank_missing_ctrl"] = True
        return out

    def summary(self) -> dict[str, Any]:
        """Plain dict for logs / metrics: rows read, kept (by class), dropped by reason.

        For an index that looked at the controls (``require_ctrl`` or ``blank_missing_ctrl``,
        i.e. one built for a 6-channel model) also ``kept_without_ctrl``: the kept rows that
        have no control and are therefore trained or scored with a blank control half (0
        under ``require_ctrl``, which drops them as ``dropped.missing_ctrl`` instead).
        ``dropped.duplicate_sample_id`` (present only when > 0) counts rows whose sample id
        repeats one kept earlier; ``duplicate_sample_id_examples`` lists a few such ids.
        """
        out = {
            "rows_read": self.n_rows_read,
            "kept": self.n_samples,
            "kept_positive": self.n_positive,
            "kept_negative": self.n_negative,
            "dropped": dict(self.counts),
            "filters": self.filters(),
        }
        if self.ctrl_valid is not None:
            out["kept_without_ctrl"] = self.n_without_ctrl
        if self.duplicate_examples:
            out["duplicate_sample_id_examples"] = [int(s) for s in self.duplicate_examples]
        if self.unmatched_excludes:
            out["exclude_bricks_unmatched"] = list(self.unmatched_excludes)
        return out

    @classmethod
    def build(
        cls,
        files: Sequence[str],
        *,
        min_theta_over_psf: float = 0.0,
        min_arc_snr: float = 0.0,
        require_ctrl: bool = False,
        meta_cols: Sequence[str] = (),
        require_both_classes: bool = True,
        exclude_bricks: Sequence[str] = (),
        include_ids: np.ndarray | None = None,
        blank_missing_ctrl: bool = False,
    ) -> "StampIndex":
        """One pass over ``files`` (row group by row group) deciding the kept rows.

        A row is kept when ``cutout_ok == 1``, its ``stamp`` (and, with
        ``require_ctrl``, its non-null ``ctrl_stamp``) is all finite, its
        ``meta_cols`` values are finite, and - for POSITIVES only -
        ``theta_e_over_psf >= min_theta_over_psf`` and ``arc_snr >= min_arc_snr``
        (a threshold of 0 or less disables that filter; controls are never dropped
        by them). Each dropped row is counted once, under the first failing reason
        in :data:`DROP_REASONS` order. No row left, or no positive, or no negative
        left (the latter two only with ``require_both_classes``, which scoring of
        a one-class set such as known lenses turns off), is a ValueError naming
        the files and the filters.

        Controls of a 6-channel (paired) model: ``require_ctrl`` (training) drops the rows
        without a control (null ``ctrl_stamp``; a file without the column is a ValueError
        saying that paired controls, ``manifest.control_type: paired``, are needed) and
        counts them as ``missing_ctrl``. ``blank_missing_ctrl`` (scoring) keeps them - the
        model sees a blank control half - and counts them as ``kept_without_ctrl`` in
        :meth:`summary` (a file without the column, e.g. the known lenses: all its rows);
        a control that is present must be finite like the stamp. Either way
        :attr:`ctrl_valid` records, per kept row, whether it has a control.

        Duplicate sample ids (within a file or across ``files``): keep-first. Of the rows
        that pass the filters, only the first occurrence of each ``sample_id`` (in file,
        row group, row order; files as given, sorted for a split) is used; every later one
        is dropped, counted as ``duplicate_sample_id`` in :attr:`counts` (a key present only
        when > 0) and reported in one WARN log line with a few of the ids and the files
        holding the repeats. So no sample is used twice, and a score table has one row per id.

        ``exclude_bricks``: rows whose ``brickname`` is listed are dropped (counted
        as ``excluded_brick``; the seeds' Gen5-Prime excluded two bad bricks).
        ``include_ids``: if given, only rows with these sample ids are considered
        at all (used to pick mined hard negatives out of the ``parent`` split);
        the others are not counted as dropped.
        """
        files = [os.fspath(f) for f in files]
        if not files:
            raise ValueError("StampIndex.build: no files given")
        if require_ctrl and blank_missing_ctrl:
            raise ValueError("StampIndex.build: require_ctrl (drop rows without a control) and blank_missing_ctrl "
                             "(keep them with a blank control) exclude each other")
        check_ctrl = bool(require_ctrl or blank_missing_ctrl)
        meta_cols = tuple(meta_cols)
        use_theta = float(min_theta_over_psf) > 0
        use_snr = float(min_arc_snr) > 0
        required = ["sample_id", "is_control", "cutout_ok", STAMP_COLUMN]
        if use_theta:
            required.append("theta_e_over_psf")
        if use_snr:
            required.append("arc_snr")
        if require_ctrl:
            required.append(CTRL_STAMP_COLUMN)
        exclude_bricks = tuple(exclude_bricks)
        if exclude_bricks:
            required.append("brickname")
        required += [c for c in meta_cols if c not in required]
        include = None if include_ids is None else np.unique(np.asarray(include_ids, dtype=np.int64))

        counts = {r: 0 for r in DROP_REASONS}
        chunks: list[Chunk] = []
        sids: list[np.ndarray] = []
        labs: list[np.ndarray] = []
        cvals: list[np.ndarray] = []
        rg_starts: list[np.ndarray] = []
        n_read = 0
        seen_bricks: set[str] = set()
        meta_required = [c for c in required if c not in STAMP_COLUMNS]
        for fi, path in enumerate(files):
            sf = StampFile(path)
            names = sf.schema_arrow.names
            for c in required:
                if c not in names:
                    if c == CTRL_STAMP_COLUMN:
                        raise ValueError(
                            f"{path}: no {CTRL_STAMP_COLUMN!r} column: a 6-channel (paired) model needs each "
                            f"stamp's paired control, i.e. stamps made with manifest.control_type: paired "
                            f"(columns: {names})")
                    raise ValueError(f"{path}: required column {c!r} missing (has {names})")
            has_ctrl_col = CTRL_STAMP_COLUMN in names
            md = sf.metadata
            sizes = np.array([md.row_group(i).num_rows for i in range(md.num_row_groups)], np.int64)
            rg_starts.append(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))
            for rg in range(md.num_row_groups):
                t = sf.read_row_group(rg, meta_required)
                n = t.num_rows
                if n == 0:
                    continue
                n_read += n
                sid = _column_numpy(t, "sample_id", path).astype(np.int64, copy=False)
                is_ctrl = _column_numpy(t, "is_control", path)
                if not np.isin(is_ctrl, (0, 1)).all():
                    raise ValueError(f"{path}: column 'is_control' has values other than 0/1")
                ok = _column_numpy(t, "cutout_ok", path) == 1
                pos = is_ctrl == 0
                considered = np.isin(sid, include) if include is not None else np.ones(n, bool)
                ok &= considered
                alive = ok.copy()
                counts["cutout_not_ok"] += int((~ok & considered).sum())
                if exclude_bricks:
                    bn = _column_numpy(t, "brickname", path).astype(str)
                    seen_bricks.update(np.unique(bn).tolist())
                    drop = alive & np.isin(bn, exclude_bricks)
                    counts["excluded_brick"] += int(drop.sum())
                    alive &= ~drop

                ctrl, cvalid = None, np.zeros(n, bool)
                if check_ctrl and has_ctrl_col:
                    ctrl, cvalid = sf.stamps(rg, CTRL_STAMP_COLUMN)
                if require_ctrl:
                    drop = alive & ~cvalid
                    counts["missing_ctrl"] += int(drop.sum())
                    alive &= ~drop

                stamps, svalid = sf.stamps(rg, STAMP_COLUMN)
                fin = svalid & np.isfinite(stamps.reshape(n, -1)).all(axis=1)
                if ctrl is not None:  # a control that is there must be finite (a missing one is blank)
                    fin &= ~cvalid | np.isfinite(ctrl.reshape(n, -1)).all(axis=1)
                drop = alive & ~fin
                counts["nonfinite_stamp"] += int(drop.sum())
                alive &= ~drop

                if meta_cols:
                    mfin = np.ones(n, dtype=bool)
                    for c in meta_cols:
                        col = t.column(c)
                        v = col.to_numpy(zero_copy_only=False).astype(np.float64)
                        mfin &= np.isfinite(v)
                    drop = alive & ~mfin
                    counts["nonfinite_meta"] += int(drop.sum())
                    alive &= ~drop

                if use_theta:
                    th = t.column("theta_e_over_psf").to_numpy(zero_copy_only=False).astype(np.float64)
                    drop = alive & pos & ~(th >= float(min_theta_over_psf))
                    counts["below_min_theta_over_psf"] += int(drop.sum())
                    alive &= ~drop
                if use_snr:
                    snr = t.column("arc_snr").to_numpy(zero_copy_only=False).astype(np.float64)
                    drop = alive & pos & ~(snr >= float(min_arc_snr))
                    counts["below_min_arc_snr"] += int(drop.sum())
                    alive &= ~drop

                rows = np.flatnonzero(alive).astype(np.int64)
                if rows.size:
                    chunks.append(Chunk(fi, rg, rows, n))
                    sids.append(sid[rows])
                    labs.append(pos[rows].astype(np.int8))
                    cvals.append(cvalid[rows])
                del t, stamps, ctrl
            sf.close()

        unmatched = sorted(set(exclude_bricks) - seen_bricks) if n_read else []
        if unmatched:  # a typo excludes nothing: say so loudly (the seeds' gens name real DR10 bricks)
            log.warning("WARN exclude_bricks %s: no row of the %d stamp file(s) (e.g. %s) lies on such a brick, so "
                        "they exclude nothing; check train.exclude_bricks in params.yaml (DR10 bricks are "
                        "named like 1500p005)", unmatched, len(files), files[0])
        sample_ids = np.concatenate(sids) if sids else np.zeros(0, np.int64)
        labels = np.concatenate(labs) if labs else np.zeros(0, np.int8)
        ctrl_valid = (np.concatenate(cvals) if cvals else np.zeros(0, bool)) if check_ctrl else None
        chunks, sample_ids, labels, ctrl_valid, dup_examples = _drop_repeats(
            files, chunks, sample_ids, labels, ctrl_valid, np.zeros(0, np.int64), counts)
        index = cls(
            files=files,
            chunks=chunks,
            sample_ids=sample_ids,
            labels=labels,
            counts=counts,
            n_rows_read=n_read,
            min_theta_over_psf=float(min_theta_over_psf),
            min_arc_snr=float(min_arc_snr),
            require_ctrl=bool(require_ctrl),
            meta_cols=meta_cols,
            row_group_starts=rg_starts,
            unmatched_excludes=tuple(unmatched),
            blank_missing_ctrl=bool(blank_missing_ctrl),
            ctrl_valid=ctrl_valid,
            duplicate_examples=dup_examples,
        )
        problem = None
        if index.n_samples == 0:
            problem = "no row is left"
        elif index.n_positive == 0 and require_both_classes:
            problem = "no positive (injected) row is left"
        elif index.n_negative == 0 and require_both_classes:
            problem = "no negative (control) row is left"
        if problem:
            raise ValueError(
                f"StampIndex: {problem} after the filters {index.filters()} "
                f"(rows read {n_read}, dropped {counts}) in files {files}"
            )
        return index

    def with_extra(self, other: "StampIndex", repeat: int = 1) -> "StampIndex":
        """This index plus ``other``'s rows, each of them seen ``repeat`` times per epoch.

        Used to add mined hard negatives to the training index. ``other``'s chunks are
        repeated consecutively, so the per-file order of :meth:`read_kept_columns` still
        matches ``sample_ids``. A row of ``other`` whose sample id this index already
        holds is not added (it would be used twice): it is counted as
        ``duplicate_sample_id`` and warned about, like a repeat within :meth:`build`.
        """
        if int(repeat) < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        counts = {k: self.counts.get(k, 0) + other.counts.get(k, 0) for k in {**self.counts, **other.counts}}
        counts = {k: counts.get(k, 0) for k in [*DROP_REASONS, *(k for k in counts if k not in DROP_REASONS)]}
        o_cv = other.ctrl_valid if other.ctrl_valid is not None else np.ones(other.n_samples, bool)
        o_chunks, o_sids, o_labs, o_cv, o_dups = _drop_repeats(
            other.files, list(other.chunks), other.sample_ids, other.labels, o_cv, self.sample_ids, counts)
        off = len(self.files)
        bounds = np.concatenate([[0], np.cumsum([c.n for c in o_chunks])]).astype(np.int64)
        chunks, sids, labs = list(self.chunks), [self.sample_ids], [self.labels]
        cvs = [self.ctrl_valid if self.ctrl_valid is not None else np.ones(self.n_samples, bool)]
        for i, c in enumerate(o_chunks):
            for _ in range(int(repeat)):
                chunks.append(Chunk(c.file_idx + off, c.row_group, c.rows, c.n_rows_group))
                sids.append(o_sids[bounds[i]:bounds[i + 1]])
                labs.append(o_labs[bounds[i]:bounds[i + 1]])
                cvs.append(o_cv[bounds[i]:bounds[i + 1]])
        looked = self.ctrl_valid is not None or other.ctrl_valid is not None
        return StampIndex(
            files=self.files + other.files, chunks=chunks, sample_ids=np.concatenate(sids),
            labels=np.concatenate(labs), counts=counts, n_rows_read=self.n_rows_read + other.n_rows_read,
            min_theta_over_psf=self.min_theta_over_psf, min_arc_snr=self.min_arc_snr,
            require_ctrl=self.require_ctrl, meta_cols=self.meta_cols,
            row_group_starts=self.row_group_starts + other.row_group_starts,
            unmatched_excludes=self.unmatched_excludes, blank_missing_ctrl=self.blank_missing_ctrl,
            ctrl_valid=np.concatenate(cvs) if looked else None,
            duplicate_examples=(self.duplicate_examples + o_dups)[:5],
        )

    def read_kept_columns(self, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """Metadata columns of the kept rows, in index order (no stamp bytes read)."""
        columns = list(columns)
        parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        by_file: dict[int, list[Chunk]] = {}
        for ch in self.chunks:
            by_file.setdefault(ch.file_idx, []).append(ch)
        for fi in sorted(by_file):
            path = self.files[fi]
            names = pq.read_schema(path).names
            for c in columns:
                if c not in names:
                    raise ValueError(f"{path}: column {c!r} missing (has {names})")
            t = pq.read_table(path, columns=columns)
            pos = np.concatenate(
                [self.row_group_starts[fi][ch.row_group] + ch.rows for ch in by_file[fi]]
            )
            for c in columns:
                parts[c].append(t.column(c).take(pos).to_numpy(zero_copy_only=False))
        # chunks are in (file, row group) order, so concatenating per file keeps index order
        return {c: np.concatenate(v) if v else np.zeros(0) for c, v in parts.items()}


# ----------------------------------------------------------------------------- dataset


class StampDataset(IterableDataset):
    """Ready batches ``(x (B,C,64,64) f32, y (B,) f32, meta (B,n_meta) f32, sample_id (B,) i64)``.

    Use with ``DataLoader(batch_size=None)`` (see :func:`make_loader`).
    ``norm_cfg``, ``input_channels``, ``meta_cols`` and ``meta_scaler`` make up the
    preprocessing recipe, :attr:`pre` (a :class:`~darkhaloscope.model.preprocess.Preprocess`).

    Work unit: a chunk = (file, row group) restricted to the index's kept rows,
    read once (its stamps zero-copy from the mapped file, see
    :class:`darkhaloscope.stamps.format.StampFile`). Per epoch the chunk list is
    permuted (``shuffle``) by a Generator seeded with (seed, epoch) - identical on
    every rank - and dealt round-robin to ``world_size * num_workers`` shards
    (shard = rank * num_workers + worker_id), so every kept sample is yielded
    exactly once per epoch over all ranks and workers. With ``shuffle`` the rows
    are shuffled across a buffer of ``buffer_chunks`` chunks; augmentation draws
    from (seed, epoch, shard). Batches do not cross shards; the last one of a
    shard may be short (dropped with ``drop_last``). Ranks may therefore yield
    different numbers of batches (see :meth:`shard_sizes`).

    ``missing_meta='mean'`` (scoring rows that have no metadata, e.g. the known lenses,
    with an index built without ``meta_cols``): a non-finite metadata value is replaced
    by the scaler's training mean (0 after standardisation); ``n_meta_imputed`` counts
    those rows. The default ``'error'`` refuses them.

    A 6-channel (paired) dataset needs an index built with ``require_ctrl`` (rows without a
    control dropped and counted) or ``missing_ctrl='zeros'``: rows without a control (null
    ``ctrl_stamp``, or a file without the column) get a blank control half;
    ``n_without_ctrl`` counts those kept rows (from the index's :attr:`StampIndex.ctrl_valid`,
    best built with ``blank_missing_ctrl=True`` so its summary reports them, else read here).

    ``shuffle=False, augment=False`` is the evaluation mode: in one process
    (``num_workers=0``, world size 1) rows come in file order, deterministically.

    The epoch lives in a shared-memory tensor created here, so
    :meth:`set_epoch` in the parent reaches already-running persistent workers
    at the start of their next iteration.
    """

    def __init__(
        self,
        index: StampIndex,
        batch_size: int,
        norm_cfg: NormConfig,
        input_channels: int = 3,
        meta_cols: Sequence[str] = (),
        meta_scaler: Any = None,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        buffer_chunks: int = 4,
        missing_ctrl: str = "error",
        ctrl_dropout: float = 0.0,
        missing_meta: str = "error",
        core_dropout_p: float = 0.0,
        core_dropout_radius: float = 5.0,
    ) -> None:
        super().__init__()
        if missing_ctrl not in ("error", "zeros"):
            raise ValueError(f"missing_ctrl must be 'error' or 'zeros', got {missing_ctrl!r}")
        if missing_meta not in ("error", "mean"):
            raise ValueError(f"missing_meta must be 'error' or 'mean', got {missing_meta!r}")
        if missing_meta == "mean" and meta_cols and meta_scaler is None:
            raise ValueError("missing_meta='mean' needs the meta_scaler (its means replace the missing values)")
        if not 0.0 <= float(ctrl_dropout) < 1.0:
            raise ValueError(f"ctrl_dropout must be in [0, 1), got {ctrl_dropout}")
        if not 0.0 <= float(core_dropout_p) < 1.0 or not float(core_dropout_radius) > 0:
            raise ValueError(f"core_dropout_p must be in [0, 1) and core_dropout_radius > 0 pixels, "
                             f"got {core_dropout_p} and {core_dropout_radius}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if input_channels == 6 and not index.require_ctrl and missing_ctrl != "zeros":
            raise ValueError(
                "input_channels=6 needs an index built with require_ctrl=True "
                "(rows without ctrl_stamp must be dropped and counted), or missing_ctrl='zeros' "
                "(they get a blank control; build the index with blank_missing_ctrl=True to count them)"
            )
        #: the preprocessing recipe (checks input_channels and norm_cfg)
        self.pre = Preprocess(norm_cfg, input_channels, meta_cols, meta_scaler)
        if int(buffer_chunks) < 1:
            raise ValueError(f"buffer_chunks must be >= 1, got {buffer_chunks}")
        d_rank, d_world = rank_world()
        self.rank = d_rank if rank is None else int(rank)
        self.world_size = d_world if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} not in [0, world_size={self.world_size})")
        self.index = index
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.buffer_chunks = int(buffer_chunks)
        self.missing_ctrl = missing_ctrl
        self.ctrl_dropout = float(ctrl_dropout)
        self.core_dropout_p = float(core_dropout_p)
        self.core_dropout_radius = float(core_dropout_radius)
        self.missing_meta = missing_meta
        self.n_meta_imputed = 0  # kept rows with a non-finite metadata value (missing_meta='mean')
        #: kept rows without a control: a 6-channel batch has their control half blank (0 for 3 channels)
        self.n_without_ctrl = 0
        if self.pre.paired:
            valid = index.ctrl_valid if index.ctrl_valid is not None else _kept_ctrl_valid(index)
            self.n_without_ctrl = int((~valid).sum())
        # shared memory (fork and spawn alike): set_epoch reaches persistent workers
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        unchecked = [c for c in self.meta_cols if c not in index.meta_cols]
        if unchecked:
            vals = index.read_kept_columns(unchecked)
            missing = np.zeros(index.n_samples, bool)
            for c, v in vals.items():
                bad = ~np.isfinite(v.astype(np.float64))
                missing |= bad
                if bad.any() and missing_meta != "mean":
                    raise ValueError(
                        f"meta column {c!r} has {int(bad.sum())} non-finite values in kept rows; "
                        f"build the StampIndex with meta_cols={list(self.meta_cols)} to drop and count them, "
                        f"or use missing_meta='mean'"
                    )
            self.n_meta_imputed = int(missing.sum())

    # -- the recipe ----------------------------------------------------------------
    @property
    def norm_cfg(self) -> NormConfig:
        return self.pre.norm

    @property
    def input_channels(self) -> int:
        return self.pre.input_channels

    @property
    def meta_cols(self) -> tuple[str, ...]:
        return self.pre.meta_cols

    @property
    def meta_scaler(self) -> Any:
        return self.pre.meta_scaler

    # -- epoch ---------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used by the next iteration (also in persistent workers)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    # -- sizes ---------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        """Kept rows (over all ranks): the samples one epoch yields in total."""
        return self.index.n_samples

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.index.counts)

    def chunk_order(self, epoch: int) -> np.ndarray:
        """Chunk ids in the epoch's order (the same on every rank and worker)."""
        n = len(self.index.chunks)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch), 0x5EED]).permutation(n)

    def shard_chunks(self, epoch: int, shard: int, n_shards: int) -> np.ndarray:
        return self.chunk_order(epoch)[shard::n_shards]

    def n_batches(self, epoch: int, num_workers: int = 0) -> int:
        """Batches this rank yields in ``epoch`` (the progress bar's total): per worker shard
        ceil(samples / batch_size), or floor with ``drop_last`` (batches never cross shards)."""
        sizes = self.shard_sizes(epoch, num_workers)[self.rank]
        bs = self.batch_size
        return int(sum(n // bs if self.drop_last else -(-n // bs) for n in sizes.tolist()))

    def rank_samples(self, epoch: int, num_workers: int = 0) -> int:
        """Samples this rank yields in ``epoch`` (fewer than :attr:`n_samples` under torchrun, or with
        ``drop_last``: each shard's short last batch is not yielded)."""
        sizes = self.shard_sizes(epoch, num_workers)[self.rank]
        bs = self.batch_size
        return int(sum(n // bs * bs if self.drop_last else n for n in sizes.tolist()))

    def shard_sizes(self, epoch: int, num_workers: int = 0) -> np.ndarray:
        """Samples per (rank, worker) shard for ``epoch``: shape (world_size, max(1, num_workers))."""
        nw = max(1, int(num_workers))
        n_shards = self.world_size * nw
        sizes = np.zeros(n_shards, np.int64)
        for s in range(n_shards):
            sizes[s] = sum(self.index.chunks[c].n for c in self.shard_chunks(epoch, s, n_shards))
        return sizes.reshape(self.world_size, nw)

    # -- reading -------------------------------------------------------------------
    #
    # A chunk's stamps are a read-only view into the memory-mapped file (no decoding,
    # no copy; see StampFile), or Arrow-decoded for other layouts. A batch gathers its
    # rows from the chunks a block at a time into a cache-resident scratch buffer and
    # normalises them from there into the batch array (see _normalized_batch).

    def _read_chunk(self, sf: StampFile, ch: Chunk) -> dict[str, Any]:
        cols = ["sample_id", "is_control"]
        cols += [c for c in self.meta_cols if c not in cols]
        t = sf.read_row_group(ch.row_group, cols)
        if t.num_rows != ch.n_rows_group:
            raise RuntimeError(
                f"{self.index.files[ch.file_idx]} row group {ch.row_group} has {t.num_rows} rows, "
                f"the index saw {ch.n_rows_group}: the file changed after the index was built"
            )
        rows = None if ch.n == ch.n_rows_group else ch.rows
        nb = len(STAMP_BANDS)

        def take(a: np.ndarray) -> np.ndarray:
            return a if rows is None else a[rows]

        def images(name: str) -> np.ndarray:
            x, _ = sf.stamps(ch.row_group, name, nb, STAMP_SIZE)  # a view into the mapped file when possible
            return x if x.dtype == np.float32 else x.astype(np.float32)  # native byte order

        cvalid = np.ones(ch.n, bool)
        ctrl = None
        if self.pre.paired:
            if CTRL_STAMP_COLUMN in sf.schema_arrow.names:
                ctrl, valid = sf.stamps(ch.row_group, CTRL_STAMP_COLUMN, nb, STAMP_SIZE)
                ctrl = ctrl if ctrl.dtype == np.float32 else ctrl.astype(np.float32)
                cvalid = take(valid).copy()
            else:  # unpaired data, known lenses: no control at all
                ctrl = np.zeros((ch.n_rows_group, nb, STAMP_SIZE, STAMP_SIZE), np.float32)
                cvalid = np.zeros(ch.n, bool)
        imgs = (images(STAMP_COLUMN), ctrl)
        out: dict[str, Any] = {
            "cvalid": cvalid,
            "imgs": imgs,  # full row group (N_group, 3, 64, 64) views; "rows" selects the kept ones
            "rows": np.arange(ch.n_rows_group, dtype=np.int64) if rows is None else rows,
            "y": (1 - take(t.column("is_control").to_numpy())).astype(np.float32),
            "sid": take(t.column("sample_id").to_numpy()).astype(np.int64, copy=False),
        }
        if self.meta_cols:
            out["meta"] = np.stack(
                [take(t.column(c).to_numpy(zero_copy_only=False)).astype(np.float64) for c in self.meta_cols],
                axis=1,
            )
        else:
            out["meta"] = np.zeros((ch.n, 0), np.float64)
        return out

    @staticmethod
    def _gather(srcs: Sequence[np.ndarray], pidx: np.ndarray, ridx: np.ndarray, out: np.ndarray) -> None:
        """``out[i] = srcs[pidx[i]][ridx[i]]`` for every i."""
        first = int(pidx[0]) if len(pidx) else 0
        if len(pidx) and (pidx == first).all():
            if out.flags.c_contiguous:
                np.take(srcs[first], ridx, axis=0, out=out)
            else:
                out[...] = srcs[first][ridx]
            return
        for p in np.unique(pidx):
            m = np.flatnonzero(pidx == p)
            out[m] = srcs[int(p)][ridx[m]]

    def _normalized_batch(self, imgs: Sequence[tuple], pidx: np.ndarray, ridx: np.ndarray) -> np.ndarray:
        """Normalised (B, C, 64, 64) float32 images of the batch rows (row i = ``imgs[pidx[i]]`` row ``ridx[i]``).

        The raw rows are gathered a block at a time into a small scratch buffer that
        stays in cache and normalised from there into the batch array, so the raw
        pixels are read once from the chunk and the batch is written once. A
        3-channel batch that is a contiguous slice of one chunk (evaluation mode) is
        normalised straight from the chunk's (mapped) buffer. The normalisation and the
        6-channel layout (stamp, then control) are the recipe's (:attr:`pre`).
        """
        b = len(ridx)
        c = self.input_channels
        shape = (b, c, STAMP_SIZE, STAMP_SIZE)
        out = np.empty(shape, np.float32)
        norm = self.pre.norm
        if not self.pre.paired and b:
            p0, r0 = int(pidx[0]), int(ridx[0])
            if (pidx == p0).all() and ridx[-1] - r0 == b - 1 and (np.diff(ridx) == 1).all():
                src = imgs[p0][0]
                return normalize_blocks(lambda b0, b1: src[r0 + b0 : r0 + b1], shape, norm, out)
        scratch = np.empty((block_samples(c),) + shape[1:], np.float32)
        stamp_srcs = [im[0] for im in imgs]
        ctrl_srcs = [im[1] for im in imgs] if self.pre.paired else None

        def raw_block(b0: int, b1: int) -> np.ndarray:
            sb = scratch[: b1 - b0]
            self._gather(stamp_srcs, pidx[b0:b1], ridx[b0:b1], sb[:, STAMP_CHANNELS])
            if ctrl_srcs is not None:
                self._gather(ctrl_srcs, pidx[b0:b1], ridx[b0:b1], sb[:, CTRL_CHANNELS])
            return sb

        return normalize_blocks(raw_block, shape, norm, out)

    def _make_batch(
        self,
        imgs: Sequence[tuple],
        pidx: np.ndarray,
        ridx: np.ndarray,
        part: dict[str, np.ndarray],
        rng_aug: np.random.Generator | None,
        rng_core: np.random.Generator | None = None,
    ):
        x = self._normalized_batch(imgs, pidx, ridx)
        if rng_core is not None:  # core dropout (training): the selected samples' cores become sky noise
            core_dropout(x, _unit_hash(part["sid"], self.seed + 7_777, self.epoch) < self.core_dropout_p,
                         self.core_dropout_radius, rng_core)
        if self.pre.paired:
            # "no control available" (a blank control half) for rows without a control and, in
            # training, for a ctrl_dropout fraction of the others
            blank = ~np.asarray(part["cvalid"], bool)
            if self.ctrl_dropout > 0:
                blank |= _unit_hash(part["sid"], self.seed, self.epoch) < self.ctrl_dropout
            self.pre.blank_ctrl(x, blank)
        if rng_aug is not None:
            x = augment(x, rng_aug)
        # missing_meta='mean': a row without metadata (e.g. a known lens) gets the training means
        meta = self.pre.scale_meta(part["meta"], impute=self.missing_meta == "mean")
        return (
            torch.from_numpy(np.ascontiguousarray(x)),
            torch.from_numpy(np.array(part["y"], dtype=np.float32)),  # copies: never a read-only view
            torch.from_numpy(meta),
            torch.from_numpy(np.array(part["sid"], dtype=np.int64)),
        )

    def _carry(self, imgs: Sequence[tuple], pidx: np.ndarray, ridx: np.ndarray, small: dict[str, np.ndarray]):
        """The leftover rows of a pool as a self-contained part (images copied out of the chunks)."""
        k = len(ridx)
        nb = len(STAMP_BANDS)
        st = np.empty((k, nb, STAMP_SIZE, STAMP_SIZE), np.float32)
        self._gather([im[0] for im in imgs], pidx, ridx, st)
        ct = None
        if self.pre.paired:
            ct = np.empty((k, nb, STAMP_SIZE, STAMP_SIZE), np.float32)
            self._gather([im[1] for im in imgs], pidx, ridx, ct)
        return {"imgs": (st, ct), "rows": np.arange(k, dtype=np.int64), **small}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        info = get_worker_info()
        nw, wid = (1, 0) if info is None else (info.num_workers, info.id)
        shard = self.rank * nw + wid
        n_shards = self.world_size * nw
        chunk_ids = self.shard_chunks(epoch, shard, n_shards)
        rng_rows = np.random.default_rng([self.seed, epoch, shard, n_shards, 1])
        rng_aug = np.random.default_rng([self.seed, epoch, shard, n_shards, 2]) if self.augment else None
        rng_core = (np.random.default_rng([self.seed, epoch, shard, n_shards, 3]) if self.core_dropout_p > 0
                    else None)
        group = self.buffer_chunks if self.shuffle else 1
        bs = self.batch_size
        small_keys = ("y", "sid", "meta", "cvalid")
        files: dict[int, StampFile] = {}
        carry: dict[str, Any] | None = None
        try:
            for g0 in range(0, len(chunk_ids), group):
                parts = [] if carry is None else [carry]
                for cid in chunk_ids[g0 : g0 + group]:
                    ch = self.index.chunks[int(cid)]
                    pf = files.get(ch.file_idx)
                    if pf is None:
                        pf = files[ch.file_idx] = StampFile(self.index.files[ch.file_idx])
                    parts.append(self._read_chunk(pf, ch))
                # the pool: row i is row ridx[i] of parts[pidx[i]]["imgs"]
                imgs = [p["imgs"] for p in parts]
                pidx = np.concatenate([np.full(len(p["rows"]), i, np.int32) for i, p in enumerate(parts)])
                ridx = np.concatenate([p["rows"] for p in parts])
                small = {k: np.concatenate([p[k] for p in parts]) for k in small_keys}
                del parts
                n = len(ridx)
                order = rng_rows.permutation(n) if self.shuffle else None
                n_full = n // bs * bs
                for s in range(0, n_full, bs):
                    sl = slice(s, s + bs) if order is None else order[s : s + bs]
                    yield self._make_batch(imgs, pidx[sl], ridx[sl], {k: v[sl] for k, v in small.items()}, rng_aug,
                                           rng_core)
                rest = slice(n_full, n) if order is None else order[n_full:]
                carry = (
                    self._carry(imgs, pidx[rest], ridx[rest], {k: v[rest] for k, v in small.items()})
                    if n_full < n
                    else None
                )
                del imgs
            if carry is not None and not self.drop_last:
                k = len(carry["rows"])
                yield self._make_batch(
                    [carry["imgs"]], np.zeros(k, np.int32), carry["rows"],
                    {key: carry[key] for key in small_keys}, rng_aug, rng_core,
                )
        finally:
            for pf in files.values():
                pf.close()


# ----------------------------------------------------------------------------- loader


def _kept_ctrl_valid(index: StampIndex) -> np.ndarray:
    """bool (n_samples,), index order: the kept row has a control stamp (non-null ``ctrl_stamp``)."""
    parts: list[np.ndarray] = []
    files: dict[int, StampFile] = {}
    try:
        for ch in index.chunks:
            sf = files.get(ch.file_idx)
            if sf is None:
                sf = files[ch.file_idx] = StampFile(index.files[ch.file_idx])
            if CTRL_STAMP_COLUMN in sf.schema_arrow.names:
                parts.append(sf.stamps(ch.row_group, CTRL_STAMP_COLUMN)[1][ch.rows])
            else:
                parts.append(np.zeros(ch.n, bool))
    finally:
        for sf in files.values():
            sf.close()
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def _unit_hash(sid: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Uniform [0, 1) per (sample id, seed, epoch), independent of sharding (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        z = np.asarray(sid, np.int64).view(np.uint64) + np.uint64((seed * 1_000_003 + epoch * 7919 + 1) % 2**63)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)



def _worker_init(worker_id: int) -> None:
    info = get_worker_info()
    ds = info.dataset if info is not None else None
    base = getattr(ds, "seed", 0)
    rank = getattr(ds, "rank", 0)
    s = hash_u64("dataloader-worker", base, rank, worker_id)
    torch.manual_seed(s & 0x7FFF_FFFF_FFFF_FFFF)
    np.random.seed(s & 0xFFFF_FFFF)
    random.seed(s)
    torch.set_num_threads(1)


def make_loader(
    dataset: StampDataset,
    num_workers: int = 0,
    persistent_workers: bool = False,
    *,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    multiprocessing_context: Any = None,
) -> DataLoader:
    """``DataLoader(dataset, batch_size=None)`` with deterministic worker seeding.

    The loader gets its own ``torch.Generator`` (seeded from ``dataset.seed``) so
    creating an iterator does not consume torch's global RNG, and workers are
    seeded from (seed, rank, worker id). ``persistent_workers`` only applies with
    ``num_workers > 0``.
    """
    g = torch.Generator()
    g.manual_seed(hash_u64("dataloader", dataset.seed, dataset.rank) & 0x7FFF_FFFF_FFFF_FFFF)
    kw: dict[str, Any] = dict(
        batch_size=None,
        num_workers=int(num_workers),
        pin_memory=pin_memory,
        generator=g,
    )
    if num_workers > 0:
        kw["worker_init_fn"] = _worker_init
        kw["persistent_workers"] = bool(persistent_workers)
        if prefetch_factor is not None:
            kw["prefetch_factor"] = int(prefetch_factor)
        if multiprocessing_context is not None:
            kw["multiprocessing_context"] = multiprocessing_context
    return DataLoader(dataset, **kw)
