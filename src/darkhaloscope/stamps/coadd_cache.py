"""Phase 4b: gather the g/r/z image and invvar files of the needed bricks into a local cache."""

from __future__ import annotations

import os
import shutil

from darkhaloscope.outputs import atomic_dir
from darkhaloscope.survey import fs
from darkhaloscope.survey.bricks import coadd_relpath
from darkhaloscope.survey.coadds import EXTENSIONS, find_coadd


def cache_coadds(root: str, bricks: list[str], bands, out_dir: str) -> dict:
    """Copy each brick's coadds from ``root`` (local or s3://) to ``out_dir`` in the DR10 layout.

    Missing files are not an error here: they are listed in the returned report (brick,
    band, kind and the expected ``file`` path) and Phase 4c marks the affected stamps
    ``cutout_ok = 0`` with the reason.
    The copy goes to a temporary directory renamed at the end (:class:`~darkhaloscope.outputs.atomic_dir`).
    """
    missing: list[dict] = []
    with atomic_dir(out_dir) as tmp:
        _copy_bricks(root, bricks, bands, tmp, missing)
        n_files, n_bytes = _count_files(tmp)
    return {"n_bricks": len(set(bricks)), "n_files": n_files, "n_bytes": n_bytes,
            "n_missing": len(missing), "missing": missing}


def _count_files(d: str) -> tuple[int, int]:
    sizes = [os.path.getsize(os.path.join(dp, f)) for dp, _, fs_ in os.walk(d) for f in fs_]
    return len(sizes), sum(sizes)


def _copy_bricks(root: str, bricks: list[str], bands, tmp: str, missing: list) -> None:
    """Copy every (brick, band, image/invvar) file found under ``root`` into ``tmp``; append the others to ``missing``."""
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
