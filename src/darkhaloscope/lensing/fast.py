"""Fast (numba) SIE + external shear + Sersic arc renderer, a drop-in for :class:`ArcRenderer`.

This engine reproduces :meth:`darkhaloscope.lensing.render.ArcRenderer.lensed_unit_image`
(the lenstronomy reference) with the same geometry, the same lens and source
parameterisation and the same sampling scheme, for batches of stamps:

* geometry: pixel ``(row, col)`` has ``x = (col - cx) * pixel_scale``,
  ``y = (row - cy) * pixel_scale`` (arcsec) with the lens centre ``(cx, cy)``
  in pixel (column, row) coordinates; position angles in degrees from +x
  towards +y.
* lens: lenstronomy ``SIE`` (which lenstronomy evaluates as its ``NIE`` with
  ``s_scale = 1e-10``: the Kormann et al. 1994 / Keeton & Kochanek 1998
  deflection, ``theta_E`` in lenstronomy's product-average convention, ``e1,
  e2`` from ``phi_q2_ellipticity`` and back through ``ellipticity2phi_q``,
  ``q >= 1`` replaced by ``0.99999999``) plus ``SHEAR`` ``(gamma1, gamma2)``,
  both centred on the lens centre. The formulas are the lenstronomy ones,
  evaluated with branch-free, SIMD-vectorisable double-precision
  implementations of ``atan`` / ``atanh`` (Cephes rational approximations,
  ~1e-16 relative) and ``exp``.
* source: lenstronomy ``SERSIC_ELLIPSE`` with ``R_sersic = src_reff``
  (product-average, i.e. circularised, half-light radius), lenstronomy's
  ``b_n = 1.9992 n - 0.3271`` (NOT the exact Gamma-function root -- this is
  what lenstronomy evaluates), ``R`` floored at 1e-4 arcsec, zero beyond 1000
  ``R_sersic``, axis ratio ``1 - src_e``, amplitude from lenstronomy's analytic
  total flux so that the unlensed source has unit flux.
* sampling: ``supersample x supersample`` sub-pixel centres per pixel (the
  reference grid), then, when ``adaptive``, the pixels ``>= REFINE_FRAC`` of
  the brightest coarse pixel and their 8 neighbours are re-rendered on the
  reference's finer ``refined_supersample`` sub-grid -- the same rule,
  threshold and sub-grid as :class:`ArcRenderer`.

The only deliberate difference is a cut of negligible rays: a sub-pixel whose
source-plane surface brightness is below ``exp(-RAY_CUT)`` (``RAY_CUT = 36``,
i.e. 2e-16) of the source's central surface brightness contributes 0, and a
whole pixel is skipped when a rigorous bound on its sub-pixels' source-plane
positions (``|d beta| <= (1 + 2 kappa_max + |gamma|) |d theta|`` for an
isothermal lens) shows that all of them are cut. For a unit-flux source the
flux so dropped is below ~1e-10 (a sub-pixel at the cut carries < 1e-15 of the
flux), far below the reference's own sampling error.

The deflection is computed once per stamp (ray shooting and source evaluation
are fused) and the image is band-independent: bands only scale the flux
(:func:`inject_bands_batch`).

Units: arcsec, degrees, pixels; the images are flux per pixel for a source of
unlensed total flux 1. No I/O.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping

import numpy as np
from numba import njit
from scipy.special import gammaincinv

from .render import REFINE_FRAC, REFINE_SAMPLES_PER_SCALE, _finite, _pos_int, _positive

__all__ = [
    "PARAM_KEYS",
    "RAY_CUT",
    "FastRenderer",
    "get_fast_renderer",
    "render_unit_images",
    "pack_params",
    "deflection",
    "source_plane",
    "sersic_unit_sb",
    "refined_supersample",
    "convolve_psf_batch",
    "inject_bands_batch",
]

#: Lens/source parameter names of :func:`render_unit_images` (``n_sersic`` optional, default 1).
PARAM_KEYS = (
    "theta_e", "lens_q", "lens_phi_deg", "gamma1", "gamma2",
    "src_x", "src_y", "src_reff", "src_e", "src_phi_deg",
)

#: Rays whose Sersic exponent ``b_n (R / R_sersic)^(1/n)`` exceeds this are dropped
#: (surface brightness < exp(-36) = 2.3e-16 of the source centre's).
RAY_CUT = 36.0

# lenstronomy constants
_S_SCALE = 1e-10           # SIE -> NIE core (lenstronomy SIE._s_scale)
_Q_MAX_DERIV = 0.99999999  # NIEMajorAxis.derivatives: q >= 1 -> this
_C_MAX = 0.9999            # ellipticity2phi_q clamp of |e|
_SMOOTH = 1e-4             # SersicUtil smoothing (arcsec)
_MAX_R_FRAC = 1000.0       # SersicElliptic.function max_R_frac

# packed per-stamp parameter layout (see pack_params)
(_CX, _CY, _CPHI, _SPHI, _Q2, _S, _S2, _Q2S, _BS, _SP, _G1, _G2, _SX, _SY, _M11, _M12, _M22,
 _AMP, _BN, _INVRS, _INVN, _NONE, _LIBM, _KB, _GABS, _SMIN, _RCUT, _SSF) = range(28)
_NPAR = 28

# atanh via the rational approximant is valid after two half-argument reductions for
# |w| <= 0.9756, i.e. lens q >= 0.2196; smaller q uses libm atan/atanh (scalar, slower).
_ATANH_MAX = 0.975

_FM = True
_JIT = dict(fastmath=_FM, error_model="numpy", cache=True)
_JIT_INLINE = dict(fastmath=_FM, error_model="numpy", cache=True, inline="always")

# Cephes atan (|x| <= 0.66 after reduction): atan(x) = x + x z P(z) / Q(z), z = x^2
_AP0, _AP1, _AP2, _AP3, _AP4 = (
    -8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
    -1.228866684490136173410e2, -6.485021904942025371773e1,
)
_AQ0, _AQ1, _AQ2, _AQ3, _AQ4 = (
    2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
    4.853903996359136964868e2, 1.945506571482613964425e2,
)
# Cephes atanh (|x| < 0.5): atanh(x) = x + x z P(z) / Q(z)
_HP0, _HP1, _HP2, _HP3, _HP4 = (
    -8.54074331929669305196e-1, 1.20426861384072379242e1, -4.61252884198732692637e1,
    6.54566728676544377376e1, -3.09092539379866942570e1,
)
_HQ0, _HQ1, _HQ2, _HQ3, _HQ4 = (
    -1.95638849376911654834e1, 1.08938092147140262656e2, -2.49839401325893582852e2,
    2.52006675691344555838e2, -9.27277618139601130017e1,
)
_PIO2 = 1.5707963267948966
_PIO4 = 0.7853981633974483
_MOREBITS = 6.123233995736765886130e-17
_T3P8 = 2.41421356237309504880


# --------------------------------------------------------------------------
# vectorisable elementary functions (numba; no branches, one division)
# --------------------------------------------------------------------------
@njit(**_JIT_INLINE)
def _expneg(x):
    """exp(x) for -RAY_CUT <= x <= 0: Taylor polynomial of exp(x/128), squared 7 times (~1e-13 relative)."""
    u = x * 0.0078125
    p = 2.505210838544172e-08
    p = p * u + 2.755731922398589e-07
    p = p * u + 2.7557319223985893e-06
    p = p * u + 2.48015873015873e-05
    p = p * u + 0.0001984126984126984
    p = p * u + 0.001388888888888889
    p = p * u + 0.008333333333333333
    p = p * u + 0.041666666666666664
    p = p * u + 0.16666666666666666
    p = p * u + 0.5
    p = p * u + 1.0
    p = p * u + 1.0
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p


@njit(**_JIT_INLINE)
def _sie_deflection_libm(xr, yr, q2, s, s2, q2s, bs, sp):
    """lenstronomy NIEMajorAxis.derivatives in the lens frame with libm atan / atanh (any q)."""
    psi = math.sqrt(q2 * (s2 + xr * xr) + yr * yr)
    return bs * math.atan(sp * xr / (psi + s)), bs * math.atanh(sp * yr / (psi + q2s))


@njit(**_JIT_INLINE)
def _sie_deflection(xr, yr, q2, s, s2, q2s, bs, sp):
    """lenstronomy NIEMajorAxis.derivatives in the lens frame (one division per ray).

    ``atan(N1 / D1)`` with ``N1 = sp xr``, ``D1 = psi + s`` and ``atanh(N2 / D2)``
    with ``N2 = sp yr``, ``D2 = psi + q^2 s`` are evaluated as ratios of
    homogeneous polynomials in (N, D) (Cephes approximants, with the Cephes range
    reduction for atan and two half-argument reductions
    ``atanh(N/D) = 2 atanh(N / (D + sqrt(D^2 - N^2)))`` for atanh); the two final
    divisions are merged into one.
    """
    psi = math.sqrt(q2 * (s2 + xr * xr) + yr * yr)
    n1 = sp * xr
    d1 = psi + s
    n2 = sp * yr
    d2 = psi + q2s
    # ---- atan(|n1| / d1): Cephes range reduction without dividing
    a = abs(n1)
    mb = np.float64(a > _T3P8 * d1)
    mm = np.float64(a > 0.66 * d1) * (1.0 - mb)
    ms = 1.0 - mb - mm
    num = mm * (a - d1) + ms * a - mb * d1
    den = mb * a + mm * (a + d1) + ms * d1
    y0 = mb * _PIO2 + mm * _PIO4
    ex = mb * _MOREBITS + mm * (0.5 * _MOREBITS)
    nn = num * num
    dd = den * den
    dd2 = dd * dd
    dd3 = dd2 * dd
    dd4 = dd2 * dd2
    ph = (((_AP0 * nn + _AP1 * dd) * nn + _AP2 * dd2) * nn + _AP3 * dd3) * nn + _AP4 * dd4
    qh = ((((nn + _AQ0 * dd) * nn + _AQ1 * dd2) * nn + _AQ2 * dd3) * nn + _AQ3 * dd4) * nn + _AQ4 * dd4 * dd
    fa_num = num * (qh + nn * ph)
    fa_den = den * qh
    # ---- atanh(|n2| / d2): two conditional half-argument reductions
    h = abs(n2)
    hh = h * h
    m1 = np.float64(h >= 0.5 * d2)
    d2 = d2 + m1 * math.sqrt(d2 * d2 - hh)
    m2 = np.float64(h >= 0.5 * d2)
    d2 = d2 + m2 * math.sqrt(d2 * d2 - hh)
    k = (1.0 + m1) * (1.0 + m2)
    ee = d2 * d2
    ee2 = ee * ee
    ee3 = ee2 * ee
    ee4 = ee2 * ee2
    hp = (((_HP0 * hh + _HP1 * ee) * hh + _HP2 * ee2) * hh + _HP3 * ee3) * hh + _HP4 * ee4
    hq = ((((hh + _HQ0 * ee) * hh + _HQ1 * ee2) * hh + _HQ2 * ee3) * hh + _HQ3 * ee4) * hh + _HQ4 * ee4 * ee
    fh_num = k * h * (hq + hh * hp)
    fh_den = d2 * hq
    inv = 1.0 / (fa_den * fh_den)
    at = y0 + (fa_num * fh_den * inv + ex)
    ath = fh_num * fa_den * inv
    return bs * math.copysign(at, n1), bs * math.copysign(ath, n2)


@njit(**_JIT_INLINE)
def _ray(x, y, cphi, sphi, q2, s, s2, q2s, bs, sp, g1, g2, libm):
    """Source-plane position (arcsec) of image-plane point (x, y) relative to the lens centre."""
    xr = cphi * x + sphi * y
    yr = -sphi * x + cphi * y
    if libm:
        fx, fy = _sie_deflection_libm(xr, yr, q2, s, s2, q2s, bs, sp)
    else:
        fx, fy = _sie_deflection(xr, yr, q2, s, s2, q2s, bs, sp)
    ax = cphi * fx - sphi * fy + g1 * x + g2 * y
    ay = sphi * fx + cphi * fy + g2 * x - g1 * y
    return x - ax, y - ay


@njit(**_JIT_INLINE)
def _sersic(bx, by, sx, sy, m11, m12, m22, amp, bn, invrs, invn, none, cut):
    """Unit-flux SERSIC_ELLIPSE surface brightness (flux / arcsec^2) at source-plane (bx, by)."""
    dx = bx - sx
    dy = by - sy
    u = m11 * dx + m12 * dy
    v = m12 * dx + m22 * dy
    t = max(math.sqrt(u * u + v * v), _SMOOTH) * invrs
    if none:
        e = bn * t
    else:
        e = bn * math.pow(t, invn)
    keep = np.float64(e <= cut) * np.float64(t <= _MAX_R_FRAC)
    return amp * keep * _expneg(-min(e, cut))


# --------------------------------------------------------------------------
# per-stamp kernels
# --------------------------------------------------------------------------
@njit(**_JIT)
def _subgrid(ss, ps):
    """Sub-pixel centre offsets (arcsec) inside a pixel, flattened row-major: (dx, dy)."""
    m = ss * ss
    ox = np.empty(m)
    oy = np.empty(m)
    for k in range(ss):
        for l in range(ss):
            ox[k * ss + l] = ((l + 0.5) / ss - 0.5) * ps
            oy[k * ss + l] = ((k + 0.5) / ss - 0.5) * ps
    return ox, oy


@njit(**_JIT)
def _pixel_sum(xc, yc, ox, oy, p, cut, libm, none):
    """Sum of the surface brightness over the sub-pixel offsets (ox, oy) of the pixel centred at (xc, yc)."""
    cphi, sphi, q2, s, s2, q2s, bs, sp, g1, g2 = (
        p[_CPHI], p[_SPHI], p[_Q2], p[_S], p[_S2], p[_Q2S], p[_BS], p[_SP], p[_G1], p[_G2])
    sx, sy, m11, m12, m22, amp, bn, invrs, invn = (
        p[_SX], p[_SY], p[_M11], p[_M12], p[_M22], p[_AMP], p[_BN], p[_INVRS], p[_INVN])
    acc = 0.0
    if none and not libm:
        # the common case, written without loop-invariant branches so that it vectorises
        for j in range(ox.size):
            bx, by = _ray(xc + ox[j], yc + oy[j], cphi, sphi, q2, s, s2, q2s, bs, sp, g1, g2, False)
            acc += _sersic(bx, by, sx, sy, m11, m12, m22, amp, bn, invrs, invn, True, cut)
    else:
        for j in range(ox.size):
            bx, by = _ray(xc + ox[j], yc + oy[j], cphi, sphi, q2, s, s2, q2s, bs, sp, g1, g2, libm)
            acc += _sersic(bx, by, sx, sy, m11, m12, m22, amp, bn, invrs, invn, none, cut)
    return acc


@njit(**_JIT)
def _render_one(img, p, ps, ss, adaptive, cut, cull, ox, oy):
    """Fill ``img`` (n x n) with the unit-flux lensed image of packed stamp parameters ``p``."""
    n = img.shape[0]
    cx, cy = p[_CX], p[_CY]
    cphi, sphi, q2, s, s2, q2s, bs, sp, g1, g2 = (
        p[_CPHI], p[_SPHI], p[_Q2], p[_S], p[_S2], p[_Q2S], p[_BS], p[_SP], p[_G1], p[_G2])
    sx, sy = p[_SX], p[_SY]
    libm = p[_LIBM] != 0.0
    none = p[_NONE] != 0.0
    kb, gabs, smin, rcut = p[_KB], p[_GABS], p[_SMIN], p[_RCUT]
    area = (ps / ss) ** 2
    hd = ps * 0.7071067811865476  # pixel centre -> corner (arcsec)
    bxr = np.empty(n)
    byr = np.empty(n)
    vmax = 0.0
    for r in range(n):
        yc = (r - cy) * ps
        if cull:
            # source-plane position of the pixel centres of this row
            for c in range(n):
                xc = (c - cx) * ps
                bxr[c], byr[c] = _ray(xc, yc, cphi, sphi, q2, s, s2, q2s, bs, sp, g1, g2, libm)
        for c in range(n):
            xc = (c - cx) * ps
            if cull:
                rmin = math.sqrt(xc * xc + yc * yc) - hd
                if rmin > 0.0:
                    # |J| <= 1 + 2 kappa + |gamma| with 2 kappa <= theta_E / (sqrt(q) r) along the segment
                    margin = 1.02 * (1.0 + gabs + kb / rmin) * hd + 1e-9
                    d = math.sqrt((bxr[c] - sx) ** 2 + (byr[c] - sy) ** 2)
                    if smin * (d - margin) > rcut:
                        img[r, c] = 0.0
                        continue
            v = _pixel_sum(xc, yc, ox, oy, p, cut, libm, none) * area
            img[r, c] = v
            if v > vmax:
                vmax = v
    if not adaptive:
        return
    ssf = int(p[_SSF])
    if ssf <= ss or not vmax > 0.0:
        return
    thr = REFINE_FRAC * vmax
    # mask = binary_dilation(img >= thr, 3x3)
    mask = np.zeros((n, n), dtype=np.bool_)
    for r in range(n):
        for c in range(n):
            if img[r, c] >= thr:
                for rr in range(max(r - 1, 0), min(r + 2, n)):
                    for cc in range(max(c - 1, 0), min(c + 2, n)):
                        mask[rr, cc] = True
    fx, fy = _subgrid(ssf, ps)
    area_f = (ps / ssf) ** 2
    for r in range(n):
        yc = (r - cy) * ps
        for c in range(n):
            if mask[r, c]:
                img[r, c] = _pixel_sum((c - cx) * ps, yc, fx, fy, p, cut, libm, none) * area_f


@njit(**_JIT)
def _render_batch(P, out, ps, ss, adaptive, cut, cull):
    ox, oy = _subgrid(ss, ps)
    for b in range(P.shape[0]):
        _render_one(out[b], P[b], ps, ss, adaptive, cut, cull, ox, oy)


@njit(**_JIT)
def _source_plane_batch(P, x, y, bx, by):
    for b in range(P.shape[0]):
        p = P[b]
        cphi, sphi, q2, s, s2, q2s, bs, sp, g1, g2 = (
            p[_CPHI], p[_SPHI], p[_Q2], p[_S], p[_S2], p[_Q2S], p[_BS], p[_SP], p[_G1], p[_G2])
        libm = p[_LIBM] != 0.0
        for i in range(x.shape[1]):
            bx[b, i], by[b, i] = _ray(x[b, i], y[b, i], cphi, sphi, q2, s, s2, q2s, bs, sp, g1, g2, libm)


@njit(**_JIT)
def _sersic_batch(P, bx, by, out, cut):
    for b in range(P.shape[0]):
        p = P[b]
        sx, sy, m11, m12, m22, amp, bn, invrs, invn = (
            p[_SX], p[_SY], p[_M11], p[_M12], p[_M22], p[_AMP], p[_BN], p[_INVRS], p[_INVN])
        none = p[_NONE] != 0.0
        for i in range(bx.shape[1]):
            out[b, i] = _sersic(bx[b, i], by[b, i], sx, sy, m11, m12, m22, amp, bn, invrs, invn, none, cut)


# --------------------------------------------------------------------------
# parameter packing (lenstronomy conventions, vectorised over the batch)
# --------------------------------------------------------------------------
_BN_EXACT: dict = {}


def _bn_exact(n: float) -> float:
    """Exact Sersic b_n (gammaincinv(2n, 1/2)); used only for the refinement rule, as in ArcRenderer."""
    v = _BN_EXACT.get(n)
    if v is None:
        v = _BN_EXACT[n] = float(gammaincinv(2.0 * n, 0.5))
    return v


def refined_supersample(src_reff, src_e, n_sersic, pixel_scale: float, supersample: int,
                        max_supersample: int = 32) -> np.ndarray:
    """ArcRenderer.refined_supersample, vectorised: sub-pixels per side of refined pixels (int array)."""
    reff = np.asarray(src_reff, dtype=np.float64)
    e = np.asarray(src_e, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n_sersic, dtype=np.float64), reff.shape)
    bn = np.array([_bn_exact(float(v)) for v in n.ravel()]).reshape(n.shape) if n.size else np.zeros(n.shape)
    h = reff * np.sqrt(np.maximum(1.0 - e, 1e-6)) / bn**n
    ss = np.array([math.ceil(v) for v in np.ravel(REFINE_SAMPLES_PER_SCALE * pixel_scale / h)],
                  dtype=np.int64).reshape(h.shape)
    return np.minimum(max_supersample, np.maximum(supersample, ss))


def _as_batch(params: Mapping, centers=None):
    """Validated 1-D float arrays of the parameters (and centres) of a batch."""
    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise ValueError(f"params lacks {missing}; expected keys {list(PARAM_KEYS)} (+ optional n_sersic)")
    arr = {k: np.atleast_1d(np.asarray(params[k], dtype=np.float64)) for k in PARAM_KEYS}
    nb = max(a.size for a in arr.values())
    arr["n_sersic"] = np.atleast_1d(np.asarray(params.get("n_sersic", 1.0), dtype=np.float64))
    out = {}
    for k, a in arr.items():
        if a.ndim != 1 or a.size not in (1, nb):
            raise ValueError(f"{k} must be a scalar or a 1-D array of length {nb}, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{k} must be finite")
        out[k] = np.broadcast_to(a, (nb,)).astype(np.float64)
    for k in ("theta_e", "lens_q", "src_reff", "n_sersic"):
        if np.any(out[k] <= 0):
            raise ValueError(f"{k} must be > 0")
    if np.any(out["lens_q"] > 1.0):
        raise ValueError("lens_q must be in (0, 1]")
    if np.any((out["src_e"] < 0) | (out["src_e"] >= 1)):
        raise ValueError("src_e (= 1 - axis ratio) must be in [0, 1)")
    if centers is None:
        c = np.full((nb, 2), 32.0)
    else:
        c = np.asarray(centers, dtype=np.float64)
        if c.shape == (2,):
            c = np.broadcast_to(c, (nb, 2))
        if c.shape != (nb, 2) or not np.all(np.isfinite(c)):
            raise ValueError(f"centers must be finite with shape ({nb}, 2) (cx, cy in pixels), got {c.shape}")
    return out, np.ascontiguousarray(c, dtype=np.float64)


def pack_params(params: Mapping, centers=None, pixel_scale: float = 0.262, supersample: int = 4,
                max_supersample: int = 32, cut: float = RAY_CUT) -> np.ndarray:
    """(B, 28) float64 per-stamp constants of the kernels, in lenstronomy's conventions.

    ``params``: mapping of :data:`PARAM_KEYS` (+ optional ``n_sersic``) to scalars or
    1-D arrays (arcsec, degrees); ``centers``: (B, 2) lens centres (cx, cy) in pixels.
    """
    a, c = _as_batch(params, centers)
    nb = c.shape[0]
    P = np.zeros((nb, _NPAR))
    P[:, _CX], P[:, _CY] = c[:, 0], c[:, 1]
    # -- lens: SIE -> NIE (lenstronomy param_util / NIE._param_conv / NIEMajorAxis.derivatives)
    phi = np.radians(a["lens_phi_deg"])
    q_in = a["lens_q"]
    e1 = (1.0 - q_in) / (1.0 + q_in) * np.cos(2 * phi)
    e2 = (1.0 - q_in) / (1.0 + q_in) * np.sin(2 * phi)
    phi_g = np.arctan2(e2, e1) / 2
    cc = np.minimum(np.sqrt(e1**2 + e2**2), _C_MAX)
    q = (1 - cc) / (1 + cc)
    theta_e = a["theta_e"]
    theta_major = theta_e / np.sqrt((1.0 + q**2) / (2.0 * q))
    b = theta_major * np.sqrt((1 + q**2) / 2)
    s = _S_SCALE / np.sqrt(q)
    qd = np.where(q >= 1, _Q_MAX_DERIV, q)
    sp = np.sqrt(1.0 - qd**2)
    P[:, _CPHI], P[:, _SPHI] = np.cos(phi_g), np.sin(phi_g)
    P[:, _Q2] = qd**2
    P[:, _S], P[:, _S2], P[:, _Q2S] = s, s**2, qd**2 * s
    P[:, _BS], P[:, _SP] = b / sp, sp
    P[:, _G1], P[:, _G2] = a["gamma1"], a["gamma2"]
    P[:, _LIBM] = (sp > _ATANH_MAX).astype(np.float64)
    P[:, _KB] = theta_e / np.sqrt(q)
    P[:, _GABS] = np.hypot(a["gamma1"], a["gamma2"])
    # -- source: SERSIC_ELLIPSE (product-average radius), unit total flux
    phs = np.radians(a["src_phi_deg"])
    qs = 1.0 - a["src_e"]
    es1 = (1.0 - qs) / (1.0 + qs) * np.cos(2 * phs)
    es2 = (1.0 - qs) / (1.0 + qs) * np.sin(2 * phs)
    norm = np.sqrt(np.maximum(np.abs(1 - es1**2 - es2**2), 0.000001))
    P[:, _SX], P[:, _SY] = a["src_x"], a["src_y"]
    P[:, _M11], P[:, _M12], P[:, _M22] = (1 - es1) / norm, -es2 / norm, (1 + es1) / norm
    n = a["n_sersic"]
    reff = a["src_reff"]
    bn = np.maximum(1.9992 * n - 0.3271, 0.00001)
    gam = np.array([math.gamma(2 * v) for v in n])
    flux_per_amp = reff**2 * 2 * np.pi * n * np.exp(bn) / bn ** (2 * n) * gam
    P[:, _AMP] = np.exp(bn) / flux_per_amp  # amp * exp(b_n): sb = this * exp(-b_n (R/Rs)^(1/n))
    P[:, _BN] = bn
    rs = np.maximum(_SMOOTH, reff)
    P[:, _INVRS] = 1.0 / rs
    P[:, _INVN] = 1.0 / n
    P[:, _NONE] = (n == 1.0).astype(np.float64)
    P[:, _SMIN] = (1 - np.hypot(es1, es2)) / norm  # smallest singular value of the R metric
    P[:, _RCUT] = rs * (cut / bn) ** n             # R beyond which b_n (R/Rs)^(1/n) > cut
    P[:, _SSF] = refined_supersample(reff, a["src_e"], n, pixel_scale, supersample, max_supersample)
    return P


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def render_unit_images(
    params: Mapping,
    centers=None,
    n_pix: int = 64,
    pixel_scale: float = 0.262,
    supersample: int = 4,
    *,
    adaptive: bool = True,
    max_supersample: int = 32,
    cull: bool = True,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Unconvolved unit-flux lensed images of a batch of stamps.

    Parameters
    ----------
    params : mapping of :data:`PARAM_KEYS` -- ``theta_e`` (arcsec), ``lens_q``,
        ``lens_phi_deg`` (deg), ``gamma1``, ``gamma2``, ``src_x``, ``src_y``
        (arcsec from the lens centre), ``src_reff`` (arcsec), ``src_e``
        (1 - axis ratio), ``src_phi_deg`` (deg) -- and optionally ``n_sersic``,
        each a scalar or a 1-D array of length B.
    centers : (B, 2) lens centres (cx, cy) in pixel (column, row) coordinates
        (default (32, 32) for all).
    n_pix, pixel_scale, supersample : stamp side (pixels), arcsec/pixel,
        sub-pixels per pixel side.
    adaptive, max_supersample : the reference's refinement of bright pixels
        (see :class:`ArcRenderer`).
    cull : skip pixels provably below the ray cut (see module docstring); the
        result is the same either way to ~1e-15 of the flux.
    out : optional preallocated (B, n_pix, n_pix) float64 C-contiguous array.

    Returns
    -------
    (B, n_pix, n_pix) float64: flux per pixel for unit unlensed source flux,
    equal to ``ArcRenderer(n_pix, pixel_scale, supersample, adaptive,
    max_supersample).lensed_unit_image(...)`` stamp by stamp.
    """
    n_pix = _pos_int("n_pix", n_pix)
    ps = _positive("pixel_scale", pixel_scale)
    ss = _pos_int("supersample", supersample)
    mss = _pos_int("max_supersample", max_supersample)
    P = pack_params(params, centers, ps, ss, mss)
    if out is None:
        out = np.empty((P.shape[0], n_pix, n_pix))
    elif out.shape != (P.shape[0], n_pix, n_pix) or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float64 array of shape {(P.shape[0], n_pix, n_pix)}")
    _render_batch(P, out, ps, ss, bool(adaptive), RAY_CUT, bool(cull))
    return out


def source_plane(params: Mapping, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Source-plane positions ``beta = theta - alpha`` (arcsec) of image-plane points.

    ``x``, ``y``: (B, M) (or (M,) for B = 1) arcsec relative to each stamp's
    lens centre; returns two arrays of that shape. Equals lenstronomy
    ``LensModel(['SIE', 'SHEAR']).ray_shooting`` with the kwargs of
    :meth:`ArcRenderer.lens_kwargs`.
    """
    P = pack_params(params)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    shape = np.broadcast_shapes(x.shape, y.shape)
    x2 = np.ascontiguousarray(np.broadcast_to(x, shape).reshape(P.shape[0], -1))
    y2 = np.ascontiguousarray(np.broadcast_to(y, shape).reshape(P.shape[0], -1))
    bx, by = np.empty_like(x2), np.empty_like(y2)
    _source_plane_batch(P, x2, y2, bx, by)
    return bx.reshape(shape), by.reshape(shape)


def deflection(params: Mapping, x, y) -> tuple[np.ndarray, np.ndarray]:
    """SIE + SHEAR deflection ``(alpha_x, alpha_y)`` (arcsec) at image-plane points (see :func:`source_plane`)."""
    bx, by = source_plane(params, x, y)
    return np.asarray(x) - bx, np.asarray(y) - by


def sersic_unit_sb(params: Mapping, bx, by, cut: float = np.inf) -> np.ndarray:
    """Unit-flux SERSIC_ELLIPSE surface brightness (flux/arcsec^2) at source-plane points.

    Same shapes as :func:`source_plane`. ``cut`` is the ray cut (default none,
    i.e. lenstronomy's ``LightModel.surface_brightness`` with amp for unit flux,
    down to the ~1e-13 accuracy of the exponential).
    """
    P = pack_params(params)
    bx = np.asarray(bx, dtype=np.float64)
    by = np.asarray(by, dtype=np.float64)
    shape = np.broadcast_shapes(bx.shape, by.shape)
    b2 = np.ascontiguousarray(np.broadcast_to(bx, shape).reshape(P.shape[0], -1))
    c2 = np.ascontiguousarray(np.broadcast_to(by, shape).reshape(P.shape[0], -1))
    out = np.empty_like(b2)
    if math.isinf(cut):
        # exact exp beyond the polynomial's range
        _sersic_batch(P, b2, c2, out, RAY_CUT)
        far = out == 0.0
        if np.any(far):
            out[far] = _sersic_numpy(P, b2, c2)[far]
    else:
        _sersic_batch(P, b2, c2, out, float(cut))
    return out.reshape(shape)


def _sersic_numpy(P, bx, by):
    """Plain numpy evaluation (no cut), used only for far-tail points by :func:`sersic_unit_sb`."""
    dx = bx - P[:, _SX, None]
    dy = by - P[:, _SY, None]
    u = P[:, _M11, None] * dx + P[:, _M12, None] * dy
    v = P[:, _M12, None] * dx + P[:, _M22, None] * dy
    t = np.maximum(np.sqrt(u * u + v * v), _SMOOTH) * P[:, _INVRS, None]
    sb = P[:, _AMP, None] * np.exp(-P[:, _BN, None] * t ** P[:, _INVN, None])
    return np.where(t <= _MAX_R_FRAC, sb, 0.0)


class FastRenderer:
    """Drop-in replacement of :class:`ArcRenderer` for :meth:`lensed_unit_image` (numba engine).

    Same constructor arguments and the same result (see the module docstring
    for the conventions and the negligible ray cut). Instances hold no
    per-stamp state.
    """

    def __init__(self, n_pix: int = 64, pixel_scale: float = 0.262, supersample: int = 4,
                 adaptive: bool = True, max_supersample: int = 32):
        self.n_pix = _pos_int("n_pix", n_pix)
        self.pixel_scale = _positive("pixel_scale", pixel_scale)
        self.supersample = _pos_int("supersample", supersample)
        self.adaptive = bool(adaptive)
        self.max_supersample = _pos_int("max_supersample", max_supersample)
        self.subpixel_area = (self.pixel_scale / self.supersample) ** 2

    def refined_supersample(self, src_reff, src_e=0.0, n_sersic=1.0) -> int:
        """Sub-pixels per side of refined pixels (as :meth:`ArcRenderer.refined_supersample`)."""
        _positive("n_sersic", n_sersic)
        _positive("src_reff", src_reff)
        return int(refined_supersample(float(src_reff), float(src_e), float(n_sersic), self.pixel_scale,
                                       self.supersample, self.max_supersample))

    def lensed_unit_image(self, theta_e, lens_q, lens_phi_deg, gamma1, gamma2, src_x, src_y, src_reff,
                          src_e, src_phi_deg, *, center=(32.0, 32.0), n_sersic=1.0) -> np.ndarray:
        """Unconvolved lensed image (n_pix x n_pix, float64) of a source of unit unlensed flux.

        Arguments and result as :meth:`ArcRenderer.lensed_unit_image`.
        """
        vals = {
            "theta_e": _positive("theta_e", theta_e),
            "lens_q": _positive("lens_q", lens_q),
            "lens_phi_deg": _finite("lens_phi_deg", lens_phi_deg),
            "gamma1": _finite("gamma1", gamma1),
            "gamma2": _finite("gamma2", gamma2),
            "src_x": _finite("src_x", src_x),
            "src_y": _finite("src_y", src_y),
            "src_reff": _positive("src_reff", src_reff),
            "src_e": _finite("src_e", src_e),
            "src_phi_deg": _finite("src_phi_deg", src_phi_deg),
            "n_sersic": _positive("n_sersic", n_sersic),
        }
        if vals["lens_q"] > 1.0:
            raise ValueError(f"lens_q must be in (0, 1], got {lens_q!r}")
        if not 0.0 <= vals["src_e"] < 1.0:
            raise ValueError(f"src_e (= 1 - axis ratio) must be in [0, 1), got {src_e!r}")
        c = np.array([[_finite("center[0]", center[0]), _finite("center[1]", center[1])]])
        return render_unit_images(vals, c, self.n_pix, self.pixel_scale, self.supersample,
                                  adaptive=self.adaptive, max_supersample=self.max_supersample)[0]


@functools.lru_cache(maxsize=16)
def get_fast_renderer(n_pix: int = 64, pixel_scale: float = 0.262, supersample: int = 4,
                      adaptive: bool = True) -> FastRenderer:
    """A cached :class:`FastRenderer` for ``(n_pix, pixel_scale [arcsec], supersample, adaptive)``."""
    return FastRenderer(n_pix=n_pix, pixel_scale=pixel_scale, supersample=supersample, adaptive=adaptive)


# --------------------------------------------------------------------------
# batched PSF convolution (linear, kernel-centred; equals render.convolve_psf)
# --------------------------------------------------------------------------
def _kernel_ffts(kernels: np.ndarray, m: int) -> np.ndarray:
    import scipy.fft as sfft

    k = kernels.shape[-1]
    h = k // 2
    pad = np.zeros(kernels.shape[:-2] + (m, m))
    pad[..., :k, :k] = kernels
    pad = np.roll(pad, (-h, -h), axis=(-2, -1))  # kernel centre -> (0, 0)
    return sfft.rfft2(pad, axes=(-2, -1), workers=1)


def convolve_psf_batch(images: np.ndarray, kernels: np.ndarray, kernel_index=None) -> np.ndarray:
    """Linear (zero-padded) PSF convolution of a batch, ``mode="same"``, via one real FFT per image.

    Parameters
    ----------
    images : (B, N, N) images (flux per pixel).
    kernels : (K, k, k) kernels (odd k, centre ``(k//2, k//2)``), or (k, k).
    kernel_index : (B, J) integer indices into ``kernels`` (J outputs per image,
        e.g. one per band), or None for every kernel on every image.

    Returns
    -------
    (B, J, N, N) float64; ``out[b, j]`` equals
    ``convolve_psf(images[b], kernels[kernel_index[b, j]])`` to rounding.
    """
    import scipy.fft as sfft

    imgs = np.asarray(images, dtype=np.float64)
    ker = np.asarray(kernels, dtype=np.float64)
    if ker.ndim == 2:
        ker = ker[None]
    if imgs.ndim != 3 or imgs.shape[1] != imgs.shape[2]:
        raise ValueError(f"images must have shape (B, N, N), got {imgs.shape}")
    if ker.ndim != 3 or ker.shape[1] != ker.shape[2] or ker.shape[1] % 2 != 1:
        raise ValueError(f"kernels must have shape (K, k, k) with odd k, got {ker.shape}")
    nb, n = imgs.shape[0], imgs.shape[1]
    if kernel_index is None:
        idx = np.broadcast_to(np.arange(ker.shape[0]), (nb, ker.shape[0]))
    else:
        idx = np.asarray(kernel_index)
        if idx.ndim == 1:
            idx = np.broadcast_to(idx, (nb, idx.size))
        if idx.shape[0] != nb:
            raise ValueError(f"kernel_index must have shape (B, J) with B = {nb}, got {idx.shape}")
    h = ker.shape[1] // 2
    m = sfft.next_fast_len(n + h, real=True)
    kf = _kernel_ffts(ker, m)                       # (K, m, m//2+1)
    fi = sfft.rfft2(imgs, s=(m, m), axes=(-2, -1), workers=1)  # (B, m, m//2+1)
    prod = fi[:, None] * kf[idx]                    # (B, J, m, m//2+1)
    out = sfft.irfft2(prod, s=(m, m), axes=(-2, -1), workers=1)
    return np.ascontiguousarray(out[..., :n, :n])


def inject_bands_batch(unit_images: np.ndarray, band_fluxes, kernels=None, kernel_index=None) -> np.ndarray:
    """Batched :func:`inject_bands`: scale unit-flux images per band and convolve with each band's PSF.

    ``unit_images`` (B, N, N); ``band_fluxes`` (B, J) source flux per band
    (nanomaggies); ``kernels``/``kernel_index`` as :func:`convolve_psf_batch`
    (``kernel_index`` (B, J); None with J kernels: kernel j for band j), or
    ``kernels=None`` for no convolution. Returns (B, J, N, N) float32
    nanomaggies per pixel (the convolution is linear, so scaling after it is
    the same as before it, to rounding).
    """
    unit = np.asarray(unit_images, dtype=np.float64)
    f = np.asarray(band_fluxes, dtype=np.float64)
    if f.ndim == 1:
        f = f[None, :]
    f = np.broadcast_to(f, (unit.shape[0], f.shape[-1]))
    if not np.all(np.isfinite(f)):
        raise ValueError("band_fluxes must be finite")
    if kernels is None:
        conv = unit[:, None]
    else:
        conv = convolve_psf_batch(unit, kernels, kernel_index)
        if conv.shape[1] != f.shape[1]:
            raise ValueError(f"{conv.shape[1]} PSF outputs per stamp but {f.shape[1]} band fluxes")
    return (conv * f[:, :, None, None]).astype(np.float32)
