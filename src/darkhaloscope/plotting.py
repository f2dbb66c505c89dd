"""Shared plotting: g/r/z colour composites (Lupton et al. 2004 asinh stretch) and reproducible PNGs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from astropy.visualization import make_lupton_rgb  # noqa: E402


def rgb(stamp: np.ndarray, stretch: float = 0.5, Q: float = 8.0) -> np.ndarray:
    """RGB image of a (3, H, W) g/r/z stamp in nanomaggies: z -> red, r -> green, g -> blue."""
    g, r, z = (np.nan_to_num(np.asarray(stamp[i], dtype=np.float64)) for i in range(3))
    return make_lupton_rgb(z, r, g * 1.2, stretch=stretch, Q=Q)


def save_figure(fig, path: str) -> None:
    """Save without a timestamp or software tag, so the PNG bytes are reproducible."""
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)
