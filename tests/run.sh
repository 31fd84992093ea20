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
python -m pytest -q -p no:cacheprovider "$@" tests || status=$?

for n in 2 4; do
  echo "== MPI tests on $n ranks"
  timeout -k 10 "$MPI_TIMEOUT" "$MPIEXEC" -n "$n" \
    python -m mpi4py -m pytest -q -p no:cacheprovider --with-mpi -m mpi "$@" tests
  rc=$?
  # 5 = pytest collected no MPI test; anything else non-zero is a failure (124: timed out).
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
    echo "MPI tests on $n ranks failed with exit code $rc"; status=$rc
  fi
done
exit $status
