"""Data-parallel training on the hosts == the same steps on one rank with the global batch.
argv: impl (mpi | hierarchical). Every rank also trains the one-rank reference over COMM_SELF.
Prints "dp exact" per rank."""
import sys

import numpy as np
from mpi4py import MPI

from mpinet import nn
from mpinet.comm import create_communicator
from mpinet.comm.failure import install_abort_handler
from mpinet.data.dataset import ArrayDataset
from mpinet.model import Model
from mpinet.nn import init


def data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 2, 2)).astype(np.float32)
    y = (x.reshape(n, -1).sum(1) > 0).astype(np.int64) + (x[:, 0, 0, 0] > 1)
    return ArrayDataset(x, y, num_classes=3)


def train(comm, per_rank_batch):
    init.manual_seed(7)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    model = Model(net, comm)
    model.compile("sgd", lr=0.1, momentum=0.9, bucket_mb=0.0001)
    model.fit(data(), epochs=2, batch_size=per_rank_batch, verbose=False, seed=3)
    return {k: np.array(v) for k, v in net.state_dict().items()}


install_abort_handler()
world = create_communicator(sys.argv[1], MPI.COMM_WORLD)
assert world.num_nodes == 2, world
alone = create_communicator("mpi", MPI.COMM_SELF)
got = train(world, 3)
want = train(alone, 3 * world.size)
for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=k)
# The run must have moved the weights, or equality would prove nothing.
init.manual_seed(7)
first = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
assert any(not np.allclose(np.array(v), got[k]) for k, v in first.state_dict().items())
print(f"dp exact rank {world.rank} impl {world.name}", flush=True)
