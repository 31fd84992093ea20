"""Module tree: deterministic names, state_dict round trip and errors, train/eval, summary()."""
import numpy as np
import pytest

from mpinet import nn
from mpinet.autograd import Variable
from mpinet.nn import init


class Block(nn.Module):
    """A custom module with its own parameter next to children (not just a Sequential)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.bn = nn.BatchNorm1d(4)
        self.scale = init.constant((4,), 2.0)

    def forward(self, x):
        return self.bn(self.fc(x)) * self.scale


def _model(seed=0):
    init.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(),
                         block=Block(), head=nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 3)))


EXPECTED_PARAMS = ["1.weight", "1.bias", "block.scale", "block.fc.weight", "block.fc.bias",
                   "block.bn.weight", "block.bn.bias", "head.1.weight", "head.1.bias"]
EXPECTED_BUFFERS = ["block.bn.running_mean", "block.bn.running_var",
                    "block.bn.num_batches_tracked"]


def test_names_are_deterministic_in_registration_order():
    a, b = _model(0), _model(1)
    assert [n for n, _ in a.named_parameters()] == EXPECTED_PARAMS
    assert [n for n, _ in b.named_parameters()] == EXPECTED_PARAMS
    assert [n for n, _ in a.named_buffers()] == EXPECTED_BUFFERS
    assert list(a.state_dict()) == EXPECTED_PARAMS + EXPECTED_BUFFERS
    assert a.block.bn.path == "block.bn" and a.head[1].path == "head.1"


def test_state_dict_round_trip_reproduces_outputs_and_buffers():
    src, dst = _model(0), _model(1)
    x = Variable(np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32))
    src(x)  # one training step's forward: running stats move, num_batches_tracked = 1
    dst.load_state_dict(src.state_dict())
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    src.eval(), dst.eval()
    np.testing.assert_array_equal(src(x).data, dst(x).data)
    # The copy is independent: changing the source afterwards leaves the destination alone.
    src.block.scale.data[...] = 0
    assert not np.all(dst.block.scale.data == 0)


def test_load_state_dict_reports_missing_unexpected_and_shape_errors():
    model = _model()
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "head.1.bias"}
    with pytest.raises(KeyError, match=r"missing \['head\.1\.bias'\], unexpected \[\]"):
        model.load_state_dict(missing)
    with pytest.raises(KeyError, match=r"unexpected \['extra\.weight'\]"):
        model.load_state_dict({**state, "extra.weight": np.zeros(1)})
    bad = dict(state, **{"1.weight": np.zeros((6, 13), np.float32)})
    with pytest.raises(ValueError, match=r"'1\.weight' has shape \(6, 13\) in the state but "
                                         r"\(6, 12\) in the model"):
        model.load_state_dict(bad)
    model.load_state_dict(missing, strict=False)  # non-strict: loads what is there


def test_load_state_dict_casts_to_the_models_dtype():
    model = _model()
    state = {k: np.asarray(v, dtype=np.float64) if np.asarray(v).dtype.kind == "f" else v
             for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert model[1].weight.dtype == np.float32 and model.block.bn.running_var.dtype == np.float32


def test_train_and_eval_reach_every_submodule():
    model = _model()
    assert all(m.training for _, m in model.named_modules())
    model.eval()
    assert not any(m.training for _, m in model.named_modules())
    x = Variable(np.ones((2, 3, 4), np.float32))
    np.testing.assert_array_equal(model(x).data, model(x).data)  # dropout off, running stats
    model.train()
    assert all(m.training for _, m in model.named_modules())


def test_summary_lists_output_shapes_and_parameter_counts():
    model = _model()
    text = model.summary((3, 4), batch_size=2)
    lines = text.splitlines()

    def row(label):
        (hit,) = [ln for ln in lines if ln.startswith(label)]
        return hit[len(label):].split()

    assert row("0 (Flatten)") == ["(2,", "12)", "0"]
    assert row("1 (Linear)") == ["(2,", "6)", "78"]
    assert row("block (Block)") == ["(2,", "4)", "4"]  # its own `scale` only
    assert row("block.fc (Linear)") == ["(2,", "4)", "28"]
    assert row("block.bn (BatchNorm1d)") == ["(2,", "4)", "8"]
    assert row("head.1 (Linear)") == ["(2,", "3)", "15"]
    assert not any(ln.startswith("head (") for ln in lines)  # parameter-free containers skipped
    assert "Total params: 133" in text and "Trainable params: 133" in text
    assert model.training and model.block.bn.training  # summary restores the mode
    assert int(model.block.bn.num_batches_tracked) == 0  # and ran in eval: buffers untouched
    assert "forward" not in model[1].__dict__  # the recording wrappers are removed


def test_shared_parameter_is_listed_and_counted_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    assert model.num_parameters() == 12


def test_set_buffer_refuses_unknown_names():
    bn = nn.BatchNorm1d(2)
    with pytest.raises(KeyError, match=r"no buffer named 'running_avg'"):
        bn.set_buffer("running_avg", np.zeros(2))


def test_summary_columns_are_separated_for_the_longest_name():
    text = _model().summary((3, 4))
    assert "block.bn (BatchNorm1d) " in text
