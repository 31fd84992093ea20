"""Every family runs forward and backward on small inputs, gives the documented output shape, and
sends a gradient to every parameter; summary() works on every registered model."""
import numpy as np
import pytest

from mpinet import backend
from mpinet.autograd import Variable, no_grad
from mpinet.models import available_models, build_model

from zoo_cases import SMALL


def _ids(case):
    name, opts, _ = case
    return name + "-" + "-".join(f"{k}{v}" for k, v in opts.items())


def _input(model, batch=2, seed=0):
    x = np.random.default_rng(seed).standard_normal((batch,) + tuple(model.input_shape))
    return Variable(x.astype(np.float32))


@pytest.mark.parametrize("case", SMALL, ids=[_ids(c) for c in SMALL])
def test_forward_shape_and_every_parameter_gets_a_gradient(case):
    name, opts, out_shape = case
    model = build_model(name, **opts)
    y = model(_input(model))
    assert tuple(y.shape) == out_shape
    assert np.isfinite(y.numpy()).all()
    y.backward(np.ones(y.shape, dtype=y.dtype))
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert p.grad.shape == p.shape, pname
        assert np.isfinite(backend.to_numpy(p.grad)).all(), pname


def test_eval_mode_is_deterministic_and_differs_from_train_with_dropout():
    model = build_model("mlp", in_features=16, num_classes=3, dropout=0.5)
    x = _input(model, batch=4)
    model.eval()
    with no_grad():
        a, b = model(x).numpy(), model(x).numpy()
    np.testing.assert_array_equal(a, b)
    model.train()
    with no_grad():
        c = model(x).numpy()
    assert not np.allclose(a, c)  # dropout is active in training


def test_mlp_matches_numpy_reference():
    model = build_model("mlp", in_features=6, hidden=(5, 4), num_classes=3)
    x = _input(model, batch=3)
    w = {n: np.asarray(p.data, dtype=np.float64) for n, p in model.named_parameters()}
    h = np.maximum(x.data @ w["1.weight"].T + w["1.bias"], 0)
    h = np.maximum(h @ w["3.weight"].T + w["3.bias"], 0)
    expected = h @ w["5.weight"].T + w["5.bias"]
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_linear_regression_recovers_known_coefficients():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    true_w, true_b = np.array([2.0, -3.0, 0.5], np.float32), 1.0
    t = (x @ true_w + true_b)[:, None]
    model = build_model("linear-regression", in_features=3)
    for _ in range(300):  # plain gradient descent on the mean squared error
        model.zero_grad()
        err = model(Variable(x)) - t
        ((err * err).sum() * (1.0 / len(x))).backward()
        for p in model.parameters():
            p.data = p.data - 0.1 * p.grad
    np.testing.assert_allclose(model.linear.weight.data[0], true_w, atol=1e-3)
    np.testing.assert_allclose(model.linear.bias.data, [true_b], atol=1e-3)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_residual_blocks_add_the_shortcut(name):
    # With the last BN of every block zeroed and fresh running statistics in eval mode, each
    # residual branch is exactly zero, so a block without downsample computes relu(x).
    model = build_model(name, num_classes=10, input_size=32, stem="cifar",
                        zero_init_residual=True).eval()
    block = model.layer1[1]  # no downsample: input and output are (N, 64*expansion, H, W)
    channels = 64 * type(block).expansion
    x = Variable(np.random.default_rng(2).standard_normal((2, channels, 8, 8)).astype(np.float32))
    with no_grad():
        np.testing.assert_allclose(block(x).numpy(), np.maximum(x.data, 0), atol=1e-6)


def test_unet_rejects_sizes_not_divisible_by_two_to_the_depth():
    model = build_model("unet", num_classes=2, input_size=16, base_width=4, depth=2)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*depth = 4.*\(1, 1, 18, 18\)"):
        model(Variable(np.zeros((1, 1, 18, 18), np.float32)))
    with pytest.raises(ValueError, match="input_size 30 must be divisible by 2\\*\\*depth = 8"):
        build_model("unet", input_size=30, depth=3)


def test_unet_paper_configuration_widths():
    model = build_model("unet", num_classes=2, in_channels=1, input_size=64)  # base 64, depth 4
    state = model.state_dict()
    assert tuple(state["inc.0.weight"].shape) == (64, 1, 3, 3)
    assert tuple(state["downs.3.conv.3.weight"].shape) == (1024, 1024, 3, 3)  # the bottom
    assert tuple(state["ups.0.up.weight"].shape) == (1024, 512, 2, 2)  # (in, out, kh, kw)
    assert tuple(state["ups.3.conv.0.weight"].shape) == (64, 128, 3, 3)  # after the concat
    assert tuple(state["head.weight"].shape) == (2, 64, 1, 1)
    assert model.num_parameters() == 31_036_546  # classic U-Net with BN, 3x3 same-padding


# Small configurations of every registered name for summary(); the default sizes (224) would
# run a full-size forward.
SUMMARY_OPTS = {
    "linear-regression": dict(in_features=4),
    "mlp": dict(in_channels=1, input_size=8),
    "lenet5": dict(),
    "small-cnn": dict(),
    "alexnet": dict(num_classes=10, input_size=64),
    "vgg11": dict(num_classes=10, input_size=32),
    "vgg11_bn": dict(num_classes=10, input_size=32),
    "vgg16": dict(num_classes=10, input_size=32),
    "vgg16_bn": dict(num_classes=10, input_size=32),
    "squeezenet1_0": dict(num_classes=10, input_size=32),
    "squeezenet1_1": dict(num_classes=10, input_size=32),
    "resnet18": dict(num_classes=10, input_size=32),
    "resnet34": dict(num_classes=10, input_size=32, stem="imagenet"),
    "resnet50": dict(num_classes=10, input_size=32, stem="imagenet"),
    "unet": dict(num_classes=3, input_size=16, base_width=4, depth=2),
    "char-lstm": dict(num_classes=10, hidden_size=8, embed_dim=4),
    "char-transformer": dict(num_classes=10, embed_dim=8, num_heads=2, num_layers=1, max_len=16),
}


def test_summary_options_cover_every_registered_model():
    assert sorted(SUMMARY_OPTS) == sorted(available_models())


@pytest.mark.parametrize("name", sorted(SUMMARY_OPTS))
def test_summary_lists_layers_with_shapes_and_the_parameter_total(name):
    model = build_model(name, **SUMMARY_OPTS[name])
    text = model.summary(model.input_shape)
    assert f"Total params: {model.num_parameters():,}" in text
    lines = text.splitlines()
    last = lines[lines.index(f"Total params: {model.num_parameters():,}") - 2]  # above the rule
    out = {"linear-regression": "(1, 1)", "unet": "(1, 3, 16, 16)",
           "squeezenet1_0": "(1, 10, 1, 1)", "squeezenet1_1": "(1, 10, 1, 1)",
           "char-lstm": "(1, 16, 10)", "char-transformer": "(1, 16, 10)"}.get(name, "(1, 10)")
    assert out in last, f"{name}: last row {last!r} should show the output shape {out}"
    # one row per layer
    assert len(lines) > 8 or name in ("linear-regression", "mlp", "char-lstm"), text
    assert model.training  # summary() restores the mode it found


def test_resnet18_summary_shows_per_layer_shapes():
    model = build_model("resnet18", num_classes=10, input_size=32)  # cifar stem
    text = model.summary(model.input_shape)
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "(1, 64, 32, 32)" in lines["conv1"]
    assert "(1, 128, 16, 16)" in lines["layer2.0.conv1"]
    assert "(1, 256, 8, 8)" in lines["layer3.0.downsample.0"]
    assert "(1, 512, 4, 4)" in lines["layer4.1.bn2"]
    assert "(1, 10)" in lines["fc"] and "5,130" in lines["fc"]


def test_state_dict_round_trip_reproduces_outputs():
    a = build_model("resnet18", num_classes=10, input_size=32).eval()
    b = build_model("resnet18", num_classes=10, input_size=32).eval()  # other random weights
    x = _input(a)
    with no_grad():
        ya = a(x).numpy()
        assert not np.allclose(ya, b(x).numpy())
        # a torchvision state dict arrives as host NumPy arrays keyed by the same names
        b.load_state_dict({k: backend.to_numpy(v) for k, v in a.state_dict().items()})
        np.testing.assert_array_equal(b(x).numpy(), ya)


@pytest.mark.gpu
@pytest.mark.parametrize("name, opts", [
    ("resnet18", dict(num_classes=10, input_size=32, stem="cifar")),
    ("squeezenet1_1", dict(num_classes=10, input_size=64)),
    ("unet", dict(num_classes=3, input_size=32, base_width=8, depth=2)),
])
def test_gpu_forward_and_gradients_match_cpu(name, opts):
    model = build_model(name, **opts)
    if "dropout" in {type(m).__name__.lower() for _, m in model.named_modules()}:
        model.eval()  # dropout masks differ between devices; compare the deterministic path
    x = _input(model)
    y_cpu = model(x)
    # A random output gradient: with ones, every batch norm downstream of the global pool gets a
    # gradient constant over its (N, H, W) values, whose input gradient is 0 up to rounding, so
    # the comparison would be of rounding noise (it failed that way once the GPU's reduction
    # order changed).
    gy = np.random.default_rng(11).standard_normal(y_cpu.shape).astype(np.float32)
    y_cpu.backward(gy)
    grads_cpu = {n: backend.to_numpy(p.grad) for n, p in model.named_parameters()}
    model.zero_grad()
    gpu = backend.select_device(device="gpu")
    from mpinet.kernels import cudnn
    tf32 = cudnn.allow_tf32
    cudnn.allow_tf32 = False  # TF32 error compounds through 18 layers of backward
    try:
        model.to(gpu)
        y_gpu = model(Variable(gpu.xp.asarray(x.data)))
        y_gpu.backward(gpu.xp.asarray(gy))
        scale = float(np.abs(y_cpu.numpy()).max())
        np.testing.assert_allclose(y_gpu.numpy(), y_cpu.numpy(), rtol=1e-3, atol=1e-3 * scale)
        # Gradients are compared by relative norm, not element by element: GPU and CPU sum in
        # different orders, so a pre-activation within ~1e-6 of zero can land on different sides
        # of a ReLU, and that one routed-or-not element then shifts every gradient behind it by
        # up to a few percent of some elements (seen on an H200: 27% of conv1.weight beyond
        # 2e-3 of the max, ~1% in norm; float32 vs float64 on the CPU shows the same, 3.6e-3 in
        # norm at batch 8). A wrong kernel, layout or parameter mapping gives errors of order 1.
        for n, p in model.named_parameters():
            g_cpu, g_gpu = grads_cpu[n].astype(np.float64), backend.to_numpy(p.grad)
            err = np.linalg.norm(g_gpu - g_cpu) / max(np.linalg.norm(g_cpu), 1e-30)
            assert err < 5e-2, f"{name}: gradient of {n} differs from the CPU's by {err:.2e} " \
                               f"in relative norm"
    finally:
        cudnn.allow_tf32 = tf32
        backend.use_cpu()
