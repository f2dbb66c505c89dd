"""The check `make repro` runs before `dvc repro`: params.yaml valid, an ``s3://`` survey usable.

DVC checks the stages' dependencies before any stage runs, ``${survey.root}`` among them, so with
an ``s3://`` survey root and no credentials ``dvc repro`` stops with botocore's bare "Unable to
locate credentials" before a stage can say which setting is wrong. This module runs first:

1. params.yaml (or ``$DHS_PARAMS``, as the stage scripts read it) is loaded through
   :func:`darkhaloscope.params.load_params`, so every key is validated before any work;
2. for an ``s3://bucket/prefix`` ``survey.root``: one HeadBucket request with the credentials
   boto3 finds (:func:`darkhaloscope.remote_check.check_s3_remote`; the endpoint is
   ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, else AWS's), then one listing of at most one
   object under the prefix. Missing or rejected credentials, a missing bucket, an endpoint that
   cannot be reached or an empty prefix is one line naming ``survey.root`` and the fix.

Command line (the Makefile's ``repro`` target)::

    python -m darkhaloscope.precheck [params.yaml]

exits 0 (printing one ``[precheck] ... ok`` line) when ``dvc repro`` may start, 1 with the
message on stderr otherwise.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

from darkhaloscope.errors import ParamsError
from darkhaloscope.params import load_params
from darkhaloscope.remote_check import RemoteError, check_s3_remote
from darkhaloscope.survey.fs import is_remote, s3_endpoint

__all__ = ["PrecheckError", "check_s3_survey_root", "precheck", "main"]

#: the endpoint named in messages when the environment sets none (boto3 then uses AWS's own)
AWS_DEFAULT_ENDPOINT = "https://s3.amazonaws.com"


class PrecheckError(RuntimeError):
    """``dvc repro`` should not start; the message names the params.yaml key and the fix."""


def _endpoint() -> str | None:
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var]
    return None


def _client(endpoint: str | None, timeout: float):
    """An S3 client making one attempt (a server that is down fails in seconds), as remote_check's."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1, "mode": "standard"})
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def _explain(where: str, bucket: str, err: RemoteError, key: str = "survey.root") -> str:
    """The one-line message for a failed HeadBucket, by what remote_check found (its ``__cause__``)."""
    cause = err.__cause__
    names = {c.__name__ for c in type(cause).__mro__} if cause is not None else set()
    status = None
    if "ClientError" in names:
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    endpoint = s3_endpoint()
    if names & {"NoCredentialsError", "PartialCredentialsError"}:
        return (f"{where}: no usable AWS credentials to read it ({cause}): export AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) for {endpoint}, or set {key} in params.yaml to a "
                f"local directory (without this check `dvc repro` stops at its dependency check with "
                f"'Unable to locate credentials')")
    if status == 403 or str(err).startswith("credentials rejected"):
        return (f"{where}: the credentials were rejected for bucket {bucket!r} at {endpoint} (HTTP 403): check "
                f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and that they may read the bucket")
    if status == 404 or str(err).startswith("bucket "):
        return (f"{where}: bucket {bucket!r} does not exist at {endpoint}: check {key} in params.yaml "
                f"(s3://<bucket>/<prefix>) and the endpoint (AWS_ENDPOINT_URL); this pipeline never creates buckets")
    if str(err).startswith("cannot reach"):
        return (f"{where}: cannot reach the S3 endpoint {endpoint} ({cause}): check AWS_ENDPOINT_URL (or the "
                f"endpoint in your AWS config) and that the server is running, or set {key} in params.yaml "
                f"to a local directory")
    return f"{where}: {err}"


def check_s3_survey_root(root: str, src: str = "params.yaml", *, timeout: float = 5.0, client=None,
                         key: str = "survey.root") -> None:
    """PrecheckError unless the bucket of ``root`` (``s3://bucket/prefix``) answers HeadBucket with
    the credentials boto3 finds and holds at least one object under the prefix. ``client`` (an S3
    client) replaces the one built from the environment, for tests; ``key`` is the params key
    named in messages (``survey.root`` or ``stamp_set.root``)."""
    parts = urlsplit(root)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    where = f"{src}: {key} {root}"
    if not bucket:
        raise PrecheckError(f"{where}: no bucket name; expected s3://<bucket>/<prefix>")
    endpoint = _endpoint()
    try:
        s3 = client if client is not None else _client(endpoint, timeout)
        check_s3_remote(endpoint or AWS_DEFAULT_ENDPOINT, bucket, timeout=timeout, client=s3)
    except RemoteError as e:
        raise PrecheckError(_explain(where, bucket, e, key)) from e
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
    except (BotoCoreError, ClientError) as e:
        raise PrecheckError(f"{where}: listing the prefix {prefix!r} of bucket {bucket!r} failed ({e}): check "
                            f"that the credentials may list the bucket") from e
    if not listed.get("KeyCount", len(listed.get("Contents", []))):
        raise PrecheckError(f"{where}: bucket {bucket!r} holds no object under {prefix + '/' if prefix else '/'} "
                            f"at {s3_endpoint()}: check {key} in params.yaml ("
                            + ("the DR10-layout directory with sweep/ and coadd/)" if key == "survey.root"
                               else "the stamp set's directory)"))


def precheck(path: str) -> str:
    """Validate ``path`` and check an ``s3://`` survey root; returns the ok line's detail.

    Raises ParamsError (a params.yaml problem) or PrecheckError (the survey root cannot be used).
    """
    p = load_params(path)
    detail = [f"{path} is valid"]
    for key, root in (("survey.root", str(p["survey"]["root"])), ("stamp_set.root", str(p["stamp_set"]["root"]))):
        if not is_remote(root):
            continue
        if urlsplit(root).scheme != "s3":
            detail.append(f"{key} {root}: not checked, only s3:// roots are")
            continue
        check_s3_survey_root(root, path, key=key)
        detail.append(f"{key} {root}: bucket reachable, credentials accepted, objects present")
    return "; ".join(detail)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print("usage: python -m darkhaloscope.precheck [params.yaml]", file=sys.stderr)
        return 2
    path = args[0] if args else os.environ.get("DHS_PARAMS", "params.yaml")
    try:
        detail = precheck(path)
    except (ParamsError, PrecheckError) as e:
        print(f"[precheck] {e}", file=sys.stderr)
        return 1
    print(f"[precheck] ok: {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
