"""Phase 4a: the injection manifest — grids, control assignment and every per-sample draw.

Each manifest row is one future stamp. Every random quantity (control or not,
grid config, source offset and angles, lens axis ratio, shear angle, source
colours) is a pure function of (seed, stable ids, quantity name) through
:mod:`darkhaloscope.hashing`, so the manifest does not depend on row order,
partitioning or worker count, and Phase 4c never draws again.

Control modes
-------------
unpaired: a galaxy is a control with probability ``control_frac``; control
    galaxies appear once, un-injected; every other galaxy appears ``replicates``
    times with an injection. Controls and injected galaxies are disjoint sets.
paired: every galaxy appears ``replicates`` times with an injection AND once
    un-injected as its own control (``pair_id`` links them; the stamp stage also
    stores the un-injected cutout beside each injected one as ``ctrl_stamp``).
    ``control_frac`` is not used.

Lens impostors (the parent's ``impostor`` column, not ``none``) are negatives only: one
un-injected row, in either mode. With ``eval_negatives`` every galaxy of the val and test
splits is also cut un-injected once (an evaluation negative; in unpaired mode the injected
galaxies of those splits then appear both ways), and each injected galaxy there gets
``eval_replicates`` injections instead of ``replicates``: the evaluation sets hold a negative
per galaxy (item 5 of issue 14: >= 10,000 per split on the default params).
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa

from darkhaloscope.hashing import hash_int63, normal, uniform
from darkhaloscope.params import GRID_KEYS
from darkhaloscope.constants import IMPOSTOR_CLASSES, NO_IMPOSTOR, SPLITS

INJECTION_COLUMNS = (
    "theta_e_arcsec", "src_dmag", "src_reff_arcsec", "src_e", "shear", "shear_phi_deg",
    "gamma1", "gamma2", "lens_q", "lens_phi_deg", "src_phi_deg", "src_x_arcsec", "src_y_arcsec",
    "src_gr", "src_rz", "src_mag_r",
)
#: manifest.population: the seeds' grids (manifest.grid) or the calibrated population (manifest.calibrated)
SEEDS_GRID, CALIBRATED = "seeds_grid", "calibrated"
#: acceptance cuts each row carries to stage stamps (0 = none: the seeds' grids and the controls)
CUT_COLUMNS = ("min_magnification", "min_arc_snr")
NO_CUTS = dict.fromkeys(CUT_COLUMNS, 0.0)
#: with manifest.eval_negatives, every galaxy of these splits is also an un-injected evaluation negative
EVAL_SPLITS = ("val", "test")
CARRY = ("row_id", "brickname", "objid", "ra", "dec", "mag_r", "psfsize_g", "psfsize_r", "psfsize_z",
         "psfdepth_g", "psfdepth_r", "psfdepth_z")


def grid_configs(grid: dict) -> list[dict]:
    """All combinations of a grid's values, in a fixed order, each with a readable ``config_id``."""
    for k in GRID_KEYS:
        if k not in grid:
            raise ValueError(f"grid lacks key {k!r}; a grid defines {', '.join(GRID_KEYS)}")
    out = []
    for vals in itertools.product(*(grid[k] for k in GRID_KEYS)):
        c = dict(zip(GRID_KEYS, (float(v) for v in vals)))
        c["config_id"] = (f"te{c['theta_e_arcsec']:g}_dm{c['src_dmag']:g}_re{c['src_reff_arcsec']:g}"
                          f"_e{c['src_e']:g}_sh{c['shear']:g}")
        out.append(c)
    return out


def draw_injection(seed: int, sample_id: int, configs: list[dict], m: dict, host_mag_r: float) -> dict:
    """All injection parameters of one sample, from hashes of (seed, sample_id, name)."""
    c = configs[min(int(uniform(seed, sample_id, "config") * len(configs)), len(configs) - 1)]
    te = c["theta_e_arcsec"]
    r = np.sqrt(uniform(seed, sample_id, "src_r")) * float(m["src_offset_frac"]) * te
    a = 2.0 * np.pi * uniform(seed, sample_id, "src_angle")
    shear_phi = 180.0 * uniform(seed, sample_id, "shear_phi")
    q_lo, q_hi = m["lens_q"]
    lo, hi = m["src_color_clip"]
    gr = float(np.clip(m["src_gr"][0] + m["src_gr"][1] * normal(seed, sample_id, "src_gr"), lo, hi))
    rz = float(np.clip(m["src_rz"][0] + m["src_rz"][1] * normal(seed, sample_id, "src_rz"), lo, hi))
    return {
        "config_id": c["config_id"],
        "theta_e_arcsec": te,
        "src_dmag": c["src_dmag"],
        "src_reff_arcsec": c["src_reff_arcsec"],
        "src_e": c["src_e"],
        "shear": c["shear"],
        "shear_phi_deg": shear_phi,
        "gamma1": c["shear"] * np.cos(np.radians(2 * shear_phi)),
        "gamma2": c["shear"] * np.sin(np.radians(2 * shear_phi)),
        "lens_q": q_lo + (q_hi - q_lo) * uniform(seed, sample_id, "lens_q"),
        "lens_phi_deg": 180.0 * uniform(seed, sample_id, "lens_phi"),
        "src_phi_deg": 180.0 * uniform(seed, sample_id, "src_phi"),
        "src_x_arcsec": r * np.cos(a),
        "src_y_arcsec": r * np.sin(a),
        "src_gr": gr,
        "src_rz": rz,
        "src_mag_r": host_mag_r + c["src_dmag"],
    }


def source_mag_prior(u: float, lo: float, hi: float, slope: float) -> float:
    """Unlensed source r magnitude (AB mag) for a uniform deviate ``u`` in [0, 1): the inverse CDF of
    galaxy number counts dN/dm proportional to 10 ** (slope * m) on [lo, hi] (independent of the host)."""
    if slope == 0:
        return lo + (hi - lo) * u
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return float(np.log10(a + u * (b - a)) / slope)


def draw_calibrated(seed: int, sample_id: int, m: dict, host_mag_r: float) -> dict:
    """One sample of the calibrated population (manifest.population calibrated, section manifest.calibrated):
    theta_E uniform, source magnitude from :func:`source_mag_prior`, source size log-uniform, source
    ellipticity and shear uniform; the other draws as :func:`draw_injection` (same hash names). Its
    acceptance cuts (min_magnification, min_arc_snr) travel with the row to stage stamps."""
    cal = m["calibrated"]

    def unif(name: str, key: str) -> float:
        lo, hi = cal[key]
        return float(lo + (hi - lo) * uniform(seed, sample_id, name))

    te = unif("cal_theta_e", "theta_e_arcsec")
    lo, hi = cal["src_reff_arcsec"]
    reff = float(lo * (hi / lo) ** uniform(seed, sample_id, "cal_src_reff"))
    mag = source_mag_prior(uniform(seed, sample_id, "cal_src_mag"), *cal["src_mag_r"], float(cal["src_mag_slope"]))
    shear = unif("cal_shear", "shear")
    grid_like = {"config_id": CALIBRATED, "theta_e_arcsec": te, "src_dmag": mag - host_mag_r, "src_reff_arcsec": reff,
                 "src_e": unif("cal_src_e", "src_e"), "shear": shear}
    out = draw_injection(seed, sample_id, [grid_like], m, host_mag_r)
    out["src_mag_r"] = mag  # exactly the prior's draw (not host + dmag re-rounded)
    out["min_magnification"] = float(cal["min_magnification"])
    out["min_arc_snr"] = float(cal["min_arc_snr"])
    return out


def build_manifest(parent: pa.Table, params: dict) -> tuple[pa.Table, dict]:
    """Return (manifest sorted by split then sample_id, summary of counts)."""
    m = params["manifest"]
    seed = int(params["seed"])
    calibrated = m["population"] == CALIBRATED
    configs = grid_configs(params["grids"][m["grid"]])
    cols = {k: parent.column(k).to_numpy(zero_copy_only=False) for k in CARRY + ("split", "near_known_lens")}
    # a parent sample written before the impostor column existed has no impostors
    cols["impostor"] = (parent.column("impostor").to_numpy(zero_copy_only=False).astype(str)
                        if "impostor" in parent.column_names else np.full(parent.num_rows, NO_IMPOSTOR))
    eval_neg = bool(m["eval_negatives"])
    usable = ~cols["near_known_lens"] & np.isfinite(cols["mag_r"])
    n_near = int(cols["near_known_lens"].sum())
    n_nomag = int((~np.isfinite(cols["mag_r"]) & ~cols["near_known_lens"]).sum())
    paired = m["control_type"] == "paired"
    rows = []
    for i in np.flatnonzero(usable):
        rid = int(cols["row_id"][i])
        base = {k: cols[k][i] for k in CARRY}
        base["split"] = str(cols["split"][i])
        base["impostor"] = str(cols["impostor"][i])
        # impostors are negatives only; with eval_negatives every val / test galaxy is also cut un-injected
        impostor = base["impostor"] != NO_IMPOSTOR
        evaluation = eval_neg and base["split"] in EVAL_SPLITS
        control_gal = impostor or ((not paired) and uniform(seed, rid, "is_control") < float(m["control_frac"]))
        if paired or control_gal or evaluation:
            sid = hash_int63(seed, rid, "control")
            rows.append({**base, "sample_id": sid, "pair_id": sid, "replicate": 0, "is_control": 1,
                         "config_id": "control", **{k: 0.0 for k in INJECTION_COLUMNS}, **NO_CUTS})
        if not control_gal:
            ctrl_sid = hash_int63(seed, rid, "control") if paired else -1
            n_rep = int(m["eval_replicates"]) if evaluation else int(m["replicates"])
            for rep in range(n_rep):
                sid = hash_int63(seed, rid, "inject", rep)
                inj = (draw_calibrated(seed, sid, m, float(base["mag_r"])) if calibrated
                       else {**draw_injection(seed, sid, configs, m, float(base["mag_r"])), **NO_CUTS})
                rows.append({**base, "sample_id": sid, "pair_id": ctrl_sid if paired else sid,
                             "replicate": rep, "is_control": 0, **inj})

    # cap per split, keeping the rows with the smallest hash (order independent)
    kept, capped = [], {}
    for s in SPLITS:
        rs = [r for r in rows if r["split"] == s]
        cap = int(m["n_total_per_split"][s])
        if len(rs) > cap:
            rs.sort(key=lambda r: uniform(seed, r["sample_id"], "cap"))
            capped[s] = len(rs) - cap
            rs = rs[:cap]
        kept.extend(sorted(rs, key=lambda r: r["sample_id"]))
    if not kept:
        raise ValueError("manifest is empty: no usable parent galaxies (check the parent sample and manifest params)")
    names = ["sample_id", "pair_id", "row_id", "replicate", "split", "brickname", "objid", "ra", "dec",
             "is_control", "config_id", "impostor", *INJECTION_COLUMNS, "mag_r",
             "psfsize_g", "psfsize_r", "psfsize_z", "psfdepth_g", "psfdepth_r", "psfdepth_z", *CUT_COLUMNS]
    data = {n: [r[n] for r in kept] for n in names}
    types = {"sample_id": pa.int64(), "pair_id": pa.int64(), "row_id": pa.int64(), "replicate": pa.int32(),
             "objid": pa.int64(), "is_control": pa.int8(), "split": pa.string(), "brickname": pa.string(),
             "config_id": pa.string(), "impostor": pa.string()}
    table = pa.table({n: pa.array(data[n], type=types.get(n, pa.float64())) for n in names})
    table = table.rename_columns([("host_mag_r" if n == "mag_r" else n) for n in names])

    split = np.asarray(data["split"])
    ctrl = np.asarray(data["is_control"]) == 1
    rid = np.asarray(data["row_id"])
    imp = np.asarray(data["impostor"])
    summary = {
        "population": m["population"], "grid": None if calibrated else m["grid"],
        "n_configs": None if calibrated else len(configs), "control_type": m["control_type"],
        "eval_negatives": eval_neg, "eval_replicates": int(m["eval_replicates"]),
        "control_frac": float(m["control_frac"]), "replicates": int(m["replicates"]),
        "excluded_near_known_lens": n_near, "excluded_no_r_magnitude": n_nomag,
        "capped_rows": capped, "n_rows": len(kept), "splits": {},
    }
    for s in SPLITS:
        sel = split == s
        inj_g, ctl_g = set(rid[sel & ~ctrl].tolist()), set(rid[sel & ctrl].tolist())
        summary["splits"][s] = {
            "rows": int(sel.sum()), "injected": int((sel & ~ctrl).sum()), "controls": int((sel & ctrl).sum()),
            "injected_galaxies": len(inj_g), "control_galaxies": len(ctl_g),
            "galaxies_in_both": len(inj_g & ctl_g),
            "impostors": {c: int((sel & (imp == c)).sum()) for c in IMPOSTOR_CLASSES},
        }
    return table, summary
