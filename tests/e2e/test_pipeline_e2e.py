"""End-to-end test of the whole pipeline: `dvc repro evaluate` in a temporary copy of the
repository with a tiny mock survey and a 2-epoch training, the metrics it leaves behind,
`dvc metrics show` / `dvc plots show`, and a `dvc exp run -S loss=focal` that re-runs only
the model stages.

Never touches the working repository's outputs: everything runs under a temporary directory.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

import _tinyrepo as T

pytestmark = pytest.mark.slow

MODEL_STAGES = {"train", "score", "evaluate"}
FPR_NAMES = ("tpr@fpr1e-5", "tpr@fpr1e-4", "tpr@fpr1e-3", "tpr@fpr1e-2")
TPR_NAMES = ("fpr@tpr0.5", "fpr@tpr0.7", "fpr@tpr0.8", "fpr@tpr0.85", "fpr@tpr0.9", "fpr@tpr0.95",
             "fpr@tpr0.99")


def strict_json(path: Path):
    """json.loads that refuses NaN / Infinity (which json.dumps writes by default)."""
    def bad(c):
        raise ValueError(f"{path}: non-finite JSON constant {c}")
    return json.loads(path.read_text(), parse_constant=bad)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    # the session's shared full `dvc repro` (tests/_tinyrepo.py full_params: 2x2 bricks of 300 px and
    # ~0.4 arcmin sky regions, so the region split leaves galaxies in val and test; a 2-epoch training),
    # in this module's own copy (test_exp_run_focal changes it)
    shared, out = T.shared_full_repo(tmp_path_factory)
    return T.clone_repo(shared, tmp_path_factory.mktemp("e2e_full") / "repo"), out


def test_repro_runs_every_stage_through_evaluate(pipeline):
    work, out = pipeline
    ran = T.ran_stages(out)
    for stage in ("survey", "parent", "manifest", "coadds", "stamps", *MODEL_STAGES):
        assert stage in ran, out[-3000:]
    assert set(T.lock(work)) >= ran
    for name in ("best.pt", "main/best.pt", "main/last.pt"):
        assert (work / "data/model" / name).is_file(), name
    for split in ("val", "test", "known"):
        assert (work / "data/scores" / f"{split}.parquet").is_file()
    history = strict_json(work / "metrics/history.json")
    assert [r["epoch"] for r in history] == [0, 1]
    for rec in history:
        for key in ("n_eval", "pos_eval", "neg_eval", *FPR_NAMES, *TPR_NAMES, "auroc", "binary_score_frac",
                    "calibration_collapse_warning", "top50_neg_scores", "bottom50_pos_scores", "train_loss",
                    "val_loss", "lr", "grad_norm_mean"):
            assert key in rec, key
    train = strict_json(work / "metrics/train.json")
    assert train["main"]["epochs_run"] == 2 and train["main"]["train_index"]["kept"] > 0


def test_eval_json(pipeline):
    work, _ = pipeline
    ev = strict_json(work / "metrics/eval.json")
    for key in ("auroc", "auprc", "n_pos", "n_neg", "tpr0", "tpr10", "ece", "ece_platt", "shortcut_auroc",
                "known_n"):
        assert key in ev, key
    for name in FPR_NAMES + TPR_NAMES:
        for suffix in ("", "_n_tp", "_n_fp", "_ci_lo", "_ci_hi"):
            assert name + suffix in ev, name + suffix
        assert 0.0 <= ev[name] <= 1.0
        assert ev[name + "_ci_lo"] <= ev[name + "_ci_hi"]
        assert 0 <= ev[name + "_n_tp"] <= ev["n_pos"] and 0 <= ev[name + "_n_fp"] <= ev["n_neg"]
    assert ev["n_pos"] > 0 and ev["n_neg"] > 0
    assert 0.0 <= ev["auroc"] <= 1.0 and 0.0 <= ev["ece"] <= 1.0
    assert ev["shortcut_auroc"] is None or 0.0 <= ev["shortcut_auroc"] <= 1.0
    assert ev["known_n"] == 2  # the tiny survey's two known lenses are scored
    score = strict_json(work / "metrics/score.json")
    assert score["test"]["kept_positive"] == ev["n_pos"] and score["test"]["kept_negative"] == ev["n_neg"]


def test_metrics_json_are_finite(pipeline):
    work, _ = pipeline
    files = sorted((work / "metrics").rglob("*.json"))
    assert {"eval.json", "train.json", "history.json", "score.json", "roc.json"} <= {f.name for f in files}
    for f in files:
        text = f.read_text()
        assert "NaN" not in text and "Infinity" not in text, f
        strict_json(f)


def test_roc_plot_points(pipeline):
    work, _ = pipeline
    roc = strict_json(work / "metrics/plots/roc.json")
    assert isinstance(roc, list) and len(roc) >= 2
    for pt in roc:
        assert set(pt) == {"fpr", "tpr", "threshold"}
        assert all(isinstance(pt[k], float) and math.isfinite(pt[k]) for k in pt)
        assert 0.0 <= pt["fpr"] <= 1.0 and 0.0 <= pt["tpr"] <= 1.0
    assert (roc[0]["fpr"], roc[0]["tpr"]) == (0.0, 0.0) and (roc[-1]["fpr"], roc[-1]["tpr"]) == (1.0, 1.0)
    assert all(a["fpr"] <= b["fpr"] and a["tpr"] <= b["tpr"] for a, b in zip(roc, roc[1:]))


def test_dvc_metrics_and_plots_show(pipeline, tmp_path):
    work, _ = pipeline
    shown = json.loads(T.dvc(["metrics", "show", "--json"], work))
    assert "metrics/eval.json" in json.dumps(shown)
    assert "auroc" in json.dumps(shown)
    out_dir = tmp_path / "plots"
    T.dvc(["plots", "show", "-o", str(out_dir)], work, timeout=120)
    html = out_dir / "index.html"
    assert html.is_file() and html.stat().st_size > 1000
    assert "roc.json" in html.read_text()


def test_exp_run_focal_reruns_only_the_model_stages(pipeline):
    work, _ = pipeline
    T.run(T.GIT + ["add", "-A"], work)
    T.run(T.GIT + ["commit", "-q", "-m", "baseline outputs"], work)
    before = T.lock(work)
    model_dependent = MODEL_STAGES | {"search"}  # stage search scores with the model too
    data_stages = [s for s in before if s not in model_dependent]
    assert {"survey", "parent", "manifest", "coadds", "stamps"} <= set(data_stages)
    md5_before = T.out_md5s(work, data_stages)
    out = T.dvc(["exp", "run", "-S", "loss=focal"], work, timeout=420)
    # (c) the data stages were not re-run; the model stages (and the search, which uses the model) were
    assert T.ran_stages(out) & set(before) == model_dependent & set(before), out[-3000:]
    assert MODEL_STAGES <= T.ran_stages(out), out[-3000:]
    for s in data_stages:
        assert f"Stage '{s}' didn't change, skipping" in out, s
        assert T.out_md5s(work, [s])[s] == md5_before[s], s
    assert T.lock(work)["train"]["params"]["params.yaml"]["loss"] == "focal"
    assert yaml.safe_load((work / "params.yaml").read_text())["loss"] == "focal"
    # (b) the experiment is listed, (d) with loss=focal, against the bce baseline
    shown = json.loads(T.dvc(["exp", "show", "--json"], work))
    exps = _experiments(shown)
    assert exps, json.dumps(shown)[:3000]
    losses = {e["name"]: e["loss"] for e in exps}
    assert "focal" in losses.values(), losses
    assert _baseline_loss(shown) == "bce"
    ev = strict_json(work / "metrics/eval.json")
    assert 0.0 <= ev["auroc"] <= 1.0


def _params_of(entry: dict) -> dict:
    data = entry.get("data") or {}
    return ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}


def _baseline_loss(shown: list):
    for rev in shown:
        if rev.get("rev") != "workspace":
            return _params_of(rev).get("loss")
    return None


def _experiments(shown: list) -> list[dict]:
    """(name, loss) of every experiment in `dvc exp show --json` (DVC 3 layout)."""
    found = []
    for rev in shown:
        for exp in rev.get("experiments") or []:
            for r in exp.get("revs") or []:
                found.append({"name": r.get("name") or exp.get("name") or r.get("rev"),
                              "loss": _params_of(r).get("loss")})
    return found


def test_spark_workers_import_this_checkout(pipeline):
    """Spark's Python workers must run the copy's code, not the editable install's tree."""
    work, _ = pipeline
    script = (
        "import sys; sys.path.insert(0, 'src')\n"
        "from darkhaloscope.spark_session import spark_session\n"
        "s = spark_session('local[1]', '1g')\n"
        "def f(_):\n"
        "    import darkhaloscope\n"
        "    return darkhaloscope.__file__\n"
        "print('WORKER', s.sparkContext.parallelize([0], 1).map(f).collect()[0])\n"
        "s.stop()\n"
    )
    res = T.run([sys.executable, "-c", script], work, timeout=180)
    out = res.stdout + res.stderr
    line = next(ln for ln in out.splitlines() if ln.startswith("WORKER "))
    assert Path(line.split(" ", 1)[1]).resolve().is_relative_to(work.resolve()), line
