"""Typed, validated view of ``params.yaml``: the one place that knows the keys.

``load_params(path)`` reads the YAML, checks every key against ``SCHEMA`` and
returns plain nested dicts. An unknown key (a typo) is an error that names the
key, its place and the valid keys (with a close-match suggestion); a value of
the wrong type or outside its allowed set names the key and what was expected.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from darkhaloscope.constants import BANDS, IMPOSTOR_CLASSES, STAMP_SIZE
from darkhaloscope.errors import ParamsError  # noqa: F401  (raised here; imported from here by callers)

# ---- schema vocabulary ------------------------------------------------------
class Enum:
    def __init__(self, *values: str):
        self.values = values


class ListOf:
    def __init__(self, item: Any, length: int | None = None):
        self.item, self.length = item, length


class MapOf:
    """A mapping with free keys (names chosen by the user) and a fixed value schema."""

    def __init__(self, value: Any):
        self.value = value


NUM = (int, float)
PER_SPLIT = {"train": NUM, "val": NUM, "test": NUM}
GRID_KEYS = ("theta_e_arcsec", "src_dmag", "src_reff_arcsec", "src_e", "shear")

SCHEMA: dict[str, Any] = {
    "seed": int,
    "loss": Enum("bce", "focal"),
    "survey": {
        "root": str,
        "sweep_glob": str,
        "known_lenses": str,
        "impostors": str,
        "lenscat_recall": {"grading": ListOf(Enum("confident", "probable")),
                           "type": ListOf(Enum("galaxy", "group", "cluster"))},
        "bands": ListOf(Enum("g", "r", "z")),
        "coadd_mode": Enum("auto", "copy", "manifest"),
        "coadd_cache": {"dir": str, "max_gb": NUM},
        "mock": {
            "seed": int,
            "n_bricks_ra": int,
            "n_bricks_dec": int,
            "ra0_deg": NUM,
            "dec0_deg": NUM,
            "spacing_deg": NUM,
            "brick_size_pix": int,
            "n_lrg_per_brick": int,
            "n_blue_per_brick": int,
            "n_star_per_brick": int,
            "companion_frac": NUM,
            "impostor_frac": {c: NUM for c in IMPOSTOR_CLASSES},
            "n_known_lenses": int,
            "edge_frac": NUM,
            "moffat_beta": NUM,
            "psf_fwhm_r": ListOf(NUM, 2),
            "depth_r": ListOf(NUM, 2),
            "n_mask_trails": int,
            "psfsize_zero_bricks": int,
        },
    },
    "selection": {
        "variant": str,
        "deredden": bool,
        "engine": Enum("auto", "inprocess", "spark"),
        "variants": MapOf({"z_max": NUM, "rz_min": NUM, "zw1_min": NUM}),
        "split": {"nside": int, "seed": int, "fractions": PER_SPLIT},
    },
    "manifest": {
        "population": Enum("seeds_grid", "calibrated"),
        "grid": str,
        "calibrated": {"theta_e_arcsec": ListOf(NUM, 2), "src_mag_r": ListOf(NUM, 2), "src_mag_slope": NUM,
                       "src_reff_arcsec": ListOf(NUM, 2), "src_e": ListOf(NUM, 2), "shear": ListOf(NUM, 2),
                       "min_magnification": NUM, "min_arc_snr": NUM},
        "control_type": Enum("unpaired", "paired"),
        "control_frac": NUM,
        "replicates": int,
        "eval_negatives": bool,
        "eval_replicates": int,
        "n_total_per_split": PER_SPLIT,
        "lens_q": ListOf(NUM, 2),
        "src_offset_frac": NUM,
        "src_gr": ListOf(NUM, 2),
        "src_rz": ListOf(NUM, 2),
        "src_color_clip": ListOf(NUM, 2),
        "known_lens_radius_arcsec": NUM,
    },
    "grids": MapOf({k: ListOf(NUM) for k in GRID_KEYS}),
    "inject": {
        "engine": Enum("lenstronomy", "fast"),
        "psf_model": Enum("gaussian", "moffat"),
        "moffat_beta": NUM,
        "supersample": int,
        "psf_flux_frac": NUM,
        "stamp_size": int,
        "pixel_scale": NUM,
        "psf_fallback_fwhm": NUM,
        "files_per_split": int,
        "gallery_n": int,
        "max_failed_frac": NUM,
        "source_model": Enum("sersic", "cosmos", "clumpy"),
        "cosmos_bank": str,
        "cosmos_size": Enum("reff", "native"),
    },
    "spark": {"master": str, "driver_memory": str, "partitions": int},
    "stamp_set": {"root": str, "cache": str},
    "mine": {"model": str, "top_k": int, "min_score": NUM, "exclusion_radius_arcsec": NUM, "use_lenscat": bool,
             "grades": str},
    "search": {"models": ListOf(str), "combine": Enum("mean_prob", "rank_mean"), "min_score": NUM, "top_k": int,
               "match_radius_arcsec": NUM, "prevalence": NUM, "batch_size": int, "cut_missing": bool,
               "cut_group_size": int, "work_dir": str},
    "gates": {"core_size": int, "core_lr_auroc_max": NUM, "radial_lr_auroc_max": NUM, "mask_radius": NUM,
              "mask_outer_radius": NUM, "core_masked_drop_max": NUM, "cv_folds": int,
              "hard_negative_auroc_min": NUM},
    "focal": {"alpha": NUM, "gamma": NUM},
    "train": {
        "arch": Enum("small_cnn", "resnet18", "convnext_tiny"),
        "width": int,
        "stem": Enum("adapted", "stock"),
        "input_channels": int,
        "ctrl_dropout": NUM,
        "dropout": NUM,
        "meta_cols": ListOf(str),
        "norm_method": Enum("full", "outer", "residual"),
        "norm_outer_radius": NUM,
        "clip": ListOf(NUM, 2),
        "augment": bool,
        "core_dropout": NUM,
        "core_dropout_radius": NUM,
        "exclude_bricks": ListOf(str),
        "hard_negative_repeat": int,
        "batch_size": int,
        "num_workers": int,
        "weight_decay": NUM,
        "scheduler": Enum("cosine", "cosine_warm_restarts", "none"),
        "t0": int,
        "t_mult": int,
        "eta_min": NUM,
        "grad_clip": NUM,
        "label_smoothing": NUM,
        "pos_weight": NUM,
        "monitor": str,
        "patience": int,
        "min_delta": NUM,
        "seed": int,
        "curriculum": ListOf(
            {
                "name": str,
                "epochs": int,
                "lr": NUM,
                "min_theta_over_psf": NUM,
                "min_arc_snr": NUM,
            }
        ),
    },
}

# Keys that may be absent from a user's params.yaml sections (none today: the
# shipped params.yaml states every key, so a missing key is reported as such).
OPTIONAL: set[str] = set()


def _fail(src: str, where: str, msg: str) -> None:
    raise ParamsError(f"{src}: {where}: {msg}")


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return "number"
    if isinstance(t, Enum):
        return "one of " + ", ".join(repr(v) for v in t.values)
    if isinstance(t, ListOf):
        n = f" of length {t.length}" if t.length else ""
        return f"a list{n} of {_type_name(t.item)}"
    if isinstance(t, (dict, MapOf)):
        return "a mapping"
    return getattr(t, "__name__", str(t))


def _check(value: Any, schema: Any, where: str, src: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            _fail(src, where, f"expected a mapping with keys {sorted(schema)}, got {value!r}")
        for key in value:
            if key not in schema:
                close = difflib.get_close_matches(str(key), list(schema), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                _fail(src, where, f"unknown key {key!r}{hint}; valid keys: {', '.join(sorted(schema))}")
        for key, sub in schema.items():
            path = f"{where}.{key}" if where else key
            if key not in value:
                if path in OPTIONAL:
                    continue
                _fail(src, path, f"missing key (expected {_type_name(sub)})")
            _check(value[key], sub, path, src)
    elif isinstance(schema, MapOf):
        if not isinstance(value, dict) or not value:
            _fail(src, where, "expected a non-empty mapping of names to settings")
        for key, sub in value.items():
            _check(sub, schema.value, f"{where}.{key}", src)
    elif isinstance(schema, ListOf):
        if not isinstance(value, list):
            _fail(src, where, f"expected {_type_name(schema)}, got {value!r}")
        if schema.length is not None and len(value) != schema.length:
            _fail(src, where, f"expected {_type_name(schema)}, got {len(value)} items")
        for i, item in enumerate(value):
            _check(item, schema.item, f"{where}[{i}]", src)
    elif isinstance(schema, Enum):
        if value not in schema.values:
            _fail(src, where, f"expected {_type_name(schema)}, got {value!r}")
    elif schema is bool:
        if not isinstance(value, bool):
            _fail(src, where, f"expected true or false, got {value!r}")
    elif schema is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(src, where, f"expected an integer, got {value!r}")
    elif isinstance(schema, tuple):
        if isinstance(value, bool) or not isinstance(value, schema):
            _fail(src, where, f"expected a number, got {value!r}")
    elif schema is str:
        if not isinstance(value, str):
            _fail(src, where, f"expected a string, got {value!r}")
    else:  # pragma: no cover - schema bug
        raise TypeError(f"bad schema at {where}: {schema!r}")


def _semantic_checks(p: dict, src: str) -> None:
    sel = p["selection"]
    if sel["variant"] not in sel["variants"] and sel["variant"] != "desi_lrg":
        _fail(src, "selection.variant", f"{sel['variant']!r} is not a key of selection.variants "
              f"({', '.join(sorted(sel['variants']))}) nor 'desi_lrg'")
    for key in ("grading", "type"):
        if not p["survey"]["lenscat_recall"][key]:
            _fail(src, f"survey.lenscat_recall.{key}", "expected at least one value")
    fr = sel["split"]["fractions"]
    if any(v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1.0) > 1e-9:
        _fail(src, "selection.split.fractions", f"expected non-negative fractions summing to 1, got {fr}")
    m = p["manifest"]
    if m["grid"] not in p["grids"]:
        _fail(src, "manifest.grid", f"{m['grid']!r} is not defined under grids ({', '.join(sorted(p['grids']))})")
    if not 0.0 <= m["control_frac"] <= 1.0:
        _fail(src, "manifest.control_frac", f"expected a fraction in [0, 1], got {m['control_frac']}")
    if m["replicates"] < 1:
        _fail(src, "manifest.replicates", f"expected >= 1, got {m['replicates']}")
    cal = m["calibrated"]
    for key in ("theta_e_arcsec", "src_mag_r", "src_reff_arcsec", "src_e", "shear"):
        lo, hi = cal[key]
        if not lo <= hi or (key in ("theta_e_arcsec", "src_reff_arcsec") and lo <= 0) or lo < 0:
            _fail(src, f"manifest.calibrated.{key}", f"expected a range [lo, hi] with 0 <= lo <= hi (> 0 for sizes), "
                  f"got {cal[key]}")
    if m["eval_replicates"] < 1:
        _fail(src, "manifest.eval_replicates", f"expected >= 1, got {m['eval_replicates']}")
    for name, grid in p["grids"].items():
        for key in GRID_KEYS:
            vals = grid[key]
            if not vals:
                _fail(src, f"grids.{name}.{key}", "expected at least one value")
            positive = key in ("theta_e_arcsec", "src_reff_arcsec")
            bad = [v for v in vals if (v <= 0 if positive else v < 0)]
            if bad:
                need = "> 0" if positive else ">= 0"
                _fail(src, f"grids.{name}.{key}", f"expected values {need}, got {bad}")
    if not p["survey"]["coadd_cache"]["max_gb"] > 0:
        _fail(src, "survey.coadd_cache.max_gb", f"expected > 0 (GB), got {p['survey']['coadd_cache']['max_gb']}")
    imp = p["survey"]["mock"]["impostor_frac"]
    if any(v < 0 for v in imp.values()) or sum(imp.values()) > 1.0:
        _fail(src, "survey.mock.impostor_frac", f"expected fractions of LRGs >= 0 summing to <= 1, got {imp}")
    if p["survey"]["mock"]["brick_size_pix"] < 200:
        _fail(src, "survey.mock.brick_size_pix", f"expected >= 200 pixels, got {p['survey']['mock']['brick_size_pix']}")
    inj = p["inject"]
    if not 0.0 < inj["psf_flux_frac"] < 1.0:
        _fail(src, "inject.psf_flux_frac", f"expected the fraction of the PSF flux the kernels keep, in (0, 1) "
              f"(e.g. 0.998), got {inj['psf_flux_frac']}")
    if inj["supersample"] < 1:
        _fail(src, "inject.supersample", f"expected >= 1, got {inj['supersample']}")
    # what the stamp format holds: (3, 64, 64) float32, bands g, r, z in that order
    if inj["stamp_size"] != STAMP_SIZE:
        _fail(src, "inject.stamp_size", f"the stamp format holds {STAMP_SIZE} x {STAMP_SIZE} pixel stamps, "
              f"got {inj['stamp_size']}")
    if list(p["survey"]["bands"]) != list(BANDS):
        _fail(src, "survey.bands", f"the stamp format holds the bands {list(BANDS)} in that order, "
              f"got {p['survey']['bands']}")
    for key in ("files_per_split", "gallery_n"):
        if inj[key] < (1 if key == "files_per_split" else 0):
            _fail(src, f"inject.{key}", f"expected >= {1 if key == 'files_per_split' else 0}, got {inj[key]}")
    if not 0.0 <= inj["max_failed_frac"] <= 1.0:
        _fail(src, "inject.max_failed_frac", f"expected a fraction of a split's rows in [0, 1], got {inj['max_failed_frac']}")
    if inj["source_model"] != "sersic" and inj["engine"] != "fast":
        _fail(src, "inject.source_model", f"{inj['source_model']!r} sources are lensed by the fast engine only "
              f"(inject.engine: fast), got engine {inj['engine']!r}")
    if inj["source_model"] != "sersic" and inj["supersample"] % 4:
        _fail(src, "inject.supersample", f"{inj['source_model']!r} sources need a multiple of 4 sub-pixels per side "
              f"(4 x 4 PSF phases per pixel, lensing.psf.phase_factor: with 2 a compact clump under a 0.7 arcsec "
              f"PSF is 2% of the arc peak off), got {inj['supersample']}")
    bank = str(inj["cosmos_bank"]).strip()
    if inj["source_model"] == "cosmos" and bank and not Path(bank).expanduser().is_file():
        _fail(src, "inject.cosmos_bank", f"expected \"\" (the embedded ten-galaxy bank) or the path of a "
              f"RealGalaxyCatalog catalogue FITS (e.g. real_galaxy_catalog_23.5.fits), got {bank!r}: no such file")
    for s, n in m["n_total_per_split"].items():
        if n < 1:
            _fail(src, f"manifest.n_total_per_split.{s}", f"expected >= 1 rows, got {n}")
    sp = p["spark"]
    if sp["partitions"] < 1:
        _fail(src, "spark.partitions", f"expected >= 1, got {sp['partitions']}")
    if not re.fullmatch(r"[0-9]+[kKmMgGtT]?", str(sp["driver_memory"])):
        _fail(src, "spark.driver_memory", f"expected a JVM memory size such as 2g or 512m, got {sp['driver_memory']!r}")
    for key in ("root", "cache"):
        if not str(p["stamp_set"][key]).strip():
            _fail(src, f"stamp_set.{key}", "expected a directory (local path or s3://bucket/prefix), got ''")
    if "://" in p["stamp_set"]["cache"]:
        _fail(src, "stamp_set.cache", f"expected a local directory, got {p['stamp_set']['cache']!r}")
    grades = p["mine"]["grades"]
    if grades and not re.fullmatch(r"grades/[^/]+\.csv", grades):
        _fail(src, "mine.grades", f"expected \"\" or a CSV in grades/ (e.g. grades/gen2.csv: the folder is a dependency "
              f"of stage mine in dvc.yaml, so a changed file re-runs it), got {grades!r}")
    se = p["search"]
    if not se["models"] or any(not str(m).strip() for m in se["models"]):
        _fail(src, "search.models", f"expected a non-empty list of checkpoint paths or git tags, got {se['models']!r}")
    if len(set(se["models"])) != len(se["models"]):
        _fail(src, "search.models", f"expected each model once, got {se['models']!r}")
    if not 0.0 <= se["min_score"] <= 1.0:
        _fail(src, "search.min_score", f"expected a number in [0, 1] (a probability for search.combine mean_prob, a "
              f"normalised rank for rank_mean), got {se['min_score']}")
    for key, lo in (("top_k", 0), ("batch_size", 1), ("cut_group_size", 1)):
        if se[key] < lo:
            _fail(src, f"search.{key}", f"expected >= {lo}, got {se[key]}")
    if not se["match_radius_arcsec"] > 0:
        _fail(src, "search.match_radius_arcsec", f"expected > 0 arcsec, got {se['match_radius_arcsec']}")
    if not 0.0 < se["prevalence"] < 1.0:
        _fail(src, "search.prevalence", f"expected a fraction in (0, 1) (e.g. 1.0e-3 = 1 lens in 1,000 galaxies), "
              f"got {se['prevalence']}")
    if not se["work_dir"].strip() or "://" in se["work_dir"]:
        _fail(src, "search.work_dir", f"expected a local directory, got {se['work_dir']!r}")
    g = p["gates"]
    if not 1 <= g["core_size"] <= STAMP_SIZE:
        _fail(src, "gates.core_size", f"expected 1..{STAMP_SIZE} pixels, got {g['core_size']}")
    if not 0 < g["mask_radius"] <= g["mask_outer_radius"] < STAMP_SIZE // 2:
        _fail(src, "gates.mask_radius", f"expected 0 < mask_radius <= mask_outer_radius < {STAMP_SIZE // 2} pixels, "
              f"got {g['mask_radius']} and {g['mask_outer_radius']}")
    if g["cv_folds"] < 2:
        _fail(src, "gates.cv_folds", f"expected >= 2, got {g['cv_folds']}")
    tr = p["train"]
    if tr["input_channels"] not in (3, 6):
        _fail(src, "train.input_channels", f"expected 3 or 6, got {tr['input_channels']}")
    if not tr["curriculum"]:
        _fail(src, "train.curriculum", "expected at least one stage")
    if not 0.0 <= tr["core_dropout"] < 1.0:
        _fail(src, "train.core_dropout", f"expected a probability in [0, 1), got {tr['core_dropout']}")
    if not 0 < tr["core_dropout_radius"] < STAMP_SIZE // 2:
        _fail(src, "train.core_dropout_radius", f"expected 0 < radius < {STAMP_SIZE // 2} pixels, "
              f"got {tr['core_dropout_radius']}")
    for key, lo in (("batch_size", 1), ("num_workers", 0), ("patience", 1), ("hard_negative_repeat", 0)):
        if tr[key] < lo:
            _fail(src, f"train.{key}", f"expected >= {lo}, got {tr[key]}")
    names = [st["name"] for st in tr["curriculum"]]
    for i, st in enumerate(tr["curriculum"]):
        if not st["name"].strip() or st["name"] != st["name"].strip() or "/" in st["name"]:
            _fail(src, f"train.curriculum[{i}].name", f"expected a non-empty name without '/' or surrounding "
                  f"spaces (it names a directory under data/model), got {st['name']!r}")
        if st["name"] in names[:i]:
            _fail(src, f"train.curriculum[{i}].name", f"stage names must be unique, {st['name']!r} repeats")
        if st["epochs"] < 1:
            _fail(src, f"train.curriculum[{i}].epochs", f"expected >= 1, got {st['epochs']}")
        if st["lr"] <= 0:
            _fail(src, f"train.curriculum[{i}].lr", f"expected > 0, got {st['lr']}")


def validate(p: Any, src: str = "params.yaml") -> dict:
    """Check a parsed params mapping against SCHEMA; return it unchanged."""
    _check(p, SCHEMA, "", src)
    _semantic_checks(p, src)
    return p


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read and validate params.yaml (ParamsError names file, key and expectation)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the repository root)") from None
    try:
        p = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    return validate(p, str(path))
