#!/usr/bin/env bash
# Configure the default DVC remote `storage` on S3 (or any S3-compatible server: MinIO, Ceph RGW,
# moto, ...) and check that it is usable.
#
#   scripts/remote.sh ENDPOINT BUCKET [PREFIX]          (or: make remote ENDPOINT=... BUCKET=...)
#   ENDPOINT, BUCKET, PREFIX (default "dvc"), REGION (optional) and CREDENTIALS may also come from
#   the environment; CREDENTIALS=local stores AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and
#   AWS_SESSION_TOKEN if set) in .dvc/config.local.
#
# What goes where:
#   .dvc/config        (in git)   remote "storage": url = s3://BUCKET/PREFIX, endpointurl = ENDPOINT,
#                                 and `core.remote = storage`. Never any secret.
#   .dvc/config.local  (not in git: DVC's own .dvc/.gitignore lists it) access_key_id and
#                                 secret_access_key, only with CREDENTIALS=local.
#   otherwise DVC (s3fs/boto) reads the credentials from the environment (AWS_ACCESS_KEY_ID,
#   AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws) each time it pushes or pulls.
#
# Gotchas handled here:
#   * DVC does not create buckets: `dvc push` to a missing bucket fails. This script only checks
#     the bucket exists and says how to create it (`aws --endpoint-url URL s3 mb s3://BUCKET`).
#   * botocore >= 1.36 sends CRC32 checksums (x-amz-checksum-*, aws-chunked uploads) by default,
#     which some S3-compatible servers reject. With AWS_REQUEST_CHECKSUM_CALCULATION=when_required
#     and AWS_RESPONSE_CHECKSUM_VALIDATION=when_required, botocore only does so where the API
#     requires it. They are exported here (for the check) and in the Makefile; export them in your
#     shell too before a bare `dvc push`/`dvc pull` against such a server.
set -euo pipefail

ROOT="${REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
cd "$ROOT"

die() { printf 'remote.sh: error: %s\n' "$*" >&2; exit 1; }
usage() {
    cat >&2 <<'EOF'
usage: make remote ENDPOINT=http://host:port BUCKET=name [PREFIX=dvc] [REGION=...] [CREDENTIALS=local]
   or: scripts/remote.sh ENDPOINT BUCKET [PREFIX]
EOF
    exit 2
}

ENDPOINT="${1:-${ENDPOINT:-}}"
BUCKET="${2:-${BUCKET:-}}"
if [ $# -ge 3 ]; then PREFIX="$3"; else PREFIX="${PREFIX-dvc}"; fi
REGION="${REGION:-}"
CREDENTIALS="${CREDENTIALS:-}"
[ -n "$ENDPOINT" ] && [ -n "$BUCKET" ] || usage
case "$ENDPOINT" in http://*|https://*) ;; *) die "ENDPOINT must be an http(s) URL such as http://127.0.0.1:9000, not '$ENDPOINT'" ;; esac
case "$BUCKET" in s3://*|*/*) die "BUCKET must be a bare bucket name (no s3://, no /); put the path into PREFIX" ;; esac
case "$CREDENTIALS" in ""|local) ;; *) die "CREDENTIALS must be 'local' or unset, not '$CREDENTIALS'" ;; esac
ENDPOINT="${ENDPOINT%/}"
PREFIX="${PREFIX#/}"; PREFIX="${PREFIX%/}"
URL="s3://$BUCKET${PREFIX:+/$PREFIX}"

# Tools: $PYTHON/$DVC if given, else the project's .venv, else whatever is on PATH.
if [ -n "${PYTHON:-}" ]; then :; elif [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
if [ -n "${DVC:-}" ]; then :; elif [ -x .venv/bin/dvc ]; then DVC=.venv/bin/dvc; else DVC=dvc; fi
if [ -f src/darkhaloscope/remote_check.py ]; then
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
fi

# See the checksum gotcha above; the user's own setting wins.
export AWS_REQUEST_CHECKSUM_CALCULATION="${AWS_REQUEST_CHECKSUM_CALCULATION:-when_required}"
export AWS_RESPONSE_CHECKSUM_VALIDATION="${AWS_RESPONSE_CHECKSUM_VALIDATION:-when_required}"

[ -d .dvc ] || die "$ROOT is not a DVC repository (no .dvc/): run 'dvc init' first"

# --- configure: URL and endpoint only, into .dvc/config --------------------------------------
"$DVC" remote add --default --force storage "$URL"
"$DVC" remote modify storage endpointurl "$ENDPOINT"
if [ -n "$REGION" ]; then
    "$DVC" remote modify storage region "$REGION"
    export AWS_DEFAULT_REGION="$REGION"
fi

if [ "$CREDENTIALS" = local ]; then
    [ -n "${AWS_ACCESS_KEY_ID:-}" ] && [ -n "${AWS_SECRET_ACCESS_KEY:-}" ] \
        || die "CREDENTIALS=local needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
    # --local writes .dvc/config.local, which DVC's .dvc/.gitignore keeps out of git.
    # (The values pass through dvc's argv for the fraction of a second it runs.)
    "$DVC" remote modify --local storage access_key_id "$AWS_ACCESS_KEY_ID"
    "$DVC" remote modify --local storage secret_access_key "$AWS_SECRET_ACCESS_KEY"
    if [ -n "${AWS_SESSION_TOKEN:-}" ]; then
        "$DVC" remote modify --local storage session_token "$AWS_SESSION_TOKEN"
    fi
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && ! git check-ignore -q .dvc/config.local; then
        die ".dvc/config.local holds credentials but git does not ignore it: add 'config.local' to .dvc/.gitignore"
    fi
    echo "remote.sh: credentials stored in .dvc/config.local (git-ignored)"
fi

# Secrets must never sit in the committed config (e.g. after a `dvc remote modify` without --local).
if grep -Eq '^[[:space:]]*(access_key_id|secret_access_key|session_token)[[:space:]]*=' .dvc/config; then
    die ".dvc/config (committed to git) contains credentials: remove them with
  dvc remote modify --unset storage access_key_id; dvc remote modify --unset storage secret_access_key
and keep them in the environment or in .dvc/config.local (make remote ... CREDENTIALS=local)"
fi
echo "remote.sh: default remote 'storage' = $URL at $ENDPOINT written to .dvc/config"

# --- check: endpoint reachable, bucket exists, credentials accepted ---------------------------
# The check uses the environment's credentials (as DVC does when .dvc/config.local has none);
# when the environment has none but .dvc/config.local does, those are used for the check.
if [ -z "${AWS_ACCESS_KEY_ID:-}" ] && [ -z "${AWS_PROFILE:-}" ]; then
    key_id="$("$DVC" config --local remote.storage.access_key_id 2>/dev/null || true)"
    secret="$("$DVC" config --local remote.storage.secret_access_key 2>/dev/null || true)"
    if [ -n "$key_id" ] && [ -n "$secret" ]; then
        export AWS_ACCESS_KEY_ID="$key_id" AWS_SECRET_ACCESS_KEY="$secret"
    fi
    unset key_id secret
fi
if ! "$PYTHON" -m darkhaloscope.remote_check "$ENDPOINT" "$BUCKET"; then
    echo "remote.sh: remote 'storage' is configured but not usable yet (see the error above); fix it and re-run, or run 'dvc push' once it is" >&2
    exit 1
fi
echo "remote.sh: remote 'storage' is ready: 'dvc push' uploads the cache, 'dvc pull' restores it"
