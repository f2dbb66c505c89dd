"""A real S3 server for the tests: moto's, on 127.0.0.1 at a free port, stopped at the end.

Shared by tests/survey/test_remote_s3.py and the end-to-end tests (``import _s3``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

_DROP_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
             "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY",
             "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "PYTHONPATH", "DHS_PARAMS",
             "ENDPOINT", "BUCKET", "PREFIX", "REGION", "CREDENTIALS", "PYTHON", "DVC", "REPO_DIR")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server(log_dir: Path, extra_env: dict | None = None, start_timeout: float = 60.0):
    """`python -m moto.server` on 127.0.0.1 at a free port; yields its endpoint URL."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(extra_env or {})
    proc = None
    try:
        for attempt in range(3):  # a free port can be taken between choosing and binding it
            port = _free_port()
            log = open(log_dir / f"moto-{port}.log", "wb")
            proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            log.close()
            endpoint = f"http://127.0.0.1:{port}"
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            deadline = time.monotonic() + start_timeout
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    with opener.open(f"{endpoint}/moto-api/", timeout=2):
                        break
                except OSError:
                    time.sleep(0.1)
            if proc.poll() is None and time.monotonic() < deadline:
                yield endpoint
                return
            if proc.poll() is None:
                raise RuntimeError(f"moto server at {endpoint} not ready after {start_timeout}s:\n"
                                   f"{(log_dir / f'moto-{port}.log').read_text()[-2000:]}")
        raise RuntimeError(f"moto server failed to start 3 times:\n"
                           f"{(log_dir / f'moto-{port}.log').read_text()[-2000:]}")
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@contextlib.contextmanager
def s3_bucket(tmp_path: Path, monkeypatch, bucket: str):
    """A moto server with one bucket and test credentials in the environment; yields (endpoint, boto3 client).

    The AWS and proxy variables of the caller's environment are removed (``monkeypatch``), the
    AWS config and credentials files point into ``tmp_path`` (absent), and fsspec's cached
    S3 filesystems are cleared on entry and exit (they are cached with their credentials).
    """
    import boto3
    import s3fs

    for k in _DROP_ENV:
        monkeypatch.delenv(k, raising=False)
    with moto_server(tmp_path) as endpoint:
        for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
                     "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
                     "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}.items():
            monkeypatch.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=bucket)
        try:
            yield endpoint, client
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
