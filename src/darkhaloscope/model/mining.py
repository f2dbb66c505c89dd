"""Hard-negative mining: score non-injected parent galaxies with a previous generation's model,
keep the top K above a minimum score, and drop every candidate near a known lens; and the
grades of inspected candidates (``mine.grades``).

Known lenses = the survey's own list plus, optionally, the lenscat package's catalogue of
known lenses (about 33k real systems), matched on the sphere with scikit-learn's BallTree
(haversine). Exclusions are counted by source, never silently dropped.

Grades (:data:`GRADES`) come from the inspection page of stage ``search`` (its exported CSV,
:data:`GRADE_COLUMNS`), copied into ``grades/`` and named by ``mine.grades``:

- ``X`` (not a lens): the candidate's un-injected cutout in the ``parent`` split (matched by
  ``brickname`` + ``objid``) is added to the hard negatives, whether or not the model mined it,
  unless it lies within ``mine.exclusion_radius_arcsec`` of a known lens or of an A/B candidate;
- ``A`` / ``B`` (definite / probable lens): the candidate joins the known-lens exclusion list, so
  neither it nor anything within the exclusion radius becomes a hard negative, and the controls
  of the stamp set that are A/B candidates are counted and warned about (the manifest's
  controls are chosen by stage ``manifest``, which does not read grades);
- ``C`` (possible lens): counted, nothing else.

Every grade row is accounted for in ``metrics/mine.json`` (``grades``).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import tempfile

import numpy as np
import pyarrow as pa

from darkhaloscope.model.score import score_files
from darkhaloscope.survey.known_lenses import match_within, read_known_lenses, read_lenscat

log = logging.getLogger(__name__)

MODEL_PATH_IN_REPO = "data/model/best.pt"

#: grades of the inspection page (stage search): A definite lens, B probable, C possible, X not a lens
GRADES: tuple[str, ...] = ("A", "B", "C", "X")
GRADE_MEANING = {"A": "definite lens", "B": "probable lens", "C": "possible lens", "X": "not a lens"}
LENS_GRADES: tuple[str, ...] = ("A", "B")
NOT_A_LENS = "X"
#: the columns of the page's CSV export, in order; mining needs GRADES_REQUIRED of them
GRADE_COLUMNS: tuple[str, ...] = ("rank", "source", "row_id", "sample_id", "brickname", "objid", "ra", "dec",
                                  "ensemble_score", "probability", "known_name", "grade", "note")
GRADES_REQUIRED: tuple[str, ...] = ("brickname", "objid", "ra", "dec", "grade")


def resolve_model(ref: str, workdir: str, key: str = "mine.model") -> str:
    """A local checkpoint path for ``ref``: an existing path, or a git tag/rev of this repository.

    For a tag, ``data/model/best.pt`` at that revision is read through DVC (``dvc.api.open``),
    which finds it in the local cache or the configured remote. ``key`` names the params entry
    in the error message (``mine.model``, ``search.models[1]``, ...).
    """
    if os.path.exists(ref):
        return ref
    import dvc.api

    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in ref)
    out = os.path.join(workdir, f"model-{safe}.pt")
    try:
        with dvc.api.open(MODEL_PATH_IN_REPO, repo=".", rev=ref, mode="rb") as src, open(out, "wb") as dst:
            dst.write(src.read())
    except Exception as e:
        raise ValueError(f"{key} {ref!r}: neither a file nor a revision with {MODEL_PATH_IN_REPO} "
                         f"available in the DVC cache or remote ({type(e).__name__}: {e})") from None
    return out


def read_grades(path: str) -> dict:
    """The graded rows of a grades CSV (the inspection page's export, :data:`GRADE_COLUMNS`).

    Returns {'grade' (str, upper case), 'brickname' (str), 'objid' (int64; -1 for a candidate
    that is no catalogue galaxy), 'ra', 'dec' (float64 deg), 'note' (str), 'n_rows',
    'n_ungraded', 'n_duplicates'}. Rows with an empty grade are skipped and counted; a
    galaxy graded twice alike counts once (``n_duplicates``); graded twice differently, a
    ValueError lists the conflicts. A missing file or column, a grade outside :data:`GRADES`,
    a coordinate that is not a number in range: a ValueError naming the file and the line.
    """
    where = f"mine.grades {path!r}"
    try:
        fh = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: file not found (export the grades from data/search/inspect/index.html "
                                f"and copy the CSV into grades/)") from None
    with fh:
        reader = csv.DictReader(fh)
        names = [n.strip() for n in (reader.fieldnames or [])]
        missing = [c for c in GRADES_REQUIRED if c not in names]
        if missing:
            raise ValueError(f"{where}: column(s) {missing} missing; expected the inspection page's export with "
                             f"columns {list(GRADE_COLUMNS)} (has {names})")
        reader.fieldnames = names
        rows, n_rows, n_ungraded = {}, 0, 0
        for line, r in enumerate(reader, start=2):
            n_rows += 1
            g = (r.get("grade") or "").strip().upper()
            if not g:
                n_ungraded += 1
                continue
            if g not in GRADES:
                raise ValueError(f"{where} line {line}: grade {r.get('grade')!r} is not one of {list(GRADES)} "
                                 f"({', '.join(f'{k} {v}' for k, v in GRADE_MEANING.items())})")
            try:
                ra, dec = float(r["ra"]), float(r["dec"])
                objid = int(r["objid"]) if str(r["objid"]).strip() not in ("", "-1") else -1
            except (TypeError, ValueError):
                raise ValueError(f"{where} line {line}: ra, dec must be numbers (deg) and objid an integer, got "
                                 f"ra {r.get('ra')!r}, dec {r.get('dec')!r}, objid {r.get('objid')!r}") from None
            if not (math.isfinite(ra) and math.isfinite(dec) and 0 <= ra < 360 and abs(dec) <= 90):
                raise ValueError(f"{where} line {line}: RA must be in [0, 360) deg and Dec in [-90, 90] deg, got "
                                 f"{ra!r}, {dec!r}")
            brick = (r.get("brickname") or "").strip()
            key = (brick, objid) if objid >= 0 else ("", round(ra, 6), round(dec, 6))
            if key in rows and rows[key][0] != g:
                raise ValueError(f"{where} line {line}: {brick or 'the candidate'} objid {objid} at ({ra}, {dec}) is "
                                 f"graded {rows[key][0]} on an earlier line and {g} here: keep one grade per candidate")
            rows.setdefault(key, (g, brick, objid, ra, dec, (r.get("note") or "").strip(), line))
    vals = sorted(rows.values(), key=lambda v: v[-1])
    return {"grade": np.array([v[0] for v in vals], dtype=str), "brickname": np.array([v[1] for v in vals], dtype=str),
            "objid": np.array([v[2] for v in vals], np.int64), "ra": np.array([v[3] for v in vals], np.float64),
            "dec": np.array([v[4] for v in vals], np.float64), "note": np.array([v[5] for v in vals], dtype=str),
            "n_rows": n_rows, "n_ungraded": n_ungraded, "n_duplicates": n_rows - n_ungraded - len(vals)}


def _keys(brick, objid) -> np.ndarray:
    return np.array([f"{b}/{int(o)}" for b, o in zip(brick, objid)], dtype=object)


def mine(files: list[str], ckpt: str, top_k: int, min_score: float, radius_arcsec: float,
         known: dict, lenscat: dict | None, graded_lenses: dict | None = None) -> tuple[pa.Table, dict]:
    """Return (hard negatives sorted by score desc then sample_id, report of counts).

    ``graded_lenses`` ({'ra', 'dec'} deg): candidates graded A or B, excluded like known lenses
    (counted as ``excluded_near_known_lens.graded_ab``). The table's ``source`` is ``mined``."""
    table, summary = score_files(ckpt, files)
    neg = table.filter(pa.compute.equal(table.column("label"), 0))
    s = neg.column("score").to_numpy()
    ra, dec = neg.column("ra").to_numpy(), neg.column("dec").to_numpy()
    above = s >= min_score
    near_survey, _ = match_within(ra, dec, known["ra"], known["dec"], radius_arcsec)
    near_lenscat = (match_within(ra, dec, lenscat["ra"], lenscat["dec"], radius_arcsec)[0]
                    if lenscat is not None else np.zeros(len(s), bool))
    near_graded = (match_within(ra, dec, graded_lenses["ra"], graded_lenses["dec"], radius_arcsec)[0]
                   if graded_lenses is not None else np.zeros(len(s), bool))
    keep = above & ~near_survey & ~near_lenscat & ~near_graded
    idx = np.flatnonzero(keep)
    order = np.lexsort((neg.column("sample_id").to_numpy()[idx], -s[idx]))
    idx = idx[order][: max(0, int(top_k))]
    out = neg.take(idx)
    out = out.append_column("source", pa.array(["mined"] * out.num_rows, pa.string()))
    excluded = {"survey_list": int((above & near_survey).sum()),
                "lenscat": int((above & near_lenscat & ~near_survey).sum())}
    if graded_lenses is not None:
        excluded["graded_ab"] = int((above & near_graded & ~near_survey & ~near_lenscat).sum())
    report = {
        "n_scored": int(neg.num_rows), "index": summary, "min_score": float(min_score), "top_k": int(top_k),
        "n_above_min_score": int(above.sum()),
        "excluded_near_known_lens": excluded,
        "exclusion_radius_arcsec": float(radius_arcsec),
        "n_known_lenses": {"survey_list": int(len(known["ra"])),
                           "lenscat": int(len(lenscat["ra"])) if lenscat is not None else 0},
        "n_hard_negatives": int(out.num_rows),
        "score_of_last_kept": float(s[idx[-1]]) if len(idx) else None,
    }
    return out, report


def _empty_hard_negatives() -> pa.Table:
    return pa.table({"sample_id": pa.array([], pa.int64()), "score": pa.array([], pa.float64()),
                     "source": pa.array([], pa.string())})


def controls_among(stamps_root: str, keys: np.ndarray) -> dict:
    """How many control rows (``is_control = 1``) of the train / val / test splits of ``stamps_root``
    are the galaxies ``keys`` ('brickname/objid'); splits without files, or files without an
    ``objid`` column, are skipped (reported as None)."""
    from darkhaloscope.stamps.format import list_stamp_files, read_columns

    out = {}
    for split in ("train", "val", "test"):
        try:
            files = list_stamp_files(stamps_root, split)
            t = read_columns(files, ["brickname", "objid", "is_control"])
        except (FileNotFoundError, ValueError):
            out[split] = None
            continue
        ctrl = t.column("is_control").to_numpy() == 1
        k = _keys(t.column("brickname").to_pylist(), t.column("objid").to_numpy())
        out[split] = int((np.isin(k, keys) & ctrl).sum())
    return out


def apply_grades(table: pa.Table, files: list[str], grades: dict, known: dict, lenscat: dict | None,
                 radius_arcsec: float, stamps_root: str) -> tuple[pa.Table, dict]:
    """Add the X-graded candidates to the hard negatives ``table`` (see the module docstring).

    ``files``: the parent split's stamp files; returns (hard negatives: the mined rows, then the
    added X rows by sample_id; ``source`` ``mined`` or ``graded_x``) and the ``grades`` report."""
    from darkhaloscope.stamps.format import read_columns

    try:
        par = read_columns(files, ["sample_id", "brickname", "objid", "ra", "dec", "cutout_ok"])
    except ValueError as e:
        raise ValueError(f"mine.grades: the parent split's stamps must carry brickname and objid to match graded "
                         f"candidates ({e})") from None
    g = grades["grade"]
    per_grade = {k: int((g == k).sum()) for k in GRADES}
    is_x, is_ab = g == NOT_A_LENS, np.isin(g, LENS_GRADES)
    ab = {"ra": grades["ra"][is_ab], "dec": grades["dec"][is_ab]}
    pkeys = _keys(par.column("brickname").to_pylist(), par.column("objid").to_numpy())
    first = {}
    for i, k in enumerate(pkeys):
        first.setdefault(k, i)
    xkeys = _keys(grades["brickname"][is_x], grades["objid"][is_x])
    xpos = np.array([first.get(k, -1) for k in xkeys], np.int64)
    found = xpos >= 0
    ok = found.copy()
    ok[found] = par.column("cutout_ok").to_numpy()[xpos[found]] == 1
    xra, xdec = grades["ra"][is_x], grades["dec"][is_x]
    near = match_within(xra, xdec, known["ra"], known["dec"], radius_arcsec)[0]
    if lenscat is not None:
        near |= match_within(xra, xdec, lenscat["ra"], lenscat["dec"], radius_arcsec)[0]
    near_ab = match_within(xra, xdec, ab["ra"], ab["dec"], radius_arcsec)[0]
    use = ok & ~near & ~near_ab
    ids = par.column("sample_id").to_numpy()[xpos[use]].astype(np.int64)
    mined_ids = table.column("sample_id").to_numpy()
    already = np.isin(ids, mined_ids)
    src = np.array(table.column("source").to_pylist(), dtype=object)
    src[np.isin(mined_ids, ids)] = "graded_x"
    table = table.set_column(table.schema.get_field_index("source"), "source", pa.array(src.tolist(), pa.string()))
    new = np.unique(ids[~already])
    add = pa.table({"sample_id": pa.array(new, pa.int64()), "score": pa.array(np.full(len(new), np.nan)),
                    "source": pa.array(["graded_x"] * len(new), pa.string())})
    out = pa.concat_tables([table.select(["sample_id", "score", "source"]), add])
    abkeys = _keys(grades["brickname"][is_ab], grades["objid"][is_ab])
    ctrl = controls_among(stamps_root, abkeys[grades["objid"][is_ab] >= 0])
    n_ctrl = sum(v for v in ctrl.values() if v)
    if n_ctrl:
        log.warning("WARN mine.grades: %d control row(s) of the stamp set's train/val/test splits are galaxies graded "
                    "A or B (%s): they remain negatives there (controls are chosen by stage manifest, which does not "
                    "read grades); add them to the survey's known-lens list to exclude them", n_ctrl, ctrl)
    report = {"rows": int(grades["n_rows"]), "ungraded_rows": int(grades["n_ungraded"]),
              "duplicate_rows": int(grades["n_duplicates"]), "per_grade": per_grade,
              "x_added": int(len(new)), "x_already_mined": int(already.sum()),
              "x_not_in_parent_split": int((~found).sum()), "x_cutout_not_ok": int((found & ~ok).sum()),
              "x_excluded_near_known_lens": int((ok & near).sum()),
              "x_excluded_near_graded_ab": int((ok & ~near & near_ab).sum()),
              "ab_in_known_lens_exclusion": int(is_ab.sum()), "ab_among_controls": ctrl}
    return out, report


def run_mining(params: dict, stamps_root: str) -> tuple[pa.Table, dict]:
    """The `mine` stage: mined hard negatives (``mine.model``, ``top_k``) plus the X-graded candidates
    of ``mine.grades``; an empty output when neither is set (nothing is read then)."""
    from darkhaloscope.stamps.format import list_stamp_files

    m, sv = params["mine"], params["survey"]
    grades_path = m.get("grades") or ""
    mining = bool(m["model"]) and int(m["top_k"]) > 0
    if not mining and not grades_path:
        return _empty_hard_negatives(), {"enabled": False, "n_hard_negatives": 0}
    grades = read_grades(grades_path) if grades_path else None
    graded_ab = (None if grades is None else
                 {k: grades[k][np.isin(grades["grade"], LENS_GRADES)] for k in ("ra", "dec")})
    known = read_known_lenses(sv["root"], sv["known_lenses"], sv["lenscat_recall"])
    # exclusion uses every lenscat entry (probable ones too), also when the graded ones are the known lenses
    lenscat = read_lenscat() if m["use_lenscat"] or sv["known_lenses"] == "lenscat" else None
    files = list_stamp_files(stamps_root, "parent")
    if mining:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = resolve_model(m["model"], tmp)
            table, report = mine(files, ckpt, m["top_k"], m["min_score"], m["exclusion_radius_arcsec"], known,
                                 lenscat, graded_ab)
        report.update(enabled=True, model=m["model"])
    else:
        table, report = _empty_hard_negatives(), {"enabled": False, "model": ""}
    if grades is not None:
        table, report["grades"] = apply_grades(table, files, grades, known, lenscat, m["exclusion_radius_arcsec"],
                                               stamps_root)
        report["grades"]["file"] = grades_path
        report["n_hard_negatives"] = int(table.num_rows)
    return table, report
