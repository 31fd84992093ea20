# Shared by the slurm/*.sbatch scripts (sourced inside the job, never run by itself).
#
# Reads the site values (slurm/config.sh), prepares the job's environment and builds the srun
# command that starts one rank per task:
#   * srun --mpi=<plugin>: pmix for Open MPI, pmi2 for MPICH (auto-detected from mpi4py's MPI
#     library unless config.sh pins it), checked against `srun --mpi=list`;
#   * SRUN_CPUS_PER_TASK exported: srun does not inherit sbatch's --cpus-per-task (Slurm >= 22.05);
#   * GPUs: each task sees every GPU Slurm gave the job on its node (srun's default), and mpinet
#     picks GPU = node-local rank (MPI Split_type(COMM_TYPE_SHARED)), so NCCL sees all peers on
#     the node (P2P/NVLink) and one rank drives one GPU;
#   * NCCL_NVLS_ENABLE=0 unless set; NCCL_DEBUG passed through; MPICH/Open MPI yield-when-idle
#     only if the node runs more ranks than it has cores;
#   * --kill-on-bad-exit=1: one failing rank ends the step instead of leaving the others hanging.

MPINET_SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/config.sh
. "$MPINET_SLURM_DIR/config.sh"
# shellcheck source=launch/mpi_env.sh
. "$MPINET_SLURM_DIR/../launch/mpi_env.sh"

# Activate the Python environment and run the site's setup commands (config.sh).
mpinet_job_setup() {
  if [ -n "$MPINET_PYTHON_ENV" ]; then
    if [ ! -f "$MPINET_PYTHON_ENV/bin/activate" ]; then
      echo "[mpinet] MPINET_PYTHON_ENV='$MPINET_PYTHON_ENV' has no bin/activate; set it to a" \
           "virtualenv directory in slurm/config.sh, or leave it empty" >&2
      return 2
    fi
    # shellcheck disable=SC1091
    . "$MPINET_PYTHON_ENV/bin/activate"
  fi
  if [ -n "$MPINET_SLURM_SETUP" ]; then
    eval "$MPINET_SLURM_SETUP"
  fi
  echo "[mpinet] job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NUM_NODES:-?} node(s) (${SLURM_JOB_NODELIST:-?}):" \
       "${SLURM_NTASKS:-?} tasks, ${SLURM_CPUS_PER_TASK:-1} CPUs/task," \
       "GPUs per node: ${SLURM_GPUS_ON_NODE:-0}, restart count: ${SLURM_RESTART_COUNT:-0}"
}

# Print the srun --mpi plugin to use: config.sh's value, or from mpi4py's MPI library if auto.
mpinet_mpi_plugin() {
  local plugin=$MPINET_SLURM_MPI
  if [ "$plugin" = auto ]; then
    [ -n "${MPINET_LIB_FLAVOR:-}" ] || mpinet_detect_library || return 1
    case "$MPINET_LIB_FLAVOR" in
      mpich) plugin=pmi2 ;;
      *) plugin=pmix ;;
    esac
    echo "[mpinet] mpi4py uses $MPINET_LIB_FLAVOR ($MPINET_LIB_VERSION): srun --mpi=$plugin" >&2
  fi
  if ! srun --mpi=list 2>&1 | grep -qw -- "$plugin"; then
    echo "[mpinet] srun has no '$plugin' MPI plugin (srun --mpi=list: $(srun --mpi=list 2>&1 |
          tail -n +2 | tr -s ' \t\n' ' ')); set MPINET_SLURM_MPI in slurm/config.sh to one it" \
         "has (pmix for Open MPI, pmi2 for MPICH)" >&2
    return 1
  fi
  echo "$plugin"
}

# Build the command that runs the program on every task: sets the array MPINET_SRUN and prints it.
# Program: $MPINET_PROGRAM (default "python -m mpinet.train"); arguments: this function's.
mpinet_build_srun() {
  local plugin tasks_here program_words
  mpinet_detect_library || return 1
  plugin=$(mpinet_mpi_plugin) || return 1
  export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
  # No OMP_NUM_THREADS here: mpinet sizes each rank's threads itself (capped by
  # SLURM_CPUS_PER_TASK; mpinet/threads.py). A value the user exported still wins.
  # SLURM_TASKS_PER_NODE looks like "2" or "2(x3),1": the first count is this (the first) node's.
  tasks_here=${SLURM_TASKS_PER_NODE:-1}
  tasks_here=${tasks_here%%[(,]*}
  mpinet_set_env "$MPINET_LIB_FLAVOR" "$tasks_here"
  read -r -a program_words <<<"${MPINET_PROGRAM:-${PYTHON:-python} -m mpinet.train}"
  MPINET_SRUN=(srun --mpi="$plugin" --kill-on-bad-exit=1 "${program_words[@]}" "$@")
  echo "[mpinet] environment: NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE OMP_NUM_THREADS=${OMP_NUM_THREADS:-<per rank: mpinet decides>}" \
       "SRUN_CPUS_PER_TASK=$SRUN_CPUS_PER_TASK${NCCL_DEBUG:+ NCCL_DEBUG=$NCCL_DEBUG}"
  mpinet_print_cmd "${MPINET_SRUN[@]}"
}
