"""The data stages' bytes do not depend on the CPU's SIMD level (dvc.lock reproduces on any machine).

The data stages of a tiny configuration run twice: once as a collaborator's machine would run them
(the session's shared full run, tests/_tinyrepo.py), once in a fresh copy with numba compiling for
a generic x86-64 CPU (no AVX, no FMA) and numpy's dispatch narrowed to its baseline by hand. Every
output hash in dvc.lock must agree.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

import _tinyrepo as T

DATA_STAGES = ("survey", "parent", "manifest", "coadds", "stamps")


@pytest.mark.slow
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 dispatch levels")
def test_data_hashes_do_not_depend_on_simd_level(tmp_path_factory, tmp_path):
    # as a collaborator's machine runs them: the session's shared full run (tests/_tinyrepo.py)
    shared, _ = T.shared_full_repo(tmp_path_factory)
    normal = T.out_md5s(shared, DATA_STAGES)
    # in a fresh copy of the same sources and params (no numba cache of any kind, no outputs)
    work = T.make_repo(tmp_path / "narrowed", T.full_params())
    T.run([T.VENV_BIN / "dvc", "repro", "stamps"], work, timeout=900, NUMBA_CPU_NAME="generic",
          NUMBA_CPU_FEATURES="", NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR")
    assert T.out_md5s(work, DATA_STAGES) == normal
    assert all(normal[s] for s in DATA_STAGES)


def _stage_numpy_features(work, script):
    code = (f"import sys; sys.argv = [{script!r}]; sys.path.insert(0, 'stages'); import _common; "
            "from numpy._core._multiarray_umath import __cpu_features__ as f; print(f['X86_V3'], f['X86_V4'])")
    return T.run([sys.executable, "-c", code], work).stdout.split()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 dispatch levels")
def test_data_stages_pin_numpy_dispatch_and_training_does_not(tmp_path):
    work = T.copy_sources(tmp_path / "w", only=("stages/", "src/"))
    assert _stage_numpy_features(work, "stages/parent.py") == ["False", "False"]
    # a data stage that imported numpy before _common is refused, naming the fix
    code = "import numpy, sys; sys.argv = ['stages/manifest.py']; sys.path.insert(0, 'stages'); import _common"
    res = subprocess.run([sys.executable, "-c", code], cwd=work, env=T.env(), capture_output=True, text=True)
    assert res.returncode != 0 and "import _common first" in res.stderr
    # training keeps numpy's fastest paths (whatever this CPU has)
    from numpy._core._multiarray_umath import __cpu_features__ as here

    assert _stage_numpy_features(work, "stages/train.py")[0] == str(here["X86_V3"])
