"""Phase 5 training loop: curriculum stages, early stopping, checkpoints, exact resume.

One readable loop (``fit_stage``) with small helpers beside it (checkpoint I/O in
:mod:`darkhaloscope.model.checkpoint`, evaluation in ``evaluate_scores``, the device, the
forward pass and the sigmoid in :mod:`darkhaloscope.model.inference`, torchrun plumbing in
:mod:`darkhaloscope.model.distributed`). Scores are sigmoids of float32 logits (bf16
sigmoids create ties). On CUDA the forward pass runs under bf16 autocast; on CPU everything
is float32 and deterministic. Every checkpoint carries the run's preprocessing recipe
(:class:`darkhaloscope.model.preprocess.Preprocess`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from darkhaloscope import metrics as M
from darkhaloscope.constants import FPR_TARGETS, TPR_TARGETS
from darkhaloscope.model.checkpoint import load_checkpoint, save_checkpoint
from darkhaloscope.model.distributed import barrier, init_distributed, is_main_process, sync_optimizer
from darkhaloscope.model.inference import device_and_amp, predict, sigmoid
from darkhaloscope.model.loader import StampDataset, StampIndex, make_loader
from darkhaloscope.model.losses import build_loss
from darkhaloscope.model.nets import MetaScaler, build_model, check_meta_cols
from darkhaloscope.model.preprocess import NormConfig
from darkhaloscope.params import ParamsError
from darkhaloscope.stamps.seeds import resolve_stamp_root
from darkhaloscope.stamps.format import files_fingerprint, list_stamp_files

log = logging.getLogger(__name__)

COLLAPSE_FRAC = 0.5  # binary_score_frac above this is a calibration-collapse warning (seeds C1/C4)


@dataclass
class Setup:
    """What a training run needs besides the data: from params.yaml's `train`, `loss`, `focal`."""

    arch: str
    width: int
    stem: str
    input_channels: int
    ctrl_dropout: float
    core_dropout: float
    core_dropout_radius: float
    dropout: float
    meta_cols: tuple
    norm: NormConfig
    augment: bool
    batch_size: int
    num_workers: int
    weight_decay: float
    scheduler: str
    t0: int
    t_mult: int
    eta_min: float
    grad_clip: float
    loss: str
    focal_alpha: float
    focal_gamma: float
    label_smoothing: float
    pos_weight: float
    exclude_bricks: tuple
    hard_negative_repeat: int
    monitor: str
    patience: int
    min_delta: float
    seed: int
    curriculum: list

    @classmethod
    def from_params(cls, p: dict) -> "Setup":
        t = p["train"]
        try:  # seeds' E1: refuse label-derived metadata up front
            check_meta_cols(list(t["meta_cols"]))
        except (ValueError, TypeError) as e:
            raise ParamsError(f"train.meta_cols: {e}") from None
        return cls(
            arch=t["arch"], width=int(t["width"]), stem=t["stem"], input_channels=int(t["input_channels"]),
            ctrl_dropout=float(t["ctrl_dropout"]),
            core_dropout=float(t["core_dropout"]), core_dropout_radius=float(t["core_dropout_radius"]),
            dropout=float(t["dropout"]), meta_cols=tuple(t["meta_cols"]),
            norm=NormConfig(method=t["norm_method"], outer_radius=float(t["norm_outer_radius"]),
                            clip=tuple(float(c) for c in t["clip"])),
            augment=bool(t["augment"]), batch_size=int(t["batch_size"]), num_workers=int(t["num_workers"]),
            weight_decay=float(t["weight_decay"]), scheduler=t["scheduler"], t0=int(t["t0"]),
            t_mult=int(t["t_mult"]), eta_min=float(t["eta_min"]), grad_clip=float(t["grad_clip"]),
            loss=p["loss"], focal_alpha=float(p["focal"]["alpha"]), focal_gamma=float(p["focal"]["gamma"]),
            label_smoothing=float(t["label_smoothing"]), pos_weight=float(t["pos_weight"]),
            exclude_bricks=tuple(t["exclude_bricks"]), hard_negative_repeat=int(t["hard_negative_repeat"]),
            monitor=t["monitor"], patience=int(t["patience"]), min_delta=float(t["min_delta"]),
            seed=int(t["seed"]), curriculum=list(t["curriculum"]),
        )

    def fingerprint(self) -> str:
        """Hash of every setting; a checkpoint only resumes a run with the same fingerprint."""
        d = {k: (v.to_dict() if isinstance(v, NormConfig) else v) for k, v in self.__dict__.items()}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


def evaluate_scores(labels: np.ndarray, scores: np.ndarray, logits: np.ndarray, loss_fn) -> dict:
    """The seeds' per-epoch evaluation fields (history.json)."""
    out = {"n_eval": int(len(labels)), "pos_eval": int(labels.sum()), "neg_eval": int((1 - labels).sum())}
    with torch.no_grad():
        out["val_loss"] = float(loss_fn(torch.from_numpy(logits), torch.from_numpy(labels.astype(np.float32))))
    if out["pos_eval"] and out["neg_eval"]:
        out["auroc"] = M.auroc(labels, scores)
        for t in FPR_TARGETS:
            out[M.metric_name("tpr@fpr", t)] = M.tpr_at_fpr(labels, scores, t)
        for t in TPR_TARGETS:
            out[M.metric_name("fpr@tpr", t)] = M.fpr_at_tpr(labels, scores, t)
    out["binary_score_frac"] = M.binary_score_frac(scores)
    out["calibration_collapse_warning"] = bool(out["binary_score_frac"] > COLLAPSE_FRAC)
    neg, pos = np.sort(scores[labels == 0])[::-1], np.sort(scores[labels == 1])
    out["top50_neg_scores"] = [float(s) for s in neg[:50]]
    out["bottom50_pos_scores"] = [float(s) for s in pos[:50]]
    return out


def _scheduler(opt, setup: Setup, epochs: int):
    if setup.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=setup.eta_min)
    if setup.scheduler == "cosine_warm_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=setup.t0, T_mult=setup.t_mult,
                                                                    eta_min=setup.eta_min)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def improved(value: float, best: float | None, monitor: str, min_delta: float) -> bool:
    """Early-stopping comparison: val_loss is minimised, every other monitor maximised."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    if monitor == "val_loss":
        return value < best - min_delta
    return value > best + min_delta


def build_index(files, setup: Setup, stage: dict | None, **kw):
    """The stage's index of ``files`` (stage given: curriculum thresholds and exclude_bricks apply;
    None: an evaluation index); an empty class names the params that emptied it."""
    try:
        return StampIndex.build(
            files,
            min_theta_over_psf=float(stage["min_theta_over_psf"]) if stage else 0.0,
            min_arc_snr=float(stage["min_arc_snr"]) if stage else 0.0,
            require_ctrl=setup.input_channels == 6,
            meta_cols=setup.meta_cols,
            exclude_bricks=setup.exclude_bricks if stage else (),
            **kw,
        )
    except ValueError as e:
        if "is left after the filters" not in str(e):
            raise
        where = (f"train.curriculum stage {stage['name']!r} (min_theta_over_psf {stage['min_theta_over_psf']}, "
                 f"min_arc_snr {stage['min_arc_snr']})" if stage else "the validation split")
        raise ValueError(f"{where}, train.input_channels {setup.input_channels}, train.meta_cols "
                         f"{list(setup.meta_cols)}: {e}. Lower the thresholds in params.yaml or check the stamps "
                         f"stage's metrics (metrics/stamps.json)") from None


def check_paired_stamps(setup: Setup, stamps_root: str, split: str, files: list[str]) -> None:
    """``train.input_channels: 6`` feeds each stamp with its paired control: a ParamsError naming the
    key, the stamp directory and the first file when ``files`` have no ``ctrl_stamp`` column
    (stamps made with ``manifest.control_type: unpaired``), before any training work."""
    if setup.input_channels != 6:
        return
    import pyarrow.parquet as pq

    from darkhaloscope.stamps.format import CTRL_STAMP_COLUMN

    for f in files:
        try:
            names = pq.read_schema(f).names
        except Exception:  # an unreadable file is reported by the index, naming it
            continue
        if CTRL_STAMP_COLUMN not in names:
            raise ParamsError(
                f"train.input_channels: 6 needs paired controls (each stamp's own un-injected cutout, the "
                f"{CTRL_STAMP_COLUMN!r} column), but the {split} stamps in {os.path.join(stamps_root, split)} "
                f"have none (e.g. {f}): make them with manifest.control_type: paired in params.yaml and re-run "
                f"stage stamps (dvc repro stamps), or set train.input_channels: 3")


def add_hard_negatives(index, setup: Setup, stamps_root: str, hard_negatives: str | None):
    """Append the mined hard negatives (sample ids in ``hard_negatives``, rows in the ``parent``
    split) to a training index, each repeated ``hard_negative_repeat`` times per epoch.

    Returns (index, number of hard negatives, the hard negatives' own index summary or None)."""
    import pyarrow.parquet as pq

    if not hard_negatives or not os.path.exists(hard_negatives):
        return index, 0, None
    ids = pq.read_table(hard_negatives, columns=["sample_id"]).column(0).to_numpy()
    if len(ids) == 0:
        return index, 0, None
    files = list_stamp_files(stamps_root, "parent")
    check_paired_stamps(setup, stamps_root, "parent", files)
    hn = build_index(files, setup, None, include_ids=ids, require_both_classes=False)
    if hn.n_positive:
        raise ValueError(f"{hard_negatives}: {hn.n_positive} mined rows are injected (positives); expected none")
    both = index.with_extra(hn, setup.hard_negative_repeat)
    summary = hn.summary()
    # mined rows whose sample id the train split already holds are not added (with_extra warns)
    key = "duplicate_sample_id"
    already = both.counts.get(key, 0) - index.counts.get(key, 0) - hn.counts.get(key, 0)
    if already:
        summary["not_added_already_in_train"] = already
    n_hard = hn.n_samples - already
    log.info("adding %d hard negatives x %d repeats from %s", n_hard, setup.hard_negative_repeat, hard_negatives)
    return both, n_hard, summary


def run_fingerprint(setup: Setup, stage: dict, init_from: str | None, files) -> dict:
    """What a checkpoint may only be resumed with: the settings (every train param, the stage, the
    bytes of the checkpoint it started from) and the data (the stamp files' identity, see
    :func:`darkhaloscope.stamps.format.files_fingerprint`: train, val and hard-negative files)."""
    start = "scratch"
    if init_from:
        with open(init_from, "rb") as fh:
            start = hashlib.sha256(fh.read()).hexdigest()[:16]
    settings = setup.fingerprint() + ":" + json.dumps(stage, sort_keys=True) + ":" + start
    return {"settings": settings, "data": files_fingerprint(files)[:16]}


def resume_mismatch(saved, current: dict) -> str | None:
    """None when a checkpoint with fingerprint ``saved`` may be resumed, else the reason why not."""
    if not isinstance(saved, dict):
        return "it was written by an older version (no data fingerprint)"
    if saved.get("data") != current["data"]:
        return "it was trained on other data (the train/val/hard-negative stamp files differ)"
    if saved.get("settings") != current["settings"]:
        return "it was trained with other settings (train params, curriculum stage or starting checkpoint)"
    return None


def fit_stage(setup: Setup, stage: dict, stamps_root: str, out_dir: str, init_from: str | None,
              resume: bool = True, progress: bool = True, hard_negatives: str | None = None) -> dict:
    """Train one curriculum stage into ``out_dir`` (best.pt, last.pt, history.json); return its summary."""
    os.makedirs(out_dir, exist_ok=True)
    device, amp = device_and_amp()
    torch.manual_seed(setup.seed)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    tr_index = build_index(list_stamp_files(stamps_root, "train"), setup, stage)
    tr_summary = tr_index.summary()  # the train split's own counts (the mined rows are reported apart)
    tr_index, n_hard, hn_summary = add_hard_negatives(tr_index, setup, stamps_root, hard_negatives)
    va_index = build_index(list_stamp_files(stamps_root, "val"), setup, None)
    scaler = None
    if setup.meta_cols:
        scaler = MetaScaler.fit(tr_index.read_kept_columns(list(setup.meta_cols)), list(setup.meta_cols))
    model = build_model(setup.arch, setup.input_channels, setup.dropout, len(setup.meta_cols), setup.width,
                        setup.stem)
    if init_from:
        model.load_state_dict(load_checkpoint(init_from)["model_state"])
        log.info("stage %s starts from %s", stage["name"], init_from)
    model.to(device)
    core = model  # the un-wrapped module: checkpoints and evaluation use it
    rank, world = init_distributed()
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=float(stage["lr"]), weight_decay=setup.weight_decay)
    sched = _scheduler(opt, setup, int(stage["epochs"]))
    loss_fn = build_loss(setup.loss, focal_alpha=setup.focal_alpha, focal_gamma=setup.focal_gamma,
                         label_smoothing=setup.label_smoothing, pos_weight=setup.pos_weight)
    eval_loss = build_loss(setup.loss, focal_alpha=setup.focal_alpha, focal_gamma=setup.focal_gamma,
                           pos_weight=setup.pos_weight)
    train_ds = StampDataset(tr_index, setup.batch_size, setup.norm, setup.input_channels, setup.meta_cols,
                            scaler, shuffle=True, augment=setup.augment, seed=setup.seed,
                            ctrl_dropout=setup.ctrl_dropout if setup.input_channels == 6 else 0.0,
                            core_dropout_p=setup.core_dropout, core_dropout_radius=setup.core_dropout_radius)
    val_ds = StampDataset(va_index, max(256, setup.batch_size), setup.norm, setup.input_channels,
                          setup.meta_cols, scaler, shuffle=False, augment=False, seed=setup.seed,
                          rank=0, world_size=1)
    train_loader = make_loader(train_ds, setup.num_workers, persistent_workers=setup.num_workers > 0)
    val_loader = make_loader(val_ds, 0)

    fp = run_fingerprint(setup, stage, init_from,
                         tr_index.files + va_index.files + ([hard_negatives] if n_hard else []))
    state = {"epoch": 0, "best": None, "best_epoch": -1, "bad_epochs": 0, "history": [], "stopped_early": False}
    last_path, best_path = os.path.join(out_dir, "last.pt"), os.path.join(out_dir, "best.pt")
    if resume and os.path.exists(last_path):
        ck = load_checkpoint(last_path)
        why = resume_mismatch(ck.get("fingerprint"), fp)
        if why is None and os.path.exists(best_path):
            core.load_state_dict(ck["model_state"])
            opt.load_state_dict(ck["optimizer_state"])
            sched.load_state_dict(ck["scheduler_state"])
            torch.set_rng_state(ck["torch_rng"])
            state = ck["train_state"]
            log.info("resumed stage %s from %s at epoch %d", stage["name"], last_path, state["epoch"])
        else:
            log.info("not resuming stage %s from %s: %s; training from the start", stage["name"], last_path,
                     why or f"{best_path} is missing")

    # the checkpoint carries the preprocessing recipe the datasets use (scoring reads it back)
    extra = {**train_ds.pre.to_dict(), "stage": stage["name"], "fingerprint": fp, "index_train": tr_summary,
             "index_val": va_index.summary(), **({"index_hard_negatives": hn_summary} if hn_summary else {})}
    epochs = int(stage["epochs"])
    while state["epoch"] < epochs and not state["stopped_early"]:
        epoch = state["epoch"]
        train_ds.set_epoch(epoch)
        model.train()
        tot, n, gnorms = 0.0, 0, []
        bar = tqdm(train_loader, desc=f"{stage['name']} epoch {epoch}", unit="batch",
                   total=train_ds.n_batches(epoch, setup.num_workers),
                   disable=not progress or rank != 0, leave=False, mininterval=10)
        # ranks may hold different numbers of batches (whole row groups are dealt to shards):
        # DDP's join context lets the ranks that finish early shadow the others' all-reduces
        joiner = model.join() if world > 1 else contextlib.nullcontext()
        with joiner:
            tot, n = _train_epoch(model, bar, opt, loss_fn, device, amp, setup.grad_clip, gnorms)
        if world > 1:
            import torch.distributed as dist

            t = torch.tensor([tot, n], dtype=torch.float64, device=device)  # nccl reduces CUDA tensors only
            dist.all_reduce(t)
            tot, n = float(t[0]), int(t[1])
            sync_optimizer(opt, len(gnorms), rank, world, device)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        ids, labels, logits = predict(core, val_loader, device, amp,
                                      progress=f"{stage['name']} epoch {epoch} val" if progress and rank == 0 else None)
        rec = {"stage": stage["name"], "epoch": epoch, "train_loss": tot / max(n, 1), "train_samples": n,
               "lr": lr, "grad_norm_mean": float(np.mean(gnorms)) if gnorms else 0.0,
               "grad_norm_max": float(np.max(gnorms)) if gnorms else 0.0,
               **evaluate_scores(labels, sigmoid(logits), logits, eval_loss)}
        if rec["calibration_collapse_warning"]:
            log.warning("epoch %d: binary_score_frac %.3f > %.2f: calibration collapse (seeds C1/C4)",
                        epoch, rec["binary_score_frac"], COLLAPSE_FRAC)
        value = rec.get(setup.monitor)
        if setup.monitor not in rec:
            raise ValueError(f"train.monitor {setup.monitor!r} is not an evaluation field; valid: "
                             f"{', '.join(k for k in rec if not isinstance(rec[k], list))}")
        state["history"].append(rec)
        if improved(value, state["best"], setup.monitor, setup.min_delta):
            state.update(best=value, best_epoch=epoch, bad_epochs=0)
            if is_main_process():
                save_checkpoint(best_path, core, extra={**extra, "epoch": epoch, "metrics": rec})
        else:
            state["bad_epochs"] += 1
            if state["bad_epochs"] >= setup.patience:
                state["stopped_early"] = True
        state["epoch"] = epoch + 1
        log.info("%s epoch %d: train_loss %.4f val_loss %.4f auroc %s %s %s", stage["name"], epoch,
                 rec["train_loss"], rec["val_loss"], _fmt(rec.get("auroc")), setup.monitor, _fmt(value))
        if is_main_process():
            save_checkpoint(last_path, core, extra={**extra, "epoch": epoch, "metrics": rec,
                                                    "optimizer_state": opt.state_dict(),
                                                    "scheduler_state": sched.state_dict(),
                                                    "torch_rng": torch.get_rng_state(), "train_state": state})
        barrier(world)
    if not os.path.exists(best_path):
        raise RuntimeError(f"stage {stage['name']}: no epoch produced a finite {setup.monitor}; no best.pt")
    return {"stage": stage["name"], "best_epoch": state["best_epoch"], "best_" + setup.monitor: state["best"],
            "epochs_run": state["epoch"], "stopped_early": state["stopped_early"], "history": state["history"],
            "train_index": tr_summary, "val_index": va_index.summary(), "hard_negatives": n_hard,
            **({"hard_negative_index": hn_summary} if hn_summary else {})}


def _train_epoch(model, batches, opt, loss_fn, device, amp, grad_clip: float, gnorms: list) -> tuple[float, int]:
    """One pass over the training batches; returns (summed loss, samples) and fills gnorms."""
    tot, n = 0.0, 0
    for x, y, meta, _ in batches:
        x, y, meta = x.to(device), y.to(device), meta.to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x, meta if meta.shape[1] else None)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
        gnorms.append(float(gn))
        opt.step()
        tot += loss.item() * len(y)
        n += len(y)
        if hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{tot / max(n, 1):.4f}", refresh=False)
    return tot, n


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def train(params: dict, stamps_root: str, out_dir: str, resume: bool = True, progress: bool = True,
          seeds_cache: str | None = None, hard_negatives: str | None = None) -> dict:
    """Run every curriculum stage; each starts from the previous stage's best.pt.

    Writes ``out_dir/<stage>/{best,last}.pt`` and returns the per-stage summaries;
    ``out_dir/best.pt`` is a copy of the final stage's best checkpoint.
    ``stamps_root`` may also hold the seeds' Phase 4c parquet (``region_split=<split>/``,
    ``stamp_npz`` blobs): it is then converted once into ``seeds_cache`` (default
    ``$DHS_SEEDS_CACHE`` or ``<stamps_root>_converted``) and read from there
    (:func:`darkhaloscope.stamps.seeds.resolve_stamp_root`).
    """
    setup = Setup.from_params(params)  # params problems (e.g. a forbidden meta column) before any data is read
    stamps_root = resolve_stamp_root(stamps_root, seeds_cache)
    for split in ("train", "val"):  # 6 channels on unpaired stamps: one clear error before any training work
        check_paired_stamps(setup, stamps_root, split, list_stamp_files(stamps_root, split))
    stages, prev = [], None
    for stage in setup.curriculum:
        res = fit_stage(setup, stage, stamps_root, os.path.join(out_dir, stage["name"]), prev, resume, progress,
                        hard_negatives)
        stages.append(res)
        prev = os.path.join(out_dir, stage["name"], "best.pt")
    import shutil

    if is_main_process():
        shutil.copyfile(prev, os.path.join(out_dir, "best.pt"))
    return {"stages": stages}


__all__ = ["Setup", "train", "fit_stage", "evaluate_scores"]
