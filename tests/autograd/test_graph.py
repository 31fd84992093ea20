import numpy as np
import pytest

from mpinet.autograd import Parameter, Variable, no_grad
from mpinet.testing import check_backward


def test_shared_leaf_gets_summed_gradient_and_one_ready_hook_after_last_use():
    w = Parameter(np.array([2.0, 3.0]))
    seen = []
    w.register_grad_ready_hook(lambda p: seen.append(p.grad.copy()))
    y = (w * w + w * 3.0).sum()  # dy/dw = 2w + 3
    y.backward()
    np.testing.assert_allclose(w.grad, [7.0, 9.0])
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], [7.0, 9.0])  # the hook saw the final value


def test_hooks_fire_in_reverse_layer_order():
    x = Variable(np.ones((2, 3)))
    w1, w2 = Parameter(np.full((3, 3), 0.5)), Parameter(np.full((3, 1), 0.5))
    order = []
    w1.register_grad_ready_hook(lambda p: order.append("w1"))
    w2.register_grad_ready_hook(lambda p: order.append("w2"))
    ((x @ w1) @ w2).sum().backward()
    assert order == ["w2", "w1"]


def test_cast_weight_is_final_before_earlier_layers_backprop():
    """Mixed precision casts each master weight right before its layer. The cast's backward must
    run right after that layer's, not at the very end (ordering by depth put every cast, a
    shallow node, last: no allreduce could start before backprop was over)."""
    from mpinet import amp
    from mpinet.autograd import Function

    events = []

    class Log(Function):
        def forward(self, x):
            return x

        def backward(self, gy):
            events.append("earlier layer's backward")
            return gy

    x = Variable(np.ones((2, 3)))
    w1, w2 = Parameter(np.full((3, 3), 0.5)), Parameter(np.full((3, 1), 0.5))
    w2.register_grad_ready_hook(lambda p: events.append("w2 final"))
    h = Log().apply(x @ amp.cast(w1, np.dtype(np.float32)))
    (h @ amp.cast(w2, np.dtype(np.float32))).sum().backward()
    assert events == ["w2 final", "earlier layer's backward"]
    np.testing.assert_allclose(w2.grad, np.full((3, 1), 3.0))  # sum of h over the batch


def test_gradients_accumulate_across_backward_calls():
    w = Parameter(np.array([1.0]))
    (w * 2.0).sum().backward()
    (w * 5.0).sum().backward()
    np.testing.assert_allclose(w.grad, [7.0])


def test_no_grad_records_nothing():
    w = Parameter(np.array([1.0]))
    with no_grad():
        y = w * 2.0
    assert y.creator is None and not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_second_backward_without_retain_graph_is_refused():
    w = Parameter(np.array([1.0, 2.0]))
    y = (w * w).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_non_scalar_backward_needs_grad():
    w = Parameter(np.ones(3))
    with pytest.raises(RuntimeError, match="explicit grad"):
        (w * 2.0).backward()


@pytest.mark.parametrize("op", [
    lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / (b * b + 1.0),
])
def test_broadcasting_arithmetic_gradients(op):
    rng = np.random.default_rng(1)
    check_backward(op, [rng.standard_normal((3, 4)), rng.standard_normal((1, 4))])
    check_backward(op, [rng.standard_normal((2, 3, 4)), rng.standard_normal((4,))])


def test_reductions_matmul_pow_exp_log_gradients():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    check_backward(lambda a, b: a @ b, [a, b])
    check_backward(lambda a: a.sum(axis=1), [a])
    check_backward(lambda a: a.mean(axis=(0,), keepdims=True), [a])
    check_backward(lambda a: (a ** 3).mean(), [a])
    from mpinet.ops import arith
    check_backward(lambda a: arith.log(arith.exp(a) + 1.0), [a])


def test_shape_ops_gradients():
    from mpinet.ops import shape
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 3, 4))
    check_backward(lambda a: a.reshape(6, 4) * 2.0, [a])
    check_backward(lambda a: a.transpose(2, 0, 1), [a])
    check_backward(lambda a: a[:, 1:, ::2], [a])
    check_backward(lambda a: a[np.array([0, 0, 1])], [a])  # repeated index accumulates
    b = rng.standard_normal((2, 2, 4))
    check_backward(lambda a, b: shape.concat([a, b], axis=1), [a, b])


def test_scalar_operands_keep_float32():
    x = Variable(np.ones(3, np.float32), requires_grad=True)
    assert (x * 0.5 + 1).dtype == np.float32


# ---- first gradients written straight into zeroed buffers (Function.grad_destination) ---------
def _flat_params(*arrays):
    from mpinet.flat import FlatParameters

    params = [Parameter(a) for a in arrays]
    return params, FlatParameters(params)


def _linear_bn_loss(x, w, b, gamma, beta, training=True):
    from mpinet.ops import linear, norm

    h = linear.linear(x, w, b)
    y, _, _ = norm.batch_norm(h, gamma, beta, None, None, training)
    return (y * y).sum() + (h * 0.5).sum()


def test_zeroed_buffers_receive_first_gradients_in_place_and_values_match():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((4, 3)), rng.standard_normal(4), rng.standard_normal(4),
              rng.standard_normal(4)]
    x = Variable(rng.standard_normal((6, 3)))
    ref = [Parameter(a.copy()) for a in arrays]
    _linear_bn_loss(x, *ref).backward()           # plain leaves: autograd copies the gradients

    params, flat = _flat_params(*arrays)
    views = [p.grad for p in params]
    for _step in range(2):                         # twice: zero_grad re-arms the direct writes
        flat.zero_grad()
        assert all(p._grad_zeroed is p.grad for p in params)
        _linear_bn_loss(x, *params).backward()
        for p, r, v in zip(params, ref, views, strict=True):
            assert p.grad is v                     # still the view into the flat buffer
            assert p._grad_zeroed is None          # the next gradient must be added
            np.testing.assert_allclose(p.grad, r.grad, rtol=1e-12, atol=1e-12)


def test_direct_write_happens_instead_of_an_add(monkeypatch):
    """The ops hand back the buffer itself, so autograd launches no add for it."""
    from mpinet.autograd import graph

    rng = np.random.default_rng(1)
    params, flat = _flat_params(rng.standard_normal((4, 3)), rng.standard_normal(4),
                                rng.standard_normal(4), rng.standard_normal(4))
    flat.zero_grad()
    seen = []
    original = graph._accumulate_leaf
    monkeypatch.setattr(graph, "_accumulate_leaf",
                        lambda leaf, g: (seen.append(g is leaf.grad), original(leaf, g)))
    _linear_bn_loss(Variable(rng.standard_normal((6, 3))), *params).backward()
    assert seen == [True, True, True, True]


def test_without_zeroing_gradients_still_accumulate():
    """No mark_grad_zeroed (e.g. micro-batch accumulation): the ops must not overwrite."""
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((4, 3)), rng.standard_normal(4), rng.standard_normal(4),
              rng.standard_normal(4)]
    x = Variable(rng.standard_normal((6, 3)))
    params, flat = _flat_params(*arrays)
    flat.zero_grad()
    _linear_bn_loss(x, *params).backward()
    once = [p.grad.copy() for p in params]
    _linear_bn_loss(x, *params).backward()        # second micro-batch: accumulates
    for p, g in zip(params, once, strict=True):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-12)


def test_a_parameter_used_twice_sums_both_gradients():
    rng = np.random.default_rng(3)
    from mpinet.ops import linear

    w0 = rng.standard_normal((2, 3))
    x1, x2 = Variable(rng.standard_normal((5, 3))), Variable(rng.standard_normal((4, 3)))
    (params, flat) = _flat_params(w0)
    flat.zero_grad()
    (linear.linear(x1, params[0]).sum() + (linear.linear(x2, params[0]) * 2).sum()).backward()
    expected = np.ones((5, 2)).T @ x1.data + 2 * np.ones((4, 2)).T @ x2.data
    np.testing.assert_allclose(params[0].grad, expected, rtol=1e-12)


def test_autocast_cast_backward_writes_into_the_master_gradient():
    """amp.Cast's backward casts the half-precision gradient straight into the float32 master
    weight's zeroed buffer (one kernel, no add), with the same values as the plain path."""
    from mpinet import amp
    from mpinet.ops import linear

    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((3, 5)).astype(np.float32)
    x = Variable(rng.standard_normal((4, 5)).astype(np.float16))

    def loss(w):
        return amp.cast(linear.linear(x, amp.cast(w, np.dtype(np.float16))),
                        np.dtype(np.float32)).sum()

    plain = Parameter(w0.copy())
    loss(plain).backward()
    (params, flat) = _flat_params(w0.copy())
    flat.zero_grad()
    view = params[0].grad
    loss(params[0]).backward()
    assert params[0].grad is view and params[0]._grad_zeroed is None
    np.testing.assert_array_equal(params[0].grad, plain.grad)
