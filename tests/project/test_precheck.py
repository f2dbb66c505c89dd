"""`make repro` runs darkhaloscope.precheck before `dvc repro`: params.yaml validated through
darkhaloscope.params, and an ``s3://`` survey.root checked (credentials, bucket, objects under the
prefix), each problem one line naming survey.root and the fix - before DVC's own dependency check
could answer "Unable to locate credentials".

The S3 cases without a server (no credentials, an endpoint that refuses connections) are fast; those
against moto's S3 server (tests/_s3.py) are slow. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml

import _tinyrepo as T
from _s3 import _DROP_ENV, moto_server
from darkhaloscope.errors import ParamsError
from darkhaloscope.precheck import PrecheckError, check_s3_survey_root, main, precheck

KEY_ID, SECRET = "testing", "testing-secret-value"
ROOT = "s3://dhs-survey/dr10"


@pytest.fixture
def no_aws(monkeypatch, tmp_path):
    """No credentials anywhere boto3 looks (environment, ~/.aws files, instance metadata), no proxies."""
    for name in (*_DROP_ENV, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
                        "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1",
                        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


@pytest.fixture
def aws(no_aws):
    no_aws.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    no_aws.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return no_aws


def _closed_endpoint():
    s = socket.socket()  # bound, never listening: connections are refused
    s.bind(("127.0.0.1", 0))
    return s, f"http://127.0.0.1:{s.getsockname()[1]}"


def _params_file(tmp_path: Path, root: str = ROOT, **inject) -> Path:
    p = copy.deepcopy(T.shipped_params())
    p["survey"]["root"] = root
    p["inject"].update(inject)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


# ============================================================================ fast


def test_every_param_is_validated_first(tmp_path, capsys):
    path = _params_file(tmp_path, "data/survey", max_failed_frac=2.0)
    with pytest.raises(ParamsError, match="inject.max_failed_frac: expected a fraction"):
        precheck(str(path))
    assert main([str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"[precheck] {path}: inject.max_failed_frac: expected a fraction of a split's rows in [0, 1], "
                   f"got 2.0")


def test_local_survey_root_needs_no_s3(tmp_path, capsys, no_aws):
    path = _params_file(tmp_path, "data/survey")
    assert main([str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"[precheck] ok: {path} is valid"


def test_no_credentials_named_with_survey_root_and_fix(tmp_path, capsys, no_aws):
    sock, endpoint = _closed_endpoint()
    with sock:
        no_aws.setenv("AWS_ENDPOINT_URL", endpoint)
        path = _params_file(tmp_path)
        with pytest.raises(PrecheckError) as e:
            precheck(str(path))
        assert main([str(path)]) == 1
    msg = str(e.value)
    assert msg.startswith(f"{path}: survey.root {ROOT}: no usable AWS credentials to read it "
                          f"(Unable to locate credentials): export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                          f"(or AWS_PROFILE) for {endpoint} (from AWS_ENDPOINT_URL)"), msg
    assert "set survey.root in params.yaml to a local directory" in msg
    assert capsys.readouterr().err.strip() == f"[precheck] {msg}"


def test_s3_stamp_set_root_is_checked_too(tmp_path, no_aws):
    """stamp_set.root is a DVC dependency of train/score/evaluate as well: the same check, its own key."""
    sock, endpoint = _closed_endpoint()
    with sock:
        no_aws.setenv("AWS_ENDPOINT_URL", endpoint)
        p = copy.deepcopy(T.shipped_params())
        p["stamp_set"]["root"] = "s3://lens-sets/v5_cosmos_paired"
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(p, sort_keys=False))
        with pytest.raises(PrecheckError) as e:
            precheck(str(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}: stamp_set.root s3://lens-sets/v5_cosmos_paired: no usable AWS credentials"), msg
    assert "set stamp_set.root in params.yaml to a local directory" in msg


def test_unreachable_endpoint_named(tmp_path, aws):
    sock, endpoint = _closed_endpoint()
    with sock:
        aws.setenv("AWS_ENDPOINT_URL", endpoint)
        with pytest.raises(PrecheckError) as e:
            check_s3_survey_root(ROOT, "params.yaml", timeout=2.0)
    msg = str(e.value)
    assert msg.startswith(f"params.yaml: survey.root {ROOT}: cannot reach the S3 endpoint {endpoint} "
                          f"(from AWS_ENDPOINT_URL)"), msg
    assert "Check AWS_ENDPOINT_URL".lower() in msg.lower() and "survey.root in params.yaml" in msg


def _make_copy(tmp_path: Path, root: str) -> Path:
    """The Makefile, src/ and params.yaml in a directory with the test venv as .venv (not a DVC project)."""
    work = T.copy_sources(tmp_path / "repo", only=("Makefile", "src/"))
    (work / ".venv").symlink_to(T.VENV_BIN.parent, target_is_directory=True)
    p = copy.deepcopy(T.shipped_params())
    p["survey"]["root"] = root
    T.write_params(work, p)
    return work


def _make_repro(work: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DHS_PARAMS", "PYTHONPATH", "MAKEFLAGS", "MFLAGS")}
    # -o: the venv is the test's own (never reinstalled)
    return subprocess.run(["make", "-o", ".venv/.installed", "repro"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)


def test_make_repro_stops_at_the_precheck_before_dvc(tmp_path, no_aws):
    sock, endpoint = _closed_endpoint()
    with sock:
        no_aws.setenv("AWS_ENDPOINT_URL", endpoint)
        work = _make_copy(tmp_path, ROOT)
        res = _make_repro(work)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("[precheck] ")]
    assert len(lines) == 1 and lines[0].startswith(f"[precheck] params.yaml: survey.root {ROOT}: no usable AWS "
                                                   f"credentials"), res.stderr[-3000:]
    assert "darkhaloscope.precheck" in res.stdout and "dvc repro" not in res.stdout  # make echoes what it runs
    assert "Running stage" not in res.stdout + res.stderr and not (work / "data").exists()


def test_make_repro_runs_dvc_after_a_passing_precheck(tmp_path, no_aws):
    work = _make_copy(tmp_path, "data/survey")
    res = _make_repro(work)
    out = res.stdout + res.stderr
    assert "[precheck] ok: params.yaml is valid" in res.stdout, out[-3000:]
    # then `dvc repro` ran: here it stops, this copy not being a DVC repository
    assert res.returncode != 0 and "dvc repro" in res.stdout
    assert res.stdout.index("[precheck] ok") < res.stdout.index("dvc repro", res.stdout.index("[precheck] ok"))
    assert "not inside of a DVC repository" in out or "you are not inside" in out.lower(), out[-3000:]


# ============================================================================ slow: moto S3 server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


def _s3_client(endpoint: str):
    return boto3.session.Session(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                                 region_name="us-east-1").client("s3", endpoint_url=endpoint)


@pytest.mark.slow
def test_against_an_s3_server(tmp_path, aws, s3, capsys):
    aws.setenv("AWS_ENDPOINT_URL", s3)
    path = _params_file(tmp_path)
    with pytest.raises(PrecheckError) as e:  # the bucket was never created
        precheck(str(path))
    assert str(e.value) == (f"{path}: survey.root {ROOT}: bucket 'dhs-survey' does not exist at {s3} (from "
                            f"AWS_ENDPOINT_URL): check survey.root in params.yaml (s3://<bucket>/<prefix>) and the "
                            f"endpoint (AWS_ENDPOINT_URL); this pipeline never creates buckets")
    client = _s3_client(s3)
    client.create_bucket(Bucket="dhs-survey")
    client.put_object(Bucket="dhs-survey", Key="other/sweep/x.fits", Body=b"x")
    with pytest.raises(PrecheckError) as e:  # the bucket is there, the prefix is empty
        precheck(str(path))
    assert str(e.value).startswith(f"{path}: survey.root {ROOT}: bucket 'dhs-survey' holds no object under dr10/")
    client.put_object(Bucket="dhs-survey", Key="dr10/sweep/sweep-150p000-155p005.fits", Body=b"x")
    assert main([str(path)]) == 0
    assert capsys.readouterr().out.strip() == (f"[precheck] ok: {path} is valid; survey.root {ROOT}: bucket "
                                               f"reachable, credentials accepted, objects present")


@pytest.mark.slow
def test_rejected_credentials(tmp_path, aws):
    """moto with IAM authentication on from the first request rejects the dummy key."""
    with moto_server(tmp_path, {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as endpoint:
        aws.setenv("AWS_ENDPOINT_URL", endpoint)
        with pytest.raises(PrecheckError) as e:
            check_s3_survey_root(ROOT)
    assert str(e.value).startswith(f"params.yaml: survey.root {ROOT}: the credentials were rejected for bucket "
                                   f"'dhs-survey' at {endpoint} (from AWS_ENDPOINT_URL) (HTTP 403)")
    assert "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY" in str(e.value)


def test_module_entry_point_usage():
    res = subprocess.run([sys.executable, "-m", "darkhaloscope.precheck", "a", "b"], capture_output=True, text=True,
                         cwd=T.REPO, env={**os.environ, "PYTHONPATH": str(T.REPO / "src")}, timeout=120)
    assert res.returncode == 2 and "usage: python -m darkhaloscope.precheck [params.yaml]" in res.stderr
