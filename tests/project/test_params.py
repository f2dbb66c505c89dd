"""Tests of params.yaml validation (darkhaloscope.params)."""

from __future__ import annotations

import copy

import pytest
import yaml

from darkhaloscope.params import SCHEMA, ParamsError, load_params, validate


def test_shipped_params_validate(repo_root):
    p = load_params(repo_root / "params.yaml")
    assert p["selection"]["variant"] == "v3_color_relaxed"
    assert p["manifest"]["grid"] in p["grids"]
    assert set(p) == set(SCHEMA)


def _err(p) -> str:
    with pytest.raises(ParamsError) as e:
        validate(p, "params.yaml")
    return str(e.value)


def test_unknown_key_suggests_and_lists(params):
    params["manifest"]["contrl_frac"] = 0.5
    msg = _err(params)
    assert "params.yaml" in msg and "manifest" in msg
    assert "'contrl_frac'" in msg
    assert "did you mean 'control_frac'" in msg
    for key in ("control_frac", "control_type", "grid", "replicates", "n_total_per_split", "lens_q"):
        assert key in msg.split("valid keys:")[1]


def test_unknown_top_level_and_nested_keys(params):
    p = copy.deepcopy(params)
    p["sede"] = 1
    msg = _err(p)
    assert "'sede'" in msg and "did you mean 'seed'" in msg
    p = copy.deepcopy(params)
    p["survey"]["mock"]["n_brick_ra"] = 3
    msg = _err(p)
    assert "survey.mock" in msg and "'n_bricks_ra'" in msg
    p = copy.deepcopy(params)
    p["grids"]["grid_small"]["theta_e"] = [1.0]
    msg = _err(p)
    assert "grids.grid_small" in msg and "theta_e_arcsec" in msg


def test_missing_key(params):
    del params["inject"]["stamp_size"]
    msg = _err(params)
    assert "inject.stamp_size" in msg and "missing" in msg


@pytest.mark.parametrize("path, value, where, expect, got", [
    (("seed",), "20260131", "seed", "an integer", "'20260131'"),
    (("seed",), 1.5, "seed", "an integer", "1.5"),
    (("seed",), True, "seed", "an integer", "True"),
    (("selection", "deredden"), "no", "selection.deredden", "true or false", "'no'"),
    (("selection", "deredden"), 0, "selection.deredden", "true or false", "got 0"),
    (("manifest", "control_frac"), "0.5", "manifest.control_frac", "a number", "'0.5'"),
    (("manifest", "lens_q"), [0.5], "manifest.lens_q", "length 2", "1 items"),
    (("manifest", "lens_q"), 0.5, "manifest.lens_q", "a list", "0.5"),
    (("survey", "bands"), ["g", "i"], "survey.bands[1]", "'g', 'r', 'z'", "'i'"),
    (("survey", "mock"), 3, "survey.mock", "a mapping", "got 3"),
    (("spark", "master"), 4, "spark.master", "a string", "got 4"),
    (("manifest", "control_type"), "pairs", "manifest.control_type", "'unpaired', 'paired'", "'pairs'"),
])
def test_wrong_types_name_key_and_expectation(params, path, value, where, expect, got):
    d = params
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    msg = _err(params)
    assert f"params.yaml: {where}: " in msg
    assert expect in msg and got in msg


def test_grid_theta_e_must_be_positive(params):
    params["grids"]["grid_small"]["theta_e_arcsec"] = [0.3, 0.0, 1.0]
    msg = _err(params)
    assert "grids.grid_small.theta_e_arcsec" in msg and "> 0" in msg and "[0.0]" in msg
    params["grids"]["grid_small"]["theta_e_arcsec"] = [-0.5]
    assert "grids.grid_small.theta_e_arcsec" in _err(params)
    params["grids"]["grid_small"]["theta_e_arcsec"] = [0.3]
    params["grids"]["grid_small"]["shear"] = [-0.01]
    msg = _err(params)
    assert "grids.grid_small.shear" in msg and ">= 0" in msg
    params["grids"]["grid_small"]["shear"] = []
    assert "grids.grid_small.shear" in _err(params)


def test_unknown_loss_names_valid_values(params):
    params["loss"] = "mse"
    msg = _err(params)
    assert "loss" in msg and "'mse'" in msg and "'bce'" in msg and "'focal'" in msg


@pytest.mark.parametrize("mutate, where", [
    (lambda p: p["selection"].__setitem__("variant", "v9"), "selection.variant"),
    (lambda p: p["selection"]["split"].__setitem__("fractions", {"train": 0.5, "val": 0.2, "test": 0.2}),
     "selection.split.fractions"),
    (lambda p: p["manifest"].__setitem__("grid", "grid_huge"), "manifest.grid"),
    (lambda p: p["manifest"].__setitem__("control_frac", 1.5), "manifest.control_frac"),
    (lambda p: p["manifest"].__setitem__("replicates", 0), "manifest.replicates"),
    (lambda p: p["inject"].__setitem__("psf_flux_frac", 1.0), "inject.psf_flux_frac"),
    (lambda p: p["train"].__setitem__("input_channels", 4), "train.input_channels"),
])
def test_semantic_checks(params, mutate, where):
    mutate(params)
    assert where in _err(params)


def test_desi_lrg_variant_and_new_grid_accepted(params):
    params["selection"]["variant"] = "desi_lrg"
    params["grids"]["grid_tiny"] = {"theta_e_arcsec": [1.0], "src_dmag": [1.0], "src_reff_arcsec": [0.1],
                                    "src_e": [0.0], "shear": [0.0]}
    params["manifest"]["grid"] = "grid_tiny"
    assert validate(params) is params


def test_load_params_file_errors(tmp_path, shipped_params_raw):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML") as e:
        load_params(bad)
    assert str(bad) in str(e.value)
    typo = tmp_path / "typo.yaml"
    p = copy.deepcopy(shipped_params_raw)
    p["manifest"]["contrl_frac"] = p["manifest"].pop("control_frac")
    typo.write_text(yaml.safe_dump(p))
    with pytest.raises(ParamsError) as e:
        load_params(typo)
    assert str(typo) in str(e.value) and "did you mean 'control_frac'" in str(e.value)


@pytest.mark.parametrize("path, value, where, expect", [
    (("inject", "stamp_size"), 63, "inject.stamp_size", "64 x 64"),
    (("inject", "stamp_size"), 0, "inject.stamp_size", "64 x 64"),
    (("survey", "bands"), ["g", "g", "z"], "survey.bands", "['g', 'r', 'z'] in that order"),
    (("survey", "bands"), ["z", "r", "g"], "survey.bands", "in that order"),
    (("inject", "files_per_split"), 0, "inject.files_per_split", ">= 1"),
    (("manifest", "n_total_per_split", "train"), 0, "manifest.n_total_per_split.train", ">= 1"),
    (("spark", "driver_memory"), "lots", "spark.driver_memory", "JVM memory size"),
    (("spark", "partitions"), 0, "spark.partitions", ">= 1"),
    (("train", "num_workers"), -1, "train.num_workers", ">= 0"),
    (("train", "batch_size"), 0, "train.batch_size", ">= 1"),
])
def test_values_the_code_cannot_honour_are_refused(params, path, value, where, expect):
    d = params
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    msg = _err(params)
    assert where in msg and expect in msg


@pytest.mark.parametrize("stages, where, expect", [
    ([{"name": ""}], "train.curriculum[0].name", "non-empty"),
    ([{"name": "a/b"}], "train.curriculum[0].name", "without '/'"),
    ([{"name": "a"}, {"name": "a"}], "train.curriculum[1].name", "unique"),
    ([{"epochs": -1}], "train.curriculum[0].epochs", ">= 1"),
    ([{"epochs": 0}], "train.curriculum[0].epochs", ">= 1"),
    ([{"lr": 0.0}], "train.curriculum[0].lr", "> 0"),
])
def test_curriculum_stages_are_checked(params, stages, where, expect):
    base = params["train"]["curriculum"][0]
    params["train"]["curriculum"] = [{**base, **s} for s in stages]
    msg = _err(params)
    assert where in msg and expect in msg
