"""The ONE preprocessing recipe of Phase 5: how raw stamps and metadata become network inputs.

Like torchvision's classification presets and ``weights.transforms()``, the recipe travels
with the model: training writes :meth:`Preprocess.to_dict` into every checkpoint, and every
consumer (the loader, scoring, the evaluation's shortcut audit and saliency galleries) rebuilds
it with :meth:`Preprocess.from_checkpoint`, so nothing can preprocess differently from training
(the original project scored with another normalisation than it trained with).

Units: stamps are float32 pixel values in nanomaggies, shape (B, 3, H, W) with bands g, r, z
(:data:`darkhaloscope.constants.BANDS`); radii are in pixels from the stamp centre
(H // 2, W // 2); normalised pixels are dimensionless (robust standard deviations).

Pieces:

- :class:`NormConfig` / :func:`normalize` / :func:`robust_stats`: robust per-sample,
  per-channel normalisation ``(x - median) / (1.4826 * MAD + 1e-8)`` clipped to ``clip``,
  statistics over the whole stamp (``full``) or only the outer annulus ``r >= outer_radius``
  pixels from the stamp centre (``outer``), so the flux of an injected arc near the centre
  cannot leak into the statistics. ``residual`` first subtracts each band's azimuthal median
  profile about the centre (:func:`radial_median_residual`: the smooth, symmetric light of the
  host galaxy, whose core brightness is the shortcut a classifier can learn instead of arcs),
  then scales as ``outer`` does. :func:`normalize_blocks` is the same computation fed a
  block of samples at a time (the loader's hot path, straight from memory-mapped buffers).
- :func:`augment`: one random dihedral transform (flips, rot90, transpose) per sample,
  identical for all its channels (training only; not part of :meth:`Preprocess.apply`).
- :class:`Preprocess`: the recipe (normalisation, input channels, metadata columns and their
  :class:`~darkhaloscope.model.nets.MetaScaler`) and its rules, each with one home:
  :meth:`~Preprocess.apply` runs them all on arrays; the loader runs the same functions on
  its gathered batches. A 6-channel input is the stamp's channels (:data:`STAMP_CHANNELS`),
  then its paired control's (:data:`CTRL_CHANNELS`), each normalised on its own; where no
  control exists the control half is blank (zeros, i.e. normalised blank sky).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from darkhaloscope.constants import BANDS
from darkhaloscope.model.nets import INPUT_CHANNELS, MetaScaler

NORM_METHODS: tuple[str, ...] = ("full", "outer", "residual")
MAD_TO_SIGMA = 1.4826
NORM_EPS = 1e-8


# ----------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class NormConfig:
    """Robust normalisation settings (stored in checkpoints via :meth:`to_dict`).

    ``method``: ``full`` (statistics over every pixel), ``outer`` (pixels at radius
    >= ``outer_radius`` pixels from the centre) or ``residual`` (the azimuthal median profile
    subtracted first, then ``outer``); ``clip``: (lo, hi) bounds of the normalised values, in
    robust standard deviations.
    """

    method: str = "full"
    outer_radius: float = 16
    clip: tuple[float, float] = (-10.0, 10.0)

    def __post_init__(self) -> None:
        if self.method not in NORM_METHODS:
            raise ValueError(f"unknown norm method {self.method!r}; valid: {list(NORM_METHODS)}")
        clip = tuple(float(c) for c in self.clip)
        if len(clip) != 2 or not clip[0] < clip[1]:
            raise ValueError(f"clip must be (lo, hi) with lo < hi, got {self.clip!r}")
        object.__setattr__(self, "clip", clip)
        if not float(self.outer_radius) >= 0:
            raise ValueError(f"outer_radius must be >= 0 pixels, got {self.outer_radius!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "outer_radius": self.outer_radius, "clip": list(self.clip)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NormConfig":
        valid = {"method", "outer_radius", "clip"}
        unknown = set(d) - valid
        if unknown:
            raise ValueError(f"unknown NormConfig keys {sorted(unknown)}; valid: {sorted(valid)}")
        kw = dict(d)
        if "clip" in kw:
            kw["clip"] = tuple(kw["clip"])
        return cls(**kw)


@functools.lru_cache(maxsize=32)
def outer_pixel_index(height: int, width: int, outer_radius: float) -> np.ndarray:
    """Flat indices of the pixels at radius >= ``outer_radius`` from the centre (H//2, W//2)."""
    yy, xx = np.mgrid[0:height, 0:width]
    rr = np.hypot(yy - height // 2, xx - width // 2)
    idx = np.flatnonzero(rr >= float(outer_radius))
    if idx.size == 0:
        raise ValueError(
            f"outer_radius {outer_radius} leaves no pixel of a {height}x{width} stamp"
        )
    idx.setflags(write=False)
    return idx


#: pixels within this radius (pixels) are grouped by their exact squared distance from the
#: centre (groups of 1, 4 or 8 pixels), so a symmetric (8-fold) profile is removed exactly where
#: it is steepest; beyond it, integer-radius rings (large enough for an arc to be a minority)
#: give the median profile, interpolated linearly in radius to each pixel
EXACT_RING_RADIUS = 6


@functools.lru_cache(maxsize=32)
def radial_plan(height: int, width: int) -> dict:
    """Pixel groups of :func:`radial_median_residual` for a (height, width) stamp, centre (H//2, W//2).

    ``exact``: flat indices of the pixels with squared distance d2 <= EXACT_RING_RADIUS^2, ordered
    so that groups of equal d2 are contiguous and groups of equal size adjacent, with segments
    ``exact_segs`` = (start, size, n_groups) and their group labels ``seg_labels`` (label =
    rank of d2). ``rings``: flat indices of the other pixels ordered by ring ``round(r)``, with
    ``ring_starts``. ``anchor_r``: radii (pixels) of the profile's anchors, every exact group
    then every ring (its mean radius); ``lo``, ``hi``, ``wt``: for each ring pixel the two
    anchors bracketing its radius and the linear weight of ``hi`` (clamped at the ends).
    """
    yy, xx = np.mgrid[0:height, 0:width]
    d2 = ((yy - height // 2) ** 2 + (xx - width // 2) ** 2).ravel()
    r = np.sqrt(d2)
    inner = np.flatnonzero(d2 <= EXACT_RING_RADIUS**2)
    uniq_d2, label, sizes = np.unique(d2[inner], return_inverse=True, return_counts=True)
    exact = inner[np.lexsort((inner, label, sizes[label]))]
    segs, seg_labels, start = [], [], 0
    for size in np.unique(sizes):
        members = np.flatnonzero(sizes == size)  # group labels of this size, ascending = exact order
        segs.append((start, int(size), len(members)))
        seg_labels.append(members)
        start += int(size) * len(members)
    outer = np.flatnonzero(d2 > EXACT_RING_RADIUS**2)
    ring = np.rint(r[outer]).astype(np.int64)
    rings = outer[np.lexsort((outer, ring))]
    rid = np.rint(r[rings]).astype(np.int64)
    _, ring_starts = np.unique(rid, return_index=True)
    ring_starts = np.r_[ring_starts, rid.size]
    ring_r = np.array([r[rings[a:b]].mean() for a, b in zip(ring_starts[:-1], ring_starts[1:])])
    # anchors of the interpolated profile: every exact group at its radius, then every ring
    anchor_r = np.r_[np.sqrt(uniq_d2), ring_r]
    pos = np.clip(np.searchsorted(anchor_r, r[rings]), 1, len(anchor_r) - 1)
    lo, hi = pos - 1, pos
    wt = np.clip((r[rings] - anchor_r[lo]) / (anchor_r[hi] - anchor_r[lo]), 0.0, 1.0).astype(np.float32)
    plan = {"exact": exact, "exact_segs": tuple(segs), "seg_labels": tuple(seg_labels), "n_groups": len(uniq_d2),
            "rings": rings, "ring_starts": ring_starts, "anchor_r": anchor_r, "lo": lo, "hi": hi, "wt": wt}
    for v in plan.values():
        if isinstance(v, np.ndarray):
            v.setflags(write=False)
    return plan


def radial_median_residual(flat: np.ndarray, height: int, width: int) -> np.ndarray:
    """Each row of ``flat`` (R, H*W) minus its azimuthal median profile, as a new float32 array.

    Near the centre (r <= :data:`EXACT_RING_RADIUS` pixels) the profile is the median of the
    pixels at exactly the same distance, so a symmetric light profile (the host galaxy) is
    removed exactly where it is steep; further out it is the median of each integer-radius
    ring, interpolated linearly in radius between ring mean radii. An arc, a minority of its
    ring's pixels, survives. Units are those of ``flat``; float32 (a NaN in a group or ring
    gives NaN there).
    """
    flat = np.asarray(flat, dtype=np.float32)
    pl = radial_plan(height, width)
    n = flat.shape[0]
    out = np.empty_like(flat)
    ng_all = pl["n_groups"]
    st = pl["ring_starts"]
    anchors = np.empty((n, ng_all + len(st) - 1), np.float32)  # profile values at anchor_r
    ex = np.take(flat, pl["exact"], axis=-1)
    for (start, size, ng), labels in zip(pl["exact_segs"], pl["seg_labels"]):
        blk = ex[:, start:start + size * ng].reshape(n, ng, size)
        med = np.median(blk, axis=-1).astype(np.float32)
        anchors[:, labels] = med
        blk -= med[..., None]
    out[:, pl["exact"]] = ex
    rg = np.take(flat, pl["rings"], axis=-1)
    for k in range(len(st) - 1):
        anchors[:, ng_all + k] = np.median(rg[:, st[k]:st[k + 1]], axis=-1)
    wt = pl["wt"]
    rg -= anchors[:, pl["lo"]] * (np.float32(1.0) - wt) + anchors[:, pl["hi"]] * wt
    out[:, pl["rings"]] = rg
    return out


def _middle(s: np.ndarray) -> np.ndarray:
    """Median of rows already sorted along the last axis (mean of the two middle values if even)."""
    n = s.shape[-1]
    if n % 2:
        return s[..., n // 2].copy()
    return (s[..., n // 2 - 1] + s[..., n // 2]) * s.dtype.type(0.5)


#: (sample, channel) rows normalised together: 96 rows of 4096 float32 = 1.5 MiB,
#: so a block's scratch copies stay in the core's L2 cache.
_BLOCK_ROWS = 96


def block_samples(channels: int) -> int:
    """Samples per block of :func:`normalize_blocks` for ``channels`` channels (>= 1)."""
    return max(1, _BLOCK_ROWS // max(channels, 1))


def _stats_sorted(pix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference (median, MAD) of each row of ``pix`` (R, n) by sorting twice.

    Used for rows holding a non-finite value (a NaN anywhere gives NaN) and by
    the tests as the definition the fast path must reproduce bit for bit.
    """
    srt = np.sort(pix, axis=-1)
    med = _middle(srt)
    med[np.isnan(srt[..., -1])] = np.nan  # sort puts NaN last
    dev = np.subtract(srt, med[..., None], out=srt)
    np.abs(dev, out=dev)
    dev.sort(axis=-1)
    return med, _middle(dev)


def _middle_select(s: np.ndarray) -> np.ndarray:
    """Median of each row of ``s`` (R, n) by selection; ``s`` is scratch (reordered in place).

    One ``partition`` at k = n // 2 (a SIMD quickselect in numpy >= 2) gives the
    order statistic k at column k and the k smallest values to its left, so the
    (k-1)-th is their maximum. The values, hence the result, are exactly those
    of :func:`_middle` on the sorted rows.
    """
    n = s.shape[-1]
    k = n // 2
    s.partition(k, axis=-1)
    hi = s[:, k]
    if n % 2:
        return hi.copy()
    return (s[:, :k].max(axis=-1) + hi) * s.dtype.type(0.5)


def _stats_block(pix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(median, MAD) of each row of ``pix`` (R, n) float32; ``pix`` is scratch (overwritten).

    Equal, bit for bit, to :func:`_stats_sorted`: the median and the median of
    the float32 deviations ``|x - median|`` are order statistics, found by
    selection instead of sorting. Rows with a non-finite value (detected by their
    float32 sum, which is then non-finite; an overflowing sum only costs the slow
    path) take the reference path.
    """
    bad = ~np.isfinite(pix.sum(axis=-1))
    if bad.any():
        good = ~bad
        med = np.empty(pix.shape[0], np.float32)
        mad = np.empty(pix.shape[0], np.float32)
        med[bad], mad[bad] = _stats_sorted(pix[bad])
        if good.any():
            med[good], mad[good] = _stats_block(pix[good])
        return med, mad
    med = _middle_select(pix)
    np.subtract(pix, med[:, None], out=pix)
    np.abs(pix, out=pix)
    return med, _middle_select(pix)


@functools.lru_cache(maxsize=32)
def _outer_runs(height: int, width: int, outer_radius: float) -> tuple[tuple[int, int], ...]:
    """:func:`outer_pixel_index` as runs of consecutive flat indices (start, stop), in order."""
    idx = outer_pixel_index(height, width, outer_radius)
    cut = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.r_[idx[0], idx[cut]]
    stops = np.r_[idx[cut - 1] + 1, idx[-1] + 1]
    return tuple(zip(starts.tolist(), stops.tolist()))


def _stat_pixels(flat: np.ndarray, cfg: NormConfig, h: int, w: int) -> np.ndarray:
    """A fresh (R, n) float32 copy of the pixels the statistics use (scratch for :func:`_stats_block`)."""
    if cfg.method == "full":
        return np.array(flat, dtype=np.float32, order="C")
    if cfg.method in ("outer", "residual"):  # residual: ``flat`` is already the residual
        runs = _outer_runs(h, w, float(cfg.outer_radius))
        if len(runs) > 2 * h:  # a fragmented set (not an annulus): one gather
            idx = outer_pixel_index(h, w, float(cfg.outer_radius))
            return np.take(flat, idx, axis=-1).astype(np.float32, copy=False)
        # an annulus is ~h runs of whole rows and row ends: slice copies beat a gather ~2x
        out = np.empty((flat.shape[0], sum(b - a for a, b in runs)), np.float32)
        o = 0
        for a, b in runs:
            out[:, o : o + b - a] = flat[:, a:b]
            o += b - a
        return out
    raise ValueError(f"unknown norm method {cfg.method!r}; valid: {list(NORM_METHODS)}")  # pragma: no cover


def robust_stats(x: np.ndarray, cfg: NormConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample, per-channel (median, MAD) of ``x`` (B, C, H, W); each (B, C) float32.

    Statistics over all pixels (``full``) or the pixels at radius >= ``outer_radius``
    from the centre (``outer``; ``residual``: the same pixels of :func:`radial_median_residual`). The median of an even number of values is the mean
    of the two middle ones, computed in float32; MAD is the median of the float32
    deviations ``|x - median|``. A NaN anywhere in the pixels gives NaN.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W), got shape {x.shape}")
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w)
    med = np.empty(b * c, np.float32)
    mad = np.empty(b * c, np.float32)
    for r0 in range(0, b * c, _BLOCK_ROWS):
        r1 = min(r0 + _BLOCK_ROWS, b * c)
        rows = radial_median_residual(flat[r0:r1], h, w) if cfg.method == "residual" else flat[r0:r1]
        med[r0:r1], mad[r0:r1] = _stats_block(_stat_pixels(rows, cfg, h, w))
    return med.reshape(b, c), mad.reshape(b, c)


def normalize(x: np.ndarray, cfg: NormConfig, out: np.ndarray | None = None) -> np.ndarray:
    """(x - median) / (1.4826 * MAD + 1e-8) per sample and channel, clipped to ``cfg.clip``
    (``residual``: x is first replaced by :func:`radial_median_residual` of x).

    ``x`` is (B, C, H, W); returns a float32 array of the same shape: a new one, or
    ``out`` when given (a C-contiguous float32 array of that shape; ``out=x``
    normalises in place). The statistics are those of :func:`robust_stats`;
    non-finite inputs give non-finite outputs (the index drops non-finite stamps).

    Works block by block (about :data:`_BLOCK_ROWS` sample-channels at a time) so
    the scratch copies stay in cache; the result does not depend on the blocking.
    ``out=x`` is safe: a block's statistics are computed before it is overwritten.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"normalize expects (B, C, H, W), got shape {x.shape}")
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if out is None:
        out = np.empty(x.shape, np.float32)
    elif out.shape != x.shape or out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(
            f"normalize: out must be a writeable C-contiguous float32 array of shape {x.shape}, "
            f"got {out.dtype} {out.shape}"
        )
    return normalize_blocks(lambda b0, b1: x[b0:b1], x.shape, cfg, out)


def normalize_blocks(raw_block, shape: tuple[int, ...], cfg: NormConfig, out: np.ndarray) -> np.ndarray:
    """:func:`normalize` of a (B, C, H, W) batch, written into ``out`` (C-contiguous float32).

    ``raw_block(b0, b1)`` hands out the raw pixels (float32 nanomaggies) of samples b0..b1-1,
    :func:`block_samples` of them at a time: a view (e.g. into a memory-mapped file), or rows
    gathered into a scratch buffer that the next call may overwrite.
    """
    b, c, h, w = shape
    oflat = out.reshape(b * c, h * w)
    lo, hi = cfg.clip
    k = np.float32(MAD_TO_SIGMA)
    eps = np.float32(NORM_EPS)
    per = block_samples(c)
    for b0 in range(0, b, per):
        b1 = min(b0 + per, b)
        flat = np.asarray(raw_block(b0, b1)).reshape((b1 - b0) * c, h * w)
        if cfg.method == "residual":
            flat = radial_median_residual(flat, h, w)
        med, mad = _stats_block(_stat_pixels(flat, cfg, h, w))
        scale = k * mad + eps
        o = oflat[b0 * c : b1 * c]
        np.subtract(flat, med[:, None], out=o, dtype=np.float32)
        o /= scale[:, None]
        np.clip(o, lo, hi, out=o)
    return out


# ----------------------------------------------------------------------------- augmentation


def augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip, vertical flip, rot90 (k in 0..3) and transpose.

    ONE transform is drawn per sample and applied identically to all its channels
    (so the two halves of a 6-channel paired sample stay aligned). Returns a new
    C-contiguous array; deterministic given the state of ``rng``.
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"augment expects square (B, C, H, H) stamps, got shape {x.shape}")
    b = x.shape[0]
    hflip = rng.integers(0, 2, b)
    vflip = rng.integers(0, 2, b)
    k = rng.integers(0, 4, b)
    tr = rng.integers(0, 2, b)
    code = ((hflip * 2 + vflip) * 4 + k) * 2 + tr
    out = np.empty(x.shape, dtype=x.dtype)
    for c in np.unique(code):
        rows = np.flatnonzero(code == c)
        h, v, kk, t = int(c) // 16, (int(c) // 8) % 2, (int(c) // 2) % 4, int(c) % 2
        y = x[rows]
        if h:
            y = y[..., ::-1]
        if v:
            y = y[..., ::-1, :]
        if kk:
            y = np.rot90(y, kk, axes=(-2, -1))
        if t:
            y = y.swapaxes(-1, -2)
        out[rows] = y
    return out


def core_dropout(x: np.ndarray, rows: np.ndarray, radius: float, rng: np.random.Generator) -> None:
    """In place: the pixels within ``radius`` pixels of the centre of every channel of the
    normalised samples ``rows`` ((B,) bool) of ``x`` (B, C, H, W) become standard normal noise,
    i.e. normalised sky. A training augmentation against the core-brightness shortcut: the
    model cannot rely on the host's core, so it must find the arc. Draws come from ``rng``."""
    rows = np.flatnonzero(np.asarray(rows, bool))
    if rows.size == 0:
        return
    _, c, h, w = x.shape
    yy, xx = np.mgrid[0:h, 0:w]
    inner = np.flatnonzero(np.hypot(yy - h // 2, xx - w // 2).ravel() < float(radius))
    flat = x.reshape(x.shape[0], c, h * w)
    noise = rng.standard_normal((rows.size, c, inner.size)).astype(x.dtype)
    for k, i in enumerate(rows):
        flat[i][:, inner] = noise[k]


# ----------------------------------------------------------------------------- the recipe

#: channels of a network input: the stamp's g, r, z, then (6-channel, paired input) its control's
STAMP_CHANNELS = slice(0, len(BANDS))
CTRL_CHANNELS = slice(len(BANDS), 2 * len(BANDS))


class Preprocess:
    """The preprocessing a model was trained with: normalisation, input channels, metadata.

    ``norm``: the :class:`NormConfig`; ``input_channels``: 3 (the stamp) or 6 (the stamp,
    then its paired control stamp); ``meta_cols``: the metadata columns the model takes (raw
    catalogue values, e.g. ``psfsize_r`` in arcsec); ``meta_scaler``: their standardisation
    (a :class:`~darkhaloscope.model.nets.MetaScaler`, or anything with ``transform`` and
    ``mean``), None for unscaled or no metadata.

    Training writes :meth:`to_dict` into every checkpoint; :meth:`from_checkpoint` reads it
    back. :meth:`apply` turns raw arrays into network inputs; the loader, which gathers its
    batches straight from memory-mapped files, runs the same rules (:func:`normalize_blocks`,
    :meth:`blank_ctrl`, :meth:`scale_meta`) on its own buffers.
    """

    def __init__(self, norm: NormConfig, input_channels: int = 3, meta_cols: Sequence[str] = (),
                 meta_scaler: Any = None) -> None:
        if input_channels not in INPUT_CHANNELS:
            raise ValueError(f"input_channels must be 3 (stamp) or 6 (stamp + ctrl_stamp), got {input_channels}")
        if not isinstance(norm, NormConfig):
            raise ValueError(f"norm_cfg must be a NormConfig, got {type(norm).__name__}")
        self.norm = norm
        self.input_channels = int(input_channels)
        self.meta_cols = tuple(meta_cols)
        self.meta_scaler = meta_scaler

    @classmethod
    def from_checkpoint(cls, ck: Mapping[str, Any]) -> "Preprocess":
        """The recipe stored in a checkpoint dict (keys ``norm``, ``input_channels``,
        ``meta_cols``, ``meta_scaler``; see :meth:`to_dict`)."""
        scaler = MetaScaler.from_state(ck["meta_scaler"]) if ck.get("meta_scaler") else None
        return cls(NormConfig.from_dict(ck["norm"]), int(ck["input_channels"]), tuple(ck["meta_cols"]), scaler)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint entries of the recipe: plain values, in the order training writes them."""
        return {"norm": self.norm.to_dict(), "meta_cols": list(self.meta_cols),
                "meta_scaler": self.meta_scaler.state_dict() if self.meta_scaler is not None else None,
                "input_channels": self.input_channels}

    def __repr__(self) -> str:
        return (f"Preprocess(norm={self.norm}, input_channels={self.input_channels}, "
                f"meta_cols={self.meta_cols}, meta_scaler={self.meta_scaler!r})")

    @property
    def paired(self) -> bool:
        """True for a 6-channel input (stamp + control)."""
        return self.input_channels == CTRL_CHANNELS.stop

    # -- the rules -------------------------------------------------------------------

    def normalize(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """:func:`normalize` of (B, C, H, W) nanomaggies with this recipe's :class:`NormConfig`."""
        return normalize(x, self.norm, out)

    @staticmethod
    def blank_ctrl(x: np.ndarray, blank: np.ndarray) -> None:
        """In place: the control half of the rows ``blank`` ((B,) bool) of a normalised 6-channel
        batch ``x`` becomes zeros, the "no control available" input (normalised blank sky)."""
        x[blank, CTRL_CHANNELS] = 0.0

    def scale_meta(self, meta: np.ndarray, impute: bool = False) -> np.ndarray:
        """(N, n_meta) C-contiguous float32 network metadata from the raw values of ``meta_cols``.

        ``meta``: (N, n_meta) in ``meta_cols`` order (catalogue units). With ``impute``, a
        non-finite value (a row with no catalogue entry, e.g. a known lens) becomes the scaler's
        training mean, i.e. 0 after standardisation; then the scaler, if any, standardises.
        Without ``meta_cols`` the result is (N, 0).
        """
        if not self.meta_cols:
            return np.zeros((len(meta), 0), np.float32)
        if impute:
            if self.meta_scaler is None:
                raise ValueError("imputing missing metadata needs the meta_scaler (its means replace the values)")
            meta = np.where(np.isfinite(meta), meta, np.asarray(self.meta_scaler.mean, np.float64)[None, :])
        if self.meta_scaler is not None:
            meta = np.asarray(self.meta_scaler.transform(meta))
        return np.array(meta, dtype=np.float32, order="C")

    def apply(self, stamps: np.ndarray, ctrl: np.ndarray | None = None, meta: np.ndarray | None = None,
              ctrl_valid: np.ndarray | None = None, *, impute_meta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(x, meta_scaled)``: the network inputs for raw stamps, as training built them (no augmentation).

        ``stamps``: (B, 3, H, W) nanomaggies. For a 6-channel model ``ctrl`` holds the paired
        control stamps (B, 3, H, W) in nanomaggies, or None when no row has one; ``ctrl_valid``
        ((B,) bool, default: every row when ``ctrl`` is given) marks the rows whose control
        exists; the control half of the other rows is blank. A 3-channel model ignores them.
        ``meta``: (B, n_meta) raw values of ``meta_cols`` (None for a model without metadata);
        ``impute_meta``: replace non-finite values by the training means (:meth:`scale_meta`).

        Returns ``x`` (B, C, H, W) float32, each channel normalised on its own, and
        ``meta_scaled`` (B, n_meta) float32 ((B, 0) without metadata).
        """
        stamps = np.asarray(stamps)
        if stamps.ndim != 4 or stamps.shape[1] != len(BANDS):
            raise ValueError(f"stamps must be (B, {len(BANDS)}, H, W), got shape {stamps.shape}")
        n = stamps.shape[0]
        if meta is None:
            if self.meta_cols:
                raise ValueError(f"this model takes the metadata columns {list(self.meta_cols)}: pass meta")
            meta = np.zeros((n, 0), np.float64)
        if not self.paired:
            return self.normalize(stamps), self.scale_meta(meta, impute_meta)
        x = np.zeros((n, self.input_channels) + stamps.shape[2:], np.float32)
        x[:, STAMP_CHANNELS] = stamps
        has_ctrl = np.zeros(n, bool)
        if ctrl is not None:
            x[:, CTRL_CHANNELS] = ctrl
            has_ctrl[:] = True if ctrl_valid is None else np.asarray(ctrl_valid, bool)
        self.normalize(x, out=x)
        self.blank_ctrl(x, ~has_ctrl)
        return x, self.scale_meta(meta, impute_meta)
