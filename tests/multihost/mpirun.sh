#!/usr/bin/env bash
# mpiexec across the emulated hosts of tests/multihost/hosts.sh, started from the head host:
#   tests/multihost/mpirun.sh -n 4 -ppn 2 python -m mpinet.train ...
# Any mpiexec option works; -hosts defaults to every node of the bed. Hydra starts its proxy on
# each host through tests/multihost/agent.sh instead of ssh.
#
# The transport between hosts is forced to TCP over eth0 (libfabric's tcp provider): MPICH's
# default UCX netmod sees one machine (one boot id) and moves data between "hosts" through
# shared memory, which would bypass the separate network stacks this bed exists to test.
# Ranks on one host still use MPICH's shared memory, as on a real node.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${MPINET_HOSTS_DIR:-/run/mpinet-hosts}
[ -f "$DIR/nodes" ] || { echo "[mpirun] no emulated hosts are up; run tests/multihost/hosts.sh up 2" >&2; exit 2; }
hosts=$(paste -sd, "$DIR/nodes")
export MPIR_CVAR_CH4_NETMOD=${MPIR_CVAR_CH4_NETMOD:-ofi} FI_PROVIDER=${FI_PROVIDER:-tcp}
export FI_TCP_IFACE=${FI_TCP_IFACE:-eth0}
export MPIR_CVAR_ENABLE_HEAVY_YIELD=${MPIR_CVAR_ENABLE_HEAVY_YIELD:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
host_args=(-hosts "$hosts")
for a in "$@"; do
  case "$a" in -hosts|-host|-f|-hostfile|-machinefile) host_args=() ;; esac
done
exec "$HERE/hosts.sh" exec head "${MPIEXEC:-mpiexec}" -launcher ssh -launcher-exec "$HERE/agent.sh" \
  "${host_args[@]}" "$@"
