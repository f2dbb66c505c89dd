"""PNG galleries of stamps as g/r/z colour composites (Lupton et al. 2004 asinh stretch)."""

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


def injection_gallery(rows: list[dict], path: str) -> None:
    """Rows of (injected stamp, same galaxy without injection, injected arc alone)."""
    n = max(1, len(rows))
    fig, axes = plt.subplots(n, 3, figsize=(6.3, 2.1 * n), squeeze=False)
    for ax, title in zip(axes[0], ("injected", "control (same galaxy)", "arc only")):
        ax.set_title(title, fontsize=8)
    for i, r in enumerate(rows):
        arc = r["stamp"] - r["clean"]
        panels = (r["stamp"], r["clean"], arc)
        for j, img in enumerate(panels):
            axes[i, j].imshow(rgb(img), origin="lower")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(f"tE={r['theta_e_arcsec']:.2f}\"\nSNR={r['arc_snr']:.1f}", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
