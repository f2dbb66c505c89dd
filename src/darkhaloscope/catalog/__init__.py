"""Phase 3 and 4a: the LRG parent sample and the injection manifest.

- :mod:`~darkhaloscope.catalog.selection`: LRG colour cuts (``cut_steps``, ``lrg_mask``), stable row
  ids, HEALPix sky-region splits.
- :mod:`~darkhaloscope.catalog.parent`: ``build_parent`` (sweeps -> cuts -> de-duplication -> splits).
- :mod:`~darkhaloscope.catalog.manifest`: ``build_manifest`` (grids, controls, every per-sample draw).
"""

from darkhaloscope.catalog.manifest import INJECTION_COLUMNS, build_manifest, draw_injection, grid_configs
from darkhaloscope.catalog.parent import build_parent
from darkhaloscope.catalog.selection import (
    DESI_LRG,
    cumulative_counts,
    cut_steps,
    healpix_index,
    lrg_mask,
    region_split,
    row_ids,
)

__all__ = [
    "INJECTION_COLUMNS", "build_manifest", "draw_injection", "grid_configs", "build_parent", "DESI_LRG",
    "cumulative_counts", "cut_steps", "healpix_index", "lrg_mask", "region_split", "row_ids",
]
