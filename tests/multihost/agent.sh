#!/usr/bin/env bash
# The launcher's remote agent for the emulated hosts of tests/multihost/hosts.sh, in place of ssh.
# MPICH hydra (-launcher ssh -launcher-exec this, or HYDRA_LAUNCHER_EXEC) calls it like ssh:
# `agent.sh -x HOST CMD...`, where CMD is a shell command line (words quoted for the remote
# shell). Open MPI's plm_rsh_agent uses the same ssh convention, but only MPICH was tried here.
# It runs CMD inside HOST's network and UTS namespaces.
#
# Like the ssh client, it stays on the calling host while the command runs and says so when the
# remote side is lost: when every process of a host is killed, this line is what names the host.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done  # ssh options (-x) mean nothing here
[ $# -ge 2 ] || { echo "[agent] usage: agent.sh [-x] HOST CMD..." >&2; exit 255; }
host=$1
shift
"$HERE/hosts.sh" exec "$host" sh -c "$*" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
wait "$child"
rc=$?
if [ "$rc" -gt 128 ]; then
  echo "[agent] connection to $host lost: its command ended by signal $((rc - 128))" >&2
  exit 255
fi
exit "$rc"
