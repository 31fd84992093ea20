#!/usr/bin/env bash
# sbatch with the site values of slurm/config.sh added. Use it exactly like sbatch:
#
#   slurm/submit.sh [sbatch options...] SCRIPT [program arguments...]
#
#   slurm/submit.sh slurm/train_1node.sbatch --model resnet18 --dataset cifar10 --epochs 90
#   slurm/submit.sh --nodes=4 slurm/train_multinode.sbatch --model resnet50 --dataset image-folder \
#       --data-dir /data/imagenet64
#   slurm/submit.sh slurm/train_preemptible.sbatch --epochs 200
#   slurm/submit.sh slurm/sweep_array.sbatch --epochs 20
#
# It adds, from config.sh: --partition, --account, --qos (when set), --ntasks-per-node,
# --cpus-per-task and --gpus-per-node (when GPUs > 0). Options you give come after them and win.
# It prints the exact sbatch command (on stderr, so `--parsable` output stays clean), then
# replaces itself with it (sbatch's output and exit code).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/config.sh
. "$here/config.sh"
# shellcheck source=launch/mpi_env.sh
. "$here/../launch/mpi_env.sh"

whole_number() {  # variable name
  if ! [[ "${!1}" =~ ^[0-9]+$ ]]; then
    echo "[mpinet] $1 must be a whole number, got '${!1}' (slurm/config.sh or environment)" >&2
    exit 2
  fi
}
whole_number MPINET_SLURM_GPUS
if [ "$MPINET_SLURM_GPUS" -gt 0 ]; then
  MPINET_SLURM_TASKS_PER_NODE=${MPINET_SLURM_TASKS_PER_NODE:-$MPINET_SLURM_GPUS}
  MPINET_SLURM_CPUS_PER_TASK=${MPINET_SLURM_CPUS_PER_TASK:-8}
else
  MPINET_SLURM_TASKS_PER_NODE=${MPINET_SLURM_TASKS_PER_NODE:-2}
  MPINET_SLURM_CPUS_PER_TASK=${MPINET_SLURM_CPUS_PER_TASK:-1}
fi
whole_number MPINET_SLURM_TASKS_PER_NODE
whole_number MPINET_SLURM_CPUS_PER_TASK
if [ "$MPINET_SLURM_TASKS_PER_NODE" -lt 1 ] || [ "$MPINET_SLURM_CPUS_PER_TASK" -lt 1 ]; then
  echo "[mpinet] MPINET_SLURM_TASKS_PER_NODE and MPINET_SLURM_CPUS_PER_TASK must be >= 1" \
       "(got $MPINET_SLURM_TASKS_PER_NODE and $MPINET_SLURM_CPUS_PER_TASK)" >&2
  exit 2
fi

site=()
[ -n "$MPINET_SLURM_PARTITION" ] && site+=(--partition="$MPINET_SLURM_PARTITION")
[ -n "$MPINET_SLURM_ACCOUNT" ] && site+=(--account="$MPINET_SLURM_ACCOUNT")
[ -n "$MPINET_SLURM_QOS" ] && site+=(--qos="$MPINET_SLURM_QOS")
site+=(--ntasks-per-node="$MPINET_SLURM_TASKS_PER_NODE" --cpus-per-task="$MPINET_SLURM_CPUS_PER_TASK")
[ "$MPINET_SLURM_GPUS" -gt 0 ] && site+=(--gpus-per-node="$MPINET_SLURM_GPUS")

# The batch script runs from a copy in Slurm's spool directory: tell it where slurm/ is.
export MPINET_SLURM_DIR=$here
cmd=(sbatch "${site[@]}" "$@")
mpinet_print_cmd "${cmd[@]}" >&2
exec "${cmd[@]}"
