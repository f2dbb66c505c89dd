"""The embedded mock DR10 survey: sweeps, coadds and a known-lens list in DR10 formats.

A small sky that makes the downstream science meaningful: LRG-like ellipticals
(Sersic n~4) whose colours straddle the LRG cuts, blue discs, stars, LRGs with a
small blue companion 1-3 arcsec away, lens impostors (LRGs with a ring, spiral arms, tidal
features, an edge-on disc, blue clumps or a close neighbour: :mod:`darkhaloscope.survey.impostors`,
listed in the side table ``impostors.fits``), a handful of genuinely lensed LRGs,
masked bleed trails and galaxies near brick edges. The sky is rendered with a
Moffat PSF whose FWHM varies per brick and band, with Gaussian pixel noise whose
level matches the catalogue's PSFDEPTH exactly (sigma_pix = 1/sqrt(PSFDEPTH*NEA),
NEA the PSF's noise-equivalent area in pixels).

Everything is a function of ``params['survey']['mock']`` and its seed; each
brick has its own random stream, so bricks are independent of each other.
Units: positions in deg, sizes in arcsec, fluxes in nanomaggies (AB zp 22.5).
"""

from __future__ import annotations

import contextlib
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.signal import fftconvolve
from scipy.special import gammaincinv

from darkhaloscope.lensing.psf import moffat_kernel, noise_equivalent_area
from darkhaloscope.constants import BANDS, IMPOSTOR_CLASSES, NO_IMPOSTOR, PIXEL_SCALE, mag_to_nmgy
from darkhaloscope.lensing.render import render_arc
from darkhaloscope.outputs import atomic_dir
from darkhaloscope.survey import impostors
from darkhaloscope.survey.bricks import brick_name, brick_wcs, coadd_relpath, sweep_name

# DR10 extinction coefficients A_band / E(B-V) (Schlafly & Finkbeiner 2011, as in the sweeps)
EXTINCTION_R = {"g": 3.214, "r": 2.165, "z": 1.211, "W1": 0.184}
# DR10 MASKBITS used here: ALLMASK_G/R/Z (bits 5, 6, 7)
MASK_ALLMASK = (1 << 5) | (1 << 6) | (1 << 7)
#: the side table of the impostors' classes, at the survey root (survey.impostors); its random stream tag
IMPOSTOR_TABLE = "impostors.fits"
IMPOSTOR_STREAM = 4242
#: side of the survey's PSF kernels (pixels, odd)
KERNEL_SIZE = 33
#: rows per compression tile of the coadd images (cfitsio's default is one row)
TILE_ROWS = 100


@contextlib.contextmanager
def reproducible_gzip():
    """Make astropy's GZIP tile compression write mtime 0 instead of the clock.

    cfitsio-style compression stores tiles that cannot be quantised (constant
    invvar tiles) with GZIP, whose header carries a timestamp; with it, two runs
    would give different bytes and DVC hashes would churn.
    """
    from astropy.io.fits.hdu.compressed import _codecs

    original = _codecs.gzip_compress
    _codecs.gzip_compress = lambda data, compresslevel=9: gzip.compress(data, compresslevel, mtime=0)
    try:
        yield
    finally:
        _codecs.gzip_compress = original


def band_fluxes(obj: dict) -> tuple[dict, np.ndarray]:
    """True g, r, z, W1 fluxes (nanomaggies) of the drawn objects, and their r magnitudes."""
    rmag = obj["zmag"] + obj["rz"]
    flux = {"g": mag_to_nmgy(rmag + obj["gr"]), "r": mag_to_nmgy(rmag), "z": mag_to_nmgy(obj["zmag"]),
            "W1": mag_to_nmgy(obj["zmag"] - obj["zw1"])}
    return flux, rmag


@dataclass
class BrickConditions:
    """Observing conditions of one brick: PSF FWHM (arcsec) and 5-sigma depth (AB mag) per band."""

    fwhm: dict
    depth_mag: dict

    def psfdepth(self, band: str) -> float:
        """Inverse variance of point-source flux, 1/nanomaggy^2 (the sweeps' PSFDEPTH)."""
        sigma = mag_to_nmgy(self.depth_mag[band]) / 5.0
        return float(1.0 / sigma**2)


def sersic_image(n_pix: int, x0: float, y0: float, reff_pix: float, n: float, q: float,
                 phi: float, flux: float, oversample: int = 3) -> np.ndarray:
    """Pixel-integrated elliptical Sersic profile of total ``flux`` (sum of the box) on an n_pix box.

    (x0, y0): centre in box pixel coordinates; reff_pix: half-light radius (pixels,
    major axis); q: axis ratio; phi: position angle (radians, from +x towards +y).
    The flux is normalised over the box, so the catalogue flux equals the image flux.
    """
    s = oversample
    c = (np.arange(n_pix * s) + 0.5) / s - 0.5
    yy, xx = np.meshgrid(c, c, indexing="ij")
    dx, dy = xx - x0, yy - y0
    cp, sp = np.cos(phi), np.sin(phi)
    xr = dx * cp + dy * sp
    yr = -dx * sp + dy * cp
    r = np.sqrt(xr**2 + (yr / max(q, 0.05)) ** 2)
    bn = gammaincinv(2.0 * n, 0.5)
    prof = np.exp(-bn * ((np.maximum(r, 1e-3) / max(reff_pix, 0.05)) ** (1.0 / n) - 1.0))
    img = prof.reshape(n_pix, s, n_pix, s).sum(axis=(1, 3))
    tot = img.sum()
    return img * (flux / tot) if tot > 0 else img


def _add_box(image: np.ndarray, box: np.ndarray, x_lo: int, y_lo: int) -> None:
    """Add ``box`` into ``image`` at (y_lo, x_lo), clipping at the image edges."""
    h, w = box.shape
    ys, xs = max(0, y_lo), max(0, x_lo)
    ye, xe = min(image.shape[0], y_lo + h), min(image.shape[1], x_lo + w)
    if ye <= ys or xe <= xs:
        return
    image[ys:ye, xs:xe] += box[ys - y_lo:ye - y_lo, xs - x_lo:xe - x_lo]


class MockSurvey:
    """Writes the mock survey under ``root`` in the DR10 layout."""

    def __init__(self, mock: dict, bands=BANDS):
        self.p = mock
        self.bands = tuple(bands)
        self.n = int(mock["brick_size_pix"])
        self.bricks = []
        for j in range(int(mock["n_bricks_dec"])):
            for i in range(int(mock["n_bricks_ra"])):
                ra = float(mock["ra0_deg"]) + i * float(mock["spacing_deg"])
                dec = float(mock["dec0_deg"]) + j * float(mock["spacing_deg"])
                self.bricks.append((brick_name(ra, dec), ra, dec))
        names = [b[0] for b in self.bricks]
        if len(set(names)) != len(names):
            raise ValueError("survey.mock.spacing_deg gives duplicate DR10 brick names; use >= 0.1 deg")
        # which bricks hold known lenses / report PSFSIZE_Z = 0 (chosen from the survey seed)
        rng = np.random.default_rng([int(mock["seed"]), 999])
        nb = len(self.bricks)
        self.lens_bricks = rng.choice(nb, size=min(int(mock["n_known_lenses"]), nb), replace=False)
        self.psf0_bricks = set(rng.choice(nb, size=min(int(mock["psfsize_zero_bricks"]), nb), replace=False).tolist())

    # -- per brick ---------------------------------------------------------------
    def conditions(self, rng) -> BrickConditions:
        lo, hi = self.p["psf_fwhm_r"]
        fr = rng.uniform(lo, hi)
        fwhm = {"g": fr * rng.uniform(1.05, 1.2), "r": fr, "z": fr * rng.uniform(0.85, 0.95)}
        dlo, dhi = self.p["depth_r"]
        dr = rng.uniform(dlo, dhi)
        depth = {"g": dr + rng.uniform(0.3, 0.6), "r": dr, "z": dr - rng.uniform(0.8, 1.2)}
        return BrickConditions(fwhm=fwhm, depth_mag=depth)

    def objects(self, rng, n_lrg: int, n_blue: int, n_star: int) -> dict:
        """Draw the brick's objects: true (observed-frame) fluxes and shapes."""
        n = self.n
        kinds = np.array(["lrg"] * n_lrg + ["blue"] * n_blue + ["star"] * n_star)
        nobj = len(kinds)
        x = rng.uniform(40, n - 40, nobj)
        y = rng.uniform(40, n - 40, nobj)
        # some LRGs close to an edge (their 64x64 cutouts run off the brick)
        is_lrg = kinds == "lrg"
        edge = is_lrg & (rng.uniform(size=nobj) < float(self.p["edge_frac"]))
        side = rng.integers(0, 4, nobj)
        d = rng.uniform(2, 20, nobj)
        x = np.where(edge & (side == 0), d, x)
        x = np.where(edge & (side == 1), n - 1 - d, x)
        y = np.where(edge & (side == 2), d, y)
        y = np.where(edge & (side == 3), n - 1 - d, y)

        zmag = np.empty(nobj)
        rz = np.empty(nobj)
        zw1 = np.empty(nobj)
        gr = np.empty(nobj)
        reff = np.zeros(nobj)
        sersic = np.zeros(nobj)
        typ = np.empty(nobj, dtype="U3")
        # LRG-like ellipticals: colours straddling r-z > 0.4 and z-W1 > 0.8, z straddling 20.4
        m = is_lrg
        k = int(m.sum())
        zmag[m] = rng.uniform(17.8, 21.3, k)
        rz[m] = rng.normal(1.1, 0.45, k)
        zw1[m] = rng.normal(1.2, 0.5, k)
        gr[m] = rng.normal(1.6, 0.3, k)
        reff[m] = np.exp(rng.normal(np.log(1.0), 0.4, k))
        sersic[m] = np.where(rng.uniform(size=k) < 0.7, 4.0, rng.uniform(2.5, 5.5, k))
        typ[m] = np.where(sersic[m] == 4.0, "DEV", "SER")
        compact = m & (rng.uniform(size=nobj) < 0.05)          # a few compact ones the pipeline types as PSF
        typ[compact] = "PSF"
        # blue star-forming discs
        m = kinds == "blue"
        k = int(m.sum())
        zmag[m] = rng.uniform(18.5, 22.0, k)
        rz[m] = rng.normal(0.45, 0.2, k)
        zw1[m] = rng.normal(0.4, 0.35, k)
        gr[m] = rng.normal(0.45, 0.15, k)
        reff[m] = np.exp(rng.normal(np.log(0.8), 0.35, k))
        sersic[m] = 1.0
        typ[m] = np.where(rng.uniform(size=k) < 0.25, "REX", "EXP")
        # stars: some red ones pass r - z but fail z - W1
        m = kinds == "star"
        k = int(m.sum())
        zmag[m] = rng.uniform(16.5, 21.0, k)
        rz[m] = rng.uniform(-0.2, 1.6, k)
        zw1[m] = rng.normal(-0.4, 0.3, k)
        gr[m] = 0.3 + 0.8 * np.clip(rz[m], 0, None)
        typ[m] = "PSF"
        q = np.where(kinds == "star", 1.0, rng.uniform(0.55, 1.0, nobj))
        phi = rng.uniform(0, np.pi, nobj)
        return dict(kind=kinds, x=x, y=y, zmag=zmag, rz=rz, zw1=zw1, gr=gr, reff=reff,
                    sersic=sersic, type=typ, q=q, phi=phi)

    def add_companions(self, rng, obj: dict) -> dict:
        """Small blue companions 1-3 arcsec from a few percent of the LRGs (arc-like confounders)."""
        lrg = np.flatnonzero(obj["kind"] == "lrg")
        has = lrg[rng.uniform(size=len(lrg)) < float(self.p["companion_frac"])]
        if len(has) == 0:
            return obj
        k = len(has)
        sep = rng.uniform(1.0, 3.0, k) / PIXEL_SCALE
        ang = rng.uniform(0, 2 * np.pi, k)
        new = dict(
            kind=np.array(["companion"] * k),
            x=obj["x"][has] + sep * np.cos(ang), y=obj["y"][has] + sep * np.sin(ang),
            zmag=obj["zmag"][has] + rng.uniform(1.5, 3.0, k),
            rz=rng.normal(0.2, 0.1, k), zw1=rng.normal(0.2, 0.2, k), gr=rng.normal(0.2, 0.1, k),
            reff=rng.uniform(0.15, 0.4, k), sersic=np.ones(k), type=np.array(["EXP"] * k),
            q=rng.uniform(0.3, 0.8, k), phi=rng.uniform(0, np.pi, k),
        )
        return {key: np.concatenate([obj[key], new[key]]) for key in obj}

    def render_brick(self, index: int) -> dict:
        """Render one brick: images, invvars, catalogue rows and (maybe) a known lens."""
        name, ra_c, dec_c = self.bricks[index]
        rng = np.random.default_rng([int(self.p["seed"]), index])
        cond = self.conditions(rng)
        obj = self.objects(rng, int(self.p["n_lrg_per_brick"]), int(self.p["n_blue_per_brick"]),
                           int(self.p["n_star_per_brick"]))
        obj = self.add_companions(rng, obj)
        nobj = len(obj["x"])
        n = self.n
        ebv = rng.uniform(0.01, 0.08) + rng.normal(0, 0.003, nobj).clip(-0.009, 0.009)
        kernels = {b: moffat_kernel(cond.fwhm[b], beta=float(self.p["moffat_beta"]),
                                    pixel_scale=PIXEL_SCALE, size=KERNEL_SIZE, oversample=3) for b in self.bands}
        # the sky before the PSF, padded by the kernel's half width so light just off the brick still
        # scatters onto it; one convolution per band at the end (linear: the same as convolving each
        # object, about 2x faster for the whole survey)
        pad = KERNEL_SIZE // 2
        pre = np.zeros((n + 2 * pad, n + 2 * pad), dtype=np.float64)
        pre_b = {b: pre.copy() for b in self.bands}

        # the known lens of this brick (if any): the first LRG gets bright LRG colours and an arc
        lens_row = None
        if index in set(self.lens_bricks.tolist()):
            lens_row = int(np.flatnonzero(obj["kind"] == "lrg")[0])
            margin = min(120, n // 4)  # 120 px from the edges; less on bricks under 240 px
            obj["x"][lens_row] = rng.uniform(margin, n - margin)
            obj["y"][lens_row] = rng.uniform(margin, n - margin)
            obj["type"][lens_row] = "DEV"
            obj["sersic"][lens_row] = 4.0
            for key, val in (("zmag", rng.uniform(18.0, 19.2)), ("rz", rng.uniform(1.2, 1.7)),
                             ("zw1", rng.uniform(1.2, 1.8)), ("gr", 1.7)):
                obj[key][lens_row] = val
        flux, rmag = band_fluxes(obj)
        impostor = self.impostor_classes(index, obj, lens_row)

        for i in range(nobj):
            is_star = obj["type"][i] == "PSF" and obj["kind"][i] == "star"
            reff_pix = obj["reff"][i] / PIXEL_SCALE
            half = 16 if is_star else int(min(60, max(16, np.ceil(6 * reff_pix))))
            box = 2 * half + 1
            xi, yi = int(np.round(obj["x"][i])), int(np.round(obj["y"][i]))
            fx, fy = obj["x"][i] - xi, obj["y"][i] - yi
            if is_star:
                unit = np.zeros((box, box))
                # bilinear split of a point source between pixels (sub-pixel position)
                x0, y0 = half + fx, half + fy
                ix, iy = int(np.floor(x0)), int(np.floor(y0))
                ax, ay = x0 - ix, y0 - iy
                unit[iy, ix] += (1 - ax) * (1 - ay)
                unit[iy, ix + 1] += ax * (1 - ay)
                unit[iy + 1, ix] += (1 - ax) * ay
                unit[iy + 1, ix + 1] += ax * ay
            else:
                unit = sersic_image(box, half + fx, half + fy, reff_pix, obj["sersic"][i],
                                    obj["q"][i], obj["phi"][i], 1.0)
            for b in self.bands:
                _add_box(pre_b[b], unit * flux[b][i], xi - half + pad, yi - half + pad)
        self._add_impostors(index, pre_b, pad, obj, rmag, impostor)
        images = {b: fftconvolve(pre_b[b], kernels[b], mode="same")[pad:pad + n, pad:pad + n] for b in self.bands}
        del pre_b

        known = None
        if lens_row is not None:
            known = self._add_known_lens(rng, images, kernels, obj, lens_row, rmag, name)

        # noise that matches PSFDEPTH, masks, invvar
        invvar = {}
        psfdepth = {b: cond.psfdepth(b) for b in self.bands}
        for b in self.bands:
            nea = noise_equivalent_area(kernels[b])
            sigma_pix = 1.0 / np.sqrt(psfdepth[b] * nea)
            images[b] += rng.normal(0.0, sigma_pix, (n, n))
            invvar[b] = np.full((n, n), 1.0 / sigma_pix**2)
        masked = np.zeros((n, n), dtype=bool)
        for _ in range(int(self.p["n_mask_trails"])):
            x0 = int(rng.integers(0, n - 6))
            w = int(rng.integers(2, 6))
            y0 = int(rng.integers(0, n // 2))
            masked[y0:y0 + int(rng.integers(80, n // 2)), x0:x0 + w] = True
        for b in self.bands:
            images[b][masked] = 0.0
            invvar[b][masked] = 0.0

        # catalogue (observed fluxes with measurement noise, as a Tractor catalogue would report)
        wcs = brick_wcs(ra_c, dec_c, n)
        ra, dec = wcs.all_pix2world(obj["x"], obj["y"], 0)
        inside = (obj["x"] >= 0) & (obj["x"] <= n - 1) & (obj["y"] >= 0) & (obj["y"] <= n - 1)
        cat = self._catalogue(rng, obj, flux, cond, psfdepth, ebv, ra, dec, name, masked, index)
        cat = {k: v[inside] for k, v in cat.items()}
        return dict(name=name, images=images, invvar=invvar, wcs=wcs, cat=cat, known=known,
                    cond=cond, n_masked=int(masked.sum()), impostor=impostor[inside])

    def impostor_classes(self, index: int, obj: dict, lens_row: int | None) -> np.ndarray:
        """Impostor class of each object (``none`` but for LRGs; never the known lens), drawn from the
        brick's own impostor stream so the rest of the brick does not depend on survey.mock.impostor_frac."""
        out = np.full(len(obj["x"]), NO_IMPOSTOR, dtype=object)
        lrg = np.flatnonzero(obj["kind"] == "lrg")
        if lens_row is not None:
            lrg = lrg[lrg != lens_row]
        rng = np.random.default_rng([int(self.p["seed"]), index, IMPOSTOR_STREAM])
        out[lrg] = impostors.assign_classes(rng, len(lrg), self.p["impostor_frac"])
        return out.astype(str)

    def _add_impostors(self, index: int, pre_b: dict, pad: int, obj: dict, rmag, impostor) -> None:
        """Add each impostor's extra light to the brick's sky before the PSF (``pre_b``, per band,
        padded by ``pad`` pixels)."""
        rng = np.random.default_rng([int(self.p["seed"]), index, IMPOSTOR_STREAM, 1])
        half = impostors.HALF_BOX
        for i in np.flatnonzero(impostor != NO_IMPOSTOR):
            xi, yi = int(np.round(obj["x"][i])), int(np.round(obj["y"][i]))
            unit, dmag, gr, rz = impostors.feature_light(rng, str(impostor[i]), obj["x"][i] - xi, obj["y"][i] - yi)
            fluxes = impostors.band_fluxes(float(rmag[i]), dmag, gr, rz)
            for b in self.bands:
                _add_box(pre_b[b], unit * fluxes[b], xi - half + pad, yi - half + pad)

    def _add_known_lens(self, rng, images, kernels, obj, i, rmag, brick):
        """Render a genuinely lensed arc around LRG ``i`` (SIE + shear, exponential source)."""
        theta_e = float(rng.uniform(1.0, 2.4))
        src_rmag = float(rmag[i] + rng.uniform(0.3, 1.0))
        src_gr, src_rz = float(rng.normal(0.2, 0.1)), float(rng.normal(0.1, 0.1))
        r_off = np.sqrt(rng.uniform()) * 0.5 * theta_e
        a_off = rng.uniform(0, 2 * np.pi)
        half = 48
        xi, yi = int(np.round(obj["x"][i])), int(np.round(obj["y"][i]))
        fx, fy = obj["x"][i] - xi, obj["y"][i] - yi
        unit, info = render_arc(
            theta_e, float(rng.uniform(0.6, 1.0)), float(rng.uniform(0, 180)),
            float(rng.normal(0, 0.02)), float(rng.normal(0, 0.02)),
            float(r_off * np.cos(a_off)), float(r_off * np.sin(a_off)),
            float(rng.uniform(0.1, 0.3)), float(rng.uniform(0, 0.4)), float(rng.uniform(0, 180)),
            1.0, n_pix=2 * half + 1, pixel_scale=PIXEL_SCALE,
            center=(half + fx, half + fy), supersample=4,
        )
        f_r = float(mag_to_nmgy(src_rmag))
        fluxes = {"g": f_r * 10 ** (-0.4 * src_gr), "r": f_r, "z": f_r * 10 ** (0.4 * src_rz)}
        for b in self.bands:
            conv = fftconvolve(unit, kernels[b], mode="same") * fluxes[b]
            _add_box(images[b], conv, xi - half, yi - half)
        return dict(x=obj["x"][i], y=obj["y"][i], theta_e=theta_e, src_rmag=src_rmag,
                    magnification=float(info["magnification"]), brick=brick)

    def _catalogue(self, rng, obj, flux, cond, psfdepth, ebv, ra, dec, brick, masked, index):
        nobj = len(obj["x"])
        typ = obj["type"]
        is_psf = typ == "PSF"
        shape_r = np.where(is_psf, 0.0, obj["reff"])
        ell = (1 - obj["q"]) / (1 + obj["q"])
        e1 = np.where(is_psf, 0.0, ell * np.cos(2 * obj["phi"]))
        e2 = np.where(is_psf, 0.0, ell * np.sin(2 * obj["phi"]))
        sersic_col = np.where(is_psf, 0.0, obj["sersic"])
        cat: dict[str, np.ndarray] = {
            "RELEASE": np.full(nobj, 10000, np.int16),
            "BRICKID": np.full(nobj, index + 1, np.int32),
            "BRICKNAME": np.array([brick] * nobj, dtype="S8"),
            "OBJID": np.arange(nobj, dtype=np.int32),
            "BRICK_PRIMARY": np.ones(nobj, dtype=bool),
            "TYPE": typ.astype("S3"),
            "RA": ra.astype(np.float64), "DEC": dec.astype(np.float64),
            "EBV": ebv.astype(np.float32),
        }
        for b in ("g", "r", "z", "W1"):
            if b == "W1":
                ivar = np.full(nobj, 1.0 / (mag_to_nmgy(20.8) / 5.0) ** 2)  # unWISE-like W1 depth
            else:
                # extended sources are measured less precisely than point sources
                s_psf = cond.fwhm[b] / 2.3548
                ivar = psfdepth[b] / (1.0 + (shape_r / s_psf) ** 2)
            f = flux[b] + rng.normal(0, 1, nobj) / np.sqrt(ivar)
            cat[f"FLUX_{b.upper()}"] = f.astype(np.float32)
            cat[f"FLUX_IVAR_{b.upper()}"] = ivar.astype(np.float32)
            cat[f"MW_TRANSMISSION_{b.upper()}"] = (10 ** (-0.4 * EXTINCTION_R[b] * ebv)).astype(np.float32)
        for b in ("g", "r", "z"):
            cat[f"NOBS_{b.upper()}"] = rng.integers(1, 6, nobj).astype(np.int16)
            psfsize = cond.fwhm[b]
            if b == "z" and index in self.psf0_bricks:
                psfsize = 0.0  # as in real DR10: some bricks report PSFSIZE 0 for a band
            cat[f"PSFSIZE_{b.upper()}"] = np.full(nobj, psfsize, np.float32)
            cat[f"PSFDEPTH_{b.upper()}"] = np.full(nobj, psfdepth[b], np.float32)
            # fibre flux: fraction inside a 1.5 arcsec diameter fibre for 1 arcsec seeing (approximation)
            s_eff = np.sqrt((shape_r / 1.18) ** 2 + (1.0 / 2.3548) ** 2)
            frac = 1.0 - np.exp(-0.5 * (0.75 / s_eff) ** 2)
            cat[f"FIBERFLUX_{b.upper()}"] = (flux[b] * frac).astype(np.float32)
        cat["SHAPE_R"] = shape_r.astype(np.float32)
        cat["SHAPE_E1"] = e1.astype(np.float32)
        cat["SHAPE_E2"] = e2.astype(np.float32)
        cat["SERSIC"] = sersic_col.astype(np.float32)
        xi = np.clip(np.round(obj["x"]).astype(int), 0, self.n - 1)
        yi = np.clip(np.round(obj["y"]).astype(int), 0, self.n - 1)
        cat["MASKBITS"] = np.where(masked[yi, xi], MASK_ALLMASK, 0).astype(np.int16)
        return cat

    # -- writing -------------------------------------------------------------------
    def write(self, root: str | Path, progress=None) -> dict:
        """Write the whole survey under ``root`` (atomically: a temp dir renamed at the end)."""
        with atomic_dir(root) as tmp:
            return self._write_into(Path(tmp), progress)

    def _brick_files(self, tmp: Path, index: int) -> dict:
        """Render brick ``index`` and write its coadds under ``tmp``; return what the tables need."""
        res = self.render_brick(index)
        for b in self.bands:
            self._write_image(tmp / coadd_relpath(res["name"], b, "image"), res["images"][b], res["wcs"], b, index, "image")
            self._write_image(tmp / coadd_relpath(res["name"], b, "invvar"), res["invvar"][b], res["wcs"], b, index,
                              "invvar")
        known = res["known"]
        if known is not None:
            ra, dec = res["wcs"].all_pix2world([known["x"]], [known["y"]], 0)
            known = {**known, "ra": float(ra[0]), "dec": float(dec[0])}
        return {"name": res["name"], "cat": res["cat"], "impostor": res["impostor"], "known": known}

    def _write_into(self, tmp: Path, progress=None, workers: int | None = None) -> dict:
        """Every brick (in parallel over ``workers`` processes, default: the CPUs, at most 8; bricks are
        independent, so the bytes do not depend on it), then the sweeps and tables in brick order."""
        import concurrent.futures as cf
        import multiprocessing as mp

        cats, knowns, bricks_rows, imp_rows = [], [], [], []
        it = range(len(self.bricks))
        workers = min(8, os.cpu_count() or 1, len(self.bricks)) if workers is None else int(workers)
        if workers > 1:
            pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))
            results = pool.map(self._brick_files, [tmp] * len(self.bricks), it)
        else:
            pool, results = None, (self._brick_files(tmp, i) for i in it)
        try:
            for index, res in zip(progress(it) if progress else it, results):
                self._collect(index, res, cats, knowns, bricks_rows, imp_rows)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        return self._write_tables(tmp, cats, knowns, bricks_rows, imp_rows)

    def _collect(self, index: int, res: dict, cats, knowns, bricks_rows, imp_rows) -> None:
        """Add brick ``index``'s catalogue, impostors, known lens and footprint to the survey's lists."""
        name = res["name"]
        cats.append(res["cat"])
        imp_rows += [(name, int(o), str(c)) for o, c in zip(res["cat"]["OBJID"], res["impostor"])
                     if c != NO_IMPOSTOR]
        if res["known"] is not None:
            k = res["known"]
            knowns.append((f"MOCK-{name}", k["ra"], k["dec"], name, k["theta_e"], k["magnification"]))
        _, ra_c, dec_c = self.bricks[index]
        half = self.n * PIXEL_SCALE / 3600.0 / 2.0
        bricks_rows.append((name, ra_c, dec_c, ra_c - half / np.cos(np.radians(dec_c)),
                            ra_c + half / np.cos(np.radians(dec_c)), dec_c - half, dec_c + half))

    def _write_tables(self, tmp: Path, cats, knowns, bricks_rows, imp_rows) -> dict:
        n_obj = self._write_sweeps(tmp, cats)
        self._write_known(tmp / "known_lenses.fits", knowns)
        fits.HDUList([fits.PrimaryHDU(), impostors.side_table_hdu(imp_rows)]).writeto(tmp / IMPOSTOR_TABLE,
                                                                                     overwrite=True)
        self._write_bricks(tmp / "survey-bricks.fits", bricks_rows)
        counts = {c: sum(1 for r in imp_rows if r[2] == c) for c in IMPOSTOR_CLASSES}
        return {"n_bricks": len(self.bricks), "n_objects": n_obj, "n_known_lenses": len(knowns),
                "brick_size_pix": self.n, "impostors": counts}

    def _write_image(self, path: Path, data: np.ndarray, wcs, band: str, index: int, kind: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        hdr = wcs.to_header()
        hdr["BRICKNAM"] = path.parent.name
        hdr["BAND"] = band
        hdr["BUNIT"] = "nanomaggy" if kind == "image" else "1/nanomaggy^2"
        hdr["SURVEY"] = ("DHS-MOCK", "embedded mock DR10 survey")
        tile = (min(TILE_ROWS, data.shape[0]), data.shape[1])  # tiles of 100 rows: far less per-tile overhead
        if kind == "image":
            # fpack-style lossy RICE compression with a fixed dither seed, so bytes are reproducible
            hdu = fits.CompImageHDU(data.astype(np.float32), header=hdr, compression_type="RICE_1", tile_shape=tile,
                                    quantize_level=16.0, quantize_method=1, dither_seed=1 + index)
        else:
            # invvar maps are piecewise constant: lossless GZIP_2 keeps them exact (and reproducible)
            hdu = fits.CompImageHDU(data.astype(np.float32), header=hdr, compression_type="GZIP_2", tile_shape=tile,
                                    quantize_level=0.0)
        with reproducible_gzip():
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)

    def _write_sweeps(self, root: Path, cats: list[dict]) -> int:
        allcat = {k: np.concatenate([c[k] for c in cats]) for k in cats[0]}
        ra_lo = np.floor(allcat["RA"] / 5.0) * 5.0
        dec_lo = np.floor(allcat["DEC"] / 5.0) * 5.0
        (root / "sweep").mkdir(parents=True, exist_ok=True)
        for ra0, dec0 in sorted(set(zip(ra_lo.tolist(), dec_lo.tolist()))):
            sel = (ra_lo == ra0) & (dec_lo == dec0)
            cols = [fits.Column(name=k, array=v[sel], format=_fits_format(v)) for k, v in allcat.items()]
            hdu = fits.BinTableHDU.from_columns(cols)
            hdu.header["SURVEY"] = "DHS-MOCK"
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(root / "sweep" / sweep_name(ra0, dec0), overwrite=True)
        return len(allcat["RA"])

    @staticmethod
    def _write_known(path: Path, rows) -> None:
        cols = [
            fits.Column(name="NAME", format="20A", array=np.array([r[0] for r in rows], dtype="S20")),
            fits.Column(name="RA", format="D", array=np.array([r[1] for r in rows])),
            fits.Column(name="DEC", format="D", array=np.array([r[2] for r in rows])),
            fits.Column(name="BRICKNAME", format="8A", array=np.array([r[3] for r in rows], dtype="S8")),
            fits.Column(name="THETA_E", format="E", unit="arcsec", array=np.array([r[4] for r in rows])),
            fits.Column(name="MAGNIFICATION", format="E", array=np.array([r[5] for r in rows])),
        ]
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path, overwrite=True)

    @staticmethod
    def _write_bricks(path: Path, rows) -> None:
        names = ["BRICKNAME", "RA", "DEC", "RA1", "RA2", "DEC1", "DEC2"]
        cols = [fits.Column(name="BRICKNAME", format="8A", array=np.array([r[0] for r in rows], dtype="S8"))]
        cols += [fits.Column(name=nm, format="D", array=np.array([r[i] for r in rows])) for i, nm in enumerate(names) if i]
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(path, overwrite=True)


def _fits_format(v: np.ndarray) -> str:
    k, size = v.dtype.kind, v.dtype.itemsize
    if k == "S":
        return f"{size}A"
    if k == "b":
        return "L"
    return {("i", 2): "I", ("i", 4): "J", ("i", 8): "K", ("f", 4): "E", ("f", 8): "D"}[(k, size)]
