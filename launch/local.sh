#!/usr/bin/env bash
# Start N ranks of mpinet on this machine: one per GPU, or N CPU processes.
#
#   launch/local.sh                         # one rank per GPU (or per core without GPUs)
#   launch/local.sh -n 8 -- --model resnet18 --dataset cifar10 --epochs 90
#   launch/local.sh -n 2 -p "python my_script.py" -- --flag value
#   launch/local.sh -n 4 --dry-run          # print the command only
#
# Options:
#   -n N            number of ranks (default: GPUs on this machine, else its cores)
#   -p PROGRAM      what each rank runs (default: $MPINET_PROGRAM, else "python -m mpinet.train")
#   --dry-run       print the command and environment, run nothing
#   -- ARGS...      everything after -- goes to the program
# Environment: MPIEXEC (launcher, default mpiexec), PYTHON (for the default program and for
# detecting mpi4py's MPI, default python), NCCL_* and OMP_NUM_THREADS are honoured if set.
#
# It detects Open MPI or MPICH and sets only what applies (see launch/mpi_env.sh and
# launch/README.md), prints the exact command, then replaces itself with it (exit code = the job's).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/mpi_env.sh
. "$here/mpi_env.sh"

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

ranks="" program=${MPINET_PROGRAM:-} dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--ranks) ranks=${2:?"-n needs a number of ranks"}; shift 2 ;;
    -p|--program) program=${2:?"-p needs a command"}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "[mpinet] unknown option '$1'; program arguments go after --" >&2; usage >&2; exit 2 ;;
  esac
done
program=${program:-${PYTHON:-python} -m mpinet.train}

gpus=$(mpinet_count_gpus)
if [ -z "$ranks" ]; then
  if [ "$gpus" -gt 0 ]; then ranks=$gpus; else ranks=$(mpinet_count_cores); fi
fi
if ! [[ "$ranks" =~ ^[1-9][0-9]*$ ]]; then
  echo "[mpinet] -n must be a positive integer, got '$ranks'" >&2; exit 2
fi
if [ "$gpus" -gt 0 ] && [ "$ranks" -gt "$gpus" ]; then
  echo "[mpinet] note: $ranks ranks on $gpus GPUs: ranks share GPUs (device = local rank % $gpus)" >&2
fi

mpinet_detect_launcher
mpinet_detect_library
mpinet_check_launcher_matches_library
mpinet_set_env "$MPINET_LIB_FLAVOR" "$ranks"

read -r -a program_words <<<"$program"
cmd=("${MPIEXEC:-mpiexec}" -n "$ranks")
if [ "$MPINET_LIB_FLAVOR" = openmpi ]; then
  # Python ranks drive GPUs and BLAS threads themselves: core binding would pin them badly.
  cmd+=(--bind-to none "${MPINET_LAUNCH_FLAGS[@]}")
  for v in "${MPINET_EXPORT_VARS[@]}"; do cmd+=(-x "$v"); done
fi
cmd+=("${program_words[@]}" "$@")

echo "[mpinet] MPI: $MPINET_LIB_FLAVOR ($MPINET_LIB_VERSION); $ranks ranks, $gpus GPUs," \
     "$(mpinet_count_cores) cores"
mpinet_show_env
mpinet_print_cmd "${cmd[@]}"
[ "$dry_run" = 1 ] && exit 0
exec "${cmd[@]}"
