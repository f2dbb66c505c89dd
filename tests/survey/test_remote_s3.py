"""S3 remote storage for DVC against a real (moto) S3 server on 127.0.0.1.

- `make remote` (scripts/remote.sh) configures the default remote `storage`, then
  `dvc push`, removing the cache and the outputs, and `dvc pull` restore byte-identical files;
- the remote check (darkhaloscope.remote_check) names the problem: unreachable endpoint,
  missing bucket (DVC never creates one), rejected credentials;
- CREDENTIALS=local puts the keys into .dvc/config.local, never .dvc/config, and git ignores it;
- the installed botocore/aiobotocore honour AWS_REQUEST_CHECKSUM_CALCULATION=when_required.

Only 127.0.0.1 is contacted; the moto servers are subprocesses stopped at teardown, and every
DVC project lives under tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.config import Config

from _s3 import _DROP_ENV, moto_server
from darkhaloscope.remote_check import RemoteError, check_s3_remote, main as remote_check_main

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
GIT = ["git", "-c", "user.name=dhs-test", "-c", "user.email=dhs-test@example.invalid",
       "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]
CHECKSUM_ENV = {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
                "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}
DUMMY_KEY_ID, DUMMY_SECRET = "testing", "testing-secret-value"


# --------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def aws_env(monkeypatch, tmp_path_factory):
    """Dummy credentials only, no ~/.aws, no proxies, no user DVC config; checksum gotcha set."""
    home = tmp_path_factory.mktemp("aws-home")
    for name in _DROP_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "AWS_ACCESS_KEY_ID": DUMMY_KEY_ID, "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"), "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost", "DVC_NO_ANALYTICS": "1",
        "DVC_GLOBAL_CONFIG_DIR": str(home / "dvc-global"), "DVC_SYSTEM_CONFIG_DIR": str(home / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"), **CHECKSUM_ENV,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }.items():
        monkeypatch.setenv(name, value)
    return home


@contextlib.contextmanager
def closed_port():
    """A 127.0.0.1 port bound by this process but not listening: connecting is refused, and no
    other process can take the port meanwhile."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]
    finally:
        s.close()


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


def s3_client(endpoint: str):
    return boto3.session.Session(aws_access_key_id=DUMMY_KEY_ID, aws_secret_access_key=DUMMY_SECRET,
                                 region_name="us-east-1").client(
        "s3", endpoint_url=endpoint, config=Config(retries={"max_attempts": 2}))


def run(cmd, cwd, check=True, env_extra=None, timeout=120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(env_extra or {})
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    if check:
        assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res


def dvc(args, cwd, **kw) -> subprocess.CompletedProcess:
    return run([VENV_BIN / "dvc", *args], cwd, **kw)


def md5_tree(paths: list[Path], root: Path) -> dict:
    out = {}
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            out[str(f.relative_to(root))] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


def make_project(root: Path) -> list[Path]:
    """git + DVC project with data/x (text, CSV, random binary, nested dir) and data/y.bin,
    both `dvc add`-ed and committed; scripts/remote.sh and the Makefile copied in."""
    root.mkdir(parents=True)
    run([*GIT, "init", "-q"], root)
    dvc(["init", "-q"], root)
    (root / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "remote.sh", root / "scripts" / "remote.sh")
    shutil.copy2(REPO / "Makefile", root / "Makefile")
    x = root / "data" / "x"
    (x / "sub").mkdir(parents=True)
    (x / "notes.txt").write_text("dark halo scope remote round trip\n")
    (x / "table.csv").write_text("id,ra,dec\n1,150.1,0.5\n2,150.2,0.6\n")
    rng = np.random.default_rng(20240611)
    (x / "sub" / "blob.bin").write_bytes(rng.integers(0, 256, size=300_000, dtype=np.uint8).tobytes())
    (x / "sub" / "empty.bin").write_bytes(b"")
    (root / "data" / "y.bin").write_bytes(rng.standard_normal(4096).astype("<f4").tobytes())
    dvc(["add", "-q", "data/x", "data/y.bin"], root)
    run([*GIT, "add", "-A"], root)
    run([*GIT, "commit", "-q", "-m", "data"], root)
    return [x, root / "data" / "y.bin"]


def remote_sh(root: Path, endpoint: str, bucket: str, *extra, check=True, env_extra=None):
    env = {"PYTHON": sys.executable, "DVC": str(VENV_BIN / "dvc"), **(env_extra or {})}
    return run(["bash", "scripts/remote.sh", endpoint, bucket, *extra], root, check=check, env_extra=env)


# --------------------------------------------------------------------------------------------
# fast: argument checks, unreachable endpoint, checksum env vars


def test_check_rejects_malformed_arguments():
    with pytest.raises(RemoteError, match="not an http"):
        check_s3_remote("127.0.0.1:9000", "bucket")
    with pytest.raises(RemoteError, match="bare name"):
        check_s3_remote("http://127.0.0.1:9000", "s3://bucket")
    assert remote_check_main([]) == 2


def test_unreachable_endpoint_message(aws_env):
    with closed_port() as port:
        endpoint = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        with pytest.raises(RemoteError) as err:
            check_s3_remote(endpoint, "some-bucket", timeout=2.0)
        assert time.monotonic() - t0 < 15  # one attempt, no minutes of retries
    msg = str(err.value)
    assert msg.startswith(f"cannot reach S3 endpoint {endpoint}")
    assert "connection refused / timeout" in msg and "check ENDPOINT or start the server" in msg


class _Captured(Exception):
    pass


def _checksum_headers_sync(endpoint: str) -> list[str]:
    got: dict = {}

    def grab(request, **_):
        got.update(request.headers)
        raise _Captured

    client = boto3.session.Session(aws_access_key_id="a", aws_secret_access_key="b",
                                   region_name="us-east-1").client(
        "s3", endpoint_url=endpoint, config=Config(retries={"max_attempts": 1}))
    client.meta.events.register("before-send.s3.PutObject", grab)
    with pytest.raises(_Captured):
        client.put_object(Bucket="bkt", Key="k", Body=b"0123456789")
    return sorted(k.lower() for k in got if "checksum" in k.lower() or k.lower() == "x-amz-trailer")


def _checksum_headers_aio(endpoint: str) -> list[str]:
    """The same through aiobotocore, which s3fs (hence dvc-s3) uses."""
    from aiobotocore.session import get_session

    async def probe():
        got: dict = {}

        def grab(request, **_):
            got.update(request.headers)
            raise _Captured

        async with get_session().create_client(
                "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="a",
                aws_secret_access_key="b", config=Config(retries={"max_attempts": 1})) as client:
            client.meta.events.register("before-send.s3.PutObject", grab)
            with pytest.raises(_Captured):
                await client.put_object(Bucket="bkt", Key="k", Body=b"0123456789")
        return sorted(k.lower() for k in got if "checksum" in k.lower() or k.lower() == "x-amz-trailer")

    return asyncio.run(probe())


def test_installed_botocore_honours_checksum_env(monkeypatch, aws_env):
    """The gotcha's fix works with the installed botocore and aiobotocore: with the env vars,
    an upload carries no CRC checksum header; without them (botocore >= 1.36 default) it does."""
    with closed_port() as port:  # requests are captured before they would be sent
        endpoint = f"http://127.0.0.1:{port}"
        assert _checksum_headers_sync(endpoint) == []
        assert _checksum_headers_aio(endpoint) == []
        assert boto3.session.Session().client("s3", endpoint_url=endpoint).meta.config \
            .response_checksum_validation == "when_required"
        for name in CHECKSUM_ENV:
            monkeypatch.delenv(name)
        assert any(h.startswith("x-amz-checksum") for h in _checksum_headers_sync(endpoint))
        assert any(h.startswith("x-amz-checksum") for h in _checksum_headers_aio(endpoint))


# --------------------------------------------------------------------------------------------
# slow: moto S3 server


@pytest.mark.slow
def test_push_pull_round_trip(aws_env, s3_endpoint, tmp_path):
    bucket = "dhs-roundtrip"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    root = tmp_path / "proj"
    outs = make_project(root)
    before = md5_tree(outs, root)
    assert len(before) == 5

    # `make remote`, with the project's venv standing in for .venv (-o: never reinstall it).
    (root / ".venv").symlink_to(VENV_BIN.parent, target_is_directory=True)
    res = run(["make", "-o", ".venv/.installed", "remote", f"ENDPOINT={s3_endpoint}", f"BUCKET={bucket}"], root)
    assert "remote 'storage' is ready" in res.stdout
    config = (root / ".dvc" / "config").read_text()
    assert f"url = s3://{bucket}/dvc" in config and f"endpointurl = {s3_endpoint}" in config
    assert "remote = storage" in config
    assert "access_key" not in config and "secret" not in config and DUMMY_SECRET not in config
    assert not (root / ".dvc" / "config.local").exists()

    res = dvc(["push"], root)
    # five files and the .dir object listing data/x
    assert "6 files pushed" in res.stdout + res.stderr, res.stdout + res.stderr
    keys = [o["Key"] for o in s3_client(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 6 and all(k.startswith("dvc/files/md5/") for k in keys), keys
    assert sum(k.endswith(".dir") for k in keys) == 1

    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(root / "data" / "x")
    (root / "data" / "y.bin").unlink()
    res = dvc(["pull"], root)
    assert md5_tree(outs, root) == before
    res = dvc(["status", "-c"], root)
    assert "Cache and remote 'storage' are in sync" in res.stdout, res.stdout
    assert "up to date" in dvc(["status"], root).stdout


@pytest.mark.slow
def test_script_reports_unreachable_endpoint(aws_env, tmp_path):
    root = tmp_path / "proj"
    make_project(root)
    with closed_port() as port:
        res = remote_sh(root, f"http://127.0.0.1:{port}", "any-bucket", check=False)
    assert res.returncode == 1
    assert f"cannot reach S3 endpoint http://127.0.0.1:{port}" in res.stderr, res.stderr
    assert "check ENDPOINT or start the server" in res.stderr


@pytest.mark.slow
def test_missing_bucket_message(aws_env, s3_endpoint, tmp_path):
    bucket = "dhs-never-created"
    with pytest.raises(RemoteError) as err:
        check_s3_remote(s3_endpoint, bucket)
    expected = (f"bucket {bucket} does not exist at {s3_endpoint}: DVC does not create buckets; "
                f"create it with `aws --endpoint-url {s3_endpoint} s3 mb s3://{bucket}`")
    assert str(err.value) == expected

    root = tmp_path / "proj"
    make_project(root)
    res = remote_sh(root, s3_endpoint, bucket, check=False)
    assert res.returncode == 1 and expected in res.stderr, res.stderr
    # the check does not create the bucket either
    names = [b["Name"] for b in s3_client(s3_endpoint).list_buckets()["Buckets"]]
    assert bucket not in names


@pytest.mark.slow
def test_credentials_rejected_message(aws_env, tmp_path):
    """moto with IAM authentication on from the first request rejects the dummy key."""
    with moto_server(tmp_path, {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as endpoint:
        with pytest.raises(RemoteError) as err:
            check_s3_remote(endpoint, "dhs-any")
    msg = str(err.value)
    assert msg.startswith(f"credentials rejected by {endpoint} for bucket dhs-any (HTTP 403")
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in msg


@pytest.mark.slow
def test_credentials_local_stay_out_of_git(aws_env, s3_endpoint, tmp_path):
    bucket = "dhs-creds-local"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    root = tmp_path / "proj"
    make_project(root)
    remote_sh(root, s3_endpoint, bucket, "team/dvc", env_extra={"CREDENTIALS": "local"})

    local = (root / ".dvc" / "config.local").read_text()
    config = (root / ".dvc" / "config").read_text()
    assert f"secret_access_key = {DUMMY_SECRET}" in local and f"access_key_id = {DUMMY_KEY_ID}" in local
    assert DUMMY_SECRET not in config and "access_key_id" not in config and "secret_access_key" not in config
    assert f"url = s3://{bucket}/team/dvc" in config
    porcelain = run([*GIT, "status", "--porcelain", "--untracked-files=all"], root).stdout
    assert "config.local" not in porcelain, porcelain
    assert ".dvc/config" in porcelain  # the non-secret remote settings are meant to be committed
    run([*GIT, "check-ignore", "-q", ".dvc/config.local"], root)

    # Without credentials in the environment DVC uses those in .dvc/config.local.
    no_env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    res = subprocess.run([str(VENV_BIN / "dvc"), "push"], cwd=root, env=no_env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    res = remote_sh(root, s3_endpoint, bucket, "team/dvc",
                    env_extra={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    assert "remote 'storage' is ready" in res.stdout
