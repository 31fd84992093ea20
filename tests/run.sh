#!/usr/bin/env bash
# The whole test suite: single-process tests, then the MPI tests on 2 and 4 ranks.
# Every MPI run sits under `timeout`, and tests/conftest.py aborts all ranks when one fails,
# so nothing can hang. Extra arguments go to every pytest run (e.g. `-x`, `-k comm`).
set -uo pipefail
cd "$(dirname "$0")/.."

MPIEXEC=${MPIEXEC:-mpiexec}
MPI_TIMEOUT=${MPI_TIMEOUT:-900}
# Oversubscribed ranks busy-poll; let them yield the core (MPICH / Open MPI respectively).
export MPIR_CVAR_ENABLE_HEAVY_YIELD=1 OMPI_MCA_mpi_yield_when_idle=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# No thread variables: mpinet sizes each rank's BLAS threads to its cores (mpinet/threads.py;
# tests/conftest.py applies the same budget to the pytest ranks), as it does for users.

status=0
echo "== single-process tests"
# tests/multihost runs in its own stage below, on emulated hosts.
python -m pytest -q -p no:cacheprovider --ignore=tests/multihost "$@" tests || status=$?

for n in 2 4; do
  echo "== MPI tests on $n ranks"
  timeout -k 10 "$MPI_TIMEOUT" "$MPIEXEC" -n "$n" \
    python -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m mpi --ignore=tests/multihost \
    "$@" tests
  rc=$?
  # 5 = pytest collected no MPI test; anything else non-zero is a failure (124: timed out).
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
    echo "MPI tests on $n ranks failed with exit code $rc"; status=$rc
  fi
done

echo "== multi-host tests"
# 2 emulated hosts x 2 ranks (tests/multihost/hosts.sh: network + UTS namespaces, one slurmd
# each). Started here when not already up (as root), and torn down again when this script started
# them, also on failure. Without root the tests skip with the reason.
started_hosts=0
if [ "$(id -u)" -eq 0 ] && ! bash tests/multihost/hosts.sh status >/dev/null 2>&1; then
  trap 'bash tests/multihost/hosts.sh down' EXIT
  started_hosts=1
  timeout 60 bash tests/multihost/hosts.sh up 2 || status=1
  if command -v slurmd >/dev/null; then
    timeout 90 bash tests/multihost/slurm.sh up || status=1
  fi
fi
timeout -k 10 "$MPI_TIMEOUT" python -m pytest -q -p no:cacheprovider "$@" tests/multihost
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
  echo "multi-host tests failed with exit code $rc"; status=$rc
fi
if [ "$started_hosts" = 1 ]; then
  bash tests/multihost/hosts.sh down
  trap - EXIT
fi
exit $status
