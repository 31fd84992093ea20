import numpy as np
import pytest

from mpinet.autograd import Variable
from mpinet.ops import norm
from mpinet.testing import check_backward, check_forward, check_gpu_matches_cpu

rng = np.random.default_rng(0)
SHAPES = [(6, 3), (4, 3, 5, 5)]


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _bc(v, x):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def _bn_train_ref(x, g, b, eps=1e-5):
    mean = x.mean(axis=_axes(x))
    var = x.var(axis=_axes(x))  # biased, as PyTorch normalises
    return (x - _bc(mean, x)) / np.sqrt(_bc(var, x) + eps) * _bc(g, x) + _bc(b, x)


def _params(c):
    return rng.uniform(0.5, 1.5, c), rng.standard_normal(c)


@pytest.mark.parametrize("shape", SHAPES)
def test_train_forward_and_backward(shape):
    x = rng.standard_normal(shape) * 2 + 1
    g, b = _params(shape[1])

    def fn(x, g, b):
        return norm.batch_norm(x, g, b, None, None, training=True)[0]

    check_forward(fn, _bn_train_ref, [x, g, b], atol=1e-12, rtol=1e-10)
    check_backward(fn, [x, g, b], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_uses_running_stats_forward_and_backward(shape):
    x = rng.standard_normal(shape)
    g, b = _params(shape[1])
    rm, rv = rng.standard_normal(shape[1]), rng.uniform(0.5, 2.0, shape[1])

    def fn(x, g, b):
        y, m, v = norm.batch_norm(x, g, b, rm, rv, training=False, eps=1e-3)
        assert m is rm and v is rv
        return y

    ref = lambda x, g, b: (x - _bc(rm, x)) / np.sqrt(_bc(rv, x) + 1e-3) * _bc(g, x) + _bc(b, x)  # noqa: E731
    check_forward(fn, ref, [x, g, b], atol=1e-12, rtol=1e-12)
    check_backward(fn, [x, g, b])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_fused_relu_equals_batch_norm_then_relu(shape, training):
    """relu=True: forward max(BN(x), 0), backward through the mask, in training and eval."""
    x = rng.standard_normal(shape) * 2 + 1
    g, b = _params(shape[1])
    rm, rv = rng.standard_normal(shape[1]), rng.uniform(0.5, 2.0, shape[1])

    def fn(x, g, b):
        return norm.batch_norm(x, g, b, rm, rv, training, eps=1e-3, relu=True)[0]

    def ref(x, g, b):
        if training:
            y = _bn_train_ref(x, g, b, eps=1e-3)
        else:
            y = (x - _bc(rm, x)) / np.sqrt(_bc(rv, x) + 1e-3) * _bc(g, x) + _bc(b, x)
        return np.maximum(y, 0)

    assert (ref(x, g, b) == 0).mean() > 0.2  # the mask matters in this data
    check_forward(fn, ref, [x, g, b], atol=1e-12, rtol=1e-10)
    check_backward(fn, [x, g, b], atol=1e-6, rtol=1e-5)


def test_num_batches_tracked_is_counted_by_the_training_op():
    counter = np.zeros((), np.int64)
    x = rng.standard_normal((4, 3))
    g, b = _params(3)
    for _ in range(2):
        norm.batch_norm(x, g, b, None, None, training=True, num_batches_tracked=counter)
    norm.batch_norm(x, g, b, np.zeros(3), np.ones(3), training=False,
                    num_batches_tracked=counter)  # eval does not count
    assert counter == 2


def test_running_stats_follow_pytorchs_update():
    x = rng.standard_normal((4, 3, 2, 2)) * 3 + 2
    g, b = _params(3)
    rm, rv = np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32)
    _, new_m, new_v = norm.batch_norm(x, g, b, rm, rv, training=True, momentum=0.1)
    assert new_m is rm and new_v is rv  # updated in place, as on the GPU
    n = x.size // 3
    batch_mean = x.mean(axis=(0, 2, 3))
    unbiased = ((x - _bc(batch_mean, x)) ** 2).sum(axis=(0, 2, 3)) / (n - 1)
    np.testing.assert_allclose(new_m, 0.9 * 0.5 + 0.1 * batch_mean, rtol=1e-6)
    np.testing.assert_allclose(new_v, 0.9 * 2.0 + 0.1 * unbiased, rtol=1e-6)
    assert new_m.dtype == np.float32 and new_v.dtype == np.float32


def test_one_value_per_channel_is_refused_in_training():
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*\(1, 3\)"):
        norm.batch_norm(np.ones((1, 3)), np.ones(3), np.zeros(3), None, None, training=True)


def test_parameter_shape_error_names_channels():
    with pytest.raises(ValueError, match=r"weight \(gamma\) must have shape \(3,\).*got \(4,\)"):
        norm.batch_norm(np.ones((2, 3)), np.ones(4), np.zeros(3), None, None, training=True)


def test_half_input_keeps_float32_statistics():
    x = (rng.standard_normal((8, 4, 3, 3)) * 2 + 5).astype(np.float16)
    g, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    xv = Variable(x, requires_grad=True)
    y, m, v = norm.batch_norm(xv, g, b, rm, rv, training=True, momentum=1.0)
    assert y.dtype == np.float16 and m.dtype == np.float32
    np.testing.assert_allclose(m, x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(y.data.astype(np.float64),
                               _bn_train_ref(x.astype(np.float64), g, b), atol=5e-3)
    y.backward(np.ones(x.shape, np.float16))
    assert xv.grad.dtype == np.float16


def test_shifted_stats_avoid_cancellation():
    x = (1e4 + rng.standard_normal((64, 2))).astype(np.float32)  # |mean| >> std
    s, ss, n = norm.batch_stats(x, shift=np.full(2, 1e4, np.float32))
    mean, var = norm.moments_from_stats(s, ss, n, shift=np.full(2, 1e4, np.float32))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(var, x64.var(axis=0), rtol=1e-4)


def test_from_stats_on_two_shards_equals_full_batch_batch_norm():
    """Sync batch norm in one process: two 'ranks' hold halves of a batch."""
    x = rng.standard_normal((8, 3, 2, 2)) * 2 + 1
    g, b = _params(3)
    gy = rng.standard_normal(x.shape)
    # Reference: ordinary batch norm over the whole batch.
    xf, gf, bf = (Variable(a.copy(), requires_grad=True) for a in (x, g, b))
    norm.batch_norm(xf, gf, bf, None, None, training=True)[0].backward(gy)

    shards = (slice(0, 3), slice(3, 8))  # unequal halves: counts must be summed, not assumed
    stats = [norm.batch_stats(x[s]) for s in shards]
    total = [sum(parts) for parts in zip(*stats, strict=True)]  # the allreduce
    mean, var = norm.moments_from_stats(*total)
    local = [norm.batch_stats(x[s]) for s in shards]
    assert total[2] == 8 * 4 and local[0][2] == 3 * 4
    # Global backward sums (what allreduce of every rank's (sum gy, sum gy*xhat) gives):
    xhat = (x - _bc(mean, x)) / np.sqrt(_bc(var, x) + 1e-5)
    global_sums = np.stack([gy.sum(axis=(0, 2, 3)), (gy * xhat).sum(axis=(0, 2, 3))])
    seen = []

    def reduce_grads(local_sums):
        seen.append(local_sums.copy())
        return global_sums

    ggamma = np.zeros(3)
    for s in shards:
        xs, gs, bs = (Variable(a, requires_grad=True) for a in (x[s].copy(), g.copy(), b.copy()))
        y = norm.batch_norm_from_stats(xs, gs, bs, mean, var, total[2], reduce_grads=reduce_grads)
        np.testing.assert_allclose(y.data, _bn_train_ref(x, g, b)[s], atol=1e-12)
        y.backward(gy[s])
        np.testing.assert_allclose(xs.grad, xf.grad[s], atol=1e-12)
        ggamma += gs.grad
    np.testing.assert_allclose(sum(seen), global_sums, atol=1e-12)  # local sums add up
    np.testing.assert_allclose(ggamma, gf.grad, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(32, 16), (8, 16, 7, 7)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_gpu_matches_cpu(shape, training, relu):
    import cupy as cp

    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    g, b = (a.astype(np.float32) for a in _params(shape[1]))
    rm, rv = np.zeros(shape[1], np.float32), np.full(shape[1], 1.5, np.float32)
    stats = {}

    def fn(x, g, b):
        on_gpu = type(x.data).__module__.startswith("cupy")
        xp = cp if on_gpu else np
        y, m, v = norm.batch_norm(x, g, b, xp.asarray(rm), xp.asarray(rv), training, 0.1,
                                  relu=relu)
        stats["gpu" if on_gpu else "cpu"] = (cp.asnumpy(m), cp.asnumpy(v))
        return y

    check_gpu_matches_cpu(fn, [x, g, b], atol=1e-4, rtol=1e-4)
    for a, b_ in zip(stats["gpu"], stats["cpu"], strict=True):
        np.testing.assert_allclose(a, b_, atol=1e-5, rtol=1e-5)
