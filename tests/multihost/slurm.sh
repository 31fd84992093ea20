#!/usr/bin/env bash
# A Slurm cluster on the emulated hosts of tests/multihost/hosts.sh: slurmctld on head, one slurmd
# per node (slurmd -N nodeI inside nodeI's namespaces, NodeAddr = its own address), so
# `sbatch --nodes=2` really spans two hosts.
#
#   tests/multihost/slurm.sh up          # after hosts.sh up N; waits until every node is idle
#   tests/multihost/slurm.sh down        # stops the daemons (hosts.sh down also kills them)
#   tests/multihost/slurm.sh env         # prints `export SLURM_CONF=...` for client commands
# Client commands (sbatch, squeue, scontrol) run on head: hosts.sh exec head env SLURM_CONF=... sbatch
#
# Its own configuration, state and logs live under $MPINET_HOSTS_DIR/slurm (never /etc/slurm), and
# its daemons listen only inside the namespaces, so a single-node Slurm of tests/slurm on the
# machine itself (127.0.0.1) keeps running beside it. munged is shared: it authenticates through a
# Unix socket, which all namespaces see.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${MPINET_HOSTS_DIR:-/run/mpinet-hosts}
S=$DIR/slurm
CONF=$S/slurm.conf
CPUS=${MPINET_BED_SLURM_CPUS:-4}
WAIT_S=${MPINET_BED_SLURM_WAIT_S:-60}

log() { echo "[bed-slurm] $*" >&2; }
die() { echo "[bed-slurm] $*" >&2; exit 2; }
on() { "$HERE/hosts.sh" exec "$@"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  [ -f "$DIR/nodes" ] || die "no emulated hosts; run tests/multihost/hosts.sh up 2 first"
  for tool in slurmctld slurmd sinfo munged; do
    command -v "$tool" >/dev/null || die "$tool not found; apt-get install slurmctld slurmd slurm-client munge"
  done
  mapfile -t nodes <"$DIR/nodes"
  mkdir -p "$S/state" "$S/log"
  for n in "${nodes[@]}"; do mkdir -p "$S/spool-$n"; done
  if ! munge -n </dev/null >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || die "no /etc/munge/munge.key (Debian's munge package creates it)"
    install -d -o munge -g munge -m 0755 /run/munge
    log "starting munged"
    /etc/init.d/munge start >/dev/null
  fi
  local node_lines="" list
  for n in "${nodes[@]}"; do
    node_lines+="NodeName=$n NodeAddr=$(awk -v h="$n" '$2 == h {print $1}' "$DIR/etc-hosts") CPUs=$CPUS State=UNKNOWN"$'\n'
  done
  list=$(paste -sd, "$DIR/nodes")
  cat >"$CONF" <<EOF
# written by tests/multihost/slurm.sh for the emulated hosts (removed by hosts.sh down)
ClusterName=mpinet-bed
SlurmctldHost=head($(awk '$2 == "head" {print $1}' "$DIR/etc-hosts"))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool-%n
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd-%n.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd-%n.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
KillWait=10
# A host whose slurmd stops answering is DOWN after this many seconds (its jobs end NODE_FAIL).
SlurmdTimeout=6
MinJobAge=600
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
$node_lines
PartitionName=bed Nodes=$list Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF=$CONF
  # Start what is not running (a test may have killed every process of a host).
  if ! alive "$S/slurmctld.pid"; then
    log "starting slurmctld on head"
    on head slurmctld -i >>"$S/log/start.log" 2>&1
  fi
  for n in "${nodes[@]}"; do
    alive "$S/slurmd-$n.pid" && continue
    log "starting slurmd -N $n on $n"
    on "$n" slurmd -N "$n" >>"$S/log/start.log" 2>&1
  done
  local deadline=$((SECONDS + WAIT_S)) states
  while :; do
    states=$(on head sinfo -h -o '%n %T' 2>/dev/null || true)
    if [ -n "$states" ] && ! grep -qvE ' (idle|mixed|allocated)' <<<"$states"; then break; fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      die "nodes not idle after ${WAIT_S}s: ${states:-no answer}; see $S/log"
    fi
    grep -E ' (down|drain)' <<<"$states" | while read -r n _; do
      on head scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true
    done
    sleep 1
  done
  log "up: $(tr '\n' ' ' <<<"$states")"
}

down() {
  local f pids=() p i
  for f in "$S"/slurmd-*.pid "$S"/slurmctld.pid; do
    [ -f "$f" ] && pids+=("$(cat "$f")")
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for ((i = 0; i < 50; i++)); do  # up to 5 s for them to save state and exit
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$S"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) die "usage: $0 up | down | env" ;;
esac
