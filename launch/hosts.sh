#!/usr/bin/env bash
# Start mpinet on several hosts listed in a hostfile, the same number of ranks on each.
#
#   launch/hosts.sh -f hosts.txt                  # one rank per GPU of each host
#   launch/hosts.sh -f hosts.txt -N 8 -- --model resnet50 --dataset image-folder --data-dir /data
#   launch/hosts.sh -f hosts.txt -N 2 --dry-run   # print the command only
#
# Options:
#   -f HOSTFILE     one host name per line; '#' starts a comment; anything after the name on a
#                   line (slots=K, :K) is ignored: every host gets -N ranks
#   -N RANKS        ranks per host (default: GPUs on this machine, else its cores; hosts are
#                   assumed to be alike)
#   -p PROGRAM      what each rank runs (default: $MPINET_PROGRAM, else "python -m mpinet.train")
#   --dry-run       print the command and environment, run nothing
#   -- ARGS...      everything after -- goes to the program
# Ranks are placed in blocks (host 1 gets ranks 0..N-1, ...), so node-local ranks are contiguous.
# The hosts must reach each other by ssh without a password and see the same paths
# (repository, python environment, data). Remote ranks get this shell's PATH, LD_LIBRARY_PATH,
# PYTHONPATH, VIRTUAL_ENV and every NCCL_*, MPINET_*, UCX_* variable set here (MPICH's hydra
# forwards the whole environment by itself; Open MPI gets one -x per variable).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/mpi_env.sh
. "$here/mpi_env.sh"

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

hostfile="" per_host="" program=${MPINET_PROGRAM:-} dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    -f|--hostfile) hostfile=${2:?"-f needs a hostfile"}; shift 2 ;;
    -N|--ranks-per-host) per_host=${2:?"-N needs a number"}; shift 2 ;;
    -p|--program) program=${2:?"-p needs a command"}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "[mpinet] unknown option '$1'; program arguments go after --" >&2; usage >&2; exit 2 ;;
  esac
done
program=${program:-${PYTHON:-python} -m mpinet.train}

if [ -z "$hostfile" ] || [ ! -r "$hostfile" ]; then
  echo "[mpinet] need a readable hostfile: -f HOSTFILE (got '${hostfile}')" >&2; exit 2
fi
hosts=()
while read -r name _; do
  [ -n "$name" ] && hosts+=("$name")
done < <(sed 's/#.*//' "$hostfile")
if [ "${#hosts[@]}" -eq 0 ]; then
  echo "[mpinet] hostfile '$hostfile' lists no host (one name per line expected)" >&2; exit 2
fi

gpus=$(mpinet_count_gpus)
if [ -z "$per_host" ]; then
  if [ "$gpus" -gt 0 ]; then per_host=$gpus; else per_host=$(mpinet_count_cores); fi
fi
if ! [[ "$per_host" =~ ^[1-9][0-9]*$ ]]; then
  echo "[mpinet] -N must be a positive integer, got '$per_host'" >&2; exit 2
fi
total=$((per_host * ${#hosts[@]}))

mpinet_detect_launcher
mpinet_detect_library
mpinet_check_launcher_matches_library
mpinet_set_env "$MPINET_LIB_FLAVOR" "$per_host"

read -r -a program_words <<<"$program"
host_list=$(IFS=,; echo "${hosts[*]}")
cmd=("${MPIEXEC:-mpiexec}" -n "$total")
case "$MPINET_LIB_FLAVOR" in
  openmpi)
    # host:N declares N slots per host, so N ranks never count as oversubscribed there (no
    # --oversubscribe); yielding when ranks outnumber cores is still set by mpinet_set_env.
    with_slots=$(printf "%s:$per_host," "${hosts[@]}")
    cmd+=(--host "${with_slots%,}" --map-by slot --bind-to none)
    forward=("${MPINET_EXPORT_VARS[@]}" PATH)
    for v in LD_LIBRARY_PATH PYTHONPATH VIRTUAL_ENV; do [ -n "${!v:-}" ] && forward+=("$v"); done
    while read -r v; do forward+=("$v"); done < <(compgen -e | grep -E '^(NCCL_|MPINET_|UCX_)' || true)
    for v in $(printf '%s\n' "${forward[@]}" | awk '!seen[$0]++'); do cmd+=(-x "$v"); done
    ;;
  *)
    # MPICH hydra: -ppn places ranks in blocks; the environment is forwarded by default.
    cmd+=(-ppn "$per_host" -hosts "$host_list")
    ;;
esac
cmd+=("${program_words[@]}" "$@")

echo "[mpinet] MPI: $MPINET_LIB_FLAVOR ($MPINET_LIB_VERSION); ${#hosts[@]} hosts ($host_list)" \
     "x $per_host ranks = $total ranks"
mpinet_show_env
mpinet_print_cmd "${cmd[@]}"
[ "$dry_run" = 1 ] && exit 0
exec "${cmd[@]}"
