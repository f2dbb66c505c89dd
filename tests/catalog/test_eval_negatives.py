"""Manifest: lens impostors are negatives only; evaluation negatives in val / test (issue 14, item 5)."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest
from test_manifest import parent_table

from darkhaloscope.catalog import selection
from darkhaloscope.catalog.manifest import build_manifest
from darkhaloscope.catalog.parent import build_parent
from darkhaloscope.constants import IMPOSTOR_CLASSES, NO_IMPOSTOR, SPLITS
from darkhaloscope.params import validate
from darkhaloscope.survey.mock import MockSurvey


def _with_impostors(parent: pa.Table, every: int = 7) -> pa.Table:
    cls = np.full(parent.num_rows, NO_IMPOSTOR, dtype=object)
    cls[::every] = [IMPOSTOR_CLASSES[i % len(IMPOSTOR_CLASSES)] for i in range(len(cls[::every]))]
    return parent.append_column("impostor", pa.array(cls.astype(str)))


@pytest.fixture
def mp(params):
    p = copy.deepcopy(params)
    p["manifest"].update(grid="grid_small", control_type="unpaired", control_frac=0.5, replicates=3,
                         n_total_per_split={"train": 10**6, "val": 10**6, "test": 10**6},
                         eval_negatives=True, eval_replicates=1)
    return validate(p)


@pytest.mark.parametrize("control_type", ["unpaired", "paired"])
def test_impostors_are_negatives_only_and_carried(mp, control_type):
    mp["manifest"]["control_type"] = control_type
    parent = _with_impostors(parent_table(700, seed=2))
    man, summ = build_manifest(parent, mp)
    imp = man.column("impostor").to_numpy(zero_copy_only=False)
    ctrl = man.column("is_control").to_numpy() == 1
    rid = man.column("row_id").to_numpy()
    assert (imp != NO_IMPOSTOR).sum() == (parent.column("impostor").to_numpy(zero_copy_only=False) != NO_IMPOSTOR).sum()
    assert ctrl[imp != NO_IMPOSTOR].all()  # never injected
    _, n = np.unique(rid[imp != NO_IMPOSTOR], return_counts=True)
    assert (n == 1).all()  # one un-injected row each
    split = man.column("split").to_numpy(zero_copy_only=False)
    for s in SPLITS:
        assert summ["splits"][s]["impostors"] == {c: int(((split == s) & (imp == c)).sum()) for c in IMPOSTOR_CLASSES}
    # the class follows the galaxy
    by_rid = dict(zip(parent.column("row_id").to_pylist(), parent.column("impostor").to_pylist()))
    assert all(by_rid[r] == c for r, c in zip(rid.tolist(), imp.tolist()))


def test_eval_negatives_every_val_test_galaxy_once_uninjected(mp):
    parent = parent_table(900, seed=4)
    man, summ = build_manifest(parent, mp)
    split = man.column("split").to_numpy(zero_copy_only=False)
    ctrl = man.column("is_control").to_numpy() == 1
    rid = man.column("row_id").to_numpy()
    psplit = dict(zip(parent.column("row_id").to_pylist(), parent.column("split").to_pylist()))
    for s in ("val", "test"):
        gal = {r for r, sp in psplit.items() if sp == s}
        neg = rid[(split == s) & ctrl]
        assert sorted(neg.tolist()) == sorted(gal)  # every galaxy exactly once as a negative
        inj = rid[(split == s) & ~ctrl]
        _, n = np.unique(inj, return_counts=True)
        assert (n == 1).all() and 0 < len(inj) < len(gal)  # eval_replicates = 1; the non-control galaxies
        assert summ["splits"][s]["controls"] == len(gal)
    # train keeps the unpaired control mode: controls and injected galaxies disjoint, 3 replicates
    m = split == "train"
    assert set(rid[m & ctrl]).isdisjoint(rid[m & ~ctrl])
    _, n = np.unique(rid[m & ~ctrl], return_counts=True)
    assert (n == 3).all()
    # off: val / test as before (disjoint)
    mp["manifest"]["eval_negatives"] = False
    man0, _ = build_manifest(parent, mp)
    s0 = man0.column("split").to_numpy(zero_copy_only=False)
    c0 = man0.column("is_control").to_numpy() == 1
    r0 = man0.column("row_id").to_numpy()
    assert set(r0[(s0 == "val") & c0]).isdisjoint(r0[(s0 == "val") & ~c0])
    # the train split does not depend on eval_negatives at all
    t1 = man.filter(pa.compute.equal(man.column("split"), "train"))
    t0 = man0.filter(pa.compute.equal(man0.column("split"), "train"))
    assert t1.equals(t0)


def test_default_params_give_10000_evaluation_negatives_per_split(shipped_params_raw, tmp_path):
    """Item 5 on the shipped params, from the mock's geometry and a sample of its bricks: the val and test
    bricks (the split of each brick's region) times the parent galaxies per brick measured on a rendered
    sample of bricks, less the stamps lost off brick edges, must exceed 10,000 per split with a margin
    of 4 standard errors of the per-brick mean. Every such galaxy is an evaluation negative
    (manifest.eval_negatives), which the shipped params must switch on."""
    p = validate(copy.deepcopy(shipped_params_raw))
    assert p["manifest"]["eval_negatives"] is True
    mock = p["survey"]["mock"]
    survey = MockSurvey(mock)
    ra = np.array([b[1] for b in survey.bricks])
    dec = np.array([b[2] for b in survey.bricks])
    sp = p["selection"]["split"]
    brick_split = selection.region_split(selection.healpix_index(ra, dec, sp["nside"]), sp["nside"], sp["seed"],
                                         sp["fractions"])
    # every 20th brick of this survey (rendered from its own position in the sample: the same distributions),
    # written and selected as stage parent does
    sample = list(range(0, len(survey.bricks), 20))
    sub = copy.deepcopy(p)
    sub_mock = MockSurvey(mock)
    sub_mock.bricks = [survey.bricks[i] for i in sample]
    sub_mock.lens_bricks = np.array([k for k, i in enumerate(sample) if i in set(survey.lens_bricks.tolist())], int)
    root = tmp_path / "survey"
    sub_mock.write(root)
    sub["survey"]["root"] = str(root)
    sub["selection"]["engine"] = "inprocess"
    parent, _ = build_parent(sub)
    per_brick = np.array([int((parent.column("brickname").to_numpy(zero_copy_only=False) == survey.bricks[i][0]).sum())
                          for i in sample])
    mean, sem = per_brick.mean(), per_brick.std(ddof=1) / np.sqrt(len(per_brick))
    edge_loss = 0.06  # stamps over a brick edge: ~5% of rows in the shipped runs (metrics/stamps.json)
    for s in ("val", "test"):
        n_bricks = int((brick_split == s).sum())
        low = n_bricks * (mean - 4 * sem) * (1 - edge_loss)
        assert low >= 10_000, (s, n_bricks, mean, sem, low)
