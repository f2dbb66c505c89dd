"""The project's shared vocabulary, defined once: bands, splits, stamp shape, pixel scale,
the AB-magnitude <-> nanomaggy conversion and the seeds' rate targets.

Units: fluxes in nanomaggies (AB zero point 22.5), angles in arcsec, sizes in pixels.
"""

from __future__ import annotations

import numpy as np

#: coadd bands in stamp channel order (a 6-channel input is these, then the control's)
BANDS: tuple[str, ...] = ("g", "r", "z")
#: the sky-region splits of the parent sample
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: extra stamp directories beside the splits: un-injected cutouts of the known lenses and of the
#: train-split parent galaxies that carry no injection (for hard-negative mining)
KNOWN_SPLIT = "known"
PARENT_SPLIT = "parent"
#: lens-impostor classes of the mock survey (negatives that look like arcs; survey.impostors), and the
#: ``impostor`` value of every other galaxy
IMPOSTOR_CLASSES: tuple[str, ...] = ("ring", "spiral", "merger", "edge_on", "clumpy", "pair")
NO_IMPOSTOR = "none"
#: stamp side (pixels) and shape (band, row, col) that the stamp format holds
STAMP_SIZE: int = 64
STAMP_SHAPE: tuple[int, int, int] = (len(BANDS), STAMP_SIZE, STAMP_SIZE)
#: DR10 coadd pixel scale (arcsec per pixel)
PIXEL_SCALE: float = 0.262
#: AB magnitude of a flux of 1 nanomaggy
NMGY_ZP: float = 22.5
#: the seeds' rate targets: tpr@fpr<t> and fpr@tpr<t> are reported for these
FPR_TARGETS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
TPR_TARGETS: tuple[float, ...] = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)


def mag_to_nmgy(m):
    """AB magnitude -> flux in nanomaggies: ``10 ** ((22.5 - m) / 2.5)``."""
    return 10.0 ** ((NMGY_ZP - np.asarray(m, dtype=np.float64)) / 2.5)


def nmgy_to_mag(f):
    """Flux in nanomaggies -> AB magnitude ``22.5 - 2.5 log10(f)``; NaN where ``f <= 0``
    (a non-positive flux has no magnitude). A scalar in gives a float out."""
    arr = np.asarray(f, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(arr > 0, NMGY_ZP - 2.5 * np.log10(np.where(arr > 0, arr, 1.0)), np.nan)
    return out if np.ndim(f) else float(out)
