"""Linear PSF convolution and band injection by real FFTs, for the fast engine (and any unit image).

The batched, kernel-centred, zero-padded ("same") convolution of unit-flux
lensed images with per-band PSF kernels, and the band scaling that turns them
into arcs (:func:`inject_bands_batch`; :func:`inject_bands` is the one-stamp
drop-in for :func:`darkhaloscope.lensing.render.inject_bands`, the scipy
reference). The result equals ``render.convolve_psf`` / ``render.inject_bands``
to rounding: ~1e-16 of the image maximum with float64 transforms, ~1e-7 with
float32 ones (the default of the injection).

Implementation: each image is cropped to the bounding box of its nonzero pixels
and convolved on the smallest 2-3-5-smooth FFT grid on which the circular
convolution equals the linear one where it is needed; the image is transformed
once for all its kernels and the band flux multiplies the spectrum (the
convolution is linear). Kernel transforms are cached by value (and kernel sets
by their hash), so a brick's kernels are transformed once.

Units: pixels; images and arcs in flux per pixel (nanomaggies per pixel once
scaled by the band fluxes, nanomaggies); kernels dimensionless (sum 1). No I/O.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from darkhaloscope.constants import BANDS
from darkhaloscope.lensing.fast import _JIT_EXACT
from darkhaloscope.lensing.render import _band_inputs

__all__ = ["convolve_psf_batch", "inject_bands_batch", "inject_bands", "bin_phases", "inject_phases_batch",
           "inject_supersampled_batch", "pad_kernels"]

_KF_CACHE: dict = {}
_KF_CACHE_MAX = 512


def _check_kernel(k) -> np.ndarray:
    ker = np.asarray(k, dtype=np.float64)
    if ker.ndim != 2 or ker.shape[0] != ker.shape[1] or ker.shape[0] % 2 != 1:
        raise ValueError(f"PSF kernel must be square with odd sides so it has a central pixel, got {ker.shape}")
    return ker


def _wrapped_rfft2(kernels: np.ndarray, m: int, cdtype) -> np.ndarray:
    """rfft2 over the last two axes of centred (k, k) kernels (any leading axes), each wrapped around
    (0, 0) on an m x m grid (m >= k): one transform call for a whole stack."""
    import scipy.fft as sfft

    k = kernels.shape[-1]
    h = k // 2
    pad = np.zeros(kernels.shape[:-2] + (m, m))
    pad[..., :k, :k] = kernels
    pad = np.roll(pad, (-h, -h), axis=(-2, -1))  # kernel centres -> (0, 0)
    return sfft.rfft2(pad, axes=(-2, -1), workers=1).astype(cdtype)


def _kernel_fft(kernel: np.ndarray, m: int, cdtype) -> np.ndarray:
    """:func:`_wrapped_rfft2` of one kernel (cached by value)."""
    key = (m, np.dtype(cdtype).char, kernel.shape, kernel.tobytes())
    kf = _KF_CACHE.get(key)
    if kf is None:
        kf = _wrapped_rfft2(kernel, m, cdtype)
        if len(_KF_CACHE) >= _KF_CACHE_MAX:
            _KF_CACHE.clear()
        _KF_CACHE[key] = kf
    return kf


_KSTACK_CACHE: dict = {}
_KSTACK_CACHE_MAX = 32


def _kernel_stack(kers, kset: int, m: int, cdtype) -> np.ndarray:
    """Stacked :func:`_kernel_fft` of a kernel set (cached by the set's hash and size)."""
    key = (m, np.dtype(cdtype).char, len(kers), kers[0].shape, kset)
    kf = _KSTACK_CACHE.get(key)
    if kf is None:
        kf = np.stack([_kernel_fft(k, m, cdtype) for k in kers])
        if len(_KSTACK_CACHE) >= _KSTACK_CACHE_MAX:
            _KSTACK_CACHE.clear()
        _KSTACK_CACHE[key] = kf
    return kf


@njit(**_JIT_EXACT)
def _spectrum_products(F, KF, idx, scale, out):
    """out[b, j] = F[b] * KF[idx[b, j]] * scale[b, j] (spectra of the image and the kernels)."""
    for b in range(F.shape[0]):
        for j in range(idx.shape[1]):
            kk = idx[b, j]
            sc = scale[b, j]
            for r in range(F.shape[1]):
                for c in range(F.shape[2]):
                    out[b, j, r, c] = F[b, r, c] * KF[kk, r, c] * sc


@njit(**_JIT_EXACT)
def _crop_plan(imgs, h, sizes):
    """Per image: bounding box of the nonzero pixels and the smallest FFT side that convolves it.

    Returns (B, 9) int64 rows ``(m, y0, x0, ay0, ay1, ax0, ax1, by, bx)``: FFT side
    ``m`` (from ``sizes``, ascending), box origin (y0, x0) and size (by, bx), and
    the needed output range ``[a0, a1)`` along each axis relative to the box
    origin (the box dilated by the kernel half-width ``h``, clipped to the image).
    With the box placed at offset ``-a0`` of the m x m buffer, circular
    convolution equals the linear one on the needed range when
    ``m >= max(a1 + h, b + h - a0)`` (m = 0: empty image).
    """
    nb, n = imgs.shape[0], imgs.shape[1]
    plan = np.zeros((nb, 9), dtype=np.int64)
    rowany = np.zeros(n, dtype=np.bool_)
    colany = np.zeros(n, dtype=np.bool_)
    for b in range(nb):
        colany[:] = False
        for r in range(n):
            ra = False
            for c in range(n):
                nz = imgs[b, r, c] != 0.0
                ra |= nz
                colany[c] |= nz
            rowany[r] = ra
        y0, y1, x0, x1 = n, -1, n, -1
        for i in range(n):
            if rowany[i]:
                y0 = min(y0, i)
                y1 = i
            if colany[i]:
                x0 = min(x0, i)
                x1 = i
        if y1 < 0:
            continue
        by, bx = y1 + 1 - y0, x1 + 1 - x0
        ay0, ay1 = max(-y0, -h), min(n - y0, by + h)
        ax0, ax1 = max(-x0, -h), min(n - x0, bx + h)
        need = max(max(ay1 + h, by + h - ay0), max(ax1 + h, bx + h - ax0))
        m = sizes[-1]
        for v in sizes:
            if v >= need:
                m = v
                break
        plan[b, 0], plan[b, 1], plan[b, 2] = m, y0, x0
        plan[b, 3], plan[b, 4], plan[b, 5], plan[b, 6] = ay0, ay1, ax0, ax1
        plan[b, 7], plan[b, 8] = by, bx
    return plan


@njit(**_JIT_EXACT)
def _fill_buffers(imgs, plan, sel, buf):
    """buf[i] = zeros with the box of image sel[i] placed at offset (-ay0, -ax0)."""
    for i in range(sel.size):
        b = sel[i]
        y0, x0, ay0, ax0, by, bx = plan[b, 1], plan[b, 2], plan[b, 3], plan[b, 5], plan[b, 7], plan[b, 8]
        buf[i] = 0.0
        for r in range(by):
            for c in range(bx):
                buf[i, r - ay0, c - ax0] = imgs[b, y0 + r, x0 + c]


@njit(**_JIT_EXACT)
def _scatter(conv, plan, sel, out):
    """out[sel[i], j] = zeros with the needed block of conv[i, j] at its place in the image."""
    n = out.shape[2]
    for i in range(sel.size):
        b = sel[i]
        y0, x0, ay0, ay1, ax0, ax1 = plan[b, 1], plan[b, 2], plan[b, 3], plan[b, 4], plan[b, 5], plan[b, 6]
        r0, r1, c0, c1 = y0 + ay0, y0 + ay1, x0 + ax0, x0 + ax1
        for j in range(conv.shape[1]):
            o = out[b, j]
            cv = conv[i, j]
            for r in range(n):
                if r < r0 or r >= r1:
                    for c in range(n):
                        o[r, c] = 0.0
                    continue
                for c in range(c0):
                    o[r, c] = 0.0
                for c in range(c0, c1):
                    o[r, c] = cv[r - r0, c - c0]
                for c in range(c1, n):
                    o[r, c] = 0.0


_FAST_SIZES: dict = {}


def _fast_sizes(lo: int, hi: int) -> np.ndarray:
    """The 2-3-5-smooth FFT sides in [lo, hi] (cached), ascending."""
    import scipy.fft as sfft

    key = (lo, hi)
    v = _FAST_SIZES.get(key)
    if v is None:
        v = _FAST_SIZES[key] = np.array(sorted({sfft.next_fast_len(i, real=True) for i in range(lo, hi + 1)}
                                               | {sfft.next_fast_len(hi, real=True)}), dtype=np.int64)
    return v


def _convolve(imgs: np.ndarray, kernels, idx: np.ndarray, scale, dtype, out: np.ndarray,
              chunk: int = 16) -> np.ndarray:
    """out[b, j] = scale[b, j] * (imgs[b] conv kernels[idx[b, j]]) (linear, "same"), FFTs in ``dtype``.

    Each image is cropped to the bounding box of its nonzero pixels and
    convolved on the smallest 2-3-5-smooth FFT grid that gives the linear
    convolution on the box dilated by the kernel half-width (outside it the
    result is exactly 0); images are grouped by grid size and transformed in
    chunks, once for all their kernels.
    """
    import scipy.fft as sfft

    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    cdt = np.complex64 if dt == np.float32 else np.complex128
    nb, n = imgs.shape[0], imgs.shape[1]
    kers = [_check_kernel(k) for k in kernels]
    ksz = {k.shape[0] for k in kers}
    if len(ksz) != 1:
        raise ValueError(f"all PSF kernels must have the same size, got {sorted(ksz)}")
    h = ksz.pop() // 2
    if idx.size and (idx.min() < 0 or idx.max() >= len(kers)):
        raise ValueError(f"kernel_index out of range [0, {len(kers)})")
    sc = np.ones(idx.shape, dt) if scale is None else np.ascontiguousarray(scale, dtype=dt)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    plan = _crop_plan(imgs, h, _fast_sizes(1 + 2 * h, n + 2 * h))
    out[plan[:, 0] == 0] = 0.0
    step = max(1, int(chunk))
    kset = hash(b"".join(k.tobytes() for k in kers))  # one hash of the kernel set per call
    for m in np.unique(plan[:, 0]):
        if m == 0:
            continue
        kf = _kernel_stack(kers, kset, int(m), cdt)                       # (K, m, m//2+1)
        group = np.nonzero(plan[:, 0] == m)[0]
        for i0 in range(0, group.size, step):
            sel = group[i0:i0 + step]
            buf = np.empty((sel.size, m, m), dt)
            _fill_buffers(imgs, plan, sel, buf)
            f = sfft.rfft2(buf, workers=1, overwrite_x=True)
            p = np.empty((sel.size, idx.shape[1], m, m // 2 + 1), cdt)
            _spectrum_products(f, kf, idx[sel], sc[sel], p)
            _scatter(sfft.irfft2(p, s=(m, m), workers=1, overwrite_x=True), plan, sel, out)
    return out


def _kernel_index(kernel_index, nb: int, nk: int) -> np.ndarray:
    if kernel_index is None:
        return np.broadcast_to(np.arange(nk), (nb, nk))
    idx = np.asarray(kernel_index)
    if idx.ndim == 1:
        idx = np.broadcast_to(idx, (nb, idx.size))
    if idx.ndim != 2 or idx.shape[0] != nb or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"kernel_index must be integers of shape (B, J) with B = {nb}, got {idx.shape}")
    return idx


def _as_images(images) -> np.ndarray:
    imgs = np.asarray(images, dtype=np.float64)
    if imgs.ndim != 3 or imgs.shape[1] != imgs.shape[2]:
        raise ValueError(f"images must have shape (B, N, N), got {imgs.shape}")
    return imgs


def _as_kernels(kernels) -> np.ndarray:
    ker = np.asarray(kernels, dtype=np.float64)
    if ker.ndim == 2:
        ker = ker[None]
    if ker.ndim != 3:
        raise ValueError(f"kernels must have shape (K, k, k) or (k, k), got {ker.shape}")
    return ker


def convolve_psf_batch(images: np.ndarray, kernels, kernel_index=None, dtype=np.float64) -> np.ndarray:
    """Linear (zero-padded) PSF convolution of a batch, ``mode="same"``: one real FFT per image.

    Parameters
    ----------
    images : (B, N, N) images (flux per pixel).
    kernels : (K, k, k) kernels (odd k, centre ``(k//2, k//2)``), or one (k, k).
    kernel_index : (B, J) integer indices into ``kernels`` (J outputs per image,
        e.g. one per band; a (J,) array applies to every image), or None for
        every kernel on every image.
    dtype : FFT precision, float64 (default) or float32.

    Returns
    -------
    (B, J, N, N) float64; ``out[b, j]`` equals
    ``convolve_psf(images[b], kernels[kernel_index[b, j]])`` to rounding
    (~1e-16 of the image maximum in float64, ~1e-7 in float32). Each image is
    cropped to its nonzero pixels and transformed once for all its kernels,
    on the smallest FFT grid for which the circular convolution equals the
    linear one where it is needed (at most ``N + k // 2``); kernel
    transforms are cached by value.
    """
    imgs = _as_images(images)
    ker = _as_kernels(kernels)
    idx = _kernel_index(kernel_index, imgs.shape[0], ker.shape[0])
    out = np.empty((imgs.shape[0], idx.shape[1]) + imgs.shape[1:])
    return _convolve(imgs, ker, idx, None, dtype, out)


def inject_bands_batch(unit_images: np.ndarray, band_fluxes, kernels=None, kernel_index=None,
                       dtype=np.float32, out: np.ndarray | None = None) -> np.ndarray:
    """Batched :func:`~darkhaloscope.lensing.render.inject_bands`: scale unit-flux images per band, convolve.

    ``unit_images`` (B, N, N); ``band_fluxes`` (B, J) unlensed source flux per
    band (nanomaggies; a (J,) array applies to every stamp); ``kernels`` /
    ``kernel_index`` as :func:`convolve_psf_batch` (None index with J kernels:
    kernel j for band j), or ``kernels=None`` for no convolution. ``dtype``:
    FFT precision -- float32 (default; deviations from ``inject_bands`` up to
    ~1e-7 of each band's peak, below the float32 renderer's own ~1e-5) or
    float64 (equal to ``inject_bands`` to its float32 rounding). Returns
    (B, J, N, N) float32 nanomaggies per pixel (into ``out`` if given, a
    C-contiguous float32 array of that shape). The band flux multiplies the
    spectrum (the convolution is linear).
    """
    unit = _as_images(unit_images)
    nb = unit.shape[0]
    f = np.asarray(band_fluxes, dtype=np.float64)
    if f.ndim == 1:
        f = f[None, :]
    if f.ndim != 2 or f.shape[0] not in (1, nb):
        raise ValueError(f"band_fluxes must have shape (B, J) or (J,), got {f.shape}")
    f = np.broadcast_to(f, (nb, f.shape[1]))
    if not np.all(np.isfinite(f)):
        raise ValueError("band_fluxes must be finite")
    shape = (nb, f.shape[1]) + unit.shape[1:]
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    if kernels is None:
        np.multiply(unit[:, None], f[:, :, None, None], out=out, casting="same_kind")
        return out
    ker = _as_kernels(kernels)
    idx = _kernel_index(kernel_index, nb, ker.shape[0])
    if idx.shape[1] != f.shape[1]:
        raise ValueError(f"{idx.shape[1]} PSF kernels per stamp but {f.shape[1]} band fluxes")
    return _convolve(unit, ker, idx, f, dtype, out)


def inject_bands(unit_image: np.ndarray, band_fluxes, kernels=None, bands=BANDS,
                 dtype=np.float32) -> np.ndarray:
    """Drop-in :func:`~darkhaloscope.lensing.render.inject_bands`: one image FFT for all bands.

    Same arguments and result (``(len(bands), N, N)`` float32 nanomaggies per
    pixel); ``dtype`` is the FFT precision as in :func:`inject_bands_batch`
    (float64: equal to ``render.inject_bands`` to its float32 rounding).
    """
    unit = np.asarray(unit_image, dtype=np.float64)
    if unit.ndim != 2 or unit.shape[0] != unit.shape[1]:
        raise ValueError(f"unit_image must be square 2-D, got shape {unit.shape}")
    fluxes, kers = _band_inputs(band_fluxes, kernels, bands)
    if kers is not None and any(k is None for k in kers):
        raise ValueError("kernels must be given for every band (or kernels=None)")
    return inject_bands_batch(unit[None], np.array([fluxes]), kers, None, dtype)[0]


# --------------------------------------------------------------------------
# sub-pixel-phase injection (the stamps' path): rays binned to s_c x s_c phases per pixel,
# each phase convolved with the pixel-integrated PSF shifted to that phase (psf.phase_kernels)
# --------------------------------------------------------------------------
@njit(**_JIT_EXACT)
def _phase_products(F, KF, idx, scale, out):
    """out[b, j] = scale[b, j] * sum_p F[b, p] * KF[idx[b, j], p] (spectra of the phases and kernels)."""
    for b in range(F.shape[0]):
        for j in range(idx.shape[1]):
            kk = idx[b, j]
            sc = scale[b, j]
            for r in range(F.shape[2]):
                for c in range(F.shape[3]):
                    acc = F[b, 0, r, c] * KF[kk, 0, r, c]
                    for p in range(1, F.shape[1]):
                        acc = acc + F[b, p, r, c] * KF[kk, p, r, c]
                    out[b, j, r, c] = acc * sc


@njit(**_JIT_EXACT)
def _fill_phase_buffers(phases, plan, sel, buf):
    """buf[i, p] = zeros with the box of phase p of image sel[i] placed at offset (-ay0, -ax0)."""
    for i in range(sel.size):
        b = sel[i]
        y0, x0, ay0, ax0, by, bx = plan[b, 1], plan[b, 2], plan[b, 3], plan[b, 5], plan[b, 7], plan[b, 8]
        for p in range(phases.shape[1]):
            buf[i, p] = 0.0
            for r in range(by):
                for c in range(bx):
                    buf[i, p, r - ay0, c - ax0] = phases[b, p, y0 + r, x0 + c]


@njit(**_JIT_EXACT)
def _phase_support(phases, out):
    """out[b] = sum_p |phases[b, p]| (only its nonzero pattern is used: the crop box)."""
    for b in range(phases.shape[0]):       # phase-major (memory order); only nonzero-ness is used
        out[b] = 0.0
        for p in range(phases.shape[1]):
            for r in range(phases.shape[2]):
                for c in range(phases.shape[3]):
                    out[b, r, c] += abs(phases[b, p, r, c])


_PSTACK_CACHE: dict = {}
_PSTACK_CACHE_MAX = 64


def pad_kernels(kernels) -> np.ndarray:
    """(K, P, k, k) float64 stack of phase kernel sets (each (P, k_i, k_i), odd k_i), zero-padded to
    the largest side ``k`` (padding a centred kernel with zeros changes no convolution)."""
    kers = [np.asarray(k, dtype=np.float64) for k in kernels]
    if not kers:
        raise ValueError("no PSF kernels given")
    for k in kers:
        if k.ndim != 3 or k.shape[1] != k.shape[2] or k.shape[1] % 2 != 1:
            raise ValueError(f"phase kernels must have shape (P, k, k) with odd k, got {k.shape}")
    if len({k.shape[0] for k in kers}) != 1:
        raise ValueError(f"all kernel sets must have the same number of phases, got {[k.shape[0] for k in kers]}")
    side = max(k.shape[1] for k in kers)
    out = np.zeros((len(kers), kers[0].shape[0], side, side))
    for i, k in enumerate(kers):
        o = (side - k.shape[1]) // 2
        out[i, :, o:o + k.shape[1], o:o + k.shape[1]] = k
    return out


def bin_phases(ss_images: np.ndarray, supersample: int, s_c: int) -> np.ndarray:
    """(B, s_c * s_c, N, N) phase images from (B, N * ss, N * ss) supersampled images (``ss % s_c == 0``).

    Phase ``p = jy * s_c + jx`` of pixel (row, col) is the sum of the sub-pixels of that pixel's
    ``(jy, jx)`` block of ``ss / s_c`` x ``ss / s_c`` sub-pixels (flux is kept: the phases sum to the
    pixel binning).
    """
    img = np.asarray(ss_images, dtype=np.float64)
    ss, s_c = int(supersample), int(s_c)
    if ss < 1 or s_c < 1 or ss % s_c:
        raise ValueError(f"supersample ({supersample}) must be a positive multiple of the phase factor ({s_c})")
    if img.ndim != 3 or img.shape[1] != img.shape[2] or img.shape[1] % ss:
        raise ValueError(f"supersampled images must have shape (B, N * {ss}, N * {ss}), got {img.shape}")
    nb, n, g = img.shape[0], img.shape[1] // ss, ss // s_c
    ph = img.reshape(nb, n, s_c, g, n, s_c, g).sum(axis=(3, 6))       # (B, N, jy, N, jx)
    return np.ascontiguousarray(ph.transpose(0, 2, 4, 1, 3).reshape(nb, s_c * s_c, n, n))


def _convolve_phases(phases: np.ndarray, kers: np.ndarray, idx: np.ndarray, scale: np.ndarray, dtype,
                     out: np.ndarray, chunk: int = 16) -> np.ndarray:
    """out[b, j] = scale[b, j] * sum_p phases[b, p] conv kers[idx[b, j], p] (linear, "same")."""
    import scipy.fft as sfft

    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    cdt = np.complex64 if dt == np.float32 else np.complex128
    nb, npha, n = phases.shape[0], phases.shape[1], phases.shape[2]
    if kers.shape[1] != npha:
        raise ValueError(f"{npha} phases per image but kernels with {kers.shape[1]} phases")
    h = kers.shape[2] // 2
    if idx.size and (idx.min() < 0 or idx.max() >= kers.shape[0]):
        raise ValueError(f"kernel_index out of range [0, {kers.shape[0]})")
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    sc = np.ascontiguousarray(scale, dtype=dt)
    support = np.empty((nb, n, n))
    _phase_support(phases, support)
    plan = _crop_plan(support, h, _fast_sizes(1 + 2 * h, n + 2 * h))
    out[plan[:, 0] == 0] = 0.0
    kset = hash(kers.tobytes())
    for m in np.unique(plan[:, 0]):
        if m == 0:
            continue
        key = (int(m), np.dtype(cdt).char, kers.shape, kset)
        kf = _PSTACK_CACHE.get(key)
        if kf is None:
            kf = _wrapped_rfft2(kers, int(m), cdt)                                   # (K, P, m, m//2+1)
            if len(_PSTACK_CACHE) >= _PSTACK_CACHE_MAX:
                _PSTACK_CACHE.clear()
            _PSTACK_CACHE[key] = kf
        group = np.nonzero(plan[:, 0] == m)[0]
        for i0 in range(0, group.size, chunk):
            sel = group[i0:i0 + chunk]
            buf = np.empty((sel.size, npha, m, m), dt)
            _fill_phase_buffers(phases, plan, sel, buf)
            f = sfft.rfft2(buf, workers=1, overwrite_x=True)
            p = np.empty((sel.size, idx.shape[1], m, m // 2 + 1), cdt)
            _phase_products(f, kf, idx[sel], sc[sel], p)
            _scatter(sfft.irfft2(p, s=(m, m), workers=1, overwrite_x=True), plan, sel, out)
    return out


def inject_phases_batch(phases: np.ndarray, band_fluxes, kernels, kernel_index=None, dtype=np.float32,
                        out: np.ndarray | None = None) -> np.ndarray:
    """PSF-convolved, band-scaled stamps from sub-pixel phase images (the stamps' injection step).

    ``phases`` (B, P, N, N): flux per pixel of each of the P = s_c^2 sub-pixel phases
    (:func:`bin_phases`, or the fast renderer's phase output) for unit unlensed source flux;
    ``band_fluxes`` (B, J) or (J,) unlensed source flux per band (nanomaggies); ``kernels``:
    K phase-kernel sets (:func:`darkhaloscope.lensing.psf.phase_kernels`, each (P, k, k); sides
    may differ, see :func:`pad_kernels`) or a (K, P, k, k) array; ``kernel_index`` (B, J) /
    (J,) indices into them (None: kernel j for band j). One forward transform per phase and one
    inverse per band and stamp, on the smallest FFT grid that gives the linear convolution.
    Returns (B, J, N, N) float32 nanomaggies per pixel (into ``out`` if given).
    """
    ph = np.ascontiguousarray(phases, dtype=np.float64)
    if ph.ndim != 4 or ph.shape[2] != ph.shape[3]:
        raise ValueError(f"phases must have shape (B, P, N, N), got {ph.shape}")
    nb = ph.shape[0]
    kers = kernels if isinstance(kernels, np.ndarray) and kernels.ndim == 4 else pad_kernels(kernels)
    kers = np.ascontiguousarray(kers, dtype=np.float64)
    f = np.asarray(band_fluxes, dtype=np.float64)
    if f.ndim == 1:
        f = f[None, :]
    if f.ndim != 2 or f.shape[0] not in (1, nb):
        raise ValueError(f"band_fluxes must have shape (B, J) or (J,), got {f.shape}")
    f = np.broadcast_to(f, (nb, f.shape[1]))
    if not np.all(np.isfinite(f)):
        raise ValueError("band_fluxes must be finite")
    idx = _kernel_index(kernel_index, nb, kers.shape[0])
    if idx.shape[1] != f.shape[1]:
        raise ValueError(f"{idx.shape[1]} PSF kernels per stamp but {f.shape[1]} band fluxes")
    shape = (nb, f.shape[1]) + ph.shape[2:]
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    return _convolve_phases(ph, kers, idx, f, dtype, out)


def inject_supersampled_batch(ss_images: np.ndarray, supersample: int, band_fluxes, kernels,
                              kernel_index=None) -> np.ndarray:
    """PSF-convolved band stamps from supersampled unit-flux images: the step after ray shooting.

    ``ss_images`` (N, n_pix * ss, n_pix * ss): flux per sub-pixel of unit-flux lensed images
    (sum = the magnification; sub-pixel (i, j) of pixel (r, c) is element (r * ss + i, c * ss + j)),
    ``supersample`` = ss, a multiple of the kernels' phases per side ``s_c`` (the Injector's
    ``render_supersample`` is one); ``band_fluxes`` (N, n_bands) unlensed source flux per band
    (nanomaggies); ``kernels``: the phase-kernel sets as the
    :class:`~darkhaloscope.lensing.injector.Injector` caches them per (brick, band)
    (:meth:`Injector.psf_kernels`, i.e. :func:`darkhaloscope.lensing.psf.phase_kernels`: a list
    of (s_c^2, k, k) arrays, or a (K, s_c^2, k, k) array); ``kernel_index`` (N, n_bands)
    indices into them (None: kernel b for band b). The sub-pixels are summed into the
    ``s_c x s_c`` phases of each pixel (:func:`bin_phases`) and each phase is convolved with the
    PSF integrated over the pixel box seen from that phase (:func:`inject_phases_batch`).
    Returns (N, n_bands, n_pix, n_pix) float32 nanomaggies per pixel.
    """
    kers = kernels if isinstance(kernels, np.ndarray) and kernels.ndim == 4 else pad_kernels(kernels)
    s_c = round(math.sqrt(kers.shape[1]))
    if s_c * s_c != kers.shape[1]:
        raise ValueError(f"phase kernels must hold s_c^2 phases, got {kers.shape[1]}")
    return inject_phases_batch(bin_phases(ss_images, supersample, s_c), band_fluxes, kers, kernel_index)
