"""Accuracy of the injected arcs against lenstronomy called directly (``_lensing_reference``).

The reference is lenstronomy's ``ImageModel`` with ``supersampling_convolution`` at 24-32
sub-pixels per side (converged to ~5e-4 of the arc peak: checked against 40 here), with
lenstronomy's own Gaussian PSF or a kernel from its Moffat profile, on random parameter
sets over grid_sota's ranges with PSF FWHMs of 0.7-1.8 arcsec (a quarter at 0.7 arcsec,
where binning then convolving was off by up to 8% of the peak). The engines bin their rays
into the s_c x s_c sub-pixel phases of each pixel (``psf.phase_factor``: 4 at supersample 4
and 8, 2 at 2) and convolve each phase with the PSF integrated over the pixel box seen from
it (``psf.phase_kernels``, side from ``psf.kernel_size`` at psf_flux_frac 0.998).

Targets (the issue's): every pixel within 0.5% of the arc's peak pixel, the total flux
within 0.2%, for the fast engine at supersample 4 and 8 and the lenstronomy reference engine
at 4. At supersample 2 (2 x 2 phases: a ray up to 1/4 pixel from its phase centre) the
measured error is up to ~1.3% of the peak for 0.7-1 arcsec PSFs: held to 1.5% (NOT the target).

A subset runs in the default suite; ``-m slow`` runs 64 more sets and prints the table of the
errors per PSF model and supersample (``-s`` to see it).
"""

from __future__ import annotations

import numpy as np
import pytest

from _lensing_reference import PS, draw_sets, lenstronomy_stamp, lenstronomy_unconvolved, reference_supersample
from darkhaloscope.lensing import convolve, fast, psf, render

N_PIX = 48
PIX_TOL = 5e-3     # of the reference's peak pixel
PIX_TOL_SS2 = 1.5e-2
FLUX_TOL = 2e-3    # relative
FLUX_FRAC = 0.998  # params inject.psf_flux_frac


def kernel_px(s: dict) -> int:
    return psf.kernel_size(s["psf_model"], s["fwhm"], 3.5, PS, FLUX_FRAC)


def kernels(s: dict, ss: int) -> np.ndarray:
    return psf.phase_kernels(s["psf_model"], s["fwhm"], 3.5, PS, psf.phase_factor(ss), kernel_px(s))


def fast_stamp(s: dict, ss: int) -> np.ndarray:
    p = {k: s[k] for k in fast.PARAM_KEYS}
    ph = fast.render_phase_images(p, [s["center"]], N_PIX, PS, ss)
    return convolve.inject_phases_batch(ph, [[1.0]], [kernels(s, ss)])[0, 0].astype(np.float64)


def reference_engine_stamp(s: dict, ss: int) -> np.ndarray:
    s_c = psf.phase_factor(ss)
    cells = render.ArcRenderer(N_PIX * s_c, PS / s_c, ss // s_c, max_supersample=32 // s_c)
    ph = render.phase_images(cells, s_c, *(s[k] for k in fast.PARAM_KEYS), center=s["center"])
    return render.inject_phases(ph, [1.0], [kernels(s, ss)], bands=("r",))[0].astype(np.float64)


def truth(s: dict, ss: int | None = None) -> np.ndarray:
    return lenstronomy_stamp(s, s["center"], s["psf_model"], s["fwhm"], kernel_px(s),
                             ss or reference_supersample(s), N_PIX)


def errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(max, 99th percentile of |got - ref| over the pixels, as fractions of ref's peak; flux error)."""
    d = np.abs(got - ref) / ref.max()
    return float(d.max()), float(np.percentile(d, 99)), float(got.sum() / ref.sum() - 1.0)


def check_sets(sets: list[dict], engines=(("fast", 2), ("fast", 4), ("fast", 8), ("lenstronomy", 4))) -> dict:
    table: dict = {}
    for s in sets:
        ref = truth(s)
        for engine, ss in engines:
            got = fast_stamp(s, ss) if engine == "fast" else reference_engine_stamp(s, ss)
            table.setdefault((engine, s["psf_model"], ss), []).append(errors(got, ref))
    return table


def format_table(table: dict) -> str:
    lines = [f"{'engine':12s} {'psf':9s} {'ss':>3s} {'n':>4s} {'max %peak':>10s} {'p99 %peak':>10s} {'max |flux| %':>13s}"]
    for (engine, model, ss), rows in sorted(table.items()):
        a = np.array(rows)
        lines.append(f"{engine:12s} {model:9s} {ss:3d} {len(rows):4d} {100 * a[:, 0].max():10.3f} "
                     f"{100 * a[:, 1].max():10.4f} {100 * np.abs(a[:, 2]).max():13.4f}")
    return "\n".join(lines)


def assert_targets(table: dict) -> None:
    for (engine, model, ss), rows in table.items():
        a = np.array(rows)
        assert a[:, 0].max() <= (PIX_TOL if ss >= 4 else PIX_TOL_SS2), (engine, model, ss, a[:, 0].max())
        assert np.abs(a[:, 2]).max() <= FLUX_TOL, (engine, model, ss, np.abs(a[:, 2]).max())


def test_engines_match_lenstronomy_on_random_sets():
    sets = draw_sets(6, seed=31, n_pix=N_PIX)
    sets[0]["fwhm"] = sets[1]["fwhm"] = 0.7          # the narrowest PSFs, Gaussian and Moffat
    table = check_sets(sets)
    print(format_table(table))
    assert_targets(table)
    # in practice ~0.1-0.2% of the peak with 4 x 4 phases
    assert max(r[0] for r in table[("fast", "gaussian", 4)] + table[("fast", "moffat", 4)]) < 3e-3


def test_bin_then_convolve_is_what_the_engines_fix():
    """The old injection (bin the rays into pixels, convolve with the pixel-integrated PSF) against the
    same reference: several % of the peak at 0.7 arcsec -- the engines' errors are ~20x smaller."""
    s = draw_sets(2, seed=5, n_pix=N_PIX)[0]
    s.update(psf_model="gaussian", fwhm=0.7)
    ref = truth(s)
    unit = render.ArcRenderer(N_PIX, PS, 4).lensed_unit_image(*(s[k] for k in fast.PARAM_KEYS), center=s["center"])
    old = render.convolve_psf(unit, psf.psf_kernel("gaussian", 0.7, pixel_scale=PS, size=kernel_px(s), oversample=5))
    assert errors(old, ref)[0] > 0.02
    assert errors(fast_stamp(s, 4), ref)[0] < 0.1 * errors(old, ref)[0]


#: Compact sources far from the axis (0.65-0.8 theta_E): a faint counter-image next to the lens centre,
#: where the lens compresses it by theta_E / r. A refinement of only the pixels the coarse pass found
#: bright can miss it; the fast engine also refines every cell whose source-plane bound does not
#: exclude the source's core (fast.REFINE_EXPONENT).
COUNTER_IMAGE_SETS = [
    dict(theta_e=2.1643, lens_q=0.5644, lens_phi_deg=174.7753, gamma1=-0.0317, gamma2=-0.0053, src_x=1.535,
         src_y=-0.088, src_reff=0.06, src_e=0.3063, src_phi_deg=143.9751, center=(23.567, 23.761)),
    dict(theta_e=1.8747, lens_q=0.5569, lens_phi_deg=30.7108, gamma1=0.0078, gamma2=-0.0075, src_x=-1.1838,
         src_y=-0.5804, src_reff=0.06, src_e=0.3292, src_phi_deg=18.9192, center=(24.19, 23.792)),
    dict(theta_e=2.3792, lens_q=0.581, lens_phi_deg=72.7334, gamma1=-0.0001, gamma2=0.0021, src_x=1.4691,
         src_y=1.0542, src_reff=0.06, src_e=0.3774, src_phi_deg=74.5425, center=(23.876, 23.697)),
    dict(theta_e=0.5601, lens_q=0.9021, lens_phi_deg=110.9337, gamma1=-0.0027, gamma2=-0.0299, src_x=0.2619,
         src_y=-0.2516, src_reff=0.06, src_e=0.394, src_phi_deg=14.1427, center=(24.107, 24.318)),
]


@pytest.mark.parametrize("s", COUNTER_IMAGE_SETS)
def test_no_image_is_missed(s):
    """Unconvolved images (the sum of the phases) at supersample 2 and 4 against lenstronomy at 32 sub-pixels (128 in the
    6 x 6 pixels around the lens centre): every pixel within 0.5% of the peak, the central
    pixels' flux (the counter-image) within 2%, the total within 0.2%."""
    ref = lenstronomy_unconvolved(s, s["center"], 32, N_PIX)
    r0, c0 = int(round(s["center"][1])) - 3, int(round(s["center"][0])) - 3
    ref[r0:r0 + 6, c0:c0 + 6] = lenstronomy_unconvolved(s, s["center"], 128, N_PIX, (r0, c0, 6))
    core = ref[r0:r0 + 6, c0:c0 + 6].sum()
    assert core > 0.01 * ref.sum()          # a counter-image is there
    p = {k: s[k] for k in fast.PARAM_KEYS}
    for ss in (2, 4):
        unit = fast.render_phase_images(p, [s["center"]], N_PIX, PS, ss)[0].sum(axis=0)
        assert np.abs(unit - ref).max() <= 5e-3 * ref.max(), ss
        assert unit[r0:r0 + 6, c0:c0 + 6].sum() == pytest.approx(core, rel=0.02), ss
        assert unit.sum() == pytest.approx(ref.sum(), rel=2e-3), ss


@pytest.mark.slow
def test_engines_match_lenstronomy_on_many_random_sets():
    # 64 sets (~130 s on the 2-core reference machine; 200 took ~400 s of the suite's 20 minutes)
    sets = draw_sets(64, seed=2024, n_pix=N_PIX)
    table = check_sets(sets, engines=(("fast", 2), ("fast", 4), ("fast", 8), ("lenstronomy", 4)))
    print("\n" + format_table(table))
    assert_targets(table)


@pytest.mark.slow
def test_reference_is_converged():
    """lenstronomy at reference_supersample (24 or 32) against 40 sub-pixels: within 5e-4 of the peak,
    on the slowest cases to converge (the most compact sources; a source far off the axis)."""
    sets = draw_sets(3, seed=77, n_pix=N_PIX)
    sets[0].update(src_reff=0.06, src_e=0.4)
    sets[1].update(src_reff=0.06, src_e=0.4, psf_model="gaussian", fwhm=0.7)
    sets[2].update(src_x=0.78 * sets[2]["theta_e"], src_y=0.0, lens_q=0.6, src_reff=0.085)
    for s in sets:
        d = errors(truth(s), truth(s, 40))
        assert d[0] < 5e-4 and abs(d[2]) < 5e-4, d
