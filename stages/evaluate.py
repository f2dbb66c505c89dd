"""Stage `evaluate`: metrics/eval.json, stratified completeness, plots and saliency galleries."""

import numpy as np
import pyarrow.parquet as pq
from _common import run

from darkhaloscope.evaluation import gates as G
from darkhaloscope.evaluation import report as E
from darkhaloscope import metrics as M
from darkhaloscope.model import Preprocess, StampIndex, load_checkpoint
from darkhaloscope.outputs import atomic_dir, write_json
from darkhaloscope.search.ensemble import evaluation_metrics
from darkhaloscope.stamps.format import list_stamp_files
from darkhaloscope.stamps.sets import stamp_set_root


def main(p: dict) -> None:
    val, test, known = (pq.read_table(f"data/scores/{s}.parquet") for s in ("val", "test", "known"))
    y, s = E._col(test, "label"), E._col(test, "score")
    out = M.summary(y, s, n_boot=200, seed=p["seed"])
    out["auroc_ci_lo"], out["auroc_ci_hi"] = M.bootstrap_ci(y, s, "auroc", n_boot=200, seed=p["seed"])
    out["binary_score_frac"] = M.binary_score_frac(s)
    out.update(E.calibration(val, test))
    thr = E.val_thresholds(val)
    out.update({f"val_threshold@{k}": v for k, v in thr.items()})
    out.update(E.known_lens_recall(known, thr))
    out.update(E.impostor_metrics(test, thr))  # per impostor class; n_neg and the smallest resolvable FPR

    # shortcut audit: trivial features of the test stamps, positives vs controls
    files = list_stamp_files(stamp_set_root(p), "test")
    idx = StampIndex.build(files)
    pre = Preprocess.from_checkpoint(load_checkpoint("data/model/best.pt"))  # the model's own recipe
    rows = E.read_rows(files, idx.sample_ids, ("is_control", *pre.meta_cols))
    lab = 1 - rows["is_control"].astype(int)
    out.update(G.lr_rates(lab, G.cv_logistic_scores(E.trivial_features(rows["stamp"], pre), lab, seed=p["seed"]),
                          "shortcut"))
    # the unmasked CNN logits are stage score's (one forward pass of the test split, not two)
    logits = E.logits_of(test, idx.sample_ids, "data/scores/test.parquet")
    out.update(E.shortcut_gates("data/model/best.pt", rows, lab, p["gates"], p["seed"], out["hard_negative_auroc"],
                                logits))
    # search.models: the ensemble's test rates next to each member's (ensemble_members: 1 for one model)
    out.update(evaluation_metrics(p, val, test, stamp_set_root(p), n_boot=200, seed=p["seed"]))
    for line in G.failed_gate_lines(out):
        print(f"[evaluate] {line}")
    write_json(out, "metrics/eval.json")

    strat = E.stratified_rows(test, thr)
    E.write_csv(strat, "metrics/stratified.csv")
    E.write_csv(M.per_group_auroc(y, s, E._col(test, "brickname")), "metrics/per_brick_auroc.csv")
    write_json(M.roc_points_for_plot(y, s), "metrics/plots/roc.json")
    comp = [r for r in strat if r["stratum"] == "theta_e_arcsec"]
    write_json([{"theta_e_arcsec": r["bin_mid"], **{f"completeness@{k}": r.get(f"{k}_completeness") for k in thr}}
                for r in comp], "metrics/plots/completeness_theta_e.json")

    with atomic_dir("data/eval") as d:
        neg = np.argsort(-s[y == 0])[:8]
        pos = np.argsort(s[y == 1])[:8]
        for name, sel, lab in (("top_negatives", neg, 0), ("lowest_positives", pos, 1)):
            ids = E._col(test, "sample_id")[y == lab][sel]
            sc = s[y == lab][sel]
            r = E.read_rows(files, ids, pre.meta_cols)
            meta = np.column_stack([r[c] for c in pre.meta_cols]) if pre.meta_cols else None
            E.saliency_gallery("data/model/best.pt", r["stamp"], r.get("ctrl_stamp"), meta,
                               [f"id {i % 100000}\nscore {v:.3f}" for i, v in zip(ids, sc)], f"{d}/{name}.png")
    print({k: out[k] for k in ("auroc", "tpr@fpr1e-2", "tpr@fpr1e-3", "n_pos", "n_neg", "shortcut_auroc",
                               "gate_core_lr_auroc", "gate_radial_lr_auroc", "gate_core_masked_drop", "gates_passed")})


if __name__ == "__main__":
    run("evaluate", main)
