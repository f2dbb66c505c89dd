"""Phase 4b: gather the g/r/z image and invvar files of the needed bricks into a local cache."""

from __future__ import annotations

import os
import shutil

from darkhaloscope.survey import fs
from darkhaloscope.survey.bricks import coadd_relpath
from darkhaloscope.survey.coadds import EXTENSIONS, find_coadd


def cache_coadds(root: str, bricks: list[str], bands, out_dir: str) -> dict:
    """Copy each brick's coadds from ``root`` (local or s3://) to ``out_dir`` in the DR10 layout.

    Missing files are not an error here: they are listed in the returned report (brick,
    band, kind and the expected ``file`` path) and Phase 4c marks the affected stamps
    ``cutout_ok = 0`` with the reason.
    The copy goes to a temporary directory renamed at the end.
    """
    tmp = out_dir.rstrip("/") + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    missing, n_files, n_bytes = [], 0, 0
    for brick in sorted(set(bricks)):
        for band in bands:
            for kind in ("image", "invvar"):
                src = find_coadd(root, brick, band, kind)
                if src is None:
                    missing.append({"brick": brick, "band": band, "kind": kind,
                                    "file": fs.join(root, coadd_relpath(brick, band, kind, EXTENSIONS[0]))})
                    continue
                ext = ".fits.fz" if src.endswith(".fits.fz") else ".fits"
                dst = os.path.join(tmp, coadd_relpath(brick, band, kind, ext))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                if fs.is_remote(src):
                    fs.get(src, dst)
                else:
                    shutil.copyfile(src, dst)
                n_files += 1
                n_bytes += os.path.getsize(dst)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return {"n_bricks": len(set(bricks)), "n_files": n_files, "n_bytes": n_bytes,
            "n_missing": len(missing), "missing": missing}
