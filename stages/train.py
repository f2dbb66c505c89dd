"""Stage `train` (Phase 5): curriculum training with early stopping; checkpoints in data/model."""

import os

from _common import run

from darkhaloscope.outputs import write_json
from darkhaloscope.model.distributed import is_main_process
from darkhaloscope.model.train import Setup, train
from darkhaloscope.stamps.sets import stamp_set_root


def main(p: dict) -> None:
    Setup.from_params(p)  # params problems (e.g. a forbidden meta column) before any stamp set is read or converted
    res = train(p, stamp_set_root(p), "data/model", resume=os.environ.get("DHS_RESUME", "1") == "1",
                hard_negatives="data/hard_negatives/hard_negatives.parquet")
    if not is_main_process():  # under torchrun only rank 0 writes metrics
        return
    history = [rec for st in res["stages"] for rec in st["history"]]
    write_json(history, "metrics/history.json")
    write_json([{k: r.get(k) for k in ("stage", "epoch", "train_loss", "val_loss", "auroc", p["train"]["monitor"],
                                       "lr")} | {"step": i} for i, r in enumerate(history)],
               "metrics/plots/train_curve.json")
    summary = {st["stage"]: {k: v for k, v in st.items() if k not in ("history", "stage")} for st in res["stages"]}
    write_json(summary, "metrics/train.json")


if __name__ == "__main__":
    run("train", main)
