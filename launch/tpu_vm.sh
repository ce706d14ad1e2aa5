#!/usr/bin/env bash
# Run flan_jax.train on every worker of a Cloud TPU VM or pod slice, over gcloud ssh.
#
#   launch/tpu_vm.sh TPU_NAME ZONE [flan_jax.train args...]
#   launch/tpu_vm.sh my-v4-32 us-central2-b --gin_file=gin/quickstart.gin \
#       --gin.MODEL_DIR=/mnt/shared/runs/my_run
#
# Every worker needs the repository installed at REPO_DIR (default $HOME/flan_jax on
# the worker) and MODEL_DIR on storage all workers share. Environment: PROJECT
# (gcloud project; default: gcloud's), REPO_DIR, PYTHON (default python3).
set -euo pipefail
if (($# < 2)); then sed -n 2,10p "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; fi
tpu_name=$1 zone=$2
shift 2

# On TPU, jax.distributed.initialize() needs no arguments: it finds the slice's
# workers from the TPU metadata. --distributed asks flan_jax.train to call it so.
# shellcheck disable=SC2016  # $HOME is expanded on the worker, not here
repo_dir='"$HOME"/flan_jax'
if [[ -n "${REPO_DIR:-}" ]]; then repo_dir=$(printf '%q' "$REPO_DIR"); fi
remote="cd $repo_dir && ${PYTHON:-python3} -m flan_jax.train --distributed"
if (($#)); then remote+=" $(printf '%q ' "$@")"; fi

exec gcloud compute tpus tpu-vm ssh "$tpu_name" --zone="$zone" ${PROJECT:+--project="$PROJECT"} \
    --worker=all --command="$remote"
