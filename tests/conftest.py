"""Shared fixtures of the tests: the repository root, the shipped params, a tiny mock-survey
configuration and ``cpu_only`` (CPU float32 training and scoring).

The synthetic stamp-file factory is tests/_stamps.py (``import _stamps as S``), the tiny
repository copies tests/_tinyrepo.py (``import _tinyrepo as T``)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shipped_params_raw() -> dict:
    """params.yaml as parsed YAML (not validated), never mutated: copy before changing."""
    with open(REPO / "params.yaml") as f:
        return yaml.safe_load(f)


@pytest.fixture
def params(shipped_params_raw) -> dict:
    """A private deep copy of the shipped params, free to modify."""
    return copy.deepcopy(shipped_params_raw)


@pytest.fixture
def inj(params) -> dict:
    """The shipped `inject` section (stamp 64 px, 0.262 arcsec/px, Moffat PSF)."""
    return params["inject"]


TINY_MOCK = {
    "seed": 3, "n_bricks_ra": 2, "n_bricks_dec": 1, "ra0_deg": 150.0, "dec0_deg": 0.5,
    "spacing_deg": 1.0, "brick_size_pix": 200, "n_lrg_per_brick": 5, "n_blue_per_brick": 2,
    "n_star_per_brick": 2, "companion_frac": 0.0, "n_known_lenses": 1, "edge_frac": 0.0,
    "moffat_beta": 3.5, "psf_fwhm_r": [0.9, 1.8], "depth_r": [23.3, 24.0], "n_mask_trails": 1,
    "psfsize_zero_bricks": 1,
    "impostor_frac": {"ring": 0.0, "spiral": 0.0, "merger": 0.0, "edge_on": 0.0, "clumpy": 0.0, "pair": 0.0},
}


@pytest.fixture(scope="session")
def tiny_mock() -> dict:
    """survey.mock for a 2x1-brick, 200-pixel survey with a few objects (a fresh copy)."""
    return copy.deepcopy(TINY_MOCK)


@pytest.fixture
def cpu_only(monkeypatch):
    """Force CPU float32 in training and scoring even on a CUDA machine: the equalities the tests
    check are exact there. Use it by name, or ``pytestmark = pytest.mark.usefixtures("cpu_only")``."""
    import torch

    import darkhaloscope.model.score as score_mod
    import darkhaloscope.model.train as train_mod

    cpu = lambda: (torch.device("cpu"), None)  # noqa: E731
    monkeypatch.setattr(train_mod, "device_and_amp", cpu)
    monkeypatch.setattr(score_mod, "device_and_amp", cpu)
