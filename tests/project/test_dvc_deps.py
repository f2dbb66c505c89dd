"""Every module a stage runs is a dependency of that stage in dvc.yaml.

Outputs are byte-identical by design, so a module edited without being a dep of a stage that
runs it leaves that stage's output stale while DVC reports "up to date". This test computes,
without importing anything, the import closure of each stage script (every ``import`` /
``from ... import`` anywhere in a file, function-level ones included, plus the ``__init__`` of
every package on the way) and fails when a module in it is not covered by the stage's deps.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
STAGES = REPO / "stages"


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The file of a local module: ``darkhaloscope.x.y`` under src/, a stage helper under stages/."""
    parts = name.split(".")
    base = root / "src" if parts[0] == "darkhaloscope" else root / "stages"
    p = base.joinpath(*parts)
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    if p.with_suffix(".py").is_file():
        return p.with_suffix(".py")
    return None


def _package_of(path: Path, root: Path) -> list[str]:
    if path.is_relative_to(root / "src"):
        rel = path.relative_to(root / "src").with_suffix("")
        parts = list(rel.parts)
        return parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    return []


def imported_modules(path: Path, root: Path = REPO) -> set[str]:
    """Local modules ``path`` imports, as dotted names (packages on the way included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = _package_of(path, root)
    if path.name == "__init__.py" and path.is_relative_to(root / "src"):
        pkg = list(path.relative_to(root / "src").parent.parts)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)  # "from pkg import module"
    out = set()
    for n in names:
        parts = n.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            head = ".".join(parts[:i])
            if module_file(head, root) is not None:
                out.add(head)
    return out


def import_closure(script: Path, root: Path = REPO) -> set[Path]:
    """Every local file (src/darkhaloscope/**, stages/*) that running ``script`` may execute."""
    seen, todo = {script}, [script]
    while todo:
        f = todo.pop()
        for m in imported_modules(f, root):
            p = module_file(m, root)
            if p is not None and p not in seen:
                seen.add(p)
                todo.append(p)
    return seen


def uncovered(dvc: dict, root: Path = REPO) -> dict[str, list[str]]:
    """{stage: [files in its import closure that none of its deps covers]} for the python stages."""
    out = {}
    for name, st in dvc["stages"].items():
        cmd = st["cmd"].split()
        if len(cmd) < 2 or cmd[0] != "python" or not cmd[1].endswith(".py"):
            continue
        deps = [root / str(d) for d in st.get("deps", []) if "${" not in str(d)]
        missing = []
        for f in sorted(import_closure(root / cmd[1], root)):
            if not any(f == d or f.is_relative_to(d) for d in deps):
                missing.append(str(f.relative_to(root)))
        if missing:
            out[name] = missing
    return out


@pytest.fixture(scope="module")
def dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_every_stage_depends_on_the_code_it_runs(dvc):
    assert uncovered(dvc) == {}


def test_closure_sees_function_level_and_package_imports():
    closure = {str(p.relative_to(REPO)) for p in import_closure(STAGES / "stamps.py")}
    # the cutout reader (imported through stamps.cutout) and a package __init__ on the way
    assert "src/darkhaloscope/survey/coadds.py" in closure
    assert "src/darkhaloscope/stamps/__init__.py" in closure
    assert "stages/_common.py" in closure
    assert "src/darkhaloscope/lensing/fast.py" in closure  # imported inside get_engine


def test_a_missing_dep_is_reported(dvc):
    broken = copy.deepcopy(dvc)
    broken["stages"]["score"]["deps"] = [d for d in broken["stages"]["score"]["deps"]
                                         if not str(d).startswith("src/darkhaloscope/model")]
    missing = uncovered(broken)
    assert "score" in missing
    assert "src/darkhaloscope/model/score.py" in missing["score"]


def test_the_pre_package_dvc_yaml_fails(tmp_path):
    """The flat layout's dvc.yaml listed single files: a stage importing a module it did not list
    (score -> train.predict, as before the package move) is caught."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "src" / "darkhaloscope").mkdir(parents=True)
    (tmp_path / "src" / "darkhaloscope" / "__init__.py").write_text("")
    (tmp_path / "src" / "darkhaloscope" / "score.py").write_text("def f():\n    from .train import predict\n")
    (tmp_path / "src" / "darkhaloscope" / "train.py").write_text("def predict():\n    pass\n")
    (tmp_path / "stages" / "score.py").write_text("from darkhaloscope.score import f\n")
    dvc = {"stages": {"score": {"cmd": "python stages/score.py",
                                "deps": ["stages/score.py", "src/darkhaloscope/score.py"]}}}
    assert uncovered(dvc, tmp_path) == {"score": ["src/darkhaloscope/__init__.py",
                                                   "src/darkhaloscope/train.py"]}
