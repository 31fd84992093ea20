"""Test helpers for ops: forward against a NumPy oracle, backward against numerical gradients,
and the same op on the GPU against NumPy. Used by tests/ (CPU) and the GPU-marked tests."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from . import backend
from .autograd import Variable


def numerical_grads(f: Callable[..., np.ndarray], inputs: Sequence[np.ndarray], gy: np.ndarray,
                    eps: float = 1e-6) -> list[np.ndarray]:
    """Central differences of <f(inputs), gy> with respect to each input (use float64)."""
    grads = []
    for x in inputs:
        g = np.zeros_like(x)
        if x.dtype.kind != "f":  # labels and indices are constants: never perturb them
            grads.append(g)
            continue
        flat, gflat = x.reshape(-1), g.reshape(-1)  # views: perturb x in place
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + eps
            plus = np.sum(f(*inputs) * gy)
            flat[i] = orig - eps
            minus = np.sum(f(*inputs) * gy)
            flat[i] = orig
            gflat[i] = (plus - minus) / (2 * eps)
        grads.append(g)
    return grads


def check_backward(fn: Callable[..., Variable], inputs: Sequence[np.ndarray], *,
                   eps: float = 1e-6, atol: float = 1e-6, rtol: float = 1e-5,
                   seed: int = 0) -> None:
    """Assert that autograd's gradients of ``fn`` equal float64 numerical gradients.

    ``fn`` takes Variables and returns one Variable. ``inputs`` must be float64 arrays; an
    integer array (labels, indices) is passed through as a constant.
    """
    rng = np.random.default_rng(seed)
    inputs = [np.array(x, copy=True) for x in inputs]
    diff = [i for i, x in enumerate(inputs) if x.dtype.kind == "f"]
    for i in diff:
        assert inputs[i].dtype == np.float64, "gradient checks need float64 inputs"

    variables = [Variable(x.copy(), requires_grad=i in diff) for i, x in enumerate(inputs)]
    y = fn(*variables)
    gy = rng.standard_normal(y.shape)
    y.backward(gy)

    def f_data(*xs):
        return fn(*[Variable(x) for x in xs]).data

    numeric = numerical_grads(f_data, inputs, gy, eps)
    for i in diff:
        got = variables[i].grad
        assert got is not None, f"input {i} got no gradient"
        np.testing.assert_allclose(got, numeric[i], atol=atol, rtol=rtol,
                                   err_msg=f"gradient of input {i} (shape {inputs[i].shape})")


def check_forward(fn: Callable[..., Variable], reference: Callable[..., np.ndarray],
                  inputs: Sequence[np.ndarray], *, atol: float = 1e-7, rtol: float = 1e-7) -> None:
    """Assert ``fn`` (on Variables) equals ``reference`` (a float64 NumPy oracle)."""
    got = fn(*[Variable(np.array(x, copy=True)) for x in inputs]).data
    want = reference(*[np.array(x, copy=True) for x in inputs])
    assert got.shape == want.shape, f"shape {got.shape} != reference {want.shape}"
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)


def check_gpu_matches_cpu(fn: Callable[..., Variable], inputs: Sequence[np.ndarray], *,
                          atol: float = 1e-4, rtol: float = 1e-4, seed: int = 0) -> None:
    """Run ``fn`` and its backward on NumPy and on CuPy copies of ``inputs``; compare both."""
    import cupy as cp

    rng = np.random.default_rng(seed)
    results = []
    gy = None
    for to_dev in (np.asarray, cp.asarray):
        variables = [Variable(to_dev(x), requires_grad=x.dtype.kind == "f") for x in inputs]
        y = fn(*variables)
        if gy is None:
            gy = rng.standard_normal(y.shape).astype(y.dtype)
        y.backward(to_dev(gy))
        results.append((backend.to_numpy(y.data),
                        [backend.to_numpy(v.grad) if v.grad is not None else None
                         for v in variables]))
    (y_cpu, g_cpu), (y_gpu, g_gpu) = results
    np.testing.assert_allclose(y_gpu, y_cpu, atol=atol, rtol=rtol, err_msg="forward GPU vs CPU")
    for i, (a, b) in enumerate(zip(g_gpu, g_cpu, strict=True)):
        if b is not None:
            np.testing.assert_allclose(a, b, atol=atol, rtol=rtol, err_msg=f"grad {i} GPU vs CPU")
