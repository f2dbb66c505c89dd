"""Tests of the Phase 5 training loop (darkhaloscope.model.train), its checkpoints and scoring.

Everything runs on CPU (float32, deterministic) on a tiny, learnable stamp set written
under tmp_path: positives carry a bright ring (an "Einstein ring") inside the
normalisation annulus' hole, controls are plain noise.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import _stamps as S
import darkhaloscope.model.train as train_mod
from darkhaloscope.model.checkpoint import load_checkpoint, model_from_checkpoint
from darkhaloscope.model.preprocess import NormConfig, normalize
from darkhaloscope.model.losses import LOSSES, build_loss
from darkhaloscope.model.nets import ARCHS, build_model
from darkhaloscope.outputs import write_json
from darkhaloscope.params import ParamsError, load_params, validate
from darkhaloscope.model.score import STRATA, score_files
from darkhaloscope.stamps.format import list_stamp_files, stamps_from_arrow
from darkhaloscope.model.train import COLLAPSE_FRAC, Setup, evaluate_scores, fit_stage, train

pytestmark = pytest.mark.usefixtures("cpu_only")  # CPU float32 (tests/conftest.py): the equalities below are exact
PARAMS_YAML = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "params.yaml")
N_TRAIN, N_VAL = 96, 64
FPR_KEYS = ("tpr@fpr1e-5", "tpr@fpr1e-4", "tpr@fpr1e-3", "tpr@fpr1e-2")
TPR_KEYS = ("fpr@tpr0.5", "fpr@tpr0.7", "fpr@tpr0.8", "fpr@tpr0.85", "fpr@tpr0.9", "fpr@tpr0.95",
            "fpr@tpr0.99")


# ----------------------------------------------------------------------------- fixtures


def _split(n: int, sid0: int, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    is_ctrl = (np.arange(n) % 2).astype(np.int8)  # alternate: half positives, half controls
    pos = is_ctrl == 0
    stamps = S.ring_stamps(is_ctrl, rng, amp=6.0, colour=S.RING_COLOUR)
    theta = np.where(pos, rng.uniform(0.3, 2.0, n), 0.0)
    cols = {
        "sample_id": np.arange(sid0, sid0 + n, dtype=np.int64),
        "row_id": np.arange(n, dtype=np.int64) + 10 * sid0,
        "is_control": is_ctrl,
        "cutout_ok": np.ones(n, np.int8),
        "theta_e_over_psf": theta,
        "arc_snr": np.where(pos, rng.uniform(1.0, 20.0, n), 0.0),
        "theta_e_arcsec": np.where(pos, theta * 1.3, 0.0),
        "psfsize_r": rng.uniform(0.9, 1.8, n),
        "psfdepth_r": rng.uniform(23.3, 24.0, n),
        "brickname": np.array([f"150{p}p005" for p in (np.arange(n) % 3)]),
    }
    return cols, stamps


@pytest.fixture(scope="module")
def stamps_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("stamps")
    rng = np.random.default_rng(1234)
    for split, n, sid0 in (("train", N_TRAIN, 1000), ("val", N_VAL, 5000)):
        cols, stamps = _split(n, sid0, rng)
        S.make_stamp_file(root / split / "part-00000.parquet", columns=cols, stamps=stamps, row_group_size=32)
    return str(root)


@pytest.fixture(scope="module")
def base_params() -> dict:
    return load_params(PARAMS_YAML)


def make_params(base: dict, epochs: int = 2, **train_overrides) -> dict:
    p = copy.deepcopy(base)
    p["loss"] = "bce"
    p["train"].update(arch="small_cnn", width=8, batch_size=16, num_workers=0, dropout=0.1, augment=True,
                      meta_cols=[], norm_method="outer", norm_outer_radius=16, clip=[-10.0, 10.0],
                      monitor="auroc", patience=10, min_delta=0.0, scheduler="cosine", seed=5,
                      curriculum=[{"name": "main", "epochs": epochs, "lr": 3e-3,
                                   "min_theta_over_psf": 0.0, "min_arc_snr": 0.0}])
    p["train"].update(train_overrides)
    return validate(p, "test params")


def state_of(path: str) -> dict:
    return load_checkpoint(path)["model_state"]


def assert_states_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- resume


class Killed(RuntimeError):
    pass


def test_resume_equals_uninterrupted(stamps_root, base_params, tmp_path, monkeypatch):
    p = make_params(base_params, epochs=4)
    setup = Setup.from_params(p)
    stage = setup.curriculum[0]
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    res_a = fit_stage(setup, stage, stamps_root, a, None, resume=True, progress=False)
    assert res_a["epochs_run"] == 4 and not res_a["stopped_early"]

    real_save = train_mod.save_checkpoint
    writes = []

    def save_then_die(path, model, extra):
        real_save(path, model, extra)
        if os.path.basename(path) == "last.pt":
            writes.append(extra["epoch"])
            if len(writes) == 2:  # epochs 0 and 1 are checkpointed: the process "dies" now
                raise Killed("simulated kill after epoch 1")

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        fit_stage(setup, stage, stamps_root, b, None, resume=True, progress=False)
    assert writes == [0, 1]
    assert load_checkpoint(os.path.join(b, "last.pt"))["train_state"]["epoch"] == 2
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)

    res_b = fit_stage(setup, stage, stamps_root, b, None, resume=True, progress=False)
    assert res_b["epochs_run"] == 4
    assert [r["epoch"] for r in res_b["history"]] == [0, 1, 2, 3]
    for ra, rb in zip(res_a["history"], res_b["history"]):
        for key in ("train_loss", "val_loss", "auroc", "lr", "grad_norm_mean", "train_samples"):
            assert ra[key] == rb[key], (ra["epoch"], key, ra[key], rb[key])
    assert res_a["history"] == res_b["history"]
    assert res_a["best_epoch"] == res_b["best_epoch"]
    assert_states_equal(state_of(os.path.join(a, "last.pt")), state_of(os.path.join(b, "last.pt")))
    assert_states_equal(state_of(os.path.join(a, "best.pt")), state_of(os.path.join(b, "best.pt")))
    # the run learned something (the task is learnable), so the equality is not between two no-ops
    assert res_a["history"][-1]["auroc"] > 0.8
    assert res_a["history"][-1]["train_samples"] == N_TRAIN  # each sample exactly once per epoch (A1)

    # a finished run resumes as a no-op; a different configuration does not pick up the checkpoint
    again = fit_stage(setup, stage, stamps_root, b, None, resume=True, progress=False)
    assert again["history"] == res_b["history"] and again["epochs_run"] == 4
    other = Setup.from_params(make_params(base_params, epochs=4, seed=6))
    res_c = fit_stage(other, stage, stamps_root, b, None, resume=True, progress=False)
    assert res_c["history"][0]["train_loss"] != res_b["history"][0]["train_loss"]


# ----------------------------------------------------------------------------- early stopping


def scripted(monkeypatch, values, monitor):
    """Make evaluate_scores return ``values[epoch]`` for the monitor (the real fields otherwise)."""
    calls = []
    real = train_mod.evaluate_scores

    def fake(labels, scores, logits, loss_fn):
        rec = real(labels, scores, logits, loss_fn)
        rec[monitor] = values[len(calls)]
        calls.append(rec[monitor])
        return rec

    monkeypatch.setattr(train_mod, "evaluate_scores", fake)
    return calls


@pytest.mark.parametrize("monitor, values, patience, min_delta, best_epoch, epochs_run", [
    # higher is better: best 0.6 at epoch 1; 0.6 (tie), 0.55, 0.58 are 3 bad epochs -> stop after epoch 4
    ("auroc", [0.5, 0.6, 0.6, 0.55, 0.58, 0.7, 0.9, 0.9], 3, 0.0, 1, 5),
    # min_delta is measured from the best value: 0.505 and 0.509 do not beat 0.5 + 0.01, 0.52 does
    ("auroc", [0.5, 0.505, 0.509, 0.52, 0.525, 0.529, 0.5295, 0.9], 3, 0.01, 3, 7),
    # val_loss is minimised
    ("val_loss", [1.0, 0.8, 0.9, 0.7, 0.75, 0.71, 0.72, 0.1], 3, 0.0, 3, 7),
    # patience 1: the first non-improving epoch stops
    ("tpr@fpr1e-2", [0.1, 0.2, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9], 1, 0.0, 1, 3),
])
def test_early_stopping(stamps_root, base_params, tmp_path, monkeypatch, monitor, values, patience, min_delta,
                        best_epoch, epochs_run):
    p = make_params(base_params, epochs=len(values), monitor=monitor, patience=patience, min_delta=min_delta,
                    augment=False)
    setup = Setup.from_params(p)
    calls = scripted(monkeypatch, values, monitor)
    out = str(tmp_path / "run")
    res = fit_stage(setup, setup.curriculum[0], stamps_root, out, None, progress=False)
    assert res["stopped_early"] is True
    assert res["epochs_run"] == epochs_run == len(calls) == len(res["history"])
    assert res["best_epoch"] == best_epoch
    assert res["best_" + monitor] == values[best_epoch]
    assert [r[monitor] for r in res["history"]] == values[:epochs_run]
    best = load_checkpoint(os.path.join(out, "best.pt"))
    assert best["epoch"] == best_epoch
    assert best["metrics"][monitor] == values[best_epoch]
    assert best["metrics"]["epoch"] == best_epoch
    last = load_checkpoint(os.path.join(out, "last.pt"))
    assert last["epoch"] == epochs_run - 1 and last["train_state"]["stopped_early"]
    # the best checkpoint holds the weights of the best epoch, not those of the last one
    assert any(not torch.equal(best["model_state"][k], last["model_state"][k]) for k in best["model_state"])
    # a stopped run stays stopped on resume (no further epoch is trained)
    res2 = fit_stage(setup, setup.curriculum[0], stamps_root, out, None, progress=False)
    assert len(calls) == epochs_run and res2["epochs_run"] == epochs_run and res2["stopped_early"]


def test_no_early_stop_when_improving(stamps_root, base_params, tmp_path, monkeypatch):
    values = [0.1, 0.2, 0.3]
    setup = Setup.from_params(make_params(base_params, epochs=3, patience=1, augment=False))
    scripted(monkeypatch, values, "auroc")
    res = fit_stage(setup, setup.curriculum[0], stamps_root, str(tmp_path / "r"), None, progress=False)
    assert res["epochs_run"] == 3 and res["stopped_early"] is False and res["best_epoch"] == 2


def test_unknown_monitor_names_valid_fields(stamps_root, base_params, tmp_path):
    setup = Setup.from_params(make_params(base_params, epochs=1, monitor="tpr@fpr1e-9"))
    with pytest.raises(ValueError, match=r"tpr@fpr1e-9.*valid:.*auroc"):
        fit_stage(setup, setup.curriculum[0], stamps_root, str(tmp_path / "r"), None, progress=False)


def test_nan_monitor_is_never_an_improvement(stamps_root, base_params, tmp_path, monkeypatch):
    setup = Setup.from_params(make_params(base_params, epochs=3, patience=5, augment=False))
    scripted(monkeypatch, [0.4, float("nan"), 0.3], "auroc")
    res = fit_stage(setup, setup.curriculum[0], stamps_root, str(tmp_path / "r"), None, progress=False)
    assert res["best_epoch"] == 0 and res["best_auroc"] == 0.4


# ----------------------------------------------------------------------------- checkpoint / scoring


def test_checkpoint_preprocessing_roundtrip_and_scoring(stamps_root, base_params, tmp_path):
    p = make_params(base_params, epochs=1, norm_method="outer", clip=[-5.0, 20.0],
                    meta_cols=["psfsize_r", "psfdepth_r"])
    setup = Setup.from_params(p)
    out = str(tmp_path / "run")
    fit_stage(setup, setup.curriculum[0], stamps_root, out, None, progress=False)
    ckpt = os.path.join(out, "best.pt")

    model, pre = model_from_checkpoint(ckpt)
    assert pre.norm == NormConfig(method="outer", outer_radius=16, clip=(-5.0, 20.0))
    assert pre.meta_cols == ("psfsize_r", "psfdepth_r")
    assert pre.input_channels == 3
    # the scaler was fitted on the training rows (population std)
    tr = pq.read_table(list_stamp_files(stamps_root, "train"), columns=["psfsize_r", "psfdepth_r"])
    m = np.column_stack([tr.column(c).to_numpy() for c in ("psfsize_r", "psfdepth_r")])
    st = pre.meta_scaler.state_dict()
    assert st["cols"] == ["psfsize_r", "psfdepth_r"]
    np.testing.assert_allclose(st["mean"], m.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(st["std"], m.std(axis=0), rtol=1e-12)
    assert load_checkpoint(ckpt)["meta_scaler"] == st
    assert model.config == {"arch": "small_cnn", "input_channels": 3, "dropout": 0.1, "n_meta": 2, "width": 8, "stem": None}

    # scoring has no way to pass another preprocessing than the checkpoint's (progress is only the bar's label)
    assert list(inspect.signature(score_files).parameters) == ["ckpt_path", "files", "batch_size", "progress"]

    files = list_stamp_files(stamps_root, "val")
    table, summary = score_files(ckpt, files, batch_size=24)
    assert summary["kept"] == N_VAL
    strata_present = [c for c in STRATA if c in pq.read_schema(files[0]).names]
    assert set(strata_present) == {"row_id", "brickname", "theta_e_arcsec", "theta_e_over_psf", "arc_snr",
                                   "psfsize_r", "psfdepth_r"}
    assert table.column_names == ["sample_id", "label", "logit", "score", *strata_present]
    sid = table.column("sample_id").to_numpy()
    assert (np.diff(sid) > 0).all()

    # manual computation: checkpoint's normalisation + scaler, forward, sigmoid
    val = pq.read_table(files[0])
    assert (val.column("sample_id").to_numpy() == sid).all()
    x = normalize(np.array(stamps_from_arrow(val.column("stamp"))), NormConfig("outer", 16, (-5.0, 20.0)))
    raw = np.column_stack([val.column(c).to_numpy() for c in ("psfsize_r", "psfdepth_r")])
    meta = ((raw - m.mean(axis=0)) / m.std(axis=0)).astype(np.float32)
    with torch.no_grad():
        logit = model(torch.from_numpy(x), torch.from_numpy(meta)).numpy()
    np.testing.assert_allclose(table.column("logit").to_numpy(), logit, atol=1e-6, rtol=0)
    expect = 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))
    np.testing.assert_allclose(table.column("score").to_numpy(), expect, atol=1e-6, rtol=0)
    assert (table.column("label").to_numpy() == 1 - val.column("is_control").to_numpy()).all()
    for c in strata_present:
        assert table.column(c).to_pylist() == val.column(c).to_pylist(), c
    # a different normalisation would have given different scores: the check above is not vacuous
    x_full = normalize(np.array(stamps_from_arrow(val.column("stamp"))), NormConfig("full", 16, (-10.0, 10.0)))
    with torch.no_grad():
        other = model(torch.from_numpy(x_full), torch.from_numpy(meta)).numpy()
    assert np.abs(other - logit).max() > 1e-3


# ----------------------------------------------------------------------------- guards


@pytest.mark.parametrize("col", ["arc_snr", "theta_e_over_psf", "is_control", "magnification"])
def test_forbidden_metadata_refused_at_setup(base_params, col):
    p = make_params(base_params, meta_cols=["psfsize_r", col])
    with pytest.raises(ValueError, match=col):
        Setup.from_params(p)


def test_unknown_arch_and_loss_name_valid_values(base_params):
    p = copy.deepcopy(base_params)
    p["train"]["arch"] = "resnet50"
    with pytest.raises(ParamsError) as e:
        validate(p)
    assert "train.arch" in str(e.value) and all(a in str(e.value) for a in ARCHS)
    p = copy.deepcopy(base_params)
    p["loss"] = "mse"
    with pytest.raises(ParamsError) as e:
        validate(p)
    assert "loss" in str(e.value) and all(name in str(e.value) for name in LOSSES)
    with pytest.raises(ValueError) as e:
        build_model("resnet50")
    assert "resnet50" in str(e.value) and all(a in str(e.value) for a in ARCHS)
    with pytest.raises(ValueError) as e:
        build_loss("mse")
    assert "mse" in str(e.value) and all(name in str(e.value) for name in LOSSES)


# ----------------------------------------------------------------------------- curriculum


def test_curriculum_stage2_starts_from_stage1_best(stamps_root, base_params, tmp_path, monkeypatch, caplog):
    stages = [
        {"name": "warm", "epochs": 2, "lr": 3e-3, "min_theta_over_psf": 0.0, "min_arc_snr": 0.0},
        {"name": "hard", "epochs": 1, "lr": 1e-3, "min_theta_over_psf": 1.0, "min_arc_snr": 5.0},
    ]
    p = make_params(base_params, curriculum=stages)
    built, initial = [], []
    real_build, real_sched = train_mod.build_model, train_mod._scheduler

    def build(*a, **k):
        built.append(real_build(*a, **k))
        return built[-1]

    def sched(opt, setup, epochs):  # called right after the (optional) init_from load
        initial.append({k: v.detach().clone() for k, v in built[-1].state_dict().items()})
        return real_sched(opt, setup, epochs)

    monkeypatch.setattr(train_mod, "build_model", build)
    monkeypatch.setattr(train_mod, "_scheduler", sched)
    out = tmp_path / "model"
    with caplog.at_level(logging.INFO, logger="darkhaloscope.model.train"):
        res = train(p, stamps_root, str(out), progress=False)
    assert [s["stage"] for s in res["stages"]] == ["warm", "hard"]
    assert len(initial) == 2
    warm_best = state_of(str(out / "warm" / "best.pt"))
    assert_states_equal(initial[1], warm_best)
    assert any(not torch.equal(initial[0][k], warm_best[k]) for k in warm_best)  # stage 1 starts fresh
    assert f"stage hard starts from {out / 'warm' / 'best.pt'}" in caplog.text
    # out/best.pt is the last stage's best checkpoint
    assert (out / "best.pt").read_bytes() == (out / "hard" / "best.pt").read_bytes()

    # stage thresholds drop positives only, each counted under its reason
    train_tab = pq.read_table(list_stamp_files(stamps_root, "train"))
    pos = train_tab.column("is_control").to_numpy() == 0
    th = train_tab.column("theta_e_over_psf").to_numpy()
    snr = train_tab.column("arc_snr").to_numpy()
    n_theta = int((pos & (th < 1.0)).sum())
    n_snr = int((pos & (th >= 1.0) & (snr < 5.0)).sum())
    assert n_theta > 0 and n_snr > 0
    warm, hard = res["stages"]
    assert warm["train_index"]["kept"] == N_TRAIN
    assert all(v == 0 for v in warm["train_index"]["dropped"].values())
    d = hard["train_index"]["dropped"]
    assert d["below_min_theta_over_psf"] == n_theta and d["below_min_arc_snr"] == n_snr
    assert hard["train_index"]["kept_negative"] == N_TRAIN // 2
    assert hard["train_index"]["kept_positive"] == N_TRAIN // 2 - n_theta - n_snr
    assert hard["train_index"]["filters"]["min_theta_over_psf"] == 1.0
    assert hard["history"][0]["train_samples"] == hard["train_index"]["kept"]
    # validation is never filtered by the curriculum
    assert hard["val_index"]["kept"] == N_VAL and all(v == 0 for v in hard["val_index"]["dropped"].values())


# ----------------------------------------------------------------------------- history fields


def test_history_records_fields(stamps_root, base_params, tmp_path):
    p = make_params(base_params, epochs=2)
    res = train(p, stamps_root, str(tmp_path / "model"), progress=False)
    history = [r for st in res["stages"] for r in st["history"]]
    assert len(history) == 2
    for rec in history:
        for key in ("n_eval", "pos_eval", "neg_eval", *FPR_KEYS, *TPR_KEYS, "auroc", "binary_score_frac",
                    "calibration_collapse_warning", "top50_neg_scores", "bottom50_pos_scores", "train_loss",
                    "val_loss", "lr", "grad_norm_mean"):
            assert key in rec, key
        assert (rec["n_eval"], rec["pos_eval"], rec["neg_eval"]) == (N_VAL, N_VAL // 2, N_VAL // 2)
        for key in (*FPR_KEYS, *TPR_KEYS, "auroc", "binary_score_frac"):
            assert 0.0 <= rec[key] <= 1.0, key
        assert isinstance(rec["calibration_collapse_warning"], bool)
        top, bottom = rec["top50_neg_scores"], rec["bottom50_pos_scores"]
        assert len(top) == min(50, N_VAL // 2) and len(bottom) == min(50, N_VAL // 2)
        assert top == sorted(top, reverse=True) and bottom == sorted(bottom)
        assert all(0.0 <= s <= 1.0 for s in top + bottom)
        assert rec["train_loss"] > 0 and rec["lr"] > 0 and rec["grad_norm_mean"] > 0
    assert history[1]["lr"] < history[0]["lr"]  # cosine schedule decays
    # the stage script's JSON writer accepts the records (finite numbers only)
    write_json(history, str(tmp_path / "history.json"))
    assert json.loads((tmp_path / "history.json").read_text())[0]["n_eval"] == N_VAL


def test_top_and_bottom_scores_are_the_extremes():
    rng = np.random.default_rng(0)
    labels = (np.arange(300) % 3 == 0).astype(np.int8)
    scores = rng.uniform(0.01, 0.99, 300)
    logits = np.log(scores / (1 - scores)).astype(np.float32)
    rec = evaluate_scores(labels, scores, logits, build_loss("bce"))
    assert rec["n_eval"] == 300 and rec["pos_eval"] == 100 and rec["neg_eval"] == 200
    assert rec["top50_neg_scores"] == sorted(scores[labels == 0], reverse=True)[:50]
    assert rec["bottom50_pos_scores"] == sorted(scores[labels == 1])[:50]


# ----------------------------------------------------------------------------- collapse warning


def test_calibration_collapse_warning():
    n = 200
    labels = (np.arange(n) % 2).astype(np.int8)
    loss = build_loss("bce")

    def rec_for(n_binary: int) -> dict:
        s = np.full(n, 0.5)
        s[:n_binary] = np.where(labels[:n_binary] == 1, 1.0 - 1e-5, 1e-5)
        z = np.log(s / (1 - s)).astype(np.float32)
        return evaluate_scores(labels, s, z, loss)

    collapsed = rec_for(160)  # 80% of the scores within 1e-3 of 0 or 1
    assert collapsed["binary_score_frac"] == pytest.approx(0.8)
    assert collapsed["calibration_collapse_warning"] is True
    fine = rec_for(60)
    assert fine["binary_score_frac"] == pytest.approx(0.3)
    assert fine["calibration_collapse_warning"] is False
    edge = rec_for(int(COLLAPSE_FRAC * n))  # exactly at the limit: not above it
    assert edge["calibration_collapse_warning"] is False
    # saturated 0/1 scores (bf16-like) also count
    s = np.r_[np.zeros(150), np.ones(50)]
    rec = evaluate_scores(np.r_[np.zeros(150, np.int8), np.ones(50, np.int8)], s,
                          np.r_[np.full(150, -30.0), np.full(50, 30.0)].astype(np.float32), loss)
    assert rec["binary_score_frac"] == 1.0 and rec["calibration_collapse_warning"] is True


def test_collapse_warning_is_logged_during_training(stamps_root, base_params, tmp_path, monkeypatch, caplog):
    setup = Setup.from_params(make_params(base_params, epochs=1, augment=False))
    real = train_mod.evaluate_scores

    def saturated(labels, scores, logits, loss_fn):
        s = np.where(labels == 1, 1.0, 0.0)
        return real(labels, s, np.where(labels == 1, 40.0, -40.0).astype(np.float32), loss_fn)

    monkeypatch.setattr(train_mod, "evaluate_scores", saturated)
    with caplog.at_level(logging.WARNING, logger="darkhaloscope.model.train"):
        res = fit_stage(setup, setup.curriculum[0], stamps_root, str(tmp_path / "r"), None, progress=False)
    assert res["history"][0]["calibration_collapse_warning"] is True
    assert "calibration collapse" in caplog.text


def test_resume_refuses_a_checkpoint_made_on_other_data(stamps_root, base_params, tmp_path, monkeypatch, caplog):
    """A last.pt written on one stamp set is never continued on another (issue: the stage resumed
    the old model after the stamp set was switched); the log says why, the run equals a fresh one."""
    p = make_params(base_params, epochs=2)
    setup = Setup.from_params(p)
    stage = setup.curriculum[0]
    other = tmp_path / "other_stamps"
    shutil.copytree(stamps_root, other)
    cols, stamps = _split(N_VAL, 5000, np.random.default_rng(99))  # same ids, other pixels and labels
    S.make_stamp_file(other / "val" / "part-00000.parquet", columns=cols, stamps=stamps, row_group_size=32)

    out = str(tmp_path / "run")
    real_save = train_mod.save_checkpoint

    def die_after_first_epoch(path, model, extra):
        real_save(path, model, extra)
        if os.path.basename(path) == "last.pt":
            raise Killed("simulated kill after epoch 0")

    monkeypatch.setattr(train_mod, "save_checkpoint", die_after_first_epoch)
    with pytest.raises(Killed):
        fit_stage(setup, stage, stamps_root, out, None, resume=True, progress=False)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    assert load_checkpoint(os.path.join(out, "last.pt"))["train_state"]["epoch"] == 1

    with caplog.at_level("INFO", logger=train_mod.__name__):
        res = fit_stage(setup, stage, str(other), out, None, resume=True, progress=False)
    assert "trained on other data" in caplog.text and "resumed stage" not in caplog.text
    assert [r["epoch"] for r in res["history"]] == [0, 1]
    fresh = fit_stage(setup, stage, str(other), str(tmp_path / "fresh"), None, resume=True, progress=False)
    assert res["history"] == fresh["history"]
    assert_states_equal(state_of(os.path.join(out, "best.pt")), state_of(os.path.join(tmp_path, "fresh", "best.pt")))

    # the same data again: the finished run is picked up (a no-op), so the check is not "never resume"
    caplog.clear()
    with caplog.at_level("INFO", logger=train_mod.__name__):
        again = fit_stage(setup, stage, str(other), out, None, resume=True, progress=False)
    assert "resumed stage main" in caplog.text and again["history"] == res["history"]


def test_fingerprint_covers_settings_data_and_the_starting_checkpoint(stamps_root, base_params, tmp_path):
    setup = Setup.from_params(make_params(base_params, epochs=2))
    stage = setup.curriculum[0]
    files = [os.path.join(stamps_root, s, "part-00000.parquet") for s in ("train", "val")]
    fp = train_mod.run_fingerprint(setup, stage, None, files)
    assert train_mod.resume_mismatch(fp, fp) is None
    assert "older version" in train_mod.resume_mismatch("a:b:c", fp)
    assert "other data" in train_mod.resume_mismatch(fp, train_mod.run_fingerprint(setup, stage, None, files[:1]))
    seeded = Setup.from_params(make_params(base_params, epochs=2, seed=6))
    assert "other settings" in train_mod.resume_mismatch(fp, train_mod.run_fingerprint(seeded, stage, None, files))
    ck = tmp_path / "a.pt"
    ck.write_bytes(b"one")
    fa = train_mod.run_fingerprint(setup, stage, str(ck), files)
    ck.write_bytes(b"two")
    assert "other settings" in train_mod.resume_mismatch(fa, train_mod.run_fingerprint(setup, stage, str(ck), files))
    # moving the stamp set keeps its identity
    moved = tmp_path / "moved"
    shutil.copytree(stamps_root, moved)
    mfiles = [str(moved / s / "part-00000.parquet") for s in ("train", "val")]
    assert train_mod.run_fingerprint(setup, stage, None, mfiles) == fp
