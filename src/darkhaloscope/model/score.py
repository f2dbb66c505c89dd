"""Scoring a split with a checkpoint's own preprocessing (no normalisation argument exists)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from darkhaloscope.model.checkpoint import model_from_checkpoint
from darkhaloscope.model.inference import device_and_amp, predict, sigmoid
from darkhaloscope.model.loader import StampDataset, StampIndex, make_loader

log = logging.getLogger(__name__)

# columns evaluation stratifies on, carried into the score table when present
STRATA = ("row_id", "brickname", "ra", "dec", "config_id", "theta_e_arcsec", "theta_e_over_psf", "arc_snr",
          "arc_snr_int", "src_dmag", "psfsize_r", "psfdepth_r", "psf_fwhm_used_r", "magnification", "impostor")


def check_readable(files: list[str], allow_none: bool = False) -> None:
    """ValueError naming the first file that is not a readable parquet file (e.g. truncated)."""
    if not files and not allow_none:
        raise ValueError("no stamp files to score")
    for f in files:
        try:
            pq.read_metadata(f)
        except (OSError, pa.ArrowException) as e:
            raise ValueError(f"{f}: not a readable stamp parquet file ({type(e).__name__}: {e}); "
                             f"re-run the stage that wrote it (dvc repro stamps)") from None


def score_files(ckpt_path: str, files: list[str], batch_size: int = 256,
                progress: str | None = None) -> tuple[pa.Table, dict]:
    """Score every usable row of ``files``; returns (table sorted by sample_id, index summary).

    Table columns: sample_id, label (1 = lens), logit (float32), score = sigmoid(logit)
    computed in float64, plus the STRATA columns present in the files. Rows the index
    drops (cutout_ok = 0, non-finite stamps, non-finite metadata of a model with
    ``meta_cols``, a repeated sample_id) are counted in the summary, not scored.

    A 6-channel (paired) model scores a row without a control (a null ``ctrl_stamp``, or a
    file without that column) with the control half blank; the summary counts those rows
    as ``kept_without_ctrl`` (besides ``files_scored_without_ctrl`` /
    ``rows_in_files_without_ctrl`` for whole files without the column) and a WARN line says so.
    ``progress``: the description of a tqdm bar counting the scored stamps (None: no bar).
    """
    return _score(ckpt_path, files, batch_size, impute_missing_meta=False, progress=progress)


def score_known_files(ckpt_path: str, files: list[str], batch_size: int = 256) -> tuple[pa.Table, dict]:
    """:func:`score_files` for rows that may have no metadata (the known lenses: a catalogue
    position, no sweep row, hence no PSFSIZE / PSFDEPTH): a model with ``meta_cols`` scores
    them with the training mean of each missing value (0 after standardisation) instead of
    dropping them; the summary counts them as ``meta_imputed``.

    No files, or files without rows (a survey whose known lenses lie on none of its bricks, a
    stamp set without known lenses), give an empty table and a summary with ``kept`` 0."""
    check_readable(files, allow_none=True)
    if sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 0:
        empty = pa.table({"sample_id": pa.array([], pa.int64()), "label": pa.array([], pa.int8()),
                          "logit": pa.array([], pa.float32()), "score": pa.array([], pa.float64())})
        return empty, {"rows_read": 0, "kept": 0, "kept_positive": 0, "kept_negative": 0, "dropped": {},
                       "n_files": len(files)}
    return _score(ckpt_path, files, batch_size, impute_missing_meta=True)


def _score(ckpt_path: str, files: list[str], batch_size: int, impute_missing_meta: bool,
           progress: str | None = None) -> tuple[pa.Table, dict]:
    model, pre = model_from_checkpoint(ckpt_path)
    check_readable(files)
    device, amp = device_and_amp()
    model.to(device)
    impute = bool(impute_missing_meta and pre.meta_cols)
    # a 6-channel (paired) model scores rows without a control with the control half blanked:
    # the "no control available" input it saw for train.ctrl_dropout of its training samples
    index = StampIndex.build(files, require_ctrl=False, meta_cols=() if impute else pre.meta_cols,
                             require_both_classes=False, blank_missing_ctrl=pre.paired)
    ds = StampDataset(index, batch_size, pre.norm, pre.input_channels, pre.meta_cols, pre.meta_scaler,
                      shuffle=False, augment=False, rank=0, world_size=1, missing_ctrl="zeros",
                      missing_meta="mean" if impute else "error")
    ids, labels, logits = predict(model, make_loader(ds, 0), device, amp, progress=progress)
    names = set(pq.ParquetFile(files[0]).schema_arrow.names)
    extra = index.read_kept_columns([c for c in STRATA if c in names])
    order_ids = index.sample_ids
    pos = {int(s): i for i, s in enumerate(order_ids)}
    take = np.array([pos[int(s)] for s in ids])
    cols = {"sample_id": ids.astype(np.int64), "label": labels.astype(np.int8), "logit": logits,
            "score": sigmoid(logits)}
    for c, v in extra.items():
        cols[c] = np.asarray(v)[take]
    table = pa.table(cols).sort_by("sample_id")
    summary = index.summary()
    if impute:
        summary["meta_imputed"] = ds.n_meta_imputed
    if pre.paired:
        no_ctrl = [f for f in files if "ctrl_stamp" not in pq.ParquetFile(f).schema_arrow.names]
        summary["files_scored_without_ctrl"] = len(no_ctrl)
        summary["rows_in_files_without_ctrl"] = int(sum(pq.ParquetFile(f).metadata.num_rows for f in no_ctrl))
        # kept rows whose ctrl_stamp is null in a file that has the column: unexpected, warned about;
        # files without the column (the known lenses, unpaired stamps) are logged
        in_no_ctrl = {index.files.index(f) for f in no_ctrl}
        n_whole = sum(ch.n for ch in index.chunks if ch.file_idx in in_no_ctrl)
        n_null = summary["kept_without_ctrl"] - n_whole
        where = ", ".join(sorted({os.path.dirname(f) for f in files}))
        if n_null:
            log.warning("WARN %s: %d of the %d scored rows have a null ctrl_stamp and were scored by the 6-channel "
                        "model with a blank control half (counted in kept_without_ctrl, %d in all)", where, n_null,
                        summary["kept"], summary["kept_without_ctrl"])
        if n_whole:
            log.info("%s: %d scored rows in %d file(s) without a ctrl_stamp column were scored with a blank control "
                     "half (counted in kept_without_ctrl)", where, n_whole, len(no_ctrl))
    return table, summary
