# Set-up and entry points. Every target installs into .venv (reused while it is
# up to date with requirements.txt and pyproject.toml).
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: venv repro test test-quick bench gen remote

# S3-compatible servers (older MinIO, Ceph RGW, ...) may reject the CRC32 checksums that
# botocore >= 1.36 sends by default; only send/validate checksums where the API requires them.
# Exported to every recipe (dvc push/pull, s3:// survey roots, make remote); a value already in
# the environment wins.
export AWS_REQUEST_CHECKSUM_CALCULATION ?= when_required
export AWS_RESPONSE_CHECKSUM_VALIDATION ?= when_required

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $(STAMP)

# params.yaml validated and an s3:// survey.root checked (credentials, bucket) before `dvc repro`,
# whose own dependency check would otherwise stop at botocore's "Unable to locate credentials"
repro: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PYTHONPATH="$(CURDIR)/src" python -m darkhaloscope.precheck
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro

# the suite runs in TEST_WORKERS pytest-xdist processes (one per core of the 2-core reference machine),
# each test module whole on one worker (--dist loadscope: a module's fixtures are built once);
# TEST_WORKERS=0 runs it in this process
TEST_WORKERS ?= 2
PYTEST = PATH="$(CURDIR)/$(VENV)/bin:$$PATH" python -m pytest -q -n $(TEST_WORKERS) --dist loadscope

test: $(STAMP)
	$(PYTEST) tests

test-quick: $(STAMP)
	$(PYTEST) -m "not slow" tests

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/metrics.py

# make gen GEN=gen3 [SCALE=full] [EXTRA=overlay.yaml]: one committed, tagged generation run
GEN ?=
SCALE ?= cpu
EXTRA ?=
gen: $(STAMP)
	@test -n "$(GEN)" || { echo "usage: make gen GEN=gen1|gen2|gen3|gen5|gen5_prime|gen6 [SCALE=cpu|full]"; exit 2; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/gen.sh "$(GEN)" "$(SCALE)" "$(EXTRA)"

# make remote ENDPOINT=http://host:port BUCKET=name [PREFIX=dvc] [REGION=...] [CREDENTIALS=local]
# Default DVC remote `storage` = s3://BUCKET/PREFIX at ENDPOINT in .dvc/config (no secrets), then
# checks the endpoint, the bucket (DVC never creates it) and the credentials; see scripts/remote.sh.
PREFIX ?= dvc
remote: $(STAMP)
	ENDPOINT="$(ENDPOINT)" BUCKET="$(BUCKET)" PREFIX="$(PREFIX)" REGION="$(REGION)" \
	CREDENTIALS="$(CREDENTIALS)" bash scripts/remote.sh
