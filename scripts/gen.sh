#!/usr/bin/env bash
# make gen GEN=gen3 [SCALE=full] [EXTRA=overlay.yaml]: apply a generation overlay to params.yaml,
# run the pipeline, commit params.yaml + dvc.lock + metrics/, and tag the commit with the
# generation's name. Refuses to run on a dirty work tree or over an existing tag.
set -euo pipefail
GEN=${1:?usage: gen.sh GEN [SCALE] [EXTRA]}
SCALE=${2:-cpu}
EXTRA=${3:-}
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "error: the work tree has uncommitted changes; commit or stash them before 'make gen'" >&2
  git status --short --untracked-files=no >&2
  exit 1
fi
if git rev-parse -q --verify "refs/tags/$GEN" >/dev/null; then
  echo "error: tag $GEN already exists; delete it (git tag -d $GEN) to rerun this generation" >&2
  exit 1
fi
# from here on a failure (or Ctrl-C) restores the committed params.yaml, dvc.lock and metrics/,
# so the retry is not refused as a dirty work tree
restore() {
  git checkout -q HEAD -- $(git ls-files params.yaml dvc.lock metrics)
  echo "error: make gen GEN=$GEN failed; params.yaml, dvc.lock and metrics/ are restored to HEAD" \
       "(data/ may hold the failed run's outputs: 'dvc checkout' restores the committed ones)" >&2
}
trap 'restore; exit 1' ERR INT TERM
python -m darkhaloscope.gens apply "$GEN" --scale "$SCALE" ${EXTRA:+--extra "$EXTRA"}
dvc repro
trap - ERR INT TERM
git add params.yaml dvc.lock metrics
git commit -q -m "$GEN ($SCALE scale): params overlay gens/$GEN.yaml, pipeline reproduced"
git tag "$GEN"
echo "tagged $GEN; compare with: dvc metrics diff <other-gen> $GEN"
