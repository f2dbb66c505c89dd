"""Shared start-up for the stage scripts: run from the repository root, read params.yaml."""

from __future__ import annotations

import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from darkhaloscope.params import ParamsError, load_params  # noqa: E402


def setup(name: str) -> dict:
    """Configure logging, chdir to the repository root and return the validated params."""
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    os.chdir(ROOT)
    try:
        return load_params(os.environ.get("DHS_PARAMS", "params.yaml"))
    except ParamsError as e:
        sys.exit(f"[{name}] {e}")
