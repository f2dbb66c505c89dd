"""PNG gallery of injections: each injected stamp beside its clean cutout and the arc alone."""

from __future__ import annotations

from darkhaloscope.plotting import plt, rgb, save_figure


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
