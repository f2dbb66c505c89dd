"""The README's "seeds' Phase 4c data" recipe, through `dvc repro`: a stamp set in the seeds' layout
(gzip parts under region_split=<split>/, r-only rows, cutout_ok = 0 rows; a paired variant with
null controls) named by `stamp_set.root`, trained on, scored and evaluated, without stage `stamps`
running and without touching data/stamps; then `dvc exp run evaluate -S stamp_set.root=<paired set>
-S train.input_channels=6` points an experiment at the paired set.

Everything runs in a tiny temporary copy of the repository; the seeds sets and the conversion cache
lie outside it.
"""

from __future__ import annotations

import json

import pytest
import yaml

import _tinyrepo as T
from _seeds import write_seeds_set

pytestmark = pytest.mark.slow

DATA_STAGES = {"parent", "manifest", "coadds", "stamps"}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    base = tmp_path_factory.mktemp("seeds_recipe")
    unpaired, paired = base / "seeds" / "v4_sota", base / "seeds" / "v5_cosmos_paired"
    truth = write_seeds_set(unpaired, seed=3)
    truth_paired = write_seeds_set(paired, paired=True, seed=4)
    p = T.tiny_params(epochs=1, patience=5)
    p["stamp_set"] = {"root": str(unpaired), "cache": str(base / "cache")}
    p["train"]["batch_size"] = 16
    work = T.make_repo(base / "repo", p)
    out = T.dvc(["repro", "evaluate"], work, timeout=600)
    return work, out, base, truth, truth_paired


def _json(work, name):
    return json.loads((work / "metrics" / name).read_text())


def test_repro_trains_scores_and_evaluates_the_seeds_set(recipe):
    work, out, base, truth, _ = recipe
    ran = T.ran_stages(out)
    assert {"mine", "train", "score", "evaluate"} <= ran, out[-3000:]
    assert not ran & DATA_STAGES, ran  # the chosen set replaces stage stamps' output
    assert not (work / "data" / "stamps").exists()
    train = _json(work, "train.json")["main"]
    for key, split in (("train_index", "train"), ("val_index", "val")):
        idx, t = train[key], truth[split]
        assert idx["rows_read"] == t["rows"]
        assert idx["dropped"]["cutout_not_ok"] == t["failed"]
        assert idx["dropped"]["nonfinite_stamp"] == t["r_only"]  # r-only rows: g and z are NaN
        assert idx["kept"] == t["kept"]
    score = _json(work, "score.json")
    assert score["test"]["kept"] == truth["test"]["kept"]
    assert score["known"]["kept"] == 0
    ev = _json(work, "eval.json")
    assert ev["known_n"] == 0  # the seeds' data has no known-lens split
    assert ev["n_pos"] + ev["n_neg"] == truth["test"]["kept"] and ev["n_pos"] == truth["test"]["kept_pos"]
    # the conversion lives in stamp_set.cache, outside the repository, next to no lock file
    conv = [d for d in (base / "cache").iterdir() if d.is_dir()]
    assert len(conv) == 1 and conv[0].name.startswith("v4_sota-") and (conv[0] / "seeds_conversion.json").is_file()
    assert not list((base / "cache").glob("*.lock")) and not list((base / "seeds").glob("*.lock"))
    # DVC tracks the chosen set itself
    deps = {d["path"] for d in T.lock(work)["train"]["deps"]}
    assert str(base / "seeds" / "v4_sota") in deps and "data/stamps" not in deps


def test_second_repro_is_a_no_op(recipe):
    work, *_ = recipe
    out = T.dvc(["repro", "evaluate"], work, timeout=300)
    assert not T.ran_stages(out), out[-2000:]


def test_exp_run_points_an_experiment_at_the_paired_set(recipe):
    work, _, base, _, truth = recipe
    T.run(T.GIT + ["add", "-A"], work)
    T.run(T.GIT + ["commit", "-q", "-m", "unpaired seeds run"], work)
    paired = base / "seeds" / "v5_cosmos_paired"
    out = T.dvc(["exp", "run", "evaluate", "-S", f"stamp_set.root={paired}", "-S", "train.input_channels=6"], work,
                timeout=600)
    ran = T.ran_stages(out)
    assert {"train", "score", "evaluate"} <= ran and not ran & DATA_STAGES, out[-3000:]
    assert yaml.safe_load((work / "params.yaml").read_text())["stamp_set"]["root"] == str(paired)
    train = _json(work, "train.json")["main"]
    assert train["train_index"]["rows_read"] == truth["train"]["rows"]
    score = _json(work, "score.json")
    for split in ("val", "test"):
        # rows without a control are scored with a blank control half, and counted
        assert score[split]["kept"] == truth[split]["kept"]
        assert score[split]["kept_without_ctrl"] == truth[split]["no_ctrl"], score[split]
    assert _json(work, "eval.json")["known_n"] == 0
    assert len([d for d in (base / "cache").iterdir() if d.is_dir()]) == 2  # each set converted once
