"""Check that a DVC S3 remote is usable before `dvc push`/`dvc pull` try it.

`check_s3_remote(endpoint, bucket)` sends one HeadBucket request to `endpoint` with the
credentials boto3 finds (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment, or
AWS_PROFILE / ~/.aws) and raises `RemoteError` whose message names the problem and its fix:

- the endpoint cannot be reached (connection refused, timeout, unknown host);
- the bucket does not exist (DVC never creates buckets: create it once by hand);
- the credentials are missing or rejected (403, InvalidAccessKeyId, SignatureDoesNotMatch).

Command line (used by scripts/remote.sh):

    python -m darkhaloscope.remote_check http://127.0.0.1:9000 my-bucket

exits 0 when the remote is usable, 1 with the message on stderr otherwise, 2 on bad usage.

Gotcha: botocore >= 1.36 adds CRC32 checksums to uploads by default, which some
S3-compatible servers (older MinIO, Ceph RGW, ...) reject. Export
AWS_REQUEST_CHECKSUM_CALCULATION=when_required and AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
(the Makefile does); botocore's config provider reads both variables, and s3fs/aiobotocore (what
dvc-s3 uses) go through the same provider.
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

__all__ = ["RemoteError", "check_s3_remote", "main"]

# HeadBucket has no body, so S3 errors arrive as bare HTTP status codes ("404", "403");
# other calls use the named codes. Both spellings are listed.
_MISSING_BUCKET = {"404", "NoSuchBucket", "NotFound"}
_BAD_CREDENTIALS = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "InvalidToken", "ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed",
                    "Forbidden"}


class RemoteError(RuntimeError):
    """The S3 remote cannot be used; the message says why and how to fix it."""


def _unreachable(endpoint: str, exc: BaseException) -> RemoteError:
    return RemoteError(
        f"cannot reach S3 endpoint {endpoint} (connection refused / timeout: {exc}): "
        f"check ENDPOINT or start the server")


def _missing_bucket(endpoint: str, bucket: str) -> RemoteError:
    return RemoteError(
        f"bucket {bucket} does not exist at {endpoint}: DVC does not create buckets; "
        f"create it with `aws --endpoint-url {endpoint} s3 mb s3://{bucket}`")


def _bad_credentials(endpoint: str, bucket: str, detail: str) -> RemoteError:
    return RemoteError(
        f"credentials rejected by {endpoint} for bucket {bucket} ({detail}): check "
        f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or the access_key_id/"
        f"secret_access_key in .dvc/config.local, and that this key may access the bucket")


def _validate(endpoint: str, bucket: str) -> None:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteError(f"S3 endpoint {endpoint!r} is not an http(s) URL: use e.g. http://127.0.0.1:9000")
    if not bucket or "/" in bucket or bucket.startswith("s3:"):
        raise RemoteError(f"bucket {bucket!r} is not a bucket name: give the bare name (no s3://, no /prefix)")


def _make_client(endpoint: str, timeout: float):
    import boto3
    from botocore.config import Config

    # One attempt: a remote that is down should fail in seconds, not after minutes of backoff.
    # Addressing style and region are left to boto3's defaults, as dvc-s3 (s3fs) leaves them.
    config = Config(connect_timeout=timeout, read_timeout=timeout,
                    retries={"max_attempts": 1, "mode": "standard"})
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def check_s3_remote(endpoint: str, bucket: str, *, timeout: float = 5.0, client=None) -> None:
    """Raise RemoteError unless `bucket` exists at `endpoint` and the credentials are accepted.

    `client` (an S3 client) replaces the one built from `endpoint`, for tests.
    """
    _validate(endpoint, bucket)
    from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError, ConnectTimeoutError,
                                     EndpointConnectionError, NoCredentialsError, PartialCredentialsError,
                                     ReadTimeoutError)

    try:
        s3 = client if client is not None else _make_client(endpoint, timeout)
        s3.head_bucket(Bucket=bucket)
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError) as exc:
        # EndpointConnectionError covers connection refused and unknown host names.
        raise _unreachable(endpoint, exc) from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise RemoteError(
            f"no usable AWS credentials for {endpoint} ({exc}): export AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or store them with "
            f"`make remote ... CREDENTIALS=local`") from exc
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _MISSING_BUCKET or status == 404:
            raise _missing_bucket(endpoint, bucket) from exc
        if code in _BAD_CREDENTIALS or status == 403:
            detail = f"HTTP {status}" if code in ("", str(status)) else f"HTTP {status} {code}"
            raise _bad_credentials(endpoint, bucket, detail) from exc
        if code in {"301", "PermanentRedirect", "400"} or status in (301, 400):
            raise RemoteError(
                f"S3 endpoint {endpoint} refused HeadBucket on {bucket} (HTTP {status} {code}): the bucket "
                f"may live in another region; set AWS_DEFAULT_REGION (or REGION=... for make remote)") from exc
        raise RemoteError(f"S3 endpoint {endpoint} answered HeadBucket on {bucket} with HTTP {status} "
                          f"{code}: {err.get('Message', exc)}") from exc
    except BotoCoreError as exc:
        raise RemoteError(f"S3 check of {bucket} at {endpoint} failed: {exc}") from exc
    except ValueError as exc:  # e.g. botocore rejecting a malformed endpoint URL
        raise RemoteError(f"S3 endpoint {endpoint!r} is invalid: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] in ("-h", "--help"):
        print("usage: python -m darkhaloscope.remote_check ENDPOINT BUCKET", file=sys.stderr)
        return 2
    endpoint, bucket = args
    try:
        check_s3_remote(endpoint, bucket)
    except RemoteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"ok: bucket {bucket} exists at {endpoint} and the credentials are accepted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
