"""PNG galleries: injections (each injected stamp beside its clean cutout and the arc alone) and
lens impostors (the un-injected stamps of one impostor class)."""

from __future__ import annotations

from darkhaloscope.plotting import plt, rgb, save_figure


def injection_gallery(rows: list[dict], path: str) -> None:
    """Rows of (injected stamp, same galaxy without injection, injected arc alone); rows whose
    ``source_model`` is not sersic name it (and the COSMOS galaxy's IDENT) beside the row."""
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
        label = f"tE={r['theta_e_arcsec']:.2f}\"\nSNR={r['arc_snr']:.1f}"
        if r.get("source_model", "sersic") != "sersic":   # a pixel source: its model and COSMOS IDENT
            ident = int(r.get("source_ident", -1))
            label += f"\n{r['source_model']}" + (f" {ident}" if ident >= 0 else "")
        axes[i, 0].set_ylabel(label, fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def impostor_gallery(rows: list[dict], cls: str, path: str, per_row: int = 4) -> None:
    """The stamps of lens impostors of class ``cls`` (un-injected negatives), ``per_row`` to a row,
    each labelled with its split and sample id; a class without stamps gives a page that says so."""
    n = len(rows)
    n_rows = max(1, -(-n // per_row))
    fig, axes = plt.subplots(n_rows, per_row, figsize=(2.1 * per_row, 2.1 * n_rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if k < n:
            ax.imshow(rgb(rows[k]["stamp"]), origin="lower")
            ax.set_title(f"{rows[k]['split']} {int(rows[k]['sample_id']) % 100000}", fontsize=7)
        else:
            ax.axis("off")
    if not n:
        axes[0, 0].text(0.0, 0.5, f"no {cls} impostors in the manifest", fontsize=8)
    fig.suptitle(f"lens impostors: {cls} (negatives)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
