"""The models of a search and how their scores combine (``search.models``, ``search.combine``).

A *member* is one entry of ``search.models``: a checkpoint path or a git tag / revision of this
repository (a generation), resolved exactly as stage ``mine`` resolves ``mine.model``
(:func:`darkhaloscope.model.mining.resolve_model`: ``data/model/best.pt`` at that revision, read
through DVC). Each member's raw output is its float32 logit.

Calibration: each member gets Platt scaling ``P_i = sigmoid(a_i * logit_i + b_i)`` fitted on the
val split (:func:`darkhaloscope.metrics.fit_platt`); a probability at the val split's class
balance (about half injected lenses), not at the survey's lens prevalence.

The ensemble score (``search.combine``):

- ``mean_prob`` (default): the mean of the members' calibrated probabilities, in [0, 1];
- ``rank_mean``: the mean of the members' normalised ranks ``F_i(logit_i)``, where ``F_i`` is
  the empirical distribution of member i's logits over a reference set (the scored population
  itself, unless another is given): ``F(v) = (#{ref < v} + #{ref == v} / 2) / #ref``, in (0, 1).
  Ranks are insensitive to how each member's logits are scaled; they depend on the reference
  (stage ``evaluate`` ranks within the test split, stage ``search`` within the searched
  population).

With one member, ``mean_prob`` is that member's calibrated probability, which orders the rows
as its logit does.

The calibrated probability of the ensemble (both methods) is Platt scaling, fitted on val, of
``logit(mean_i P_i)``: the mean of calibrated probabilities is itself under-confident when the
members disagree, and the second fit corrects that (with one member it is the identity up to the
fit's tolerance).

:func:`evaluation_metrics` is what stage ``evaluate`` adds to ``metrics/eval.json``: the
ensemble's test-split rates next to every member's, with counts and bootstrap intervals, and
whether the ensemble beats its best member at tpr@fpr1e-3 (a paired bootstrap interval of the
difference).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from darkhaloscope import metrics as M
from darkhaloscope.model.mining import resolve_model

#: the current generation's model (stage train's output): its val / test scores are stage score's
CURRENT_MODEL = "data/model/best.pt"
COMBINE_METHODS: tuple[str, ...] = ("mean_prob", "rank_mean")
#: the rates reported per member and for the ensemble (metric names as in metrics/eval.json)
ENSEMBLE_FPR_TARGETS: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
#: the operating point at which the ensemble is compared with its best member
COMPARE_FPR = 1e-3
#: probabilities are clipped to [EPS, 1 - EPS] before their logit is taken
EPS = 1e-12


@dataclass(frozen=True)
class Member:
    """One model of ``search.models``: its entry, the local checkpoint and the checkpoint's sha256."""

    index: int
    ref: str
    path: str
    sha256: str

    @property
    def label(self) -> str:
        return f"member_{self.index}"


def file_sha256(path: str, block: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_members(refs: Sequence[str], workdir: str) -> list[Member]:
    """The members of ``search.models`` (paths or git tags; tags are copied into ``workdir``).

    An empty list, or two entries with the same checkpoint bytes, is a ValueError naming the
    entries (an ensemble of a model with itself only repeats it)."""
    if not refs:
        raise ValueError("search.models: expected at least one checkpoint path or git tag, got []")
    out: list[Member] = []
    for i, ref in enumerate(refs):
        path = resolve_model(str(ref), workdir, key=f"search.models[{i}]")
        digest = file_sha256(path)
        for m in out:
            if m.sha256 == digest:
                raise ValueError(f"search.models[{i}] {ref!r} has the same checkpoint bytes as search.models"
                                 f"[{m.index}] {m.ref!r}: list each model once")
        out.append(Member(i, str(ref), path, digest))
    return out


def is_current(member: Member, current: str = CURRENT_MODEL) -> bool:
    """True when the member's checkpoint has the bytes of ``current`` (whose scores stage score wrote)."""
    return os.path.isfile(current) and (os.path.abspath(member.path) == os.path.abspath(current)
                                        or file_sha256(current) == member.sha256)


def member_split_scores(members: Sequence[Member], files: Sequence[str], current_table: pa.Table | None,
                        current: str = CURRENT_MODEL) -> list[pa.Table]:
    """Per member, its (sample_id, label, logit) table of a split's stamp ``files``.

    The current model's table is ``current_table`` (stage score's ``data/scores/<split>.parquet``)
    when given; every other member scores the files itself
    (:func:`darkhaloscope.model.score.score_files`, the model's own preprocessing)."""
    from darkhaloscope.model.score import score_files

    out = []
    for m in members:
        if current_table is not None and is_current(m, current):
            out.append(current_table.select(["sample_id", "label", "logit"]))
        else:
            table, _ = score_files(m.path, list(files))
            out.append(table.select(["sample_id", "label", "logit"]))
    return out


def align(tables: Sequence[pa.Table], where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(sample_ids, labels, logits (n, k) float32, rows left out) over the rows every member scored.

    Members may drop different rows (a metadata model drops rows with non-finite metadata); the
    rows not scored by every member are left out and counted. Sorted by sample_id. Labels that
    disagree between members are a ValueError naming ``where``."""
    ids = [np.asarray(t.column("sample_id").to_numpy(), np.int64) for t in tables]
    common = ids[0]
    for a in ids[1:]:
        common = np.intersect1d(common, a)
    common = np.unique(common)
    left_out = int(len(np.unique(np.concatenate(ids))) - len(common))
    logits = np.empty((len(common), len(tables)), np.float32)
    labels = None
    for j, (t, a) in enumerate(zip(tables, ids)):
        order = np.argsort(a, kind="stable")
        pos = order[np.searchsorted(a, common, sorter=order)]
        logits[:, j] = np.asarray(t.column("logit").to_numpy(), np.float32)[pos]
        lab = np.asarray(t.column("label").to_numpy(), np.int8)[pos]
        if labels is None:
            labels = lab
        elif not np.array_equal(labels, lab):
            raise ValueError(f"{where}: the members' score tables disagree on the labels of the same sample ids")
    return common, (labels if labels is not None else np.zeros(0, np.int8)), logits, left_out


def fit_calibrations(labels: np.ndarray, logits: np.ndarray) -> list[tuple[float, float]]:
    """Platt (a, b) per member (columns of ``logits``), fitted on val (labels 1 = lens)."""
    return [M.fit_platt(logits[:, j], labels) for j in range(logits.shape[1])]


def calibrated(logits: np.ndarray, platt: Sequence[tuple[float, float]]) -> np.ndarray:
    """(n, k) float64 calibrated probabilities of the members."""
    logits = np.asarray(logits)
    out = np.empty(logits.shape, np.float64)
    for j, (a, b) in enumerate(platt):
        out[:, j] = M.apply_platt(logits[:, j], a, b)
    return out


def normalised_ranks(values: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """``F(v) = (#{ref < v} + #{ref == v} / 2) / #ref`` for every value (float64, in (0, 1) for the
    reference's own values); ``reference`` defaults to ``values`` (mid-ranks within the set)."""
    v = np.asarray(values, np.float64)
    ref = np.sort(v if reference is None else np.asarray(reference, np.float64))
    if ref.size == 0:
        raise ValueError("normalised_ranks: empty reference set")
    lo = np.searchsorted(ref, v, side="left")
    hi = np.searchsorted(ref, v, side="right")
    return (lo + 0.5 * (hi - lo)) / ref.size


def combine(logits: np.ndarray, platt: Sequence[tuple[float, float]], method: str,
            reference: np.ndarray | None = None) -> np.ndarray:
    """The ensemble score (float64, (n,)) of member ``logits`` (n, k); see the module docstring.

    ``reference`` (m, k): the logits the ranks of ``rank_mean`` are taken against (default: the
    rows themselves); unused by ``mean_prob``."""
    if method not in COMBINE_METHODS:
        raise ValueError(f"search.combine: expected one of {list(COMBINE_METHODS)}, got {method!r}")
    logits = np.asarray(logits)
    if method == "mean_prob":
        return calibrated(logits, platt).mean(axis=1)
    ranks = np.empty(logits.shape, np.float64)
    for j in range(logits.shape[1]):
        ranks[:, j] = normalised_ranks(logits[:, j], None if reference is None else reference[:, j])
    return ranks.mean(axis=1)


def logit_of(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of probabilities clipped to [EPS, 1 - EPS] (float64)."""
    q = np.clip(np.asarray(p, np.float64), EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


def fit_ensemble_calibration(labels: np.ndarray, logits: np.ndarray,
                             platt: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Platt (a, b) of ``logit(mean_i P_i)`` fitted on val: the ensemble's calibrated probability."""
    return M.fit_platt(logit_of(calibrated(logits, platt).mean(axis=1)), labels)


def ensemble_probability(logits: np.ndarray, platt: Sequence[tuple[float, float]],
                         ens_platt: tuple[float, float]) -> np.ndarray:
    """The ensemble's calibrated probability P(lens) (float64) at the val split's class balance."""
    return M.apply_platt(logit_of(calibrated(logits, platt).mean(axis=1)), *ens_platt)


# ----------------------------------------------------------------------------- evaluate's metrics


def rate_metrics(labels: np.ndarray, scores: np.ndarray, prefix: str, n_boot: int, seed: int) -> dict:
    """``<prefix>_auroc`` (with its bootstrap interval), ``<prefix>_n_pos`` / ``_n_neg`` and
    ``<prefix>_tpr@fpr<t>`` with ``_n_tp``, ``_n_fp``, ``_ci_lo``, ``_ci_hi`` for
    :data:`ENSEMBLE_FPR_TARGETS` (:func:`darkhaloscope.metrics.summary`)."""
    s = M.summary(labels, scores, fpr_targets=ENSEMBLE_FPR_TARGETS, tpr_targets=(), n_boot=n_boot, seed=seed)
    s["auroc_ci_lo"], s["auroc_ci_hi"] = M.bootstrap_ci(labels, scores, "auroc", n_boot=n_boot, seed=seed)
    return {f"{prefix}_{k}": v for k, v in s.items()}


def paired_difference_ci(labels: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str, n_boot: int,
                         seed: int) -> tuple[float | None, float | None]:
    """95% interval of ``metric(a) - metric(b)`` over stratified bootstrap resamples of the rows,
    the same resample for both scorers (a paired bootstrap). None when ``n_boot`` is 0."""
    if n_boot <= 0:
        return None, None
    y = np.asarray(labels).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng([int(seed), 0xD1FF])
    diffs = np.empty(int(n_boot))
    for r in range(int(n_boot)):
        idx = np.concatenate([pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]])
        yy = y[idx]
        diffs[r] = M.compute_roc(yy, a[idx]).metric(metric) - M.compute_roc(yy, b[idx]).metric(metric)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(lo), float(hi)


def compare_members(labels: np.ndarray, member_scores: np.ndarray, ensemble: np.ndarray, out: dict,
                    n_boot: int, seed: int) -> dict:
    """The ensemble against its best member at tpr@fpr :data:`COMPARE_FPR` (ties: the higher AUROC,
    then the lower index), given the per-scorer metrics already in ``out``."""
    name = M.metric_name("tpr@fpr", COMPARE_FPR)
    k = member_scores.shape[1]
    best = max(range(k), key=lambda i: (out[f"member_{i}_{name}"], out[f"member_{i}_auroc"], -i))
    delta = out[f"ensemble_{name}"] - out[f"member_{best}_{name}"]
    lo, hi = paired_difference_ci(labels, ensemble, member_scores[:, best], name, n_boot, seed)
    return {"ensemble_best_member": best,
            f"ensemble_best_member_{name}": out[f"member_{best}_{name}"],
            f"ensemble_minus_best_member_{name}": float(delta),
            f"ensemble_minus_best_member_{name}_ci_lo": lo,
            f"ensemble_minus_best_member_{name}_ci_hi": hi,
            f"ensemble_beats_best_member@{name.split('@')[1]}": bool(delta > 0),
            f"ensemble_beats_best_member@{name.split('@')[1]}_ci_excludes_0": bool(lo is not None and lo > 0)}


def ensemble_test_metrics(val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], method: str,
                          n_boot: int = 200, seed: int = 0) -> dict:
    """The metrics of :func:`evaluation_metrics` from aligned (labels, logits (n, k)) of val and test.

    Members are calibrated on val; ``rank_mean`` ranks within the test split."""
    (yv, lv), (yt, lt) = val, test
    platt = fit_calibrations(yv, lv)
    ens = combine(lt, platt, method)
    out: dict = {"ensemble_members": int(lt.shape[1])}
    out.update(rate_metrics(yt, ens, "ensemble", n_boot, seed))
    for i in range(lt.shape[1]):
        out.update(rate_metrics(yt, lt[:, i].astype(np.float64), f"member_{i}", n_boot, seed))
    out.update(compare_members(yt, lt.astype(np.float64), ens, out, n_boot, seed))
    return out


def evaluation_metrics(p: dict, val: pa.Table, test: pa.Table, root: str, n_boot: int = 200,
                       seed: int | None = None) -> dict:
    """What stage ``evaluate`` adds to metrics/eval.json for ``search.models``.

    One model: ``{"ensemble_members": 1}`` and nothing else. Several: every member scores the
    val and test stamps of ``root`` (the current model's scores are ``val`` / ``test``, stage
    score's tables), each is calibrated on val, the ensemble (``search.combine``) and every
    member are rated on test (``ensemble_*`` and ``member_<i>_*``: AUROC and tpr@fpr 1e-4, 1e-3,
    1e-2 with counts and bootstrap intervals), and ``ensemble_beats_best_member@fpr1e-3`` says
    whether the ensemble beats its best member there (``ensemble_minus_best_member_tpr@fpr1e-3``
    with a paired bootstrap interval). ``ensemble_rows_left_out`` counts the val + test rows
    that not every member scored.
    """
    from darkhaloscope.stamps.format import list_stamp_files

    s = p["search"]
    if len(s["models"]) < 2:
        return {"ensemble_members": len(s["models"])}
    seed = p["seed"] if seed is None else seed
    with tempfile.TemporaryDirectory() as tmp:
        members = resolve_members(s["models"], tmp)
        aligned = {}
        for split, table in (("val", val), ("test", test)):
            tables = member_split_scores(members, list_stamp_files(root, split), table)
            _, y, logits, left = aligned[split] = align(tables, f"search.models on the {split} split")
            if len(np.unique(y)) < 2:
                raise ValueError(f"search.models: the {split} rows every member scored hold one class only")
    out = ensemble_test_metrics(aligned["val"][1:3], aligned["test"][1:3], s["combine"], n_boot, seed)
    out["ensemble_rows_left_out"] = int(aligned["val"][3] + aligned["test"][3])
    return out


__all__ = [
    "CURRENT_MODEL", "COMBINE_METHODS", "Member", "align", "calibrated", "combine", "ensemble_probability",
    "ensemble_test_metrics", "evaluation_metrics", "file_sha256", "fit_calibrations", "fit_ensemble_calibration",
    "is_current", "logit_of", "member_split_scores", "normalised_ranks", "resolve_members",
]
