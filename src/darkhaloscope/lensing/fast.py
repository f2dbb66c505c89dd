"""Fast (numba) SIE + external shear + Sersic arc renderer, a drop-in for :class:`ArcRenderer`.

This engine reproduces :meth:`darkhaloscope.lensing.render.ArcRenderer.lensed_unit_image`
(the lenstronomy reference) with the same geometry, the same lens and source
parameterisation and the same sampling scheme, for batches of stamps:

* geometry: pixel ``(row, col)`` has ``x = (col - cx) * pixel_scale``,
  ``y = (row - cy) * pixel_scale`` (arcsec) with the lens centre ``(cx, cy)``
  in pixel (column, row) coordinates; position angles in degrees from +x
  towards +y.
* lens: lenstronomy ``SIE``, which lenstronomy evaluates as its ``NIE`` with
  ``s_scale = 1e-10`` (Kormann et al. 1994 / Keeton & Kochanek 1998:
  ``alpha_x' = b / s' atan(s' x' / (psi + s))``, ``alpha_y' = b / s'
  atanh(s' y' / (psi + q^2 s))``, ``s' = sqrt(1 - q^2)``, ``psi = sqrt(q^2 (s^2
  + x'^2) + y'^2)`` in the frame of the mass major axis), ``theta_E`` in
  lenstronomy's product-average convention (``b = theta_E sqrt(q)``), ``e1, e2``
  from ``phi_q2_ellipticity`` and back through ``ellipticity2phi_q`` (``|e|``
  clamped at 0.9999), ``q >= 1`` replaced by ``0.99999999`` in the deflection;
  plus ``SHEAR`` ``(gamma1, gamma2)``; both centred on the lens centre.
* source: lenstronomy ``SERSIC_ELLIPSE``: ``R_sersic = src_reff`` (the
  product-average, i.e. circularised, half-light radius), lenstronomy's
  ``b_n = 1.9992 n - 0.3271`` (the approximation lenstronomy evaluates, not
  the exact Gamma-function root), ``R`` floored at 1e-4 arcsec, zero beyond
  1000 ``R_sersic``, axis ratio ``1 - src_e``, amplitude from lenstronomy's
  analytic total flux so that the unlensed source has unit flux.
* sampling: ``supersample x supersample`` sub-pixel centres per pixel (the
  reference grid), then, when ``adaptive``, the pixels ``>= REFINE_FRAC`` of
  the brightest coarse pixel and their 8 neighbours are re-rendered on the
  reference's finer ``refined_supersample`` sub-grid (same rule, threshold
  and sub-grid as :class:`ArcRenderer`).

Implementation: ray shooting and source evaluation are fused in numba loops,
written in the frame of the lens's major axis (the shear, the source position
and the source's elliptical metric are rotated into it once per stamp), with
branch-free, SIMD-vectorisable ``atan`` / ``atanh`` / ``exp`` (no libm calls in
the loops): in float64 the Cephes rational approximations (~1e-16), evaluated
as ratios of homogeneous polynomials so that one division per ray suffices;
in float32 a degree-7 polynomial for atan on [0, 1] and Cephes atanhf after an
addition-formula range reduction (~3e-7). The deflection is computed once per
stamp and sub-pixel; the image is band-independent (bands only scale the
flux: :func:`darkhaloscope.lensing.convolve.inject_bands_batch` scales and
PSF-convolves it). Flat lenses (q < 0.22) and non-exponential
sources (n != 1) take a general path with libm ``atan``/``atanh``/``pow``.
The sub-pixel sums of many pixels are evaluated in long vector loops, pixels
are culled as below, and the rest of the reference algorithm (coarse pass,
``REFINE_FRAC`` threshold, 3 x 3 dilation, refined pass) is reproduced as is.

Precision: ``dtype=np.float32`` (default of the renderer) evaluates the rays
in single precision (sums per pixel in float32, image float64): the images
agree with the reference to ~5e-6 of the peak pixel and ~1e-6 in total flux;
``dtype=np.float64`` agrees to ~1e-14 (deflection and surface brightness to
~1e-15 relative).

Ray cut: a sub-pixel whose Sersic exponent ``b_n (R / R_sersic)^(1/n)``
exceeds ``T`` contributes 0, with ``T`` set (per Sersic index and work dtype,
:func:`ray_cut`) so that the source's flux beyond the cut, ``Q(2n, T)``, is
:data:`RAY_TAIL` (1e-14 in float64, T = 35.8 for n = 1; 3e-7 in float32, T =
18.0, below the float32 rounding). A whole pixel is skipped when a rigorous
bound on its sub-pixels' source-plane positions shows that all of them are
cut: for an isothermal lens the Jacobian ``A = 1 - H - Gamma`` has ``||1 - H||
= max(1, |1 - 2 kappa|)`` and ``2 kappa <= theta_E / (sqrt(q) r)``, so every
sub-pixel's source position is within ``(max(1, theta_E / (sqrt(q) r_min) -
1) + |gamma|) * (pixel half-diagonal)`` of the pixel centre's (+2%; first for
blocks of 4 x 4 pixels, then for the pixels of the surviving blocks). With
the cull the result is identical to rendering every pixel.

Units: arcsec, degrees, pixels; images are flux per pixel for a source of
unlensed total flux 1. No I/O.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping

import numpy as np
from numba import njit, types
from numba.extending import overload
from scipy.special import gammaincinv

from darkhaloscope.constants import PIXEL_SCALE
from darkhaloscope.lensing.render import REFINE_FRAC, REFINE_SAMPLES_PER_SCALE, _finite, _pos_int, _positive

__all__ = [
    "PARAM_KEYS",
    "RAY_TAIL",
    "ray_cut",
    "FastRenderer",
    "get_fast_renderer",
    "render_unit_images",
    "pack_params",
    "source_plane",
    "deflection",
    "sersic_unit_sb",
    "refined_supersample",
    "render_phase_images",
    "cell_centers",
    "REFINE_EXPONENT",
]

#: Lens/source parameter names of :func:`render_unit_images` (``n_sersic`` optional, default 1).
PARAM_KEYS = (
    "theta_e", "lens_q", "lens_phi_deg", "gamma1", "gamma2",
    "src_x", "src_y", "src_reff", "src_e", "src_phi_deg",
)

#: Fraction of the (unlensed) source flux beyond the ray cut, per work dtype (see :func:`ray_cut`).
RAY_TAIL = {"float64": 1e-14, "float32": 3e-7}

# lenstronomy constants
_S_SCALE = 1e-10           # SIE -> NIE core (lenstronomy SIE._s_scale)
_Q_MAX_DERIV = 0.99999999  # NIEMajorAxis.derivatives: q >= 1 -> this
_C_MAX = 0.9999            # ellipticity2phi_q clamp of |e|
_SMOOTH = 1e-4             # SersicUtil smoothing (arcsec)
_MAX_R_FRAC = 1000.0       # SersicElliptic.function max_R_frac
# The vectorised atanh is valid for |w| <= 0.9756 (float64: two half-argument reductions
# then Cephes; float32: up to 0.984), i.e. s' = sqrt(1 - q^2) <= 0.975 (lens q >= 0.22);
# flatter lenses use libm atan/atanh (scalar code, slower). Non-exponential sources
# (n != 1) also take that path.
_SP_MAX_FAST = 0.975

# ---- packed per-stamp parameters (pack_params), all float64 then cast to the work dtype
(_CX, _CY, _CPHI, _SPHI, _Q2, _S, _S2, _Q2S, _SP,
 _A11, _A12, _A21, _A22, _B11, _B12, _B21, _B22, _C0X, _C0Y,
 _AMP, _BN, _INVRS, _INVN, _GEN, _KB, _GABS, _SMIN, _SMAX, _RCUT, _SSF,
 _G11, _G12, _G21, _G22, _SRX, _SRY, _BS, _PS, _CUT, _RREF, _SSM) = range(41)
_NPAR = 41

#: Refinement by bound: every pixel whose source-plane footprint may come within the Sersic radius where
#: ``b_n (R / R_sersic)^(1/n) = REFINE_EXPONENT`` (surface brightness 1e-3 of the source's centre) is
#: refined, whatever its coarse-pass value (a compact image between the coarse rays is not missed).
REFINE_EXPONENT = math.log(1e3)
#: Refined pixels closer to the lens centre than theta_E / (sqrt(q) * REFINE_COMPRESSION) (where the lens
#: compresses an image tangentially by more than REFINE_COMPRESSION - 1 = 1.5x: a counter-image next to
#: the centre is smaller than the source) get ``max_supersample`` rays per side (with the bound refinement).
REFINE_COMPRESSION = 2.5
_NO_RREF = -1e30   # packed R_ref without the bound refinement (finite: the kernels assume no infinities)

# ---- typed constants: passed to the kernels as a tuple of the work dtype so that
# float32 code stays float32 (a Python float literal would promote it to float64)
_KVALS = (
    ("ZERO", 0.0), ("ONE", 1.0), ("HALF", 0.5), ("C066", 0.66), ("T3P8", 2.41421356237309504880),
    ("PIO2", 1.5707963267948966), ("PIO4", 0.7853981633974483),
    ("MB", 6.123233995736765886130e-17), ("HMB", 0.5 * 6.123233995736765886130e-17),
    # Cephes atan: atan(x) = x + x z P(z)/Q(z), |x| <= 0.66
    ("AP0", -8.750608600031904122785e-1), ("AP1", -1.615753718733365076637e1),
    ("AP2", -7.500855792314704667340e1), ("AP3", -1.228866684490136173410e2),
    ("AP4", -6.485021904942025371773e1),
    ("AQ0", 2.485846490142306297962e1), ("AQ1", 1.650270098316988542046e2),
    ("AQ2", 4.328810604912902668951e2), ("AQ3", 4.853903996359136964868e2),
    ("AQ4", 1.945506571482613964425e2),
    # Cephes atanh: atanh(x) = x + x z P(z)/Q(z), |x| < 0.5
    ("HP0", -8.54074331929669305196e-1), ("HP1", 1.20426861384072379242e1),
    ("HP2", -4.61252884198732692637e1), ("HP3", 6.54566728676544377376e1),
    ("HP4", -3.09092539379866942570e1),
    ("HQ0", -1.95638849376911654834e1), ("HQ1", 1.08938092147140262656e2),
    ("HQ2", -2.49839401325893582852e2), ("HQ3", 2.52006675691344555838e2),
    ("HQ4", -9.27277618139601130017e1),
    # exp(x), -70 <= x <= 0 (the float64 ray cut): Taylor polynomial of exp(x / 128), squared 7 times
    ("INV128", 1.0 / 128.0),
    ("E11", 1.0 / 39916800.0), ("E10", 1.0 / 3628800.0), ("E9", 1.0 / 362880.0),
    ("E8", 1.0 / 40320.0), ("E7", 1.0 / 5040.0), ("E6", 1.0 / 720.0), ("E5", 1.0 / 120.0),
    ("E4", 1.0 / 24.0), ("E3", 1.0 / 6.0), ("E2", 0.5),
    ("SMOOTH", _SMOOTH), ("MAXRF", _MAX_R_FRAC), ("SAFETY", 1.02), ("TINY", 1e-30),
    ("HALFDIAG", 0.7071067811865476),
    # single precision: atan(t) = t + t^3 P(t^2) on [0, 1] (least-squares fit on Chebyshev
    # nodes, relative error 2e-8; 9e-8 evaluated in float32), highest degree first
    ("SA0", 0.0028423242405976627), ("SA1", -0.01605327086585341), ("SA2", 0.04269873957416572),
    ("SA3", -0.07508683396592694), ("SA4", 0.10645598342585953), ("SA5", -0.1420589630564118),
    ("SA6", 0.19993145738633664), ("SA7", -0.333331262407762),
    # Cephes atanhf, |x| < 0.5: atanh(x) = x + x^3 P(x^2)
    ("FH0", 1.81740078349e-1), ("FH1", 8.24370301058e-2), ("FH2", 1.46691431730e-1),
    ("FH3", 1.99782164500e-1), ("FH4", 3.33337300303e-1),
    # float32 exp(x), x <= 0 down to the float32 ray cut: Taylor polynomial (degree 6) of
    # exp(x / 64), squared 6 times
    ("INV64", 1.0 / 64.0),
    # single-precision atanh(w), 0 <= w <= 0.984: atanh(c) + atanh((w - c) / (1 - w c)) with
    # c = 0 / 0.7484 / 0.9594 for w below 0.45 / 0.8965 / above, so that |t| <= 0.45
    ("HB1", 0.45), ("HB2", 0.8965), ("HC1", 0.7484), ("HC2", 0.9594),
    ("HA1", math.atanh(0.7484)), ("HA2", math.atanh(0.9594)),
)
(_kZERO, _kONE, _kHALF, _kC066, _kT3P8, _kPIO2, _kPIO4, _kMB, _kHMB,
 _kAP0, _kAP1, _kAP2, _kAP3, _kAP4, _kAQ0, _kAQ1, _kAQ2, _kAQ3, _kAQ4,
 _kHP0, _kHP1, _kHP2, _kHP3, _kHP4, _kHQ0, _kHQ1, _kHQ2, _kHQ3, _kHQ4,
 _kINV128, _kE11, _kE10, _kE9, _kE8, _kE7, _kE6, _kE5, _kE4, _kE3, _kE2,
 _kSMOOTH, _kMAXRF, _kSAFETY, _kTINY, _kHALFDIAG,
 _kSA0, _kSA1, _kSA2, _kSA3, _kSA4, _kSA5, _kSA6, _kSA7,
 _kFH0, _kFH1, _kFH2, _kFH3, _kFH4, _kINV64,
 _kHB1, _kHB2, _kHC1, _kHC2, _kHA1, _kHA2) = range(len(_KVALS))
_K32 = tuple(np.float32(v) for _, v in _KVALS)
_K64 = tuple(np.float64(v) for _, v in _KVALS)


def _consts(dtype) -> tuple:
    """The typed constant tuple of a work dtype (float32 or float64)."""
    dt = np.dtype(dtype)
    if dt == np.float32:
        return _K32
    if dt == np.float64:
        return _K64
    raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")


_CUTS: dict = {}


def ray_cut(n_sersic: float, dtype=np.float64) -> float:
    """Ray cut ``T`` on the Sersic exponent ``b_n (R / R_sersic)^(1/n)`` (dimensionless).

    The flux of a Sersic source beyond ``b_n (R / R_sersic)^(1/n) = T`` is the
    regularised upper incomplete gamma function ``Q(2n, T)`` (for any ``b_n``),
    so ``T = Q^{-1}(2n, RAY_TAIL[dtype])``: 35.8 (float64) / 18.0 (float32) for
    an exponential source.
    """
    _consts(dtype)
    key = (float(n_sersic), np.dtype(dtype).name)
    v = _CUTS.get(key)
    if v is None:
        from scipy.special import gammainccinv

        v = _CUTS[key] = float(gammainccinv(2.0 * key[0], RAY_TAIL[key[1]]))
    return v


# fastmath without 'reassoc' and 'contract': freshly compiled and cache-loaded code must round
# identically, or stamp bytes (and DVC hashes) would depend on whether numba's cache was warm;
# without 'arcp' and 'afn' too: with them LLVM emits approximate reciprocal / square-root
# instructions (rcpps, rsqrtps, vrcp14ps, ...) whose bits differ between CPU generations (AVX2 vs AVX-512)
_FASTMATH = {"nnan", "ninf", "nsz"}
_JIT = dict(fastmath=_FASTMATH, error_model="numpy", cache=True)
_JIT_INLINE = dict(fastmath=_FASTMATH, error_model="numpy", cache=True, inline="always")
_JIT_EXACT = dict(error_model="numpy", cache=True)  # parameter packing: IEEE semantics like numpy


# --------------------------------------------------------------------------
# vectorisable elementary functions (no branches, no calls)
# --------------------------------------------------------------------------
def _is_single(x):  # pragma: no cover - replaced by the overload inside numba code
    return isinstance(x, np.float32)


@overload(_is_single, inline="always")
def _is_single_ol(x):
    single = isinstance(x, types.Float) and x.bitwidth == 32
    return lambda x: single


@njit(**_JIT_INLINE)
def _expneg(x, K):
    """exp(x) for -70 <= x <= 0 (the ray cut; ~1e-13 relative in float64, ~4e-6 in float32 for
    x >= -20, less accurate beyond where exp(x) is negligible)."""
    if _is_single(x):
        u = x * K[_kINV64]
        p = K[_kE6]
        p = p * u + K[_kE5]
        p = p * u + K[_kE4]
        p = p * u + K[_kE3]
        p = p * u + K[_kE2]
        p = p * u + K[_kONE]
        p = p * u + K[_kONE]
        p = p * p
        p = p * p
        p = p * p
        p = p * p
        p = p * p
        p = p * p
        return p
    u = x * K[_kINV128]
    p = K[_kE11]
    p = p * u + K[_kE10]
    p = p * u + K[_kE9]
    p = p * u + K[_kE8]
    p = p * u + K[_kE7]
    p = p * u + K[_kE6]
    p = p * u + K[_kE5]
    p = p * u + K[_kE4]
    p = p * u + K[_kE3]
    p = p * u + K[_kE2]
    p = p * u + K[_kONE]
    p = p * u + K[_kONE]
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p


@njit(**_JIT_INLINE)
def _sie_angles_single(xr, yr, q2, s, s2, q2s, sp, K):
    """Single-precision :func:`_sie_angles` (~2e-7 relative; one division, one square root).

    atan(N1/D1): ``t = min/max`` of (|N1|, D1), ``atan = t + t^3 P(t^2)`` (degree-7
    fit on [0, 1]), ``pi/2 - atan`` when |N1| > D1. atanh(N2/D2) (|N2/D2| <= s'
    <= 0.975): ``atanh(c) + atanh(t)``, ``t = (N2 - c D2) / (D2 - c N2)`` with c
    from three ranges so that |t| <= 0.45, then Cephes atanhf. The two ratios
    share one division.
    """
    one = K[_kONE]
    psi = np.sqrt(q2 * (s2 + xr * xr) + yr * yr)
    n1 = sp * xr
    d1 = psi + s
    a = abs(n1)
    num1 = min(a, d1)
    den1 = max(a, d1)
    n2 = sp * yr
    d2 = psi + q2s
    h = abs(n2)
    m1 = (h > K[_kHB1] * d2) * one
    m2 = (h > K[_kHB2] * d2) * one
    c = m1 * K[_kHC1] + m2 * (K[_kHC2] - K[_kHC1])
    ac = m1 * K[_kHA1] + m2 * (K[_kHA2] - K[_kHA1])
    num2 = h - c * d2
    den2 = d2 - c * h
    inv = one / (den1 * den2)
    # ---- atan
    t = num1 * den2 * inv
    z = t * t
    p = K[_kSA0]
    p = p * z + K[_kSA1]
    p = p * z + K[_kSA2]
    p = p * z + K[_kSA3]
    p = p * z + K[_kSA4]
    p = p * z + K[_kSA5]
    p = p * z + K[_kSA6]
    p = p * z + K[_kSA7]
    at = t * z * p + t
    at = K[_kPIO2] - at if a > d1 else at
    # ---- atanh
    t = num2 * den1 * inv
    z = t * t
    ath = ac + (((((K[_kFH0] * z + K[_kFH1]) * z + K[_kFH2]) * z + K[_kFH3]) * z + K[_kFH4]) * z * t + t)
    return np.copysign(at, n1), np.copysign(ath, n2)


@njit(**_JIT_INLINE)
def _sie_angles(xr, yr, q2, s, s2, q2s, sp, K, general):
    """``(atan(sp xr / (psi + s)), atanh(sp yr / (psi + q^2 s)))`` (lenstronomy NIEMajorAxis).

    ``(xr, yr)`` in the lens frame; the deflection is ``b / sp`` times these.
    ``general``: libm functions. float32: :func:`_sie_angles_single`. float64:
    Cephes approximants evaluated as ratios of homogeneous polynomials of the
    (numerator, denominator) pairs (both divided by psi), atan with the Cephes
    range reduction, atanh with two half-argument reductions
    ``atanh(N/D) = 2 atanh(N / (D + sqrt(D^2 - N^2)))``; the two final
    divisions are merged into one (two divisions per ray in all).
    """
    if general:
        psi = np.sqrt(q2 * (s2 + xr * xr) + yr * yr)
        return np.arctan(sp * xr / (psi + s)), np.arctanh(sp * yr / (psi + q2s))
    if _is_single(xr):
        return _sie_angles_single(xr, yr, q2, s, s2, q2s, sp, K)
    psi = np.sqrt(q2 * (s2 + xr * xr) + yr * yr)
    one = K[_kONE]
    # normalise the (numerator, denominator) pairs by psi (keeps the degree-11 products in range)
    w = one / psi
    n1 = sp * xr * w
    d1 = one + s * w
    n2 = sp * yr * w
    d2 = one + q2s * w
    # ---- atan(|n1| / d1)
    a = abs(n1)
    mb = (a > K[_kT3P8] * d1) * one
    mm = (a > K[_kC066] * d1) * (one - mb)
    ms = one - mb - mm
    num = mm * (a - d1) + ms * a - mb * d1
    den = mb * a + mm * (a + d1) + ms * d1
    y0 = mb * K[_kPIO2] + mm * K[_kPIO4]
    ex = mb * K[_kMB] + mm * K[_kHMB]
    nn = num * num
    dd = den * den
    dd2 = dd * dd
    dd3 = dd2 * dd
    dd4 = dd2 * dd2
    ph = (((K[_kAP0] * nn + K[_kAP1] * dd) * nn + K[_kAP2] * dd2) * nn + K[_kAP3] * dd3) * nn + K[_kAP4] * dd4
    qh = (((((nn + K[_kAQ0] * dd) * nn + K[_kAQ1] * dd2) * nn + K[_kAQ2] * dd3) * nn + K[_kAQ3] * dd4) * nn
          + K[_kAQ4] * dd4 * dd)
    fa_num = num * (qh + nn * ph)
    fa_den = den * qh
    # ---- atanh(|n2| / d2)
    h = abs(n2)
    hh = h * h
    half = K[_kHALF]
    m1 = (h >= half * d2) * one
    d2 = d2 + m1 * np.sqrt(d2 * d2 - hh)
    m2 = (h >= half * d2) * one
    d2 = d2 + m2 * np.sqrt(d2 * d2 - hh)
    k = (one + m1) * (one + m2)
    ee = d2 * d2
    ee2 = ee * ee
    ee3 = ee2 * ee
    ee4 = ee2 * ee2
    hp = (((K[_kHP0] * hh + K[_kHP1] * ee) * hh + K[_kHP2] * ee2) * hh + K[_kHP3] * ee3) * hh + K[_kHP4] * ee4
    hq = (((((hh + K[_kHQ0] * ee) * hh + K[_kHQ1] * ee2) * hh + K[_kHQ2] * ee3) * hh + K[_kHQ3] * ee4) * hh
          + K[_kHQ4] * ee4 * ee)
    fh_num = k * h * (hq + hh * hp)
    fh_den = d2 * hq
    inv = one / (fa_den * fh_den)
    at = y0 + (fa_num * fh_den * inv + ex)
    ath = fh_num * fa_den * inv
    return np.copysign(at, n1), np.copysign(ath, n2)


@njit(**_JIT_INLINE)
def _sersic_sb(u, v, amp, bn, invrs, invn, cut, K, general):
    """Unit-flux SERSIC_ELLIPSE surface brightness at elliptical coordinates (u, v) (product-average)."""
    t = max(np.sqrt(u * u + v * v), K[_kSMOOTH]) * invrs
    if general:
        e = bn * np.power(t, invn)
        keep = ((e <= cut) & (t <= K[_kMAXRF])) * K[_kONE]
    else:
        # n = 1: e <= cut implies t <= cut / b_n < 1000 = max_R_frac
        keep = (bn * t <= cut) * K[_kONE]
        e = bn * t
    return amp * keep * _expneg(-min(e, cut), K)


# --------------------------------------------------------------------------
# per-stamp kernels
# --------------------------------------------------------------------------
@njit(**_JIT_INLINE)
def _rays_sb(xr, yr, sb, m, p, K, general):
    """``sb[k]`` = surface brightness of the ray at lens-frame ``(xr[k], yr[k])``, ``k < m``.

    The source coordinates are ``(u, v) = A theta_r + c0 + B (atan, atanh)``.
    """
    q2, s, s2, q2s, sp = p[_Q2], p[_S], p[_S2], p[_Q2S], p[_SP]
    a11, a12, a21, a22, c0x, c0y = p[_A11], p[_A12], p[_A21], p[_A22], p[_C0X], p[_C0Y]
    b11, b12, b21, b22 = p[_B11], p[_B12], p[_B21], p[_B22]
    amp, bn, invrs, invn, cut = p[_AMP], p[_BN], p[_INVRS], p[_INVN], p[_CUT]
    for k in range(m):
        x = xr[k]
        y = yr[k]
        fa, fh = _sie_angles(x, y, q2, s, s2, q2s, sp, K, general)
        u = a11 * x + a12 * y + c0x + b11 * fa + b12 * fh
        v = a21 * x + a22 * y + c0y + b21 * fa + b22 * fh
        sb[k] = _sersic_sb(u, v, amp, bn, invrs, invn, cut, K, general)


@njit(**_JIT_INLINE)
def _pixel_sum(xrc, yrc, oxr, oyr, p, K, general):
    """Sum of the surface brightness over the sub-pixels ``(xrc + oxr, yrc + oyr)`` of one pixel."""
    q2, s, s2, q2s, sp = p[_Q2], p[_S], p[_S2], p[_Q2S], p[_SP]
    a11, a12, a21, a22, c0x, c0y = p[_A11], p[_A12], p[_A21], p[_A22], p[_C0X], p[_C0Y]
    b11, b12, b21, b22 = p[_B11], p[_B12], p[_B21], p[_B22]
    amp, bn, invrs, invn, cut = p[_AMP], p[_BN], p[_INVRS], p[_INVN], p[_CUT]
    acc = K[_kZERO]
    for j in range(oxr.size):
        x = xrc + oxr[j]
        y = yrc + oyr[j]
        fa, fh = _sie_angles(x, y, q2, s, s2, q2s, sp, K, general)
        u = a11 * x + a12 * y + c0x + b11 * fa + b12 * fh
        v = a21 * x + a22 * y + c0y + b21 * fa + b22 * fh
        acc += _sersic_sb(u, v, amp, bn, invrs, invn, cut, K, general)
    return acc


@njit(**_JIT)
def _render_pixels(img, rows, cols, npx, xs, ys, offs, area, p, general, K, buf):
    """Set ``img[rows[i], cols[i]]`` (i < npx) to the sub-pixel sum over offsets ``offs`` times ``area``.

    ``offs`` = (oxr, oyr) lens-frame sub-pixel offsets from :func:`_offsets`.
    Long sub-grids are summed pixel by pixel in one fused loop; short ones
    (fewer than 64 sub-pixels, too short to vectorise) have the rays of many
    pixels evaluated in one long loop, in chunks of ~``buf.shape[1]`` rays.
    """
    oxr, oyr = offs
    m = oxr.size
    cphi, sphi = p[_CPHI], p[_SPHI]
    if m >= 64:
        for i in range(npx):
            x = xs[cols[i]]
            y = ys[rows[i]]
            xrc = cphi * x + sphi * y
            yrc = -sphi * x + cphi * y
            if general:
                acc = _pixel_sum(xrc, yrc, oxr, oyr, p, K, True)
            else:
                acc = _pixel_sum(xrc, yrc, oxr, oyr, p, K, False)
            img[rows[i], cols[i]] = np.float64(acc) * area
        return
    chunk = max(1, buf.shape[1] // m)
    xr, yr, sb = buf[0], buf[1], buf[2]
    for i0 in range(0, npx, chunk):
        i1 = min(npx, i0 + chunk)
        for i in range(i0, i1):
            x = xs[cols[i]]
            y = ys[rows[i]]
            xrc = cphi * x + sphi * y
            yrc = -sphi * x + cphi * y
            base = (i - i0) * m
            for j in range(m):
                xr[base + j] = xrc + oxr[j]
                yr[base + j] = yrc + oyr[j]
        nr = (i1 - i0) * m
        if general:
            _rays_sb(xr, yr, sb, nr, p, K, True)
        else:
            _rays_sb(xr, yr, sb, nr, p, K, False)
        for i in range(i0, i1):
            base = (i - i0) * m
            acc = K[_kZERO]
            for j in range(m):
                acc += sb[base + j]
            img[rows[i], cols[i]] = np.float64(acc) * area


@njit(**_JIT)
def _offsets(ss, p64, dtype_like):
    """Lens-frame offsets (arcsec) of the ss x ss sub-pixel centres from their pixel's centre."""
    m = ss * ss
    ps = p64[_PS]
    c, s = p64[_CPHI], p64[_SPHI]
    oxr = np.empty(m, dtype=dtype_like.dtype)
    oyr = np.empty(m, dtype=dtype_like.dtype)
    sub = np.empty(ss)
    for k in range(ss):
        sub[k] = ((k + 0.5) / ss - 0.5) * ps
    for k in range(ss):
        dy = sub[k]
        for l in range(ss):
            oxr[k * ss + l] = c * sub[l] + s * dy
            oyr[k * ss + l] = -s * sub[l] + c * dy
    return oxr, oyr


@njit(**_JIT_INLINE)
def _cull_bound(lower, xr, yr, cnt, hd, p, K, general):
    """``lower[k]``: lower bound of the Sersic radius R over the square of half-diagonal ``hd`` centred
    at lens-frame ``(xr[k], yr[k])`` (-1 when the square may contain the lens centre), k < cnt.

    From the centre's ray: every point within ``hd`` maps within ``margin = (max(1, 2 kappa_max -
    1) + |gamma|) hd`` of the centre's source position (``||1 - H|| = max(1, |1 - 2 kappa|)`` for
    an isothermal lens, ``2 kappa <= theta_E / (sqrt(q) r)``, +2% safety), and R changes by at
    most ``s_max`` times that (``s_min`` bounds R below by the Euclidean distance).
    """
    q2, s, s2, q2s, sp = p[_Q2], p[_S], p[_S2], p[_Q2S], p[_SP]
    b11, b12, b21, b22 = p[_B11], p[_B12], p[_B21], p[_B22]
    a11, a12, a21, a22, c0x, c0y = p[_A11], p[_A12], p[_A21], p[_A22], p[_C0X], p[_C0Y]
    kb, gabs, smin, smax = p[_KB], p[_GABS], p[_SMIN], p[_SMAX]
    g11, g12, g21, g22, srx, sry, bs = p[_G11], p[_G12], p[_G21], p[_G22], p[_SRX], p[_SRY], p[_BS]
    one = K[_kONE]
    for k in range(cnt):
        xrc = xr[k]
        yrc = yr[k]
        fa, fh = _sie_angles(xrc, yrc, q2, s, s2, q2s, sp, K, general)
        u = a11 * xrc + a12 * yrc + c0x + b11 * fa + b12 * fh
        v = a21 * xrc + a22 * yrc + c0y + b21 * fa + b22 * fh
        rc = np.sqrt(u * u + v * v)
        dx = g11 * xrc + g12 * yrc - bs * fa - srx
        dy = g21 * xrc + g22 * yrc - bs * fh - sry
        d = np.sqrt(dx * dx + dy * dy)
        rmin = np.sqrt(xrc * xrc + yrc * yrc) - hd
        lmax = max(one, kb / max(rmin, K[_kTINY]) - one) + gabs
        margin = K[_kSAFETY] * lmax * hd
        lb = max(smin * (d - margin), rc - smax * margin)
        lower[k] = lb if rmin > K[_kZERO] else -one


@njit(**_JIT)
def _active_pixels(p64, p, n, xs, ys, rows, cols, lows, cull, K, general):
    """Pixels that may hold a ray above the cut, into ``rows``/``cols``; returns their count.

    Two levels: blocks of 4 x 4 pixels from their centre rays, then the pixels
    of the surviving blocks from theirs (see :func:`_cull_bound`). ``lows[i]``: the
    lower bound of the Sersic radius over pixel i (-1 near the lens centre). With
    ``cull`` False every pixel is kept (the bounds are still computed).
    """
    bsz = 4
    nbk = (n + bsz - 1) // bsz
    cphi, sphi, rcut = p[_CPHI], p[_SPHI], p[_RCUT]
    xr = np.empty(n * n, dtype=p.dtype)
    yr = np.empty(n * n, dtype=p.dtype)
    lower = np.empty(n * n, dtype=p.dtype)
    ps = p64[_PS]
    # ---- blocks (full-size squares, also at the edges: conservative)
    k = 0
    for i in range(nbk):
        y = (i * bsz + 0.5 * (bsz - 1) - p64[_CY]) * ps
        for j in range(nbk):
            x = (j * bsz + 0.5 * (bsz - 1) - p64[_CX]) * ps
            xr[k] = p64[_CPHI] * x + p64[_SPHI] * y
            yr[k] = -p64[_SPHI] * x + p64[_CPHI] * y
            k += 1
    hdb = p[_PS] * K[_kHALFDIAG] * bsz
    if general:
        _cull_bound(lower, xr, yr, k, hdb, p, K, True)
    else:
        _cull_bound(lower, xr, yr, k, hdb, p, K, False)
    # ---- pixels of the surviving blocks
    cnt = 0
    for i in range(nbk):
        for j in range(nbk):
            if cull and lower[i * nbk + j] > rcut:
                continue
            for r in range(i * bsz, min(n, i * bsz + bsz)):
                for c in range(j * bsz, min(n, j * bsz + bsz)):
                    rows[cnt] = r
                    cols[cnt] = c
                    cnt += 1
    for k in range(cnt):
        x = xs[cols[k]]
        y = ys[rows[k]]
        xr[k] = cphi * x + sphi * y
        yr[k] = -sphi * x + cphi * y
    hdp = p[_PS] * K[_kHALFDIAG]
    if general:
        _cull_bound(lower, xr, yr, cnt, hdp, p, K, True)
    else:
        _cull_bound(lower, xr, yr, cnt, hdp, p, K, False)
    npx = 0
    for k in range(cnt):
        if lower[k] <= rcut or not cull:
            rows[npx] = rows[k]
            cols[npx] = cols[k]
            lows[npx] = lower[k]
            npx += 1
    return npx


@njit(**_JIT)
def _render_one(img, p64, p, ss, adaptive, cull, K, buf):
    """Fill ``img`` (n x n float64) with the unit-flux lensed image of one stamp.

    ``p64``: packed parameters (float64); ``p``: the same in the work dtype;
    ``buf``: (3, L) work-dtype scratch.
    """
    n = img.shape[0]
    general = p64[_GEN] != 0.0
    # pixel-centre coordinates (arcsec) along columns and rows
    xs = np.empty(n, dtype=p.dtype)
    ys = np.empty(n, dtype=p.dtype)
    for i in range(n):
        xs[i] = (i - p64[_CX]) * p64[_PS]
        ys[i] = (i - p64[_CY]) * p64[_PS]
    # ---- pass 1: which pixels can hold any ray above the cut
    rows = np.empty(n * n, dtype=np.int64)
    cols = np.empty(n * n, dtype=np.int64)
    lows = np.empty(n * n, dtype=p.dtype)
    img[:, :] = 0.0
    npx = _active_pixels(p64, p, n, xs, ys, rows, cols, lows, cull, K, general)
    # ---- pass 2: the supersample grid of those pixels
    _render_pixels(img, rows, cols, npx, xs, ys, _offsets(ss, p64, p), (p64[_PS] / ss) ** 2, p, general, K, buf)
    if not adaptive:
        return
    ssf = int(p64[_SSF])
    vmax = 0.0
    for i in range(npx):
        vmax = max(vmax, img[rows[i], cols[i]])
    if ssf <= ss:
        return
    # ---- pass 3: refine mask = binary_dilation(img >= REFINE_FRAC * max, 3x3), plus every pixel whose
    # bound does not exclude the source's core (R <= R_ref: see REFINE_EXPONENT)
    thr = REFINE_FRAC * vmax if vmax > 0.0 else 1e300   # (no infinities under fastmath)
    rref = p[_RREF]
    mask = np.zeros((n, n), dtype=np.bool_)
    for i in range(npx):
        r, c = rows[i], cols[i]
        if lows[i] <= rref:
            mask[r, c] = True
        if img[r, c] >= thr:
            for rr in range(max(r - 1, 0), min(r + 2, n)):
                for cc in range(max(c - 1, 0), min(c + 2, n)):
                    mask[rr, cc] = True
    npx = 0
    for r in range(n):
        for c in range(n):
            if mask[r, c]:
                rows[npx] = r
                cols[npx] = c
                npx += 1
    _render_pixels(img, rows, cols, npx, xs, ys, _offsets(ssf, p64, p), (p64[_PS] / ssf) ** 2, p, general, K, buf)
    ssm = int(p64[_SSM])
    if rref < -1e29 or ssm <= ssf:
        return
    # ---- pass 4: refined pixels where the lens compresses images (next to its centre): the finest sub-grid
    rc = p64[_KB] / REFINE_COMPRESSION
    nc = 0
    for i in range(npx):
        x = xs[cols[i]]
        y = ys[rows[i]]
        if x * x + y * y < rc * rc:
            rows[nc] = rows[i]
            cols[nc] = cols[i]
            nc += 1
    _render_pixels(img, rows, cols, nc, xs, ys, _offsets(ssm, p64, p), (p64[_PS] / ssm) ** 2, p, general, K, buf)


@njit(**_JIT)
def _render_batch(P64, P, out, ss, adaptive, cull, K):
    buf = np.empty((3, 4096), dtype=P.dtype)
    for b in range(P.shape[0]):
        _render_one(out[b], P64[b], P[b], ss, adaptive, cull, K, buf)


@njit(**_JIT)
def _source_plane_batch(P64, P, x, y, bx, by, K):
    """Source-plane positions (original frame, arcsec) of points (x, y) (arcsec from the lens centre)."""
    for b in range(P.shape[0]):
        p = P[b]
        general = P64[b, _GEN] != 0.0
        q2, s, s2, q2s, sp, cphi, sphi = p[_Q2], p[_S], p[_S2], p[_Q2S], p[_SP], p[_CPHI], p[_SPHI]
        g11, g12, g21, g22, bs = p[_G11], p[_G12], p[_G21], p[_G22], p[_BS]
        for i in range(x.shape[1]):
            xr = cphi * x[b, i] + sphi * y[b, i]
            yr = -sphi * x[b, i] + cphi * y[b, i]
            if general:
                fa, fh = _sie_angles(xr, yr, q2, s, s2, q2s, sp, K, True)
            else:
                fa, fh = _sie_angles(xr, yr, q2, s, s2, q2s, sp, K, False)
            br_x = g11 * xr + g12 * yr - bs * fa   # (1 - Gamma') theta_r - alpha_r
            br_y = g21 * xr + g22 * yr - bs * fh
            bx[b, i] = cphi * br_x - sphi * br_y
            by[b, i] = sphi * br_x + cphi * br_y


@njit(**_JIT)
def _sersic_batch(P64, P, bx, by, out, K):
    """Unit-flux Sersic surface brightness at source-plane points (original frame)."""
    for b in range(P.shape[0]):
        p = P[b]
        general = P64[b, _GEN] != 0.0
        # R = |M (beta - s)| with M' = M R^T = -B / bs, beta_r = R beta
        cphi, sphi, bs = p[_CPHI], p[_SPHI], p[_BS]
        m11, m12, m21, m22 = -p[_B11] / bs, -p[_B12] / bs, -p[_B21] / bs, -p[_B22] / bs
        srx, sry = p[_SRX], p[_SRY]
        amp, bn, invrs, invn, cut = p[_AMP], p[_BN], p[_INVRS], p[_INVN], p[_CUT]
        for i in range(bx.shape[1]):
            xr = cphi * bx[b, i] + sphi * by[b, i] - srx
            yr = -sphi * bx[b, i] + cphi * by[b, i] - sry
            u = m11 * xr + m12 * yr
            v = m21 * xr + m22 * yr
            if general:
                out[b, i] = _sersic_sb(u, v, amp, bn, invrs, invn, cut, K, True)
            else:
                out[b, i] = _sersic_sb(u, v, amp, bn, invrs, invn, cut, K, False)


# --------------------------------------------------------------------------
# parameter packing (lenstronomy conventions)
# --------------------------------------------------------------------------
@njit(**_JIT_EXACT)
def _pack(raw, bn_exact, cuts, ps, ss, mss, out):
    """Per-stamp constants (see the _CX ... _CUT layout) from raw parameters.

    ``raw[b] = (theta_e, lens_q, lens_phi_deg, gamma1, gamma2, src_x, src_y,
    src_reff, src_e, src_phi_deg, n_sersic, cx, cy)``.
    """
    for b in range(raw.shape[0]):
        theta_e, q_in, phi_deg, g1, g2 = raw[b, 0], raw[b, 1], raw[b, 2], raw[b, 3], raw[b, 4]
        sx, sy, reff, e_src, sphi_deg = raw[b, 5], raw[b, 6], raw[b, 7], raw[b, 8], raw[b, 9]
        n, cx, cy = raw[b, 10], raw[b, 11], raw[b, 12]
        o = out[b]
        cut = cuts[b]
        o[_CX], o[_CY], o[_PS], o[_CUT] = cx, cy, ps, cut
        # ---- lens: phi_q2_ellipticity -> ellipticity2phi_q -> NIE._param_conv
        phi = math.radians(phi_deg)
        e1 = (1.0 - q_in) / (1.0 + q_in) * math.cos(2 * phi)
        e2 = (1.0 - q_in) / (1.0 + q_in) * math.sin(2 * phi)
        phi_g = math.atan2(e2, e1) / 2
        c = min(math.sqrt(e1**2 + e2**2), _C_MAX)
        q = (1 - c) / (1 + c)
        theta_major = theta_e / math.sqrt((1.0 + q**2) / (2.0 * q))
        bb = theta_major * math.sqrt((1 + q**2) / 2)
        s = _S_SCALE / math.sqrt(q)
        qd = _Q_MAX_DERIV if q >= 1 else q
        sp = math.sqrt(1.0 - qd**2)
        bs = bb / sp
        cp, sn = math.cos(phi_g), math.sin(phi_g)
        o[_CPHI], o[_SPHI] = cp, sn
        o[_Q2], o[_S], o[_S2], o[_Q2S], o[_SP], o[_BS] = qd**2, s, s**2, qd**2 * s, sp, bs
        # shear in the lens frame: Gamma' = R Gamma R^T, R = [[c, s], [-s, c]]
        t11 = cp * g1 + sn * g2
        t12 = cp * g2 - sn * g1
        t21 = -sn * g1 + cp * g2
        t22 = -sn * g2 - cp * g1
        gp11 = t11 * cp + t12 * sn
        gp12 = -t11 * sn + t12 * cp
        gp21 = t21 * cp + t22 * sn
        gp22 = -t21 * sn + t22 * cp
        i11, i12, i21, i22 = 1.0 - gp11, -gp12, -gp21, 1.0 - gp22
        o[_G11], o[_G12], o[_G21], o[_G22] = i11, i12, i21, i22
        # ---- source: SERSIC_ELLIPSE product-average metric M, rotated: M' = M R^T
        phs = math.radians(sphi_deg)
        qs = 1.0 - e_src
        es1 = (1.0 - qs) / (1.0 + qs) * math.cos(2 * phs)
        es2 = (1.0 - qs) / (1.0 + qs) * math.sin(2 * phs)
        norm = math.sqrt(max(abs(1 - es1**2 - es2**2), 0.000001))
        m11, m12, m22 = (1 - es1) / norm, -es2 / norm, (1 + es1) / norm
        mp11 = m11 * cp + m12 * sn
        mp12 = -m11 * sn + m12 * cp
        mp21 = m12 * cp + m22 * sn
        mp22 = -m12 * sn + m22 * cp
        srx = cp * sx + sn * sy
        sry = -sn * sx + cp * sy
        o[_SRX], o[_SRY] = srx, sry
        # u = M' ((1 - Gamma') theta_r - bs f - s_r) = A theta_r + B f + c0
        o[_A11] = mp11 * i11 + mp12 * i21
        o[_A12] = mp11 * i12 + mp12 * i22
        o[_A21] = mp21 * i11 + mp22 * i21
        o[_A22] = mp21 * i12 + mp22 * i22
        o[_B11], o[_B12], o[_B21], o[_B22] = -bs * mp11, -bs * mp12, -bs * mp21, -bs * mp22
        o[_C0X] = -(mp11 * srx + mp12 * sry)
        o[_C0Y] = -(mp21 * srx + mp22 * sry)
        # ---- unit total flux (SersicUtil.total_flux with amp = 1); sb = amp e^{b_n} e^{-b_n t^{1/n}}
        bn = max(1.9992 * n - 0.3271, 0.00001)
        flux_per_amp = reff**2 * 2 * np.pi * n * math.exp(bn) / bn ** (2 * n) * math.gamma(2 * n)
        o[_AMP] = math.exp(bn) / flux_per_amp
        o[_BN] = bn
        rs = max(_SMOOTH, reff)
        o[_INVRS] = 1.0 / rs
        o[_INVN] = 1.0 / n
        o[_GEN] = 0.0 if (n == 1.0 and sp <= _SP_MAX_FAST) else 1.0
        # ---- culling bounds
        o[_KB] = theta_e / math.sqrt(q)
        o[_GABS] = math.sqrt(g1 * g1 + g2 * g2)
        ce = math.sqrt(es1**2 + es2**2)
        o[_SMIN] = (1 - ce) / norm  # singular values of M
        o[_SMAX] = (1 + ce) / norm
        o[_RCUT] = (cut / bn) ** n  # in units of R_sersic: b_n t^(1/n) > cut beyond
        o[_RCUT] *= rs
        o[_RREF] = (REFINE_EXPONENT / bn) ** n * rs
        o[_SSM] = mss
        # ---- ArcRenderer.refined_supersample (exact b_n)
        h = reff * math.sqrt(max(1.0 - e_src, 1e-6)) / bn_exact[b] ** n
        ssf = math.ceil(REFINE_SAMPLES_PER_SCALE * ps / h)
        o[_SSF] = min(mss, max(ss, ssf))


_BN_EXACT: dict = {}


def _bn_exact(n: float) -> float:
    """Exact Sersic b_n (gammaincinv(2n, 1/2)), used only by the refinement rule, as in ArcRenderer."""
    v = _BN_EXACT.get(n)
    if v is None:
        v = _BN_EXACT[n] = float(gammaincinv(2.0 * n, 0.5))
    return v


def refined_supersample(src_reff, src_e, n_sersic, pixel_scale: float, supersample: int,
                        max_supersample: int = 32):
    """:meth:`ArcRenderer.refined_supersample`, vectorised (sub-pixels per side of refined pixels)."""
    reff, e, n = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (src_reff, src_e, n_sersic)))
    out = np.empty(reff.shape, dtype=np.int64)
    for i in np.ndindex(reff.shape):
        h = float(reff[i]) * math.sqrt(max(1.0 - float(e[i]), 1e-6)) / _bn_exact(float(n[i])) ** float(n[i])
        ss = math.ceil(REFINE_SAMPLES_PER_SCALE * pixel_scale / h)
        out[i] = min(max_supersample, max(supersample, ss))
    return out if out.ndim else int(out)


def _raw_batch(params: Mapping, centers=None) -> np.ndarray:
    """Validated (B, 13) raw parameter rows (see :func:`_pack`)."""
    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise ValueError(f"params lacks {missing}; expected keys {list(PARAM_KEYS)} (+ optional n_sersic)")
    keys = PARAM_KEYS + ("n_sersic",)
    arrs = [np.asarray(params[k] if k in params else 1.0, dtype=np.float64) for k in keys]
    for k, a in zip(keys, arrs):
        if a.ndim > 1:
            raise ValueError(f"{k} must be a scalar or a 1-D array, got shape {a.shape}")
    nb = max(a.size if a.ndim else 1 for a in arrs)
    if centers is not None:
        c = np.asarray(centers, dtype=np.float64)
        if c.ndim == 2:
            nb = max(nb, c.shape[0])
    raw = np.empty((nb, 13))
    for i, (k, a) in enumerate(zip(keys, arrs)):
        if a.ndim and a.size not in (1, nb):
            raise ValueError(f"{k} has length {a.size}, expected {nb}")
        raw[:, i] = a
    if centers is None:
        raw[:, 11:] = 32.0
    else:
        c = np.asarray(centers, dtype=np.float64)
        if c.shape not in ((2,), (nb, 2)):
            raise ValueError(f"centers must have shape ({nb}, 2) (cx, cy in pixels), got {c.shape}")
        raw[:, 11:] = c
    finite = np.isfinite(raw).all(axis=0)
    if not finite.all():
        k = (keys + ("centers", "centers"))[int(np.argmin(finite))]
        raise ValueError(f"{k} must be finite")
    for i, k in ((0, "theta_e"), (1, "lens_q"), (7, "src_reff"), (10, "n_sersic")):
        if np.any(raw[:, i] <= 0):
            raise ValueError(f"{k} must be > 0")
    if np.any(raw[:, 1] > 1.0):
        raise ValueError("lens_q must be in (0, 1]")
    if np.any((raw[:, 8] < 0) | (raw[:, 8] >= 1)):
        raise ValueError("src_e (= 1 - axis ratio) must be in [0, 1)")
    return raw


def _pack_raw(raw: np.ndarray, pixel_scale: float, supersample: int, max_supersample: int,
              dtype=np.float64, refine_bound: bool = False) -> np.ndarray:
    n = raw[:, 10]
    if np.all(n == 1.0):
        bnx = np.full(raw.shape[0], _bn_exact(1.0))
        cuts = np.full(raw.shape[0], ray_cut(1.0, dtype))
    else:
        bnx = np.array([_bn_exact(float(v)) for v in n])
        cuts = np.array([ray_cut(float(v), dtype) for v in n])
    P = np.empty((raw.shape[0], _NPAR))
    _pack(raw, bnx, cuts, float(pixel_scale), int(supersample), int(max_supersample), P)
    if not refine_bound:
        P[:, _RREF] = _NO_RREF   # no pixel is refined by the bound (the reference renderer's rule)
    return P


def pack_params(params: Mapping, centers=None, pixel_scale: float = PIXEL_SCALE, supersample: int = 4,
                max_supersample: int = 32, dtype=np.float64) -> np.ndarray:
    """(B, 39) float64 per-stamp constants of the kernels, in lenstronomy's conventions.

    ``params``: mapping of :data:`PARAM_KEYS` (+ optional ``n_sersic``) to scalars or
    1-D arrays (arcsec, degrees); ``centers``: (B, 2) lens centres (cx, cy) in pixels;
    ``dtype``: work dtype the ray cut is set for.
    """
    return _pack_raw(_raw_batch(params, centers), pixel_scale, supersample, max_supersample, dtype)


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def _render_packed(P64: np.ndarray, n_pix: int, supersample: int, adaptive: bool, cull: bool,
                   dtype, out=None) -> np.ndarray:
    K = _consts(dtype)
    if out is None:
        out = np.empty((P64.shape[0], n_pix, n_pix))
    _render_batch(P64, P64.astype(np.dtype(dtype)), out, int(supersample), bool(adaptive), bool(cull), K)
    return out


def render_unit_images(
    params: Mapping,
    centers=None,
    n_pix: int = 64,
    pixel_scale: float = PIXEL_SCALE,
    supersample: int = 4,
    *,
    adaptive: bool = True,
    max_supersample: int = 32,
    dtype=np.float32,
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
    dtype : float32 (default, ~1e-5 of the peak) or float64 (~1e-13) ray arithmetic.
    cull : skip pixels provably below the ray cut (the result is the same either way).
    out : optional preallocated (B, n_pix, n_pix) float64 C-contiguous array.

    Returns
    -------
    (B, n_pix, n_pix) float64: flux per pixel for unit unlensed source flux,
    matching ``ArcRenderer(n_pix, pixel_scale, supersample, adaptive,
    max_supersample).lensed_unit_image(...)`` stamp by stamp.
    """
    n_pix = _pos_int("n_pix", n_pix)
    ps = _positive("pixel_scale", pixel_scale)
    ss = _pos_int("supersample", supersample)
    mss = _pos_int("max_supersample", max_supersample)
    P64 = pack_params(params, centers, ps, ss, mss, dtype)
    if out is not None and (out.shape != (P64.shape[0], n_pix, n_pix) or out.dtype != np.float64
                            or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous float64 array of shape {(P64.shape[0], n_pix, n_pix)}")
    return _render_packed(P64, n_pix, ss, adaptive, cull, dtype, out)


def cell_centers(centers, s_c: int) -> np.ndarray:
    """Lens centres (cx, cy) in the coordinates of the ``s_c``-times finer grid of sub-pixel phases.

    Cell ``C`` of the fine grid is phase ``C % s_c`` of pixel ``C // s_c``; its centre is at pixel
    coordinate ``(C + 0.5) / s_c - 0.5``, so the lens centre is at ``(c + 0.5) * s_c - 0.5``.
    """
    c = np.asarray(centers, dtype=np.float64)
    return (c + 0.5) * s_c - 0.5


def render_phase_images(
    params: Mapping,
    centers=None,
    n_pix: int = 64,
    pixel_scale: float = PIXEL_SCALE,
    supersample: int = 4,
    *,
    adaptive: bool = True,
    max_supersample: int = 64,
    dtype=np.float32,
    cull: bool = True,
    refine_bound: bool = True,
) -> np.ndarray:
    """Unconvolved unit-flux lensed images split into the ``s_c x s_c`` sub-pixel phases of every pixel.

    ``s_c = psf.phase_factor(supersample)`` (4 for supersample 4 and 8, 2 for 2). The stamp is
    rendered on the grid of phases (``n_pix * s_c`` cells of ``pixel_scale / s_c`` arcsec,
    ``supersample / s_c`` rays per cell side, refinement per cell up to ``max_supersample / s_c``,
    reached next to the lens centre: :data:`REFINE_COMPRESSION`), so every ray's flux lands in the
    phase that contains it.
    Returns (B, s_c^2, n_pix, n_pix) float64, phase ``p = jy * s_c + jx`` (flux per pixel phase
    for unit unlensed source flux; the sum over phases is the unit image). ``refine_bound``: also
    refine every cell whose source-plane bound does not exclude the source core
    (:data:`REFINE_EXPONENT`), so that no compact image between the coarse rays is missed (the
    reference :class:`ArcRenderer` refines by coarse brightness only). Other arguments as
    :func:`render_unit_images`; the result feeds
    :func:`darkhaloscope.lensing.convolve.inject_phases_batch`.
    """
    from darkhaloscope.lensing.psf import phase_factor

    n_pix = _pos_int("n_pix", n_pix)
    ss = _pos_int("supersample", supersample)
    s_c = phase_factor(ss)
    ssc = ss // s_c
    raw = _raw_batch(params, centers)
    raw[:, 11:] = cell_centers(raw[:, 11:], s_c)
    P64 = _pack_raw(raw, _positive("pixel_scale", pixel_scale) / s_c, ssc,
                    max(1, _pos_int("max_supersample", max_supersample) // s_c), dtype, refine_bound)
    cells = _render_packed(P64, n_pix * s_c, ssc, adaptive, cull, dtype)
    nb = cells.shape[0]
    ph = cells.reshape(nb, n_pix, s_c, n_pix, s_c).transpose(0, 2, 4, 1, 3)
    return np.ascontiguousarray(ph.reshape(nb, s_c * s_c, n_pix, n_pix))


def _points(P64, x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    shape = np.broadcast_shapes(x.shape, y.shape)
    nb = P64.shape[0]
    if nb > 1 and (len(shape) < 1 or shape[0] != nb):
        raise ValueError(f"points must have shape (B, ...) with B = {nb}, got {shape}")
    x2 = np.ascontiguousarray(np.broadcast_to(x, shape).reshape(nb, -1))
    y2 = np.ascontiguousarray(np.broadcast_to(y, shape).reshape(nb, -1))
    return x2, y2, shape


def source_plane(params: Mapping, x, y, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Source-plane positions ``beta = theta - alpha`` (arcsec) of image-plane points (renderer code).

    ``x``, ``y`` arcsec relative to the lens centre, shape (B, ...) for B stamps
    (any shape for one stamp). Equals lenstronomy
    ``LensModel(['SIE', 'SHEAR']).ray_shooting`` with the kwargs of
    :meth:`ArcRenderer.lens_kwargs`, in the precision ``dtype``.
    """
    dt = np.dtype(dtype)
    P64 = pack_params(params, dtype=dt)
    x2, y2, shape = _points(P64, x, y)
    bx, by = np.empty(x2.shape, dt), np.empty(x2.shape, dt)
    _source_plane_batch(P64, P64.astype(dt), x2.astype(dt), y2.astype(dt), bx, by, _consts(dt))
    return bx.reshape(shape).astype(np.float64), by.reshape(shape).astype(np.float64)


def deflection(params: Mapping, x, y, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """SIE + SHEAR deflection ``(alpha_x, alpha_y)`` (arcsec) at image-plane points (see :func:`source_plane`)."""
    bx, by = source_plane(params, x, y, dtype)
    return np.asarray(x, dtype=np.float64) - bx, np.asarray(y, dtype=np.float64) - by


def sersic_unit_sb(params: Mapping, bx, by, dtype=np.float64) -> np.ndarray:
    """Unit-flux SERSIC_ELLIPSE surface brightness (flux/arcsec^2) at source-plane points (renderer code).

    Same shapes as :func:`source_plane`; values beyond the ray cut are 0.
    """
    dt = np.dtype(dtype)
    P64 = pack_params(params, dtype=dt)
    b2, c2, shape = _points(P64, bx, by)
    out = np.empty(b2.shape, dt)
    _sersic_batch(P64, P64.astype(dt), b2.astype(dt), c2.astype(dt), out, _consts(dt))
    return out.reshape(shape).astype(np.float64)


class FastRenderer:
    """Drop-in replacement of :class:`ArcRenderer` for :meth:`lensed_unit_image` (numba engine).

    Same constructor arguments (plus ``dtype`` of the ray arithmetic) and the
    same result (see the module docstring). Instances hold no per-stamp state.
    """

    def __init__(self, n_pix: int = 64, pixel_scale: float = PIXEL_SCALE, supersample: int = 4,
                 adaptive: bool = True, max_supersample: int = 32, dtype=np.float32):
        self.n_pix = _pos_int("n_pix", n_pix)
        self.pixel_scale = _positive("pixel_scale", pixel_scale)
        self.supersample = _pos_int("supersample", supersample)
        self.adaptive = bool(adaptive)
        self.max_supersample = _pos_int("max_supersample", max_supersample)
        self.dtype = np.dtype(dtype)
        _consts(self.dtype)
        self.subpixel_area = (self.pixel_scale / self.supersample) ** 2

    def refined_supersample(self, src_reff, src_e=0.0, n_sersic=1.0) -> int:
        """Sub-pixels per side of refined pixels (as :meth:`ArcRenderer.refined_supersample`)."""
        return int(refined_supersample(_positive("src_reff", src_reff), float(src_e),
                                       _positive("n_sersic", n_sersic), self.pixel_scale,
                                       self.supersample, self.max_supersample))

    def lensed_unit_image(self, theta_e, lens_q, lens_phi_deg, gamma1, gamma2, src_x, src_y, src_reff,
                          src_e, src_phi_deg, *, center=(32.0, 32.0), n_sersic=1.0) -> np.ndarray:
        """Unconvolved lensed image (n_pix x n_pix, float64) of a source of unit unlensed flux.

        Arguments and result as :meth:`ArcRenderer.lensed_unit_image`.
        """
        q = _positive("lens_q", lens_q)
        if q > 1.0:
            raise ValueError(f"lens_q must be in (0, 1], got {lens_q!r}")
        e = _finite("src_e", src_e)
        if not 0.0 <= e < 1.0:
            raise ValueError(f"src_e (= 1 - axis ratio) must be in [0, 1), got {src_e!r}")
        raw = np.array([[
            _positive("theta_e", theta_e), q, _finite("lens_phi_deg", lens_phi_deg),
            _finite("gamma1", gamma1), _finite("gamma2", gamma2),
            _finite("src_x", src_x), _finite("src_y", src_y), _positive("src_reff", src_reff), e,
            _finite("src_phi_deg", src_phi_deg), _positive("n_sersic", n_sersic),
            _finite("center[0]", center[0]), _finite("center[1]", center[1]),
        ]])
        P64 = _pack_raw(raw, self.pixel_scale, self.supersample, self.max_supersample, self.dtype)
        return _render_packed(P64, self.n_pix, self.supersample, self.adaptive, True, self.dtype)[0]

    def lensed_unit_images(self, params: Mapping, centers=None) -> np.ndarray:
        """Batch version: (B, n_pix, n_pix) images (see :func:`render_unit_images`)."""
        return render_unit_images(params, centers, self.n_pix, self.pixel_scale, self.supersample,
                                  adaptive=self.adaptive, max_supersample=self.max_supersample,
                                  dtype=self.dtype)


@functools.lru_cache(maxsize=16)
def get_fast_renderer(n_pix: int = 64, pixel_scale: float = PIXEL_SCALE, supersample: int = 4,
                      adaptive: bool = True) -> FastRenderer:
    """A cached :class:`FastRenderer` for ``(n_pix, pixel_scale [arcsec], supersample, adaptive)``."""
    return FastRenderer(n_pix=n_pix, pixel_scale=pixel_scale, supersample=supersample, adaptive=adaptive)
