#!/usr/bin/env bash
# Emulated hosts on one machine: each a Linux network namespace with its own address on a private
# bridge and its own hostname (UTS namespace), so MPI ranks on different "hosts" talk over TCP
# between separate network stacks and see different host names.
#
#   tests/multihost/hosts.sh up N        # N hosts node1..nodeN (10.213.0.1..N) + head (10.213.0.254)
#   tests/multihost/hosts.sh down        # kill everything running in them, delete them (idempotent)
#   tests/multihost/hosts.sh exec HOST CMD...   # run CMD on HOST (head, node1, ...)
#   tests/multihost/hosts.sh status      # the hosts that are up, one per line (exit 1 if none)
#
# Layout (all of it in namespaces this script creates; the machine's own network namespace gets
# nothing, not even an address, so no packet can leave the bed):
#   mpinet-switch          a namespace holding only the bridge br0 and the host ends of the veths
#   mpinet-head  (head)    the "login node": mpiexec and the Slurm controller run here
#   mpinet-nodeI (nodeI)   a compute node: eth0 = 10.213.0.I/24 on br0, lo up
# Each host's hostname lives in a persistent UTS namespace bound to $MPINET_HOSTS_DIR/<host>.uts;
# /etc/netns/<netns>/hosts, mounted over /etc/hosts for whatever runs there, names every host.
# MPI jobs start across the hosts through tests/multihost/agent.sh, the launcher's remote agent
# in place of ssh (see tests/multihost/mpirun.sh). Needs root, iproute2 and util-linux.
set -euo pipefail

DIR=${MPINET_HOSTS_DIR:-/run/mpinet-hosts}
SUBNET=10.213.0
HEAD_ADDR=$SUBNET.254
SWITCH=mpinet-switch
MAX_NODES=32

log() { echo "[hosts] $*" >&2; }
die() { echo "[hosts] $*" >&2; exit 2; }

netns_of() { echo "mpinet-$1"; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (it creates network namespaces); uid is $(id -u)"
  for tool in ip nsenter unshare; do
    command -v "$tool" >/dev/null || die "$tool not found; install iproute2 and util-linux"
  done
}

add_host() {  # name address
  local name=$1 addr=$2 ns veth
  ns=$(netns_of "$name")
  veth="v-$name"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip link set "$veth" netns "$SWITCH"
  ip -n "$SWITCH" link set "$veth" master br0 up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  touch "$DIR/$name.uts"
  unshare --uts="$DIR/$name.uts" hostname "$name"
  mkdir -p "/etc/netns/$ns"
  cp "$DIR/etc-hosts" "/etc/netns/$ns/hosts"
}

up() {
  local n=$1 i
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le $MAX_NODES ] \
    || die "up: the host count must be 1..$MAX_NODES, got '$n'"
  need_root
  if [ -f "$DIR/nodes" ]; then
    [ "$(wc -l <"$DIR/nodes")" -eq "$n" ] && { log "already up: $(tr '\n' ' ' <"$DIR/nodes")"; return 0; }
    die "a bed with $(wc -l <"$DIR/nodes") hosts is up; run '$0 down' first"
  fi
  # Leftovers of an interrupted run (namespaces but no host list): clear them first.
  if ip netns list 2>/dev/null | grep -q '^mpinet-'; then
    log "clearing leftovers of an earlier bed"
    down
  fi
  # A failure half-way leaves nothing behind.
  trap 'log "up failed; tearing down"; down' ERR
  mkdir -p "$DIR"
  {
    echo "127.0.0.1 localhost"
    echo "$HEAD_ADDR head"
    for ((i = 1; i <= n; i++)); do echo "$SUBNET.$i node$i"; done
  } >"$DIR/etc-hosts"
  ip netns add "$SWITCH"
  ip -n "$SWITCH" link add br0 type bridge
  ip -n "$SWITCH" link set br0 up
  add_host head "$HEAD_ADDR"
  for ((i = 1; i <= n; i++)); do add_host "node$i" "$SUBNET.$i"; done
  for ((i = 1; i <= n; i++)); do echo "node$i"; done >"$DIR/nodes"
  trap - ERR
  log "up: head ($HEAD_ADDR) and $n hosts node1..node$n on $SUBNET.0/24 (bridge br0 in $SWITCH)"
}

kill_in() {  # netns: SIGKILL every process in it (slurmd, strays of a failed test)
  local pids
  pids=$(ip netns pids "$1" 2>/dev/null || true)
  [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
}

down() {
  need_root
  local ns name
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^mpinet-' || true); do
    kill_in "$ns"
  done
  sleep 0.2
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^mpinet-' || true); do
    ip netns del "$ns" 2>/dev/null || log "could not delete namespace $ns"
    rm -rf "/etc/netns/$ns"
  done
  if [ -d "$DIR" ]; then
    for f in "$DIR"/*.uts; do
      [ -e "$f" ] || continue
      name=$(basename "$f" .uts)
      umount "$f" 2>/dev/null || true
    done
    rm -rf "$DIR"
  fi
  log "down: no mpinet-* namespace left ($(ip netns list | grep -c '^mpinet-' || true) found)"
}

run_on() {  # host cmd...
  local host=$1
  shift
  [ -e "$DIR/$host.uts" ] || die "no emulated host '$host' (up: $(tr '\n' ' ' <"$DIR/nodes" 2>/dev/null || echo none) head)"
  local ns
  ns=$(netns_of "$host")
  # nsenter, not `ip netns exec`: that remounts /sys and so hides the cgroup mounts slurmd needs.
  # A private mount namespace shows this host's /etc/hosts (every host's name and address).
  exec nsenter --net="/run/netns/$ns" --uts="$DIR/$host.uts" -- \
    unshare --mount --propagation private \
    sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "/etc/netns/$ns/hosts" "$@"
}

case "${1:-}" in
  up) up "${2:-2}" ;;
  down) down ;;
  exec) [ $# -ge 3 ] || die "usage: $0 exec HOST CMD..."; shift; run_on "$@" ;;
  status) [ -f "$DIR/nodes" ] && cat "$DIR/nodes" ;;
  *) die "usage: $0 up N | down | exec HOST CMD... | status" ;;
esac
