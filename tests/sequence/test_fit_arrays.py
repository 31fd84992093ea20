"""fit/evaluate/predict on plain NumPy arrays of any rank, regression targets, and the errors
for inputs that would otherwise train on wrong targets (issue 18, item 1)."""
import numpy as np
import pytest
from mpi4py import MPI

from mpinet import nn
from mpinet.autograd import Variable
from mpinet.comm import create_communicator
from mpinet.data import ArrayDataset, SequenceDataset, TensorDataset
from mpinet.training import Model
from mpinet.models import build_model
from mpinet.nn import init
from mpinet.ops import shape


def _line(n=64, seed=0):
    """The seed's Keras tutorial: y = 2x + 1 plus a little noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, n).reshape(n, 1).astype(np.float32)
    y = (2 * x[:, 0] + 1 + 0.05 * rng.standard_normal(n)).astype(np.float32)
    return x, y


def _regression_model(comm):
    init.manual_seed(3)
    model = Model(build_model("linear-regression", in_features=1), comm)
    return model.compile("sgd", loss="mse", metrics=["mae"], lr=0.1, momentum=0.0)


def _fit_line(comm, per_rank_batch, epochs=30):
    x, y = _line()
    model = _regression_model(comm)
    history = model.fit(x, y, epochs=epochs, batch_size=per_rank_batch, verbose=False,
                        validation_data=(x, y), seed=1)
    return model, history


def test_linear_regression_through_fit_x_y():
    model, history = _fit_line(create_communicator("mpi", MPI.COMM_SELF), 8)
    w = model.network.state_dict()
    assert float(np.asarray(w["linear.weight"]).ravel()[0]) == pytest.approx(2.0, abs=0.05)
    assert float(np.asarray(w["linear.bias"]).ravel()[0]) == pytest.approx(1.0, abs=0.05)
    assert history.history["val_mae"][-1] < 0.08
    assert history.history["loss"][-1] < history.history["loss"][0] / 10
    x, y = _line()
    result = model.evaluate(x, y)
    pred = model.predict(x)
    assert pred.shape == (64, 1)
    np.testing.assert_allclose(result["mae"], np.abs(pred[:, 0] - y).mean(), rtol=1e-5)


@pytest.mark.mpi(min_size=2)
def test_linear_regression_same_weights_on_n_ranks():
    world = create_communicator("mpi", MPI.COMM_WORLD)
    alone = create_communicator("mpi", MPI.COMM_SELF)
    b = 16 // world.size  # global batch 16 on 2 and 4 ranks
    want, h1 = _fit_line(alone, 16, epochs=5)
    got, hn = _fit_line(world, b, epochs=5)
    for k, v in want.network.state_dict().items():
        np.testing.assert_allclose(got.network.state_dict()[k], v, rtol=1e-5, atol=1e-6,
                                   err_msg=k)
    np.testing.assert_allclose(hn.history["val_mae"], h1.history["val_mae"], rtol=1e-5)


def test_multi_output_regression_of_rank3_inputs():
    """Inputs (N, 4, 3) and targets (N, 2): any shape goes; mae is the per-element mean."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4, 3)).astype(np.float32)
    w_true = rng.standard_normal((12, 2)).astype(np.float32)
    y = x.reshape(40, 12) @ w_true
    init.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    model = Model(net, create_communicator("mpi", MPI.COMM_SELF))
    model.compile("adam", loss="mse", metrics=["mae"], lr=0.05)
    model.fit(x, y, epochs=40, batch_size=8, verbose=False)
    result = model.evaluate(x, y)
    pred = model.predict(x)
    np.testing.assert_allclose(result["mae"], np.abs(pred - y).mean(), rtol=1e-5)
    assert result["mae"] < 0.05


def test_targets_are_never_changed_silently():
    x = np.zeros((3, 1, 2, 2), np.float32)
    with pytest.raises(TypeError,
                       match=r"labels has dtype float64 \(shape \(3,\)\).*TensorDataset"):
        ArrayDataset(x, np.array([1.9, 2.5, 2.7]), num_classes=1)
    data = TensorDataset(x, np.array([1.9, 2.5, 2.7]))
    assert data.y.dtype == np.float32
    np.testing.assert_array_equal(data.y, np.float32([1.9, 2.5, 2.7]))
    assert TensorDataset(x, np.array([0, 2, 1])).y.dtype == np.int64


def test_bad_inputs_get_one_clear_message():
    model = _regression_model(create_communicator("mpi", MPI.COMM_SELF))
    x, y = _line()
    with pytest.raises(ValueError, match=r"fit\(x, y\).*x has 64 \(shape \(64, 1\)\), y has 63"):
        model.fit(x, y[:63], verbose=False)
    with pytest.raises(ValueError, match=r"y \(the targets\) was not given"):
        model.fit(x, verbose=False)
    init.manual_seed(0)
    clf = Model(nn.Sequential(nn.Linear(1, 3)), create_communicator("mpi", MPI.COMM_SELF))
    clf.compile("sgd", loss="cross_entropy")
    with pytest.raises(TypeError, match=r"y \(targets\) has float dtype float32 and shape "
                                        r"\(64,\), but loss='cross_entropy' needs integer"):
        clf.fit(x, y, verbose=False)
    with pytest.raises(TypeError, match=r"validation_data.*float dtype"):
        clf.fit(x, np.zeros(64, np.int64), validation_data=(x, y), verbose=False)
    with pytest.raises(ValueError, match=r"loss 'mse': y \(targets\) of shape \(64, 3\) does not "
                                         r"fit the model output of shape \(64, 1\)"):
        model.evaluate(x, np.zeros((64, 3), np.float32))


class _LastStepClassifier(nn.Module):
    """Sequence classification from each sequence's final LSTM state (padding ignored)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, tokens, lengths):
        _, (h, _) = self.lstm(self.embed(tokens), lengths=lengths)
        return self.head(h[-1])


def test_sequence_dataset_pads_per_batch_and_trains():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 5, rng.integers(1, 9)) for _ in range(30)]
    labels = np.array([int((s == 1).any()) for s in seqs])
    data = SequenceDataset(seqs, labels)
    (x, lengths), y = data.batch(np.array([0, 1, 2]))
    assert x.shape == (3, int(lengths.max())) and x.dtype == np.int64
    for row, i in enumerate([0, 1, 2]):
        np.testing.assert_array_equal(x[row, :lengths[row]], seqs[i])
        assert (x[row, lengths[row]:] == 0).all()
    init.manual_seed(0)
    model = Model(_LastStepClassifier(), create_communicator("mpi", MPI.COMM_SELF))
    model.compile("adam", lr=0.05)
    history = model.fit(data, epochs=15, batch_size=10, verbose=False)
    assert history.history["accuracy"][-1] > 0.9
    with pytest.raises(ValueError, match=r"2 sequences but y has 3 targets"):
        SequenceDataset(seqs[:2], labels[:3])


class _Tagger(nn.Module):
    """Per-step classification: logits (N, C, T) for tokens (N, T)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, tokens, lengths):
        out, _ = self.gru(self.embed(tokens), lengths=lengths)
        return shape.transpose(self.head(out), (0, 2, 1))


def test_per_step_targets_skip_the_padding():
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 5, rng.integers(1, 7)) for _ in range(12)]
    tags = [s % 3 for s in seqs]
    data = SequenceDataset(seqs, tags)
    init.manual_seed(0)
    model = Model(_Tagger(), create_communicator("mpi", MPI.COMM_SELF))
    model.compile("adam", lr=0.05, metrics=())
    (x, lengths), y = data.batch(np.arange(12))
    assert (y[np.arange(x.shape[1])[None, :] >= lengths[:, None]] == -100).all()
    # The loss over the one batch of all 12 = the mean over valid steps only (from the logits).
    result = model.evaluate(data, batch_size=12)
    logits = model.network(Variable(x), lengths).data.astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    valid = y != -100
    picked = np.take_along_axis(logp, np.where(valid, y, 0)[:, None], 1)[:, 0]
    np.testing.assert_allclose(result["loss"], -(picked * valid).sum() / valid.sum(), rtol=1e-5)
    history = model.fit(data, epochs=20, batch_size=4, verbose=False)
    assert history.history["loss"][-1] < history.history["loss"][0] / 3


def test_predict_takes_a_sequence_dataset():
    rng = np.random.default_rng(3)
    seqs = [rng.integers(1, 5, rng.integers(1, 9)) for _ in range(7)]
    data = SequenceDataset(seqs, np.zeros(7, np.int64))
    init.manual_seed(0)
    model = Model(_LastStepClassifier(), create_communicator("mpi", MPI.COMM_SELF))
    model.compile("adam", lr=0.05)
    got = model.predict(data, batch_size=3)  # 3 batches, each padded to its own longest
    for i in (0, 4, 6):  # each alone, unpadded: the same logits
        (x, lengths), _ = data.batch(np.array([i]))
        np.testing.assert_allclose(got[i], model.network(Variable(x), lengths).data[0],
                                   rtol=1e-5, atol=1e-6)
