#!/usr/bin/env bash
# Stand up a single-node Slurm on this machine for the slurm/ tests: munge, slurmctld and slurmd,
# one partition with this host as its only node. Needs root and Debian's packages
#   apt-get install slurmctld slurmd slurm-client munge libpmix-dev
# (libpmix-dev: without it `srun --mpi=pmix` fails with "can not load PMIx library").
#
# Idempotent and quick: if `sinfo` already answers with a usable node it returns at once; otherwise
# it writes /etc/slurm/slurm.conf (only if absent or written by this script: a real cluster's
# configuration is never overwritten), starts the daemons that are not running and waits until the
# node is idle (about 6 s). Exit 0 when Slurm is usable, non-zero with a message when not.
#
# If the configuration this script would write differs from the one in place (a newer version of
# this script), it rewrites it and restarts the daemons.
#
# Knobs: MPINET_TEST_SLURM_CPUS (CPUs the node claims, default 8: SlurmdParameters=config_overrides
# lets a 2-core box advertise more, so several 2-task jobs can be scheduled at once);
# MPINET_TEST_SLURM_FAKE_GPUS (default 2): GPUs the node offers as GRES, backed by character
# devices made with mknod under /run/mpinet-fakegpu (no driver behind them), so the tests can check
# which GPUs Slurm makes visible to each task (CUDA_VISIBLE_DEVICES); 0: none.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARKER="# written by mpinet tests/slurm/start_slurm.sh"
NODE=$(hostname -s)
CPUS=${MPINET_TEST_SLURM_CPUS:-8}
FAKE_GPUS=${MPINET_TEST_SLURM_FAKE_GPUS:-2}
FAKE_GPU_DIR=/run/mpinet-fakegpu
WAIT_S=${MPINET_TEST_SLURM_WAIT_S:-60}

log() { echo "[start_slurm] $*"; }

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }

usable() {
  case "$(node_state)" in
    idle*|mixed*|allocated*|completing*) return 0 ;;
    *) return 1 ;;
  esac
}

for tool in slurmctld slurmd sinfo munged; do
  if ! command -v "$tool" >/dev/null; then
    echo "[start_slurm] $tool not found; install Debian's slurmctld slurmd slurm-client munge" \
         "libpmix-dev (apt-get install -y slurmctld slurmd slurm-client munge libpmix-dev)" >&2
    exit 2
  fi
done
if [ "$(id -u)" -ne 0 ]; then
  echo "[start_slurm] must run as root (it writes $CONF and starts daemons); uid is $(id -u)" >&2
  exit 2
fi

if usable && [ "$(id -u)" -ne 0 ]; then
  log "Slurm already up: node $NODE is $(node_state) (not root: configuration left as it is)"
  exit 0
fi

# --- munge: the key authenticates slurmctld <-> slurmd <-> client commands.
if [ ! -s /etc/munge/munge.key ]; then
  log "creating /etc/munge/munge.key"
  install -d -o munge -g munge -m 0700 /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
  log "starting munge"
  /etc/init.d/munge start >/dev/null
fi

# --- slurm.conf (the configuration seen working on a 2-core Debian 12 box, as root,
# without systemd).
if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
  echo "[start_slurm] $CONF exists and was not written by this script; refusing to overwrite a" \
       "real configuration. Move it away to let the tests stand up their own Slurm." >&2
  exit 3
fi
install -d "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

# Fake GPUs: device nodes with NVIDIA's major number (195) that no process opens; Slurm only needs
# files to hand out. Without mknod (unprivileged container) the node simply has no GPUs.
gres_types="" node_gres=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  install -d "$FAKE_GPU_DIR"
  made=0
  for ((i = 0; i < FAKE_GPUS; i++)); do
    [ -c "$FAKE_GPU_DIR/nvidia$i" ] || mknod "$FAKE_GPU_DIR/nvidia$i" c 195 "$i" 2>/dev/null || break
    made=$((made + 1))
  done
  if [ "$made" -eq "$FAKE_GPUS" ]; then
    gres_types="GresTypes=gpu"
    node_gres="Gres=gpu:$FAKE_GPUS"
    printf '%s\nNodeName=%s Name=gpu File=%s/nvidia[0-%d]\n' "$MARKER" "$NODE" "$FAKE_GPU_DIR" \
      $((FAKE_GPUS - 1)) >"$CONF_DIR/gres.conf"
  else
    log "could not create fake GPU devices under $FAKE_GPU_DIR (mknod refused): no GPUs"
  fi
fi
[ -n "$gres_types" ] || rm -f "$CONF_DIR/gres.conf"

new_conf=$(cat <<EOF
$MARKER
ClusterName=mpinet-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No cgroups in a container without systemd: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Lets the node claim more CPUs than the box has, so several small test jobs fit at once.
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled or hits its time limit.
KillWait=30
# Finished jobs stay visible to scontrol for this long (the tests read their final state).
MinJobAge=600
# Schedule often: the tests wait on requeued jobs.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
$gres_types
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS $node_gres State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# The daemons are started and stopped by their pidfiles, not through /etc/init.d: Debian's init
# scripts find daemons by executable (start-stop-daemon --exec), so they would take the slurmd of
# an emulated host (tests/multihost/slurm.sh, same binary) for this one, or stop it.
stop_daemon() {  # name
  local pid i
  pid=$(cat "/run/$1.pid")
  kill "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
  log "writing $CONF (node $NODE, $CPUS CPUs, ${node_gres:-no GPUs})"
  printf '%s\n' "$new_conf" >"$CONF"
  # Daemons running on an older configuration: restart them on this one.
  for daemon in slurmd slurmctld; do
    if running "/run/$daemon.pid"; then
      log "stopping $daemon (configuration changed)"
      stop_daemon "$daemon"
    fi
  done
elif usable; then
  log "Slurm already up: node $NODE is $(node_state)"
  exit 0
fi

# --- daemons: start whichever is not running (pidfile + live process).
if ! running /run/slurmctld.pid; then
  log "starting slurmctld"
  slurmctld
fi
if ! running /run/slurmd.pid; then
  log "starting slurmd"
  slurmd
fi

# --- wait until the node is schedulable; a node left DOWN/DRAIN by an earlier run is resumed.
deadline=$((SECONDS + WAIT_S))
while ! usable; do
  state=$(node_state)
  case "$state" in
    down*|drain*|fail*)
      scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "[start_slurm] node $NODE not idle after ${WAIT_S}s (state: '${state:-no answer}')." \
         "See /var/log/slurm/slurmctld.log and /var/log/slurm/slurmd.log." >&2
    exit 1
  fi
  sleep 1
done
log "Slurm up: node $NODE is $(node_state) with $(sinfo -h -n "$NODE" -o %c) CPUs," \
    "GRES: $(sinfo -h -n "$NODE" -o %G)"
