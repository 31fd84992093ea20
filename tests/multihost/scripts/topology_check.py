"""Where each rank runs, seen from inside a job on the emulated hosts. argv: impl.

Checks that MPI's node-local grouping (Split_type, via the topology) puts the ranks of one host
together and nothing else, that each host has its own hostname and address, and that after an
allreduce this rank's host has TCP connections to another host's address (the data crossed
a network between separate stacks). Prints one "ok" line per rank."""
import os
import socket
import sys

import numpy as np

from mpinet.comm import create_communicator
from mpinet.comm.failure import install_abort_handler


def addresses():
    """IPv4 addresses of this network namespace (from the routing table's local entries)."""
    out = set()
    with open("/proc/net/fib_trie") as f:
        lines = f.read().splitlines()
    for prev, line in zip(lines, lines[1:], strict=False):
        if "/32 host LOCAL" in line:
            out.add(prev.split()[-1])
    return out - {"127.0.0.1"}


def my_socket_inodes():
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def established_peers():
    """Remote IPv4 addresses of this process's own established TCP connections (/proc/net/tcp
    lists the whole namespace: launcher daemons' connections must not count)."""
    mine, peers = my_socket_inodes(), set()
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state == "01" and inode in mine:  # ESTABLISHED, owned by this process
                ip = remote.split(":")[0]
                peers.add(socket.inet_ntoa(bytes.fromhex(ip)[::-1]))
    return peers


install_abort_handler()
comm = create_communicator(sys.argv[1])
t = comm.topology
host = socket.gethostname()
mine = addresses()
table = comm.allgather_obj((t.rank, t.node, t.local_rank, host, sorted(mine)))
by_node = {}
for _, node, _, h, addrs in table:
    by_node.setdefault(node, set()).add((h, tuple(addrs)))
assert t.num_nodes == 2 and t.local_size == 2 and t.size == 4, t
assert t.hosts == tuple(h for _, _, _, h, _ in sorted(table)), t.hosts  # the topology's own view
# One hostname and one address set per node, all different between nodes.
assert all(len(v) == 1 for v in by_node.values()), by_node
assert len({next(iter(v))[0] for v in by_node.values()}) == 2, by_node
assert len({next(iter(v))[1] for v in by_node.values()}) == 2, by_node
# Ranks 0,1 on the first host, 2,3 on the second (hydra places ranks in blocks with -ppn 2).
assert [n for _, n, _, _, _ in sorted(table)] == [0, 0, 1, 1], table
x = np.full(1 << 16, comm.rank + 1.0, np.float32)
comm.allreduce(x, out=x)
np.testing.assert_array_equal(x, 10.0)
others = {a for _, n, _, _, addrs in table if n != t.node for a in addrs}
# The allreduce's data went over TCP to the other host's address: on every host, at least one
# rank's own process holds such a connection (MPI may route a node's traffic through one rank).
crossing = established_peers() & others
per_node = comm.allgather_obj((t.node, bool(crossing)))
for node in range(t.num_nodes):
    assert any(c for n, c in per_node if n == node), \
        f"no rank on node {node} has its own TCP connection to another host: {per_node}"
comm.barrier()
print(f"ok rank {t.rank} {host} {sorted(mine)} node {t.node}/{t.num_nodes} "
      f"local {t.local_rank}/{t.local_size} own tcp to {sorted(crossing)}", flush=True)
