"""Model generations (gens/*.yaml, darkhaloscope.gens, scripts/gen.sh, `make gen`).

Fast half: every overlay applies to the shipped params.yaml at both scales and validates; all
overlays set the same leaf keys (so the order of `make gen` runs never carries a setting from
one generation into the next); each generation's characteristic values are those of the README
table; comments survive; unknown keys are refused; scripts/gen.sh refuses a dirty work tree and
an existing tag.

Slow half: `make gen GEN=gen2` then `make gen GEN=gen3` (gen3 mines hard negatives with the gen2
tag's model through the DVC cache) in a temporary git copy of the repository with a tiny extra
overlay, then `dvc metrics diff gen2 gen3` and `dvc plots diff gen2 gen3`. The working repository
is only read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import _tinyrepo as T
from darkhaloscope import gens
from darkhaloscope.params import ParamsError, validate

REPO = T.REPO
GENS_DIR = REPO / "gens"
GEN_NAMES = sorted(p.stem for p in GENS_DIR.glob("*.yaml"))
GIT = T.GIT


def _overlay(name: str) -> dict:
    return yaml.safe_load((GENS_DIR / f"{name}.yaml").read_text())


def _leaves(d, prefix: str = "") -> set[str]:
    """Dotted paths of the values an overlay sets (merge replaces lists and n_total_per_split whole)."""
    out = set()
    for k, v in d.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and k != "n_total_per_split":
            out |= _leaves(v, path)
        else:
            out.add(path)
    return out


def _get(d: dict, dotted: str):
    for k in dotted.split("."):
        d = d[k]
    return d


@pytest.fixture
def params_copy(tmp_path) -> Path:
    dst = tmp_path / "params.yaml"
    shutil.copy2(REPO / "params.yaml", dst)
    return dst


def _apply(params_path: Path, gen: str, scale: str, extra: Path | None = None) -> dict:
    return gens.apply(str(params_path), gen, scale, str(extra) if extra else None, gens_dir=str(GENS_DIR))


# ============================================================================ fast


def test_the_five_generations_are_defined():
    assert set(GEN_NAMES) == {"gen1", "gen2", "gen3", "gen5", "gen5_prime", "gen6"}


@pytest.mark.parametrize("scale", gens.SCALES)
@pytest.mark.parametrize("gen", GEN_NAMES)
def test_overlay_applies_and_validates(params_copy, gen, scale):
    result = _apply(params_copy, gen, scale)
    validate(result, f"{gen}/{scale}")
    on_disk = yaml.safe_load(params_copy.read_text())
    assert on_disk == result
    validate(on_disk, f"{gen}/{scale} written")
    # every value the overlay sets (params, then its scale) is what the file now says
    ov = _overlay(gen)
    for section in (ov["params"], ov["scales"][scale]):
        for leaf in _leaves(section):
            if leaf in _leaves(ov["scales"][scale]) and section is ov["params"]:
                continue  # the scale overrides it
            assert _get(on_disk, leaf) == _get(section, leaf), (gen, scale, leaf)


def test_every_overlay_sets_the_same_leaf_keys():
    sets = {g: _leaves(_overlay(g)["params"]) for g in GEN_NAMES}
    union = set().union(*sets.values())
    missing = {g: sorted(union - s) for g, s in sets.items() if union - s}
    assert not missing, f"params leaves set by some generations but not by others: {missing}"


@pytest.mark.parametrize("scale", gens.SCALES)
def test_every_generation_sets_the_same_leaves_at_each_scale(scale):
    """params plus scales.<scale>: a scale-only key (e.g. gen5_prime's cpu t0) must be set by
    every generation too, or it would stay behind for the next `make gen`."""
    sets = {g: _leaves(_overlay(g)["params"]) | _leaves(_overlay(g)["scales"][scale]) for g in GEN_NAMES}
    union = set().union(*sets.values())
    missing = {g: sorted(union - s) for g, s in sets.items() if union - s}
    assert not missing, missing


@pytest.mark.parametrize("scale", gens.SCALES)
def test_order_of_generations_does_not_leak(tmp_path, scale):
    """Applying gen A then gen B gives exactly what gen B alone gives, for every pair."""
    alone = {}
    for g in GEN_NAMES:
        p = tmp_path / f"alone-{g}.yaml"
        shutil.copy2(REPO / "params.yaml", p)
        alone[g] = _apply(p, g, scale)
    for a in GEN_NAMES:
        for b in GEN_NAMES:
            p = tmp_path / f"{a}-{b}.yaml"
            shutil.copy2(REPO / "params.yaml", p)
            _apply(p, a, scale)
            assert _apply(p, b, scale) == alone[b], (a, b)


def _check_gen1(p, scale):
    assert p["inject"]["source_model"] == "sersic"
    assert p["train"]["arch"] == "resnet18"
    assert p["manifest"]["grid"] == "grid_small"
    assert p["manifest"]["control_type"] == "paired"
    assert p["inject"]["psf_model"] == "gaussian"
    assert p["loss"] == "bce"
    assert p["train"]["norm_method"] == "full"
    assert p["train"]["clip"] == [-10.0, 10.0]


def _check_gen2(p, scale):
    assert p["inject"]["source_model"] == "sersic"
    assert p["train"]["arch"] == "convnext_tiny"
    assert p["manifest"]["grid"] == "grid_sota"
    assert p["manifest"]["control_type"] == "unpaired"
    assert p["inject"]["psf_model"] == "gaussian"
    assert p["loss"] == "bce"
    assert p["train"]["patience"] == 3
    assert [s["lr"] for s in p["train"]["curriculum"]] == [3.0e-4]
    assert p["train"]["weight_decay"] == 1.0e-2
    assert p["mine"]["model"] == "" or p["mine"]["top_k"] == 0


def _check_gen3(p, scale):
    assert p["inject"]["source_model"] == "sersic"
    assert p["inject"]["psf_model"] == "moffat" and p["inject"]["moffat_beta"] == 3.5
    assert p["loss"] == "focal"
    assert (p["focal"]["alpha"], p["focal"]["gamma"]) == (0.25, 2.0)
    cur = p["train"]["curriculum"]
    assert [s["name"] for s in cur] == ["A1", "A2"]
    assert (cur[0]["min_theta_over_psf"], cur[0]["min_arc_snr"], cur[0]["lr"]) == (0.8, 7.0, 3.0e-4)
    assert (cur[1]["min_theta_over_psf"], cur[1]["min_arc_snr"], cur[1]["lr"]) == (0.5, 3.0, 1.0e-4)
    assert p["mine"]["model"] == "gen2" and p["mine"]["top_k"] > 0
    assert p["train"]["meta_cols"] == ["psfsize_r", "psfdepth_r"]
    assert p["train"]["dropout"] == 0.1


def _check_gen5(p, scale):
    assert p["train"]["input_channels"] == 3
    assert p["inject"]["source_model"] == "cosmos" and p["inject"]["cosmos_size"] == "reff"
    assert p["manifest"]["control_type"] == "paired"  # the same v5_cosmos_paired data as gen5_prime
    assert p["train"]["arch"] == "resnet18" and p["train"]["ctrl_dropout"] == 0.0
    assert not p["train"]["exclude_bricks"]
    assert [s["lr"] for s in p["train"]["curriculum"]] == [1.0e-3]
    if scale == "full":
        assert p["train"]["batch_size"] == 256 and p["train"]["curriculum"][0]["epochs"] == 50


def _check_gen5_prime(p, scale):
    assert p["inject"]["source_model"] == "cosmos"  # v5_cosmos_paired: lensed real galaxies
    assert p["train"]["input_channels"] == 6
    assert p["manifest"]["control_type"] == "paired"  # 6 channels need the control stamp
    assert p["train"]["arch"] == "resnet18"
    assert p["train"]["exclude_bricks"]
    assert p["train"]["clip"] == [-5.0, 20.0]
    assert p["train"]["scheduler"] == "cosine_warm_restarts"
    if scale == "full":
        assert (p["train"]["t0"], p["train"]["t_mult"]) == (10, 2)
        assert p["train"]["patience"] == 10
    assert [s["lr"] for s in p["train"]["curriculum"]] == [1.0e-3]
    assert p["train"]["monitor"] == "val_loss"


def _check_gen6(p, scale):
    assert p["manifest"]["control_type"] == "unpaired" and p["manifest"]["population"] == "calibrated"
    assert p["train"]["norm_method"] == "residual" and p["train"]["core_dropout"] > 0
    assert p["train"]["input_channels"] == 3 and p["train"]["arch"] == "resnet18"
    assert p["mine"]["model"] == "gen2" and p["mine"]["top_k"] > 0
    assert sum(p["survey"]["mock"]["impostor_frac"].values()) > 0   # the mock's impostors (default on)
    assert p["train"]["stem"] == ("adapted" if scale == "full" else "stock")


CHECKS = {"gen1": _check_gen1, "gen2": _check_gen2, "gen3": _check_gen3, "gen5": _check_gen5,
          "gen5_prime": _check_gen5_prime, "gen6": _check_gen6}


@pytest.mark.parametrize("scale", gens.SCALES)
@pytest.mark.parametrize("gen", sorted(CHECKS))
def test_generation_values_match_the_readme_table(params_copy, gen, scale):
    CHECKS[gen](_apply(params_copy, gen, scale), scale)


def test_readme_table_lists_every_generation():
    readme = (REPO / "README.md").read_text()
    for g in GEN_NAMES:
        assert f"| {g} |" in readme, g


def _comments(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        if "#" in line:
            c = line[line.index("#"):].strip()
            if c != "#":
                out.append(c)
    return out


@pytest.mark.parametrize("gen", GEN_NAMES)
def test_comments_survive_apply(params_copy, gen):
    before = params_copy.read_text()
    _apply(params_copy, gen, "cpu")
    after = params_copy.read_text()
    assert after.startswith(before.splitlines()[0])  # the header comment block stays on top
    # the curriculum list is replaced as a whole, so the comments inside its old items go with it
    start = before.index("  curriculum:")
    kept_region = before[:start] + before[start:].split("\n", 1)[0]
    lost = [c for c in _comments(kept_region) if c not in after]
    assert not lost, lost
    # a comment stays on its key's line
    assert any(ln.startswith("seed:") and "# master seed" in ln for ln in after.splitlines())
    assert any(ln.strip().startswith("psf_model:") and "# gaussian | moffat" in ln for ln in after.splitlines())


def test_unknown_key_is_refused_naming_it(params_copy, tmp_path):
    before = params_copy.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  archh: small_cnn\n")
    with pytest.raises(ParamsError, match=r"train\.archh"):
        _apply(params_copy, "gen2", "cpu", extra=bad)
    assert params_copy.read_text() == before  # nothing written

    bad_gen = tmp_path / "gens"
    bad_gen.mkdir()
    (bad_gen / "genx.yaml").write_text("params:\n  mine: {modle: gen2}\nscales: {cpu: {}, full: {}}\n")
    with pytest.raises(ParamsError, match=r"mine\.modle"):
        gens.apply(str(params_copy), "genx", "cpu", gens_dir=str(bad_gen))
    assert params_copy.read_text() == before


def test_unknown_generation_and_scale_are_refused(params_copy):
    with pytest.raises(ParamsError, match="no such generation.*gen1"):
        _apply(params_copy, "gen4", "cpu")
    with pytest.raises(ParamsError, match="scale"):
        _apply(params_copy, "gen2", "gpu")


def _git_repo(path: Path) -> Path:
    path.mkdir()
    shutil.copy2(REPO / "params.yaml", path / "params.yaml")
    (path / "README.md").write_text("x\n")
    T.run(GIT + ["init", "-q"], path)
    T.run(GIT + ["add", "-A"], path)
    T.run(GIT + ["commit", "-q", "-m", "init"], path)
    return path


def _gen_sh(cwd: Path, gen: str = "gen2") -> subprocess.CompletedProcess:
    return T.run(["bash", REPO / "scripts" / "gen.sh", gen, "cpu"], cwd, timeout=60, check=False)


def test_gen_sh_refuses_a_dirty_work_tree(tmp_path):
    work = _git_repo(tmp_path / "r")
    (work / "README.md").write_text("changed\n")
    params_before = (work / "params.yaml").read_text()
    res = _gen_sh(work)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "uncommitted changes" in res.stderr and "README.md" in res.stderr
    assert (work / "params.yaml").read_text() == params_before
    assert T.run(["git", "tag"], work).stdout.strip() == ""


def test_gen_sh_refuses_an_existing_tag(tmp_path):
    work = _git_repo(tmp_path / "r")
    T.run(GIT + ["tag", "gen2"], work)
    params_before = (work / "params.yaml").read_text()
    res = _gen_sh(work)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "tag gen2 already exists" in res.stderr
    assert (work / "params.yaml").read_text() == params_before
    assert T.run(["git", "status", "--porcelain"], work).stdout == ""


def test_metadata_model_scores_rows_without_metadata_with_training_means(tmp_path):
    """gen3 fuses psfsize_r / psfdepth_r; the known lenses have no catalogue row (NaN metadata).
    Stage `score` scores them with the training means (score_known_files) and counts them;
    elsewhere such rows are still dropped and counted."""
    import numpy as np
    import torch

    import _stamps as S
    from darkhaloscope.model.checkpoint import save_checkpoint
    from darkhaloscope.model.preprocess import NormConfig
    from darkhaloscope.model.nets import MetaScaler, build_model
    from darkhaloscope.model.score import score_files, score_known_files

    cols = ["psfsize_r", "psfdepth_r"]
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, 0.0, len(cols), 8)
    scaler = MetaScaler(cols, [1.3, 600.0], [0.2, 100.0])
    ckpt = str(tmp_path / "best.pt")
    save_checkpoint(ckpt, model, extra={"norm": NormConfig().to_dict(), "meta_cols": cols,
                                        "meta_scaler": scaler.state_dict(), "input_channels": 3})
    rng = np.random.default_rng(0)
    stamps = rng.normal(size=(3, 3, 64, 64)).astype(np.float32)
    f = str(tmp_path / "known" / "part-00000.parquet")
    S.make_stamp_file(f, is_control=np.zeros(3), stamps=stamps,
                      columns={"psfsize_r": [np.nan, 1.5, np.nan], "psfdepth_r": [np.nan, 500.0, 700.0]})
    # default: rows with missing metadata are dropped (an error when none is left, as for the known lenses)
    with pytest.raises(ValueError, match="no row is left"):
        score_files(ckpt, [str(_only_nan(tmp_path, stamps))])
    table, summary = score_files(ckpt, [f])
    assert table.column("sample_id").to_pylist() == [1] and summary["dropped"]["nonfinite_meta"] == 2
    table, summary = score_known_files(ckpt, [f])
    assert table.column("sample_id").to_pylist() == [0, 1, 2] and summary["meta_imputed"] == 2
    # the imputed rows are scored exactly as with the training means written in
    g = str(tmp_path / "filled" / "part-00000.parquet")
    S.make_stamp_file(g, is_control=np.zeros(3), stamps=stamps,
                      columns={"psfsize_r": [1.3, 1.5, 1.3], "psfdepth_r": [600.0, 500.0, 700.0]})
    filled, _ = score_files(ckpt, [g])
    assert table.column("logit").to_pylist() == filled.column("logit").to_pylist()


def _only_nan(tmp_path, stamps):
    import numpy as np

    import _stamps as S

    f = tmp_path / "nan" / "part-00000.parquet"
    S.make_stamp_file(f, is_control=np.zeros(3), stamps=stamps,
                      columns={"psfsize_r": np.full(3, np.nan), "psfdepth_r": np.full(3, np.nan)})
    return f


# ============================================================================ slow: make gen


TINY = {
    "survey": {"mock": {"n_bricks_ra": 2, "n_bricks_dec": 2, "brick_size_pix": 300, "n_lrg_per_brick": 40,
                        "n_blue_per_brick": 10, "n_star_per_brick": 5, "n_known_lenses": 2}},
    "selection": {"split": {"nside": 8192}},  # ~0.4 arcmin regions: the tiny sky has val and test
    "manifest": {"replicates": 2},
    "inject": {"files_per_split": 1},
    "spark": {"master": "local[2]", "partitions": 4},
    "mine": {"top_k": 20, "min_score": 0.0},
    "train": {"arch": "small_cnn", "width": 8, "batch_size": 32, "num_workers": 0},
}
CURRICULUM = {
    "gen2": [{"name": "main", "epochs": 2, "lr": 3.0e-4, "min_theta_over_psf": 0.0, "min_arc_snr": 0.0}],
    # gen3's two stages with relaxed thresholds, so that stage A1 keeps positives in the tiny data
    "gen3": [{"name": "A1", "epochs": 1, "lr": 3.0e-4, "min_theta_over_psf": 0.3, "min_arc_snr": 1.0},
             {"name": "A2", "epochs": 1, "lr": 1.0e-4, "min_theta_over_psf": 0.0, "min_arc_snr": 0.0}],
}


def _extra(tmp: Path, gen: str) -> Path:
    ov = json.loads(json.dumps(TINY))
    ov["train"]["curriculum"] = CURRICULUM[gen]
    path = tmp / f"tiny-{gen}.yaml"
    path.write_text(yaml.safe_dump(ov, sort_keys=False))
    return path


def _show(work: Path, rev: str, path: str) -> str:
    return T.run(["git", "show", f"{rev}:{path}"], work).stdout


@pytest.fixture(scope="module")
def gen_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("gens")
    work = T.copy_sources(base / "repo")  # the shipped params.yaml, comments and all
    assert not (work / "data" / "survey").exists()
    T.run(GIT + ["init", "-q"], work)
    for k, v in (("user.name", "t"), ("user.email", "t@t"), ("commit.gpgsign", "false"), ("tag.gpgsign", "false")):
        T.run(["git", "config", k, v], work)
    T.run(GIT + ["add", "-A"], work)
    T.run(GIT + ["commit", "-q", "-m", "tiny gens copy"], work)
    # the project's venv stands in for .venv (untracked; -o: make never reinstalls it)
    (work / ".venv").symlink_to(T.VENV_BIN.parent, target_is_directory=True)
    logs = {}
    for gen in ("gen2", "gen3"):
        res = T.run(["make", "-o", ".venv/.installed", "gen", f"GEN={gen}", f"EXTRA={_extra(base, gen)}"], work,
                    timeout=420, check=False)
        logs[gen] = res.stdout + res.stderr
        assert res.returncode == 0, f"make gen GEN={gen} failed ({res.returncode}):\n{logs[gen][-8000:]}"
    return work, logs


@pytest.mark.slow
def test_make_gen_tags_each_generation(gen_runs):
    work, logs = gen_runs
    tags = T.run(["git", "tag"], work).stdout.split()
    assert {"gen2", "gen3"} <= set(tags)
    for gen in ("gen2", "gen3"):
        assert f"tagged {gen}" in logs[gen]
        files = set(T.run(["git", "ls-tree", "-r", "--name-only", gen], work).stdout.split())
        assert {"params.yaml", "dvc.lock", "metrics/eval.json", "metrics/train.json", "metrics/mine.json"} <= files
        p = validate(yaml.safe_load(_show(work, gen, "params.yaml")), f"{gen}:params.yaml")
        lock = yaml.safe_load(_show(work, gen, "dvc.lock"))["stages"]
        assert {"survey", "stamps", "mine", "train", "score", "evaluate"} <= set(lock)
        assert lock["train"]["params"]["params.yaml"]["loss"] == p["loss"]
        json.loads(_show(work, gen, "metrics/eval.json"))
        # the generation's own values (those the tiny overlay does not replace)
        assert p["train"]["arch"] == "small_cnn" and p["survey"]["mock"]["brick_size_pix"] == 300
        assert [s["name"] for s in p["train"]["curriculum"]] == [s["name"] for s in CURRICULUM[gen]]
        assert "# master seed" in _show(work, gen, "params.yaml")  # comments kept
    p2 = yaml.safe_load(_show(work, "gen2", "params.yaml"))
    assert (p2["loss"], p2["inject"]["psf_model"], p2["manifest"]["control_type"], p2["manifest"]["grid"]) == \
        ("bce", "gaussian", "unpaired", "grid_sota")
    assert p2["train"]["weight_decay"] == 1.0e-2 and p2["train"]["patience"] == 3 and p2["mine"]["model"] == ""
    p3 = yaml.safe_load(_show(work, "gen3", "params.yaml"))
    assert (p3["loss"], p3["inject"]["psf_model"], p3["inject"]["moffat_beta"]) == ("focal", "moffat", 3.5)
    assert p3["mine"] == {**p3["mine"], "model": "gen2", "top_k": 20, "min_score": 0.0}
    assert p3["train"]["meta_cols"] == ["psfsize_r", "psfdepth_r"] and p3["train"]["dropout"] == 0.1
    assert p3["train"]["hard_negative_repeat"] == 3
    # the work tree is clean after each run (only untracked leftovers such as .venv)
    assert T.run(["git", "status", "--porcelain", "--untracked-files=no"], work).stdout == ""


@pytest.mark.slow
def test_metrics_diff_between_generations(gen_runs):
    work, _ = gen_runs
    diff = json.loads(T.dvc(["metrics", "diff", "--json", "gen2", "gen3"], work, timeout=120))
    diff = diff.get("diff", diff)
    ev = diff.get("metrics/eval.json") or {}
    changed = [k for k, v in ev.items() if isinstance(v, dict) and v.get("old") != v.get("new")]
    assert changed, json.dumps(diff)[:3000]
    assert "metrics/mine.json" in diff, sorted(diff)
    assert diff["metrics/mine.json"]["n_hard_negatives"]["old"] == 0

    mine2 = json.loads(_show(work, "gen2", "metrics/mine.json"))
    assert mine2["enabled"] is False
    mine3 = json.loads(_show(work, "gen3", "metrics/mine.json"))
    assert mine3["enabled"] is True and mine3["model"] == "gen2"
    assert mine3["n_scored"] > 0 and mine3["n_above_min_score"] == mine3["n_scored"]  # min_score 0
    assert set(mine3["excluded_near_known_lens"]) == {"survey_list", "lenscat"}
    assert mine3["n_known_lenses"]["survey_list"] == 2
    kept = mine3["n_scored"] - sum(mine3["excluded_near_known_lens"].values())
    assert mine3["n_hard_negatives"] == min(20, kept) > 0


@pytest.mark.slow
def test_gen3_training_used_the_curriculum_and_hard_negatives(gen_runs):
    work, _ = gen_runs
    train3 = json.loads(_show(work, "gen3", "metrics/train.json"))
    assert list(train3) == ["A1", "A2"]
    mine3 = json.loads(_show(work, "gen3", "metrics/mine.json"))
    for st in train3.values():
        assert st["hard_negatives"] == mine3["n_hard_negatives"] > 0
        assert st["epochs_run"] == 1
    a1 = train3["A1"]["train_index"]
    assert a1["kept_positive"] > 0 and a1["filters"]["min_arc_snr"] == 1.0
    assert a1["dropped"]["below_min_theta_over_psf"] + a1["dropped"]["below_min_arc_snr"] > 0
    train2 = json.loads(_show(work, "gen2", "metrics/train.json"))
    assert list(train2) == ["main"] and train2["main"]["hard_negatives"] == 0


@pytest.mark.slow
def test_plots_diff_between_generations(gen_runs, tmp_path):
    work, _ = gen_runs
    out = tmp_path / "plots"
    T.dvc(["plots", "diff", "gen2", "gen3", "-o", str(out)], work, timeout=180)
    html = out / "index.html"
    assert html.is_file() and html.stat().st_size > 1000
    text = html.read_text()
    assert "gen2" in text and "gen3" in text


def test_gen_sh_restores_params_when_the_run_fails(tmp_path):
    """The overlay is applied, then `dvc repro` fails (here: not a DVC repository): params.yaml is
    restored, so the retry is not refused as a dirty work tree."""
    work = _git_repo(tmp_path / "r")
    shutil.copytree(REPO / "gens", work / "gens")
    params_before = (work / "params.yaml").read_text()
    res = _gen_sh(work)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "restored to HEAD" in res.stderr
    assert (work / "params.yaml").read_text() == params_before
    assert T.run(["git", "status", "--porcelain", "--untracked-files=no"], work).stdout == ""
    assert T.run(["git", "tag"], work).stdout.strip() == ""
