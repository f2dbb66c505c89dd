"""Reliability, slow half: determinism of the model stages under `dvc repro --force`, recovery
from SIGKILL part-way through `stamps` and `train` (re-run, and resume from last.pt), a
missing coadd band through the real stages, and S3 survey roots that cannot be used.

The session's shared full `dvc repro` (tests/_tinyrepo.py: shared_full_repo, fast engine, 2 epochs)
is the reference; each test works in a full copy of it (git, DVC cache and outputs), so the
reference is never changed. The data stages' reproduction of their md5s is covered by
tests/e2e/test_cross_machine_e2e.py and the Spark partition/master invariance by
tests/e2e/test_pipeline_data_e2e.py; neither is repeated here.
Everything runs under tmp_path, on CPU.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import _tinyrepo as T
from darkhaloscope.model.checkpoint import load_checkpoint
from darkhaloscope.survey.bricks import coadd_relpath

pytestmark = pytest.mark.slow

EPOCHS = T.full_params()["train"]["curriculum"][0]["epochs"]
ALL_STAGES = ("survey", "parent", "manifest", "coadds", "stamps", "train", "score", "evaluate")
MODEL_STAGES = ("train", "score", "evaluate")
METRICS = ("metrics/train.json", "metrics/history.json", "metrics/score.json", "metrics/eval.json",
           "metrics/stamps.json")
TRACEBACK = "Traceback (most recent call last)"


def texts(work: Path, paths=METRICS) -> dict:
    return {p: (work / p).read_text() for p in paths}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The uninterrupted reference run: (repository, dvc.lock md5s, metrics texts, model weights)."""
    shared, _ = T.shared_full_repo(tmp_path_factory)
    work = T.clone_repo(shared, tmp_path_factory.mktemp("clean") / "repo")
    ref = {"md5": T.out_md5s(work, ALL_STAGES), "metrics": texts(work),
           "weights": {n: load_checkpoint(str(work / "data/model" / n))["model_state"]
                       for n in ("best.pt", "main/best.pt", "main/last.pt")}}
    assert EPOCHS >= 2  # the SIGKILL tests stop a run between its epochs
    assert json.loads(ref["metrics"]["metrics/train.json"])["main"]["epochs_run"] == EPOCHS
    return work, ref


@pytest.fixture
def work(clean, tmp_path):
    """A full copy of the reference repository to break."""
    w = T.clone_repo(clean[0], tmp_path / "repo")
    yield w
    left = T.reap_leftovers(w)
    assert not left, f"processes left running in {w}: {left}"


def assert_up_to_date(work: Path) -> None:
    status = T.dvc(["status", "evaluate"], work)  # the pipeline the reference ran (search is not upstream)
    assert "Data and pipelines are up to date" in status, status


def assert_same_weights(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ============================================================================ determinism


def test_forced_repro_of_model_stages_is_identical(clean, work):
    """train (CPU, fixed seed), score and evaluate forced again: identical dvc.lock md5s and metrics."""
    _, ref = clean
    out = T.dvc(["repro", "--force", "--single-item", *MODEL_STAGES], work, timeout=400)
    assert T.ran_stages(out) == set(MODEL_STAGES), out[-3000:]
    assert T.out_md5s(work, ALL_STAGES) == ref["md5"]
    assert texts(work) == ref["metrics"]
    assert_up_to_date(work)


# ============================================================================ SIGKILL


def test_sigkill_during_stamps_leaves_nothing_complete_and_rerun_matches(clean, work, tmp_path):
    _, ref = clean
    proc = T.spawn([T.VENV_BIN / "dvc", "repro", "--force", "--single-item", "stamps"], work, tmp_path / "dvc.log")
    tmp_dir = work / "data" / "stamps.tmp"
    # Spark has started writing: a part file (or its .tmp) exists in the stage's temporary directory
    T.kill_when(proc, lambda: tmp_dir.is_dir() and any(p.is_file() for p in tmp_dir.rglob("*")), timeout=300)
    assert T.reap_leftovers(work) == []  # the JVM and Spark's Python workers went with the group
    assert not (work / "data" / "stamps").exists(), "a killed stamps run left a data/stamps that looks complete"
    assert tmp_dir.is_dir()  # the partial output stays in the temporary directory
    status = T.dvc(["status", "stamps"], work)
    assert "stamps:" in status and "deleted:" in status and "data/stamps" in status, status
    # running the stage again (over the killed run's leftovers; a plain `dvc repro stamps` would
    # restore the recorded outputs from the cache, see the training case) gives the same bytes
    out = T.dvc(["repro", "--force", "--single-item", "stamps"], work, timeout=400)
    assert T.ran_stages(out) == {"stamps"}, out[-3000:]
    assert "had been killed. Auto removed it from the lock file" in out, out[-3000:]  # DVC cleared its locks
    assert T.out_md5s(work, ALL_STAGES) == ref["md5"]
    assert (work / "metrics/stamps.json").read_text() == ref["metrics"]["metrics/stamps.json"]
    assert not tmp_dir.exists()
    assert_up_to_date(work)  # train, score and evaluate see the very same stamps


def replaced(path: Path):
    """A predicate: ``path`` has disappeared (DVC removed the stage's outputs) and exists again."""
    seen_gone = []

    def ready() -> bool:
        if not path.exists():
            seen_gone.append(True)
            return False
        return bool(seen_gone)
    return ready


def test_sigkill_during_training_then_rerun_matches(clean, work, tmp_path):
    _, ref = clean
    proc = T.spawn([T.VENV_BIN / "dvc", "repro", "--force", "--single-item", "train"], work, tmp_path / "dvc.log")
    last = work / "data" / "model" / "main" / "last.pt"
    T.kill_when(proc, replaced(last), timeout=300)  # the first epoch's last.pt of the new run
    assert load_checkpoint(str(last))["train_state"]["epoch"] < EPOCHS  # killed part-way
    status = T.dvc(["status", "train"], work)
    assert "train:" in status and "modified:" in status and "data/model" in status, status
    # what a user types: DVC clears the dead run's locks and re-runs train (score and evaluate then
    # find the same model bytes and have nothing to do)
    out = T.dvc(["repro", "evaluate"], work, timeout=400)
    assert "had been killed. Auto removed it from the lock file" in out, out[-3000:]
    if "train" not in T.ran_stages(out):  # DVC may restore the recorded outputs from its cache instead
        assert "Stage 'train' is cached - skipping run, checking out outputs" in out, out[-3000:]
        out = T.dvc(["repro", "--force", "--single-item", "train"], work, timeout=400)
    assert T.ran_stages(out) == {"train"}, out[-3000:]
    assert T.out_md5s(work, ALL_STAGES) == ref["md5"]
    assert texts(work) == ref["metrics"]
    assert_up_to_date(work)


def test_sigkill_then_resume_from_last_pt_matches(clean, work, tmp_path):
    """A real SIGKILL after epoch k, then `stages/train.py` with DHS_RESUME=1 resumes from last.pt
    (DVC would delete the outputs first, so the stage script runs directly) and ends with the
    uninterrupted run's weights, metrics and bytes."""
    _, ref = clean
    model = work / "data" / "model"
    for p in sorted(model.rglob("*"), reverse=True):  # start the stage from scratch
        p.unlink() if p.is_file() else p.rmdir()
    model.rmdir()
    last = model / "main" / "last.pt"
    proc = T.spawn([sys.executable, "stages/train.py"], work, tmp_path / "train1.log", DHS_RESUME="1")
    T.kill_when(proc, last.exists, timeout=300)
    k = load_checkpoint(str(last))["train_state"]["epoch"]
    assert 1 <= k < EPOCHS, k
    res = T.stage_main(work, "train", timeout=300, check=True, DHS_RESUME="1")
    assert f"resumed stage main from data/model/main/last.pt at epoch {k}" in res.stderr, res.stderr[-3000:]
    for name, state in ref["weights"].items():
        assert_same_weights(load_checkpoint(str(model / name))["model_state"], state)
    assert texts(work, METRICS[:2]) == {p: ref["metrics"][p] for p in METRICS[:2]}
    assert_up_to_date(work)  # byte-identical data/model and metrics: DVC sees nothing to do


# every manifest row of the clean run through process_brick with the fast (numba) engine; prints a hash
FAST_ENGINE_SCRIPT = """
import hashlib, sys
sys.path.insert(0, "src")
import pyarrow.parquet as pq
from darkhaloscope.params import load_params
from darkhaloscope.stamps.cutout import process_brick
p = load_params("params.yaml")
inj = dict(p["inject"], engine="fast")
rows = pq.read_table("data/manifest/manifest.parquet").to_pylist()
h = hashlib.sha256()
for b in sorted({r["brickname"] for r in rows}):
    for r in process_brick(b, [r for r in rows if r["brickname"] == b], "data/coadds", inj, ("g", "r", "z")):
        h.update(r["stamp"].tobytes())
print("HASH", h.hexdigest())
"""


def test_fast_engine_stamps_do_not_depend_on_the_numba_cache(clean, tmp_path):
    work, _ = clean
    cache = tmp_path / "numba-cache"  # empty: the first run compiles (and fills it), the second loads
    hashes = [T.run([sys.executable, "-c", FAST_ENGINE_SCRIPT], work, 600, NUMBA_CACHE_DIR=str(cache)).stdout
              for _ in range(2)]
    assert all("HASH" in h for h in hashes)
    assert hashes[0] == hashes[1]


# ============================================================================ missing coadd band


def test_missing_coadd_band_through_the_stages(clean, work):
    """One band's image file deleted from the survey before `coadds` and `stamps` (run directly:
    `dvc repro` would re-create the survey): coadds lists it, the brick's rows fail with the
    reason and metrics/stamps.json counts them."""
    man = pq.read_table(work / "data/manifest/manifest.parquet", columns=["brickname"])
    brick = sorted(set(man.column("brickname").to_pylist()))[0]
    rel = coadd_relpath(brick, "g", "image")
    (work / "data/survey" / rel).unlink()
    res = T.stage_main(work, "coadds", check=True)
    assert "WARNING: 1 coadd files missing" in res.stdout and rel in res.stdout
    cm = json.loads((work / "metrics/coadds.json").read_text())
    assert cm["n_missing"] == 1
    assert cm["missing"] == [{"brick": brick, "band": "g", "kind": "image", "file": f"data/survey/{rel}"}]
    T.stage_main(work, "stamps", timeout=400, check=True)
    n_fail, n_brick = 0, 0
    for split in ("train", "val", "test", "parent"):
        for f in sorted((work / "data/stamps" / split).glob("part-*.parquet")):
            t = pq.read_table(f, columns=["brickname", "cutout_ok", "fail_reason"]).to_pylist()
            for r in t:
                if r["brickname"] == brick:
                    n_brick += 1
                    assert r["cutout_ok"] == 0 and r["fail_reason"].startswith("missing_coadd:image-g ("), r
                else:
                    assert not r["fail_reason"].startswith("missing_coadd:image-g")
                n_fail += r["fail_reason"].startswith("missing_coadd:image-g")
    assert n_brick > 0 and n_fail == n_brick
    sm = json.loads((work / "metrics/stamps.json").read_text())
    assert sum(d["fail_reasons"].get("missing_coadd", 0) for d in sm["splits"].values()) == n_brick


# ============================================================================ S3 survey roots


_AWS_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
              "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _parent_with_root(tmp_path: Path, root: str, endpoint: str, monkeypatch, **env):
    """`python stages/parent.py` in a copy of stages/ + src/ with survey.root = ``root``, S3 at ``endpoint``."""
    for k in _AWS_UNSET:
        monkeypatch.delenv(k, raising=False)
    work = T.copy_sources(tmp_path / "repo", only=("stages/", "src/"))
    p = T.tiny_params()
    p["survey"]["root"] = root
    T.write_params(work, p)
    res = T.run([sys.executable, "stages/parent.py"], work, timeout=180, check=False,
                AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing-secret",
                AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
                AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"),
                NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **env)
    return work, res


def test_parent_stage_with_unreachable_s3_endpoint(tmp_path, monkeypatch):
    with socket.socket() as s:  # bound but not listening: every connection is refused
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
        work, res = _parent_with_root(tmp_path, "s3://missing-bucket/x", endpoint, monkeypatch,
                                      AWS_MAX_ATTEMPTS="2")  # botocore's retries: 2 s instead of 6
    assert res.returncode == 1, res.stderr[-3000:]
    assert TRACEBACK not in res.stderr, res.stderr[-4000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith(f"[parent] s3://missing-bucket/x: cannot reach the S3 endpoint {endpoint} "
                           f"(from AWS_ENDPOINT_URL)"), line
    assert "Check AWS_ENDPOINT_URL" in line and "survey.root in params.yaml" in line
    assert not (work / "data").exists()


def test_parent_stage_with_missing_bucket(tmp_path, monkeypatch):
    from _s3 import moto_server

    with moto_server(tmp_path) as endpoint:
        work, res = _parent_with_root(tmp_path, "s3://dhs-no-such-bucket/dr10", endpoint, monkeypatch)
    assert res.returncode == 1 and TRACEBACK not in res.stderr, res.stderr[-4000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith(f"[parent] s3://dhs-no-such-bucket/dr10: bucket 'dhs-no-such-bucket' does not exist "
                           f"at {endpoint} (from AWS_ENDPOINT_URL)"), line
    assert "survey.root in params.yaml" in line and "never creates buckets" in line
    assert not (work / "data").exists()
