"""The synthetic stamp-file factory of the tests (``import _stamps as S``).

:func:`make_stamp_file` writes one stamp parquet file through
:func:`darkhaloscope.stamps.format.write_stamp_file` from a few arguments: the rows' sample ids,
labels (``is_control``) and ``cutout_ok``, extra metadata columns, the stamp content (zeros, ones,
Gaussian noise, noise with a bright "Einstein ring" on the positives, or an explicit array), optional
control stamps with a validity mask, and the row-group size. :func:`ring_stamps` makes the ring
content alone, for tests that draw further columns from the same generator.

Tests that deliberately write malformed files call ``write_stamp_file`` directly.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from darkhaloscope.stamps.format import write_stamp_file

SHAPE = (3, 64, 64)
RING_COLOUR = (0.6, 1.0, 0.8)  # g, r, z scale of a "coloured" ring (the training tests' arcs)


class Written(NamedTuple):
    path: str
    columns: dict
    stamps: np.ndarray
    ctrl: np.ndarray | None


def noise_stamps(n: int, rng=0, noise: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """(n, 3, 64, 64) float32 Gaussian noise (mean, sigma = ``noise``); ``rng`` a seed or a Generator."""
    return np.random.default_rng(rng).normal(noise[0], noise[1], (n, *SHAPE)).astype(np.float32)


def ring_stamps(is_control, rng=0, amp: float = 15.0, colour=None,
                noise: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Noise stamps; every positive (``is_control == 0``) carries a bright ring of radius U(4, 9) px
    (peak ``amp``, width 1 px) inside the normalisation annulus' hole, scaled per band by ``colour``."""
    rng = np.random.default_rng(rng)  # a Generator is used as is: its stream continues
    is_control = np.asarray(is_control)
    st = noise_stamps(len(is_control), rng, noise)
    yy, xx = np.mgrid[0:64, 0:64]
    rr = np.hypot(yy - 32, xx - 32)
    band = None if colour is None else np.asarray(colour, np.float32)[:, None, None]
    for i in np.flatnonzero(is_control == 0):
        ring = (amp * np.exp(-0.5 * ((rr - rng.uniform(4.0, 9.0)) / 1.0) ** 2)).astype(np.float32)[None]
        st[i] += ring if band is None else ring * band
    return st


def make_stamp_file(path, n: int | None = None, *, sample_ids=0, is_control=None, cutout_ok=None,
                    columns: Mapping[str, object] | None = None, stamps="noise", rng=0,
                    noise: tuple[float, float] = (0.0, 1.0), ring_amp: float = 15.0, ring_colour=None,
                    ctrl=None, ctrl_valid=None, row_group_size: int = 512) -> Written:
    """Write a synthetic stamp file at ``path``; returns (path, columns, stamps, ctrl).

    n: the row count (else taken from sample_ids, is_control, columns or an explicit stamps array).
    sample_ids: the ids, or an int ``s`` for ``s, s+1, ...`` (int64).
    is_control: the labels (int8; default alternating 0, 1, 0, ...: positives first).
    cutout_ok: int8 (default all 1).
    columns: further columns, appended in order; a ``sample_id`` / ``is_control`` / ``cutout_ok``
        given here replaces the argument (and keeps its place in ``columns``' order).
    stamps: "zeros", "ones", "noise" (Gaussian ``noise`` = (mean, sigma)), "ring" (noise plus a ring
        of peak ``ring_amp`` on the positives, see :func:`ring_stamps`) or an (n, 3, 64, 64) array.
    rng: a seed or a numpy Generator for the random content (stamps first, then ctrl).
    ctrl: None (no ctrl_stamp column), "noise", "copy" (of the stamps) or an array;
        ctrl_valid: optional bool (n,) mask of the rows whose control is present.
    """
    columns = dict(columns or {})
    if n is None:
        for c in (columns.get("sample_id"), None if np.isscalar(sample_ids) else sample_ids, is_control,
                  columns.get("is_control"), None if isinstance(stamps, str) else stamps,
                  *columns.values()):
            if c is not None:
                n = len(c)
                break
    assert n is not None, "make_stamp_file: give n"
    ids = (np.arange(sample_ids, sample_ids + n, dtype=np.int64) if np.isscalar(sample_ids)
           else np.asarray(sample_ids, np.int64))
    labels = (np.arange(n) % 2).astype(np.int8) if is_control is None else np.asarray(is_control, np.int8)
    ok = np.ones(n, np.int8) if cutout_ok is None else np.asarray(cutout_ok, np.int8)
    cols = {k: v for k, v in (("sample_id", ids), ("is_control", labels), ("cutout_ok", ok))
            if k not in columns}
    cols.update(columns)
    rng = np.random.default_rng(rng)
    if isinstance(stamps, str):
        if stamps == "zeros":
            stamps = np.zeros((n, *SHAPE), np.float32)
        elif stamps == "ones":
            stamps = np.ones((n, *SHAPE), np.float32)
        elif stamps == "noise":
            stamps = noise_stamps(n, rng, noise)
        elif stamps == "ring":
            stamps = ring_stamps(cols["is_control"], rng, ring_amp, ring_colour, noise)
        else:
            raise ValueError(f"make_stamp_file: unknown stamps {stamps!r}")
    if isinstance(ctrl, str):
        if ctrl == "noise":
            ctrl = noise_stamps(n, rng, noise)
        elif ctrl == "copy":
            ctrl = stamps.copy()
        else:
            raise ValueError(f"make_stamp_file: unknown ctrl {ctrl!r}")
    out = write_stamp_file(path, cols, stamps, ctrl, row_group_size, ctrl_valid=ctrl_valid)
    return Written(out, cols, stamps, ctrl)
