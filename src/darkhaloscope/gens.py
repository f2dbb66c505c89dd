"""Model generations as parameter overlays (``gens/<name>.yaml``) applied to params.yaml.

An overlay has ``params`` (applied at every scale) and ``scales: {full, cpu}`` (the seeds'
full-scale values and a CPU-sized variant). Mappings merge recursively; lists and scalars
replace. params.yaml keeps its comments (ruamel.yaml round trip) and the result is
validated against the schema before it is written.

    python -m darkhaloscope.gens apply gen3 --scale cpu [--extra tiny.yaml]
"""

from __future__ import annotations

import argparse
import io
import os
import sys

from ruamel.yaml import YAML

from darkhaloscope.outputs import atomic_file
from darkhaloscope.params import ParamsError, validate

SCALES = ("cpu", "full")


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 120
    return y


def load_overlay(name_or_path: str, gens_dir: str = "gens") -> dict:
    path = name_or_path if name_or_path.endswith(".yaml") else os.path.join(gens_dir, f"{name_or_path}.yaml")
    if not os.path.exists(path):
        have = sorted(f[:-5] for f in os.listdir(gens_dir) if f.endswith(".yaml")) if os.path.isdir(gens_dir) else []
        raise ParamsError(f"{path}: no such generation; defined: {', '.join(have)}")
    with open(path) as f:
        return _yaml().load(f) or {}


def merge(base, overlay, where: str = "") -> None:
    """Recursively merge ``overlay`` into ``base`` in place; unknown keys are errors."""
    for key, val in overlay.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in base:
            raise ParamsError(f"overlay key {path!r} is not a params.yaml key")
        if isinstance(val, dict) and isinstance(base[key], dict) and key not in ("n_total_per_split",):
            merge(base[key], val, path)
        else:
            base[key] = val


def apply(params_path: str, gen: str, scale: str = "cpu", extra: str | None = None, gens_dir: str = "gens") -> dict:
    """Apply generation ``gen`` at ``scale`` (then an optional extra overlay file) to params.yaml."""
    if scale not in SCALES:
        raise ParamsError(f"scale must be one of {SCALES}, got {scale!r}")
    ov = load_overlay(gen, gens_dir)
    y = _yaml()
    with open(params_path) as f:
        params = y.load(f)
    merge(params, ov.get("params", {}))
    scales = ov.get("scales", {})
    if scale not in scales:
        raise ParamsError(f"generation {gen} defines no {scale!r} scale (has {', '.join(scales)})")
    merge(params, scales[scale])
    if extra:
        with open(extra) as f:
            merge(params, y.load(f) or {})
    buf = io.StringIO()
    y.dump(params, buf)
    import yaml as pyyaml

    validate(pyyaml.safe_load(buf.getvalue()), f"{params_path} after {gen}/{scale}")
    with atomic_file(params_path) as tmp, open(tmp, "w") as f:
        f.write(buf.getvalue())
    return pyyaml.safe_load(buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m darkhaloscope.gens")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("apply", help="apply a generation overlay to params.yaml")
    a.add_argument("gen")
    a.add_argument("--scale", default="cpu", choices=SCALES)
    a.add_argument("--extra", default=None, help="a further overlay file applied last (e.g. a tiny test config)")
    a.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        apply(args.params, args.gen, args.scale, args.extra)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"applied {args.gen} ({args.scale}) to {args.params}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
