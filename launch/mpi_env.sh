# Shared by launch/local.sh, launch/hosts.sh and slurm/common.sh (sourced, not run).
#
# Finds out which MPI the launcher and mpi4py use, and sets only the environment that matters for
# that MPI on this machine. Why each variable (measured on our machines; docs/ARCHITECTURE.md lists the facts):
#   NCCL_NVLS_ENABLE=0     NVLink multicast off (our GPU machines); a value you set is kept.
#   NCCL_DEBUG             passed through to every rank when you set it (e.g. NCCL_DEBUG=INFO).
#   OMP_NUM_THREADS        passed to every rank only when you set it (mpinet sizes each rank's BLAS
#                          pool to its share of the cores itself: mpinet/threads.py).
#   Open MPI as root       OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 (mpirun refuses
#                          root without them); only when running as root.
#   more ranks than cores  Open MPI: --oversubscribe (Open MPI 5: the PRTE mapping policy variable)
#                          and OMPI_MCA_mpi_yield_when_idle=1; MPICH: MPIR_CVAR_ENABLE_HEAVY_YIELD=1.
#                          Busy-polling oversubscribed ranks ran 3-4x slower without yielding.
# MPICH (e.g. the PyPI `mpich` wheel) runs as root and oversubscribes without flags.

# Print the MPI flavour of a `--version` / Get_library_version() text: openmpi, mpich or unknown.
# (Intel MPI and MVAPICH are MPICH derivatives and take the same environment.)
mpinet_flavor_of_text() {
  case "$1" in
    *"Open MPI"*|*"OpenRTE"*|*"Open RTE"*|*"PRRTE"*) echo openmpi ;;
    *MPICH*|*HYDRA*|*"Intel(R) MPI"*|*MVAPICH*) echo mpich ;;
    *) echo unknown ;;
  esac
}

# The MPI library mpi4py loads (what the ranks really use): sets MPINET_LIB_FLAVOR and
# MPINET_LIB_VERSION (its first line). Needs the job's python on PATH ($PYTHON overrides).
mpinet_detect_library() {
  local text
  if ! text=$("${PYTHON:-python}" -c 'from mpi4py import MPI; print(MPI.Get_library_version())' 2>&1); then
    echo "[mpinet] could not import mpi4py with '${PYTHON:-python}': $text" >&2
    echo "[mpinet] activate the environment that has mpinet and mpi4py (or set PYTHON=...)" >&2
    return 1
  fi
  MPINET_LIB_FLAVOR=$(mpinet_flavor_of_text "$text")
  MPINET_LIB_VERSION=$(printf '%s\n' "$text" | head -n1 | tr -s ' \t' ' ')
}

# The launcher ($MPIEXEC, default mpiexec): sets MPINET_LAUNCHER_FLAVOR, MPINET_LAUNCHER_VERSION
# and MPINET_OMPI_MAJOR (Open MPI major version, empty otherwise).
mpinet_detect_launcher() {
  local launcher=${MPIEXEC:-mpiexec} text
  if ! command -v "$launcher" >/dev/null; then
    echo "[mpinet] MPI launcher '$launcher' not found on PATH; install one (pip install mpich," \
         "or apt-get install openmpi-bin) or set MPIEXEC=/path/to/mpiexec" >&2
    return 1
  fi
  text=$("$launcher" --version 2>&1 || true)
  MPINET_LAUNCHER_FLAVOR=$(mpinet_flavor_of_text "$text")
  MPINET_LAUNCHER_VERSION=$(printf '%s\n' "$text" | grep -m1 -E 'Open MPI|Version|MPICH|Intel' | tr -s ' \t' ' ' || true)
  MPINET_OMPI_MAJOR=""
  if [ "$MPINET_LAUNCHER_FLAVOR" = openmpi ]; then
    MPINET_OMPI_MAJOR=$(printf '%s\n' "$text" | grep -m1 -oE '[0-9]+\.[0-9]+' | cut -d. -f1)
  fi
}

# A launcher of one MPI starting ranks linked against another gives N separate 1-rank worlds,
# which trains "fine" N times over. Refuse that up front.
mpinet_check_launcher_matches_library() {
  if [ "$MPINET_LAUNCHER_FLAVOR" != unknown ] && [ "$MPINET_LIB_FLAVOR" != unknown ] &&
     [ "$MPINET_LAUNCHER_FLAVOR" != "$MPINET_LIB_FLAVOR" ]; then
    echo "[mpinet] launcher $(command -v "${MPIEXEC:-mpiexec}") is $MPINET_LAUNCHER_FLAVOR" \
         "($MPINET_LAUNCHER_VERSION) but mpi4py uses $MPINET_LIB_FLAVOR ($MPINET_LIB_VERSION):" \
         "every rank would start as its own 1-process world. Put the matching mpiexec first on" \
         "PATH or set MPIEXEC=/path/to/the/matching/mpiexec" >&2
    return 1
  fi
}

# Number of NVIDIA GPUs on this machine (0 without the driver), without importing CUDA.
mpinet_count_gpus() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    local n=0 dev
    for dev in /dev/nvidia[0-9]*; do [ -e "$dev" ] && n=$((n + 1)); done
    echo "$n"
  fi
}

mpinet_count_cores() { getconf _NPROCESSORS_ONLN 2>/dev/null || nproc --all; }

# Export the environment that matters for `ranks_here` ranks on this machine of `flavor`
# (openmpi|mpich|unknown). Sets the array MPINET_LAUNCH_FLAGS with launcher flags (Open MPI's
# --oversubscribe) and MPINET_EXPORT_VARS with the names ranks must receive.
mpinet_set_env() {
  local flavor=$1 ranks_here=$2 cores
  cores=$(mpinet_count_cores)
  MPINET_LAUNCH_FLAGS=()
  MPINET_EXPORT_VARS=(NCCL_NVLS_ENABLE)
  # Threads per rank: mpinet decides (mpinet/threads.py); a value you set is forwarded.
  if [ -n "${OMP_NUM_THREADS:-}" ]; then export OMP_NUM_THREADS; MPINET_EXPORT_VARS+=(OMP_NUM_THREADS); fi

  export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
  if [ -n "${NCCL_DEBUG:-}" ]; then export NCCL_DEBUG; MPINET_EXPORT_VARS+=(NCCL_DEBUG); fi

  local oversubscribed=0
  [ "$ranks_here" -gt "$cores" ] && oversubscribed=1
  case "$flavor" in
    openmpi)
      if [ "$(id -u)" -eq 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
      fi
      if [ "$oversubscribed" = 1 ]; then
        export OMPI_MCA_mpi_yield_when_idle=1
        MPINET_EXPORT_VARS+=(OMPI_MCA_mpi_yield_when_idle)
        if [ "${MPINET_OMPI_MAJOR:-4}" -ge 5 ] 2>/dev/null; then
          export PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe
        else
          MPINET_LAUNCH_FLAGS+=(--oversubscribe)
        fi
      fi
      ;;
    mpich)
      if [ "$oversubscribed" = 1 ]; then
        export MPIR_CVAR_ENABLE_HEAVY_YIELD=1
        MPINET_EXPORT_VARS+=(MPIR_CVAR_ENABLE_HEAVY_YIELD)
      fi
      ;;
  esac
  if [ "$oversubscribed" = 1 ]; then
    echo "[mpinet] $ranks_here ranks on $cores cores: oversubscribed, ranks yield when idle" >&2
  fi
}

# Print a command the way a shell would read it back (words quoted only where they need it).
mpinet_print_cmd() {
  local word line=""
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then line+="$word "; else line+="$(printf '%q' "$word") "; fi
  done
  echo "[mpinet] running: ${line% }"
}

# Print the variables the launch scripts set, so the run can be reproduced by hand.
mpinet_show_env() {
  local shown=() v
  for v in "${MPINET_EXPORT_VARS[@]}" OMPI_ALLOW_RUN_AS_ROOT PRTE_MCA_rmaps_default_mapping_policy; do
    [ -n "${!v:-}" ] && shown+=("$v=${!v}")
  done
  echo "[mpinet] environment: ${shown[*]}"
}
