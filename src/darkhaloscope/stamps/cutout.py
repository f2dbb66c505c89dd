"""Phase 4c per-brick work: WCS cutouts from coadds and lensed-arc injection.

Stamp geometry: a 64x64 cutout's centre pixel is (32, 32) (0-based row, col).
The galaxy's exact pixel position (x, y) in the brick (from the WCS) is rounded
to the nearest pixel (xi, yi); the cutout spans columns xi-32 .. xi+31, so the
galaxy sits at (32 + dx, 32 + dy) with |dx|, |dy| <= 0.5, and the lens of the
injected arc is placed exactly there (sub-pixel), not at the stamp's geometric
centre. A point source at the target's sky position therefore peaks at pixel
(32, 32). Stamps are float32 nanomaggies, bands g, r, z. The arcs come from a
:class:`~darkhaloscope.lensing.injector.Injector` (engine, PSF kernels, band scaling).
"""

from __future__ import annotations

import numpy as np

from darkhaloscope.constants import BANDS, KNOWN_SPLIT, NO_IMPOSTOR, PARENT_SPLIT
from darkhaloscope.errors import SurveyError
from darkhaloscope.lensing.injector import Injector
from darkhaloscope.survey.bricks import coadd_relpath
from darkhaloscope.survey.coadds import find_coadd, read_coadd


def cutout_origin(wcs, ra: float, dec: float, size: int) -> tuple[int, int, float, float]:
    """(x0, y0, dx, dy): the cutout's lower-left pixel and the target's sub-pixel offset from (size//2, size//2)."""
    x, y = wcs.all_world2pix(np.array([ra]), np.array([dec]), 0)
    x, y = float(x[0]), float(y[0])
    xi, yi = int(np.round(x)), int(np.round(y))
    half = size // 2
    return xi - half, yi - half, x - xi, y - yi


def cut(image: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray | None:
    """The size x size block with lower-left (x0, y0), or None if it runs off the image."""
    ny, nx = image.shape
    if x0 < 0 or y0 < 0 or x0 + size > nx or y0 + size > ny:
        return None
    return image[y0:y0 + size, x0:x0 + size]


def psf_fwhm_used(row: dict, band: str, fallback: float) -> tuple[float, bool]:
    """PSF FWHM (arcsec) for a band: PSFSIZE if usable, else the r-band PSFSIZE, else ``fallback``."""
    v = row.get(f"psfsize_{band}")
    if v is not None and np.isfinite(v) and v > 0:
        return float(v), False
    r = row.get("psfsize_r")
    if r is not None and np.isfinite(r) and r > 0:
        return float(r), True
    return float(fallback), True


def locate_coadd(root, brick: str, band: str, kind: str) -> str | None:
    """A readable path of a brick's coadd file, or None when there is none: ``root`` is a directory in
    the DR10 layout (``survey.coadd_mode: copy``) or a
    :class:`~darkhaloscope.stamps.coadd_cache.CoaddSource` (``manifest``; it raises a SurveyError
    naming the file when the file changed since stage coadds)."""
    if isinstance(root, str):
        return find_coadd(root, brick, band, kind)
    return root.locate(brick, band, kind)


class BrickCoadds:
    """The g/r/z image and invvar maps of one brick (read once, shared by its stamps)."""

    def __init__(self, root: str, brick: str, bands=BANDS):
        self.brick = brick
        self.images, self.invvar, self.missing, self.wcs = {}, {}, [], None
        self.error = None
        # every file located before any is read: a source changed since stage coadds stops the run first
        paths = {(b, k): locate_coadd(root, brick, b, k) for b in bands for k in ("image", "invvar")}
        for b in bands:
            ip, vp = paths[b, "image"], paths[b, "invvar"]
            if ip is None:
                self.missing.append(f"image-{b} ({coadd_relpath(brick, b, 'image')})")
            if vp is None:
                self.missing.append(f"invvar-{b} ({coadd_relpath(brick, b, 'invvar')})")
            if ip is None or vp is None:
                continue
            try:
                img, wcs = read_coadd(ip)
                iv, _ = read_coadd(vp, need_wcs=False)
            except SurveyError as e:
                self.error = str(e)
                return
            if img.shape != iv.shape:
                self.error = f"{vp}: shape {iv.shape} differs from image {img.shape}"
                return
            self.images[b], self.invvar[b] = img, iv
            self.wcs = self.wcs or wcs

    @property
    def ok(self) -> bool:
        return not self.missing and self.error is None


#: fail_reason of an injection that fails its population's acceptance cuts (expected, not a failure)
REJECTED = "rejected_by_cut"


def process_brick(brick: str, rows: list[dict], coadd_root: str, inj: dict, bands=BANDS,
                  want_clean: frozenset = frozenset(), paired: bool = False,
                  injector: Injector | None = None) -> list[dict]:
    """Cut and inject every manifest row of one brick.

    ``inj`` is the params ``inject`` section; ``injector`` the :class:`Injector` built from it
    (built here if not given; :func:`~darkhaloscope.stamps.spark.run_stamps` passes one built
    once). Rows with ``is_control`` set are cut without injection.

    Returns one dict per row: the manifest fields plus ``stamp`` (3,64,64) float32,
    optional ``ctrl_stamp`` (the un-injected cutout, when ``paired``), and the
    columns ``cutout_ok``, ``fail_reason``, ``bad_pixel_frac``, ``psf_fwhm_used_<b>``,
    ``psf_fallback``, ``theta_e_over_psf``, ``magnification``, ``arc_snr``,
    ``arc_snr_int``, ``arc_flux_r``, ``source_model`` ("none" when nothing is injected),
    ``source_ident`` (COSMOS IDENT, else -1), ``x_offset_pix``, ``y_offset_pix``. Rows listed
    in ``want_clean`` (sample ids) also carry ``clean`` = the cutout before injection
    (for the gallery).
    """
    injector = injector or Injector.from_params(inj, bands)
    size = injector.stamp_size
    co = BrickCoadds(coadd_root, brick, bands)
    out, pending = [], []   # pending: (result, lens centre [pixels], r-band invvar, FWHMs) of rows to inject
    for row in rows:
        res = dict(row)
        res.update(cutout_ok=0, fail_reason="", bad_pixel_frac=1.0, theta_e_over_psf=0.0,
                   magnification=0.0, arc_snr=0.0, arc_snr_int=0.0, arc_flux_r=0.0,
                   x_offset_pix=0.0, y_offset_pix=0.0, psf_fallback="", source_model="none", source_ident=-1)
        fb = []
        for b in bands:
            fw, used_fb = psf_fwhm_used(row, b, float(inj["psf_fallback_fwhm"]))
            res[f"psf_fwhm_used_{b}"] = fw
            if used_fb:
                fb.append(b)
        res["psf_fallback"] = "".join(fb)
        stamp = np.zeros((len(bands), size, size), np.float32)
        res["stamp"] = stamp
        if paired:
            res["ctrl_stamp"] = stamp
        if not co.ok:
            res["fail_reason"] = f"coadd_error: {co.error}" if co.error else "missing_coadd:" + ",".join(co.missing)
            out.append(res)
            continue
        x0, y0, dx, dy = cutout_origin(co.wcs, row["ra"], row["dec"], size)
        res["x_offset_pix"], res["y_offset_pix"] = dx, dy
        cuts = [cut(co.images[b], x0, y0, size) for b in bands]
        ivs = [cut(co.invvar[b], x0, y0, size) for b in bands]
        if any(c is None for c in cuts):
            res["fail_reason"] = "off_brick_edge"
            out.append(res)
            continue
        clean = np.stack(cuts).astype(np.float32)
        iv = np.stack(ivs)
        res["bad_pixel_frac"] = float(np.mean(np.any(iv <= 0, axis=0)))
        res["cutout_ok"] = 1
        res["stamp"] = clean.copy()
        if not row["is_control"]:
            pending.append((res, (size // 2 + dx, size // 2 + dy), iv[injector.r],
                            [res[f"psf_fwhm_used_{b}"] for b in bands]))
        if paired:
            res["ctrl_stamp"] = clean
        if row["sample_id"] in want_clean:
            res["clean"] = clean
        out.append(res)
    if pending:  # the brick's injections in one batch (kernels built once per brick and band)
        arcs, infos = injector.inject_batch([p[0] for p in pending], [p[1] for p in pending],
                                            [p[2] for p in pending], [p[3] for p in pending])
        for (res, *_), arc, info in zip(pending, arcs, infos):
            res["stamp"] += arc
            res.update(source_model=injector.source_model, source_ident=-1)   # info has the IDENT of pixel sources
            res.update(info)
            # the calibrated population's acceptance cuts (manifest.calibrated; 0 = none): a rejected row is
            # kept, flagged and counted (fail_reason rejected_by_cut), never trained or evaluated on
            if (info["magnification"] < float(res.get("min_magnification", 0.0))
                    or info["arc_snr"] < float(res.get("min_arc_snr", 0.0))):
                res["cutout_ok"], res["fail_reason"] = 0, REJECTED
    return out


def known_lens_rows(known: dict, bricks: list) -> tuple[list[dict], int]:
    """Manifest-like rows for cutouts of known lenses (no injection); also the count with no brick.

    They enter :func:`process_brick` with ``is_control = 1`` (nothing is injected) and split
    ``known``; :func:`~darkhaloscope.stamps.spark.run_stamps` labels them lenses
    (``is_control = 0``) afterwards. Quantities a real lens does not come with are NaN.
    """
    from darkhaloscope.catalog.manifest import INJECTION_COLUMNS

    unknown = dict.fromkeys(INJECTION_COLUMNS + ("host_mag_r", "psfsize_g", "psfsize_r", "psfsize_z",
                                                 "psfdepth_g", "psfdepth_r", "psfdepth_z"), np.nan)
    rows, n_nobrick = [], 0
    for i, (name, ra, dec, brick) in enumerate(zip(known["name"], known["ra"], known["dec"], bricks)):
        if brick is None:
            n_nobrick += 1
            continue
        rows.append({**unknown, "sample_id": i, "pair_id": 0, "row_id": 0, "replicate": 0, "objid": 0,
                     "name": str(name), "brickname": brick, "ra": float(ra), "dec": float(dec),
                     "is_control": 1, "split": KNOWN_SPLIT, "config_id": "known_lens", "impostor": NO_IMPOSTOR})
    return rows, n_nobrick


def parent_rows(parent, manifest_rows: list[dict], seed: int) -> list[dict]:
    """Rows for un-injected cutouts of the train-split parent galaxies that carry no injection.

    These are the "non-injected galaxies" a previous generation's model scores when
    mining hard negatives (split ``parent``; is_control = 1).
    """
    from darkhaloscope.hashing import hash_int63
    from darkhaloscope.catalog.manifest import INJECTION_COLUMNS

    injected = {r["row_id"] for r in manifest_rows if not r["is_control"]}
    out = []
    for r in parent.to_pylist():
        if r["split"] != "train" or r["row_id"] in injected:
            continue
        sid = hash_int63(seed, r["row_id"], "parent")
        out.append({"sample_id": sid, "pair_id": sid, "row_id": r["row_id"], "replicate": 0,
                    "split": PARENT_SPLIT, "brickname": r["brickname"], "objid": r["objid"], "ra": r["ra"],
                    "dec": r["dec"], "is_control": 1, "config_id": "parent", "host_mag_r": r["mag_r"],
                    "impostor": r.get("impostor", NO_IMPOSTOR),
                    **{k: 0.0 for k in INJECTION_COLUMNS},
                    **{k: r[k] for k in ("psfsize_g", "psfsize_r", "psfsize_z", "psfdepth_g", "psfdepth_r",
                                         "psfdepth_z")}})
    return out
