"""Data parallelism with variable-length sequences: k steps on N ranks == k steps on one rank
with the same global batch (each rank pads its own share to its own longest sequence, which
must change nothing) (issue 18)."""
import numpy as np
import pytest
from mpi4py import MPI

from mpinet import nn
from mpinet.autograd import Variable
from mpinet.comm import create_communicator
from mpinet.data import SequenceDataset
from mpinet.training import Model
from mpinet.nn import init
from mpinet.ops import shape


class _Classifier(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.embed = nn.Embedding(6, 5)
        self.rnn = getattr(nn, kind)(5, 7, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(14, 3)

    def forward(self, tokens, lengths):
        _, state = self.rnn(self.embed(tokens), lengths=lengths)
        h = state[0] if isinstance(state, tuple) else state
        return self.head(shape.concat([h[-2], h[-1]], axis=1))  # last layer, both directions


def _data(n=26):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 6, rng.integers(1, 10)) for _ in range(n)]
    labels = np.array([int(s.sum()) % 3 for s in seqs])
    return SequenceDataset(seqs, labels)


def _train(comm, per_rank_batch, kind):
    init.manual_seed(4)
    model = Model(_Classifier(kind), comm)
    model.compile("adam", lr=0.01, bucket_mb=0.0001)
    history = model.fit(_data(), epochs=2, batch_size=per_rank_batch, verbose=False, seed=5)
    return {k: np.array(v) for k, v in model.network.state_dict().items()}, history


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_variable_length_data_parallel_equals_one_rank(kind):
    world = create_communicator("mpi", MPI.COMM_WORLD)
    alone = create_communicator("mpi", MPI.COMM_SELF)
    b = 8 // world.size if world.size <= 4 else 2  # global batch 8: 26 samples, uneven last step
    want, h1 = _train(alone, b * world.size, kind)
    got, hn = _train(world, b, kind)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=k)
    np.testing.assert_allclose(hn.history["loss"], h1.history["loss"], rtol=1e-5)


def test_padding_changes_nothing():
    """One rank: the same samples padded to a longer batch give the same logits."""
    init.manual_seed(4)
    net = _Classifier("LSTM")
    data = _data()
    (x, lengths), _ = data.batch(np.array([0, 1, 2]))
    padded = np.concatenate([x, np.full((3, 4), 5)], axis=1)  # 4 more steps of a real token id
    a = net(Variable(x), lengths).data
    b = net(Variable(padded), lengths).data
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    c = net(Variable(padded), lengths + 1).data  # a different length does change the result
    assert not np.allclose(a, c, atol=1e-4)
