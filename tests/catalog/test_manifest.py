"""Tests of the Phase 4a injection manifest (darkhaloscope.catalog.manifest) on synthetic parent tables."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from darkhaloscope.catalog.manifest import INJECTION_COLUMNS, build_manifest, draw_injection, grid_configs
from darkhaloscope.params import validate

GRID_SMALL = {"theta_e_arcsec": {0.3, 0.6, 1.0}, "src_dmag": {1.0, 2.0}, "src_reff_arcsec": {0.08, 0.15},
              "src_e": {0.0, 0.3}, "shear": {0.0, 0.03}}
GRID_SOTA = {"theta_e_arcsec": {0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5}, "src_dmag": {0.5, 1.0, 1.5, 2.0},
             "src_reff_arcsec": {0.06, 0.10, 0.15, 0.20}, "src_e": {0.0, 0.2, 0.4}, "shear": {0.0, 0.02, 0.04}}


def parent_table(n: int, seed: int = 0, near_every: int = 0, nan_mag_every: int = 0) -> pa.Table:
    """A synthetic parent sample with the columns build_manifest reads."""
    rng = np.random.default_rng(seed)
    row_id = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    mag_r = rng.uniform(18.0, 21.0, n)
    if nan_mag_every:
        mag_r[::nan_mag_every] = np.nan
    near = np.zeros(n, bool)
    if near_every:
        near[1::near_every] = True
    splits = np.array(["train", "val", "test"])[rng.choice(3, n, p=[0.6, 0.2, 0.2])]
    return pa.table({
        "row_id": row_id,
        "brickname": np.array([f"15{i % 10}0p00{i % 7}" for i in range(n)]),
        "objid": np.arange(n, dtype=np.int64),
        "ra": rng.uniform(150, 155, n), "dec": rng.uniform(0, 5, n),
        "mag_r": mag_r,
        **{f"psfsize_{b}": rng.uniform(0.9, 1.8, n) for b in "grz"},
        **{f"psfdepth_{b}": rng.uniform(100, 3000, n) for b in "grz"},
        "split": splits,
        "near_known_lens": near,
        "healpix": rng.integers(0, 1000, n),  # an extra column the manifest ignores
    })


@pytest.fixture
def mparams(params):
    p = copy.deepcopy(params)
    # eval_negatives off: these tests check the control modes themselves (tests/catalog/test_eval_negatives.py
    # checks the evaluation negatives and the impostors)
    p["manifest"].update(grid="grid_small", control_type="unpaired", control_frac=0.5, replicates=3,
                         n_total_per_split={"train": 10**6, "val": 10**6, "test": 10**6}, eval_negatives=False)
    return validate(p)


def sort_rows(t: pa.Table) -> dict:
    order = np.argsort(t.column("sample_id").to_numpy())
    return {c: t.column(c).to_numpy(zero_copy_only=False)[order] for c in t.column_names}


def assert_same_manifest(a: pa.Table, b: pa.Table) -> None:
    ra, rb = sort_rows(a), sort_rows(b)
    assert list(ra) == list(rb)
    for c in ra:
        if ra[c].dtype.kind == "f":
            np.testing.assert_array_equal(ra[c], rb[c], err_msg=c)  # bit-identical, NaN-aware
        else:
            assert ra[c].tolist() == rb[c].tolist(), c


# --------------------------------------------------------------------------- grids
def test_grid_sizes_and_values(shipped_params_raw):
    grids = shipped_params_raw["grids"]
    for name, expected, size in (("grid_small", GRID_SMALL, 48), ("grid_sota", GRID_SOTA, 1008)):
        cfgs = grid_configs(grids[name])
        assert len(cfgs) == size
        for k, vals in expected.items():
            assert {c[k] for c in cfgs} == vals, (name, k)
        ids = [c["config_id"] for c in cfgs]
        assert len(set(ids)) == size  # every combination once
        combos = {tuple(c[k] for k in expected) for c in cfgs}
        assert len(combos) == size


def test_config_id_shows_values():
    cfgs = grid_configs({"theta_e_arcsec": [0.75], "src_dmag": [1.5], "src_reff_arcsec": [0.1],
                         "src_e": [0.2], "shear": [0.04]})
    assert cfgs == [{"theta_e_arcsec": 0.75, "src_dmag": 1.5, "src_reff_arcsec": 0.1, "src_e": 0.2,
                     "shear": 0.04, "config_id": "te0.75_dm1.5_re0.1_e0.2_sh0.04"}]
    with pytest.raises(ValueError, match="shear"):
        grid_configs({"theta_e_arcsec": [1.0], "src_dmag": [1.0], "src_reff_arcsec": [0.1], "src_e": [0.0]})


# --------------------------------------------------------------------------- control modes
def test_unpaired_controls_and_injections_are_disjoint(mparams):
    parent = parent_table(600)
    man, summ = build_manifest(parent, mparams)
    ctrl = man.column("is_control").to_numpy() == 1
    rid = man.column("row_id").to_numpy()
    split = man.column("split").to_numpy(zero_copy_only=False)
    assert ctrl.sum() > 100 and (~ctrl).sum() > 100
    assert set(rid[ctrl]).isdisjoint(set(rid[~ctrl]))
    for s in ("train", "val", "test"):
        m = split == s
        assert set(rid[m & ctrl]).isdisjoint(set(rid[m & ~ctrl]))
        assert summ["splits"][s]["galaxies_in_both"] == 0
        assert summ["splits"][s]["rows"] == int(m.sum())
    # controls appear once and carry no injection; injected galaxies appear `replicates` times
    for c in INJECTION_COLUMNS:
        assert np.all(man.column(c).to_numpy()[ctrl] == 0.0), c
    assert set(man.column("config_id").to_numpy(zero_copy_only=False)[ctrl]) == {"control"}
    _, n_ctrl = np.unique(rid[ctrl], return_counts=True)
    assert (n_ctrl == 1).all()
    _, n_inj = np.unique(rid[~ctrl], return_counts=True)
    assert (n_inj == 3).all()
    assert sorted(set(man.column("replicate").to_numpy()[~ctrl].tolist())) == [0, 1, 2]
    te = man.column("theta_e_arcsec").to_numpy()
    assert set(te[~ctrl].tolist()) <= {0.3, 0.6, 1.0} and te[~ctrl].min() > 0
    # unpaired: pair_id of an injection is its own sample_id
    sid, pid = man.column("sample_id").to_numpy(), man.column("pair_id").to_numpy()
    np.testing.assert_array_equal(pid, sid)
    assert len(set(sid.tolist())) == len(sid)
    # every usable galaxy is used exactly once (as control or as injected)
    assert set(rid.tolist()) == set(parent.column("row_id").to_numpy().tolist())
    # sorted by split then sample_id
    for s in ("train", "val", "test"):
        ss = sid[split == s]
        assert (np.diff(ss) > 0).all()


def test_paired_every_injected_galaxy_is_its_own_control(mparams):
    mparams["manifest"]["control_type"] = "paired"
    parent = parent_table(300)
    man, summ = build_manifest(parent, mparams)
    ctrl = man.column("is_control").to_numpy() == 1
    rid = man.column("row_id").to_numpy()
    sid, pid = man.column("sample_id").to_numpy(), man.column("pair_id").to_numpy()
    ctrl_sid_of = dict(zip(rid[ctrl].tolist(), sid[ctrl].tolist()))
    assert len(ctrl_sid_of) == 300 == ctrl.sum()  # one control per galaxy; control_frac unused
    assert (~ctrl).sum() == 3 * 300
    for r, p in zip(rid[~ctrl].tolist(), pid[~ctrl].tolist()):
        assert r in ctrl_sid_of
        assert p == ctrl_sid_of[r]
    np.testing.assert_array_equal(pid[ctrl], sid[ctrl])
    for s in ("train", "val", "test"):
        assert summ["splits"][s]["galaxies_in_both"] == summ["splits"][s]["control_galaxies"]


# --------------------------------------------------------------------------- order independence
@pytest.mark.parametrize("control_type", ["unpaired", "paired"])
def test_manifest_independent_of_row_order_and_chunking(mparams, control_type):
    mparams["manifest"]["control_type"] = control_type
    parent = parent_table(400, seed=1, near_every=37, nan_mag_every=53)
    ref, ref_sum = build_manifest(parent, mparams)
    perm = np.random.default_rng(5).permutation(parent.num_rows)
    shuffled, shuf_sum = build_manifest(parent.take(pa.array(perm)), mparams)
    assert shuffled.equals(ref)  # same rows in the same (split, sample_id) order
    assert shuf_sum == ref_sum
    half = parent.num_rows // 2
    a, _ = build_manifest(parent.take(pa.array(perm[:half])), mparams)
    b, _ = build_manifest(parent.take(pa.array(perm[half:])), mparams)
    assert_same_manifest(pa.concat_tables([b, a]), ref)


def test_draws_are_pure_functions_of_seed_and_sample_id(mparams):
    cfgs = grid_configs(mparams["grids"]["grid_sota"])
    m = mparams["manifest"]
    d1 = draw_injection(123, 987654321, cfgs, m, 19.0)
    d2 = draw_injection(123, 987654321, cfgs, m, 19.0)
    assert d1 == d2
    d3 = draw_injection(124, 987654321, cfgs, m, 19.0)
    assert d3["src_phi_deg"] != d1["src_phi_deg"]
    # and the master seed changes the manifest draws
    parent = parent_table(200)
    a, _ = build_manifest(parent, mparams)
    mparams["seed"] = mparams["seed"] + 1
    b, _ = build_manifest(parent, mparams)
    assert set(a.column("sample_id").to_pylist()).isdisjoint(b.column("sample_id").to_pylist())


# --------------------------------------------------------------------------- per-sample draws
def test_draw_ranges(mparams):
    m = mparams["manifest"]
    m.update(grid="grid_sota", src_gr=[0.2, 2.0], src_rz=[0.1, 2.0], src_color_clip=[-0.5, 1.5],
             lens_q=[0.5, 1.0], src_offset_frac=0.8)
    man, _ = build_manifest(parent_table(1500, seed=2), mparams)
    inj = man.filter(pc.equal(man.column("is_control"), 0))
    col = {c: inj.column(c).to_numpy() for c in inj.column_names if c not in ("split", "brickname", "config_id")}
    te = col["theta_e_arcsec"]
    r = np.hypot(col["src_x_arcsec"], col["src_y_arcsec"])
    assert (r <= 0.8 * te + 1e-12).all()
    assert (r / (0.8 * te)).max() > 0.95   # the offsets fill the disc
    assert np.mean(r / (0.8 * te) < np.sqrt(0.5)) == pytest.approx(0.5, abs=0.05)  # uniform in area
    for c in ("src_gr", "src_rz"):
        assert col[c].min() >= -0.5 and col[c].max() <= 1.5
        assert (col[c] == 1.5).sum() > 10 and (col[c] == -0.5).sum() > 10  # sigma 2 mag: clipped on both sides
    np.testing.assert_allclose(col["src_mag_r"], col["host_mag_r"] + col["src_dmag"], rtol=0, atol=1e-12)
    assert col["lens_q"].min() >= 0.5 and col["lens_q"].max() <= 1.0
    for c in ("lens_phi_deg", "src_phi_deg", "shear_phi_deg"):
        assert col[c].min() >= 0 and col[c].max() < 180
    g = np.hypot(col["gamma1"], col["gamma2"])
    np.testing.assert_allclose(g, col["shear"], atol=1e-12)
    cfg = inj.column("config_id").to_numpy(zero_copy_only=False)
    assert len(set(cfg.tolist())) > 500  # the draw spreads over the 1008 configs
    # config_id agrees with the row's values
    for i in range(0, len(cfg), 97):
        assert cfg[i] == (f"te{te[i]:g}_dm{col['src_dmag'][i]:g}_re{col['src_reff_arcsec'][i]:g}"
                          f"_e{col['src_e'][i]:g}_sh{col['shear'][i]:g}")


def test_colour_draw_centred_on_mean_when_not_clipped(mparams):
    man, _ = build_manifest(parent_table(1000, seed=4), mparams)  # shipped src_gr [0.2, 0.2]
    inj = man.filter(pc.equal(man.column("is_control"), 0))
    gr = inj.column("src_gr").to_numpy()
    assert abs(gr.mean() - 0.2) < 0.02 and abs(gr.std() - 0.2) < 0.02


def test_control_frac_respected(mparams):
    mparams["manifest"]["control_frac"] = 0.3
    parent = parent_table(3000, seed=3)
    man, _ = build_manifest(parent, mparams)
    ctrl = man.column("is_control").to_numpy() == 1
    frac_gal = ctrl.sum() / 3000
    assert abs(frac_gal - 0.3) < 0.03
    assert (~ctrl).sum() == 3 * (3000 - ctrl.sum())
    mparams["manifest"]["control_frac"] = 0.0
    man0, _ = build_manifest(parent, mparams)
    assert (man0.column("is_control").to_numpy() == 0).all()
    mparams["manifest"]["control_frac"] = 1.0
    man1, _ = build_manifest(parent, mparams)
    assert (man1.column("is_control").to_numpy() == 1).all() and man1.num_rows == 3000


def test_cap_per_split_is_order_independent(mparams):
    parent = parent_table(500, seed=6)
    full, _ = build_manifest(parent, mparams)
    n_train_full = sum(1 for s in full.column("split").to_pylist() if s == "train")
    mparams["manifest"]["n_total_per_split"] = {"train": 100, "val": 10**6, "test": 7}
    capped, summ = build_manifest(parent, mparams)
    split = np.asarray(capped.column("split").to_pylist())
    assert (split == "train").sum() == 100 and (split == "test").sum() == 7
    assert summ["capped_rows"]["train"] == n_train_full - 100
    assert summ["splits"]["train"]["rows"] == 100
    # val is untouched
    assert (split == "val").sum() == sum(1 for s in full.column("split").to_pylist() if s == "val")
    perm = np.random.default_rng(9).permutation(parent.num_rows)
    capped2, _ = build_manifest(parent.take(pa.array(perm)), mparams)
    assert capped2.equals(capped)
    # the kept rows are a subset of the uncapped manifest with identical draws
    kept = set(capped.column("sample_id").to_pylist())
    sub = full.filter(pa.array([s in kept for s in full.column("sample_id").to_pylist()]))
    assert_same_manifest(sub, capped)


def test_near_known_lens_rows_excluded_and_counted(mparams):
    parent = parent_table(400, seed=8, near_every=10, nan_mag_every=41)
    near = parent.column("near_known_lens").to_numpy()
    mag = parent.column("mag_r").to_numpy()
    man, summ = build_manifest(parent, mparams)
    rid = parent.column("row_id").to_numpy()
    used = set(man.column("row_id").to_pylist())
    assert used.isdisjoint(rid[near].tolist())
    assert used.isdisjoint(rid[~np.isfinite(mag)].tolist())
    assert used == set(rid[~near & np.isfinite(mag)].tolist())
    assert summ["excluded_near_known_lens"] == int(near.sum()) == 40
    assert summ["excluded_no_r_magnitude"] == int((~np.isfinite(mag) & ~near).sum())
    assert summ["excluded_no_r_magnitude"] > 0
    assert np.isfinite(man.column("host_mag_r").to_numpy()).all()


def test_manifest_carries_parent_columns(mparams):
    parent = parent_table(50, seed=10)
    man, _ = build_manifest(parent, mparams)
    assert man.schema.field("sample_id").type == pa.int64()
    assert man.schema.field("is_control").type == pa.int8()
    assert man.schema.field("replicate").type == pa.int32()
    p = {r: i for i, r in enumerate(parent.column("row_id").to_pylist())}
    for row in man.to_pylist()[:20]:
        i = p[row["row_id"]]
        assert row["ra"] == parent.column("ra")[i].as_py()
        assert row["host_mag_r"] == parent.column("mag_r")[i].as_py()
        assert row["psfsize_z"] == parent.column("psfsize_z")[i].as_py()
        assert row["brickname"] == parent.column("brickname")[i].as_py()
        assert row["split"] == parent.column("split")[i].as_py()


def test_empty_manifest_is_an_error(mparams):
    parent = parent_table(20, seed=11, near_every=1)  # rows 1, 2, ... near a lens
    parent = parent.filter(parent.column("near_known_lens"))
    with pytest.raises(ValueError, match="manifest is empty"):
        build_manifest(parent, mparams)
