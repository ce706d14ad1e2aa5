#!/bin/bash
# Multi-node GPU finetuning under Slurm: one task (one JAX process) per node, each
# driving all of its node's GPUs, joined by jax.distributed.
#
#   sbatch --nodes=4 launch/slurm_gpu.sh --gin_file=gin/quickstart.gin \
#       --gin.MODEL_DIR=/shared/runs/my_run --gin.TRAIN_STEPS=1000
#
# Submit from the repository root: the job runs in the directory sbatch was called
# from. MODEL_DIR must be on a filesystem every node sees (checkpoints are written by
# all processes together). Adjust the #SBATCH lines below, or override them on the
# sbatch command line, for your cluster (partition, account, GPUs per node, time).
# Environment: PYTHON (default python), COORDINATOR_PORT (default derived from the
# job id, so jobs sharing a node do not collide).
#SBATCH --job-name=flan_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"

# Process 0 hosts the coordinator service, so the coordinator is the job's first node.
coordinator_host=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
export COORDINATOR_ADDRESS="${coordinator_host}:${COORDINATOR_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
export PYTHON="${PYTHON:-python}"
echo "flan_jax: ${SLURM_NTASKS} processes on ${SLURM_JOB_NODELIST}, coordinator ${COORDINATOR_ADDRESS}"

# SLURM_PROCID differs per task, so it is expanded inside each task (note the single
# quotes), not here in the batch script where it is always 0. --kill-on-bad-exit
# stops every task when one fails instead of leaving the rest waiting on it.
# shellcheck disable=SC2016
srun --kill-on-bad-exit=1 --label bash -c '
  exec "$PYTHON" -m flan_jax.train \
      --coordinator_address="$COORDINATOR_ADDRESS" \
      --num_processes="$SLURM_NTASKS" \
      --process_id="$SLURM_PROCID" \
      "$@"' flan_jax "$@"
