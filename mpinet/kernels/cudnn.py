"""Convolution forward, data-grad and weight-grad through cuDNN (nvidia-cudnn-frontend's pygraph)
on CuPy arrays.

Why this shape:
  * Building a cuDNN graph costs milliseconds (the first one ~0.1 s), executing one ~17 us of
    host time: graphs are built once per (op, dtype, shapes, stride, padding, dilation,
    device, allow_tf32, benchmark) and kept in ``_plans``.
  * Host overhead is the budget (a ResNet step makes hundreds of these calls), so a call does
    two dict lookups (validated geometry, plan), one output allocation (none when the caller
    gives the output) and one ``execute`` with raw device pointers; the workspace is kept per
    stream, and the cuDNN handle's stream is re-set only when the current CuPy stream changed.
  * Plans: by default the first plan cuDNN's heuristics (mode A, then FALLBACK) rank and can
    build. ``benchmark = True`` (or MPINET_CUDNN_BENCHMARK=1), like
    ``torch.backends.cudnn.benchmark``, times up to ``max_benchmark_plans`` candidates of modes
    A and B once per shape on the caller's arrays and keeps one that beats the heuristics' plan
    by 5%, both as candidates and again as they will run (a candidate once timed fast and then
    ran 3-5x slower in use; the second check turns such plans down). Off by default, like
    PyTorch's: it costs tens of ms per shape at start. On an H200 it brought every row of
    benchmarks/conv_bench.py to >= 0.9x PyTorch (the heuristics: 31 of 36).
  * ``allow_tf32`` (like ``torch.backends.cudnn.allow_tf32``, default True): float32 convolutions
    may run on TF32 tensor cores. Engines that down-convert inputs to half are never used, as in
    PyTorch.
  * ``deterministic = True`` (or MPINET_CUDNN_DETERMINISTIC=1), like
    ``torch.backends.cudnn.deterministic``: engines that cuDNN marks non-deterministic (those
    that accumulate with atomics, e.g. some weight-gradient kernels) are never chosen, so a run
    repeats bit for bit (mpinet's own kernels are deterministic already). Off by default: it can
    rule out the fastest plan.

Arrays are NCHW with contiguous (C-order) strides; the weight is (K, C/groups, R, S). Groups
are implied by the shapes (cuDNN infers them from the image's C and the weight's C/groups).
dtypes: float32 (compute float32, TF32 allowed), float16 and bfloat16 (compute float32).
float64 is refused with a TypeError (see ``supports``): callers use their xp path for it.

(Over 400 lines on purpose: building graphs, choosing plans and executing them share the caches
and the per-stream handle/workspace state below; split, one cache's rules would span files.)
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from . import _compile

allow_tf32 = True
benchmark = os.environ.get("MPINET_CUDNN_BENCHMARK", "0") == "1"
deterministic = os.environ.get("MPINET_CUDNN_DETERMINISTIC", "0") == "1"
# At most this many heuristic candidates are built and timed when benchmarking (each build can
# take tens of ms; cuDNN's best plan is almost always among the first few it ranks).
max_benchmark_plans = 12

SUPPORTED_DTYPES = frozenset({"float32", "float16", "bfloat16"})

_plans: dict = {}     # cache key -> _Plan
_checked: dict = {}   # call arguments -> (stride, padding, dilation, output shape), validated
_workspaces: dict = {}  # (device id, stream pointer) -> scratch buffer for plans' workspaces
_handles: dict = {}   # device id -> [cudnn handle, stream pointer it is set to]
# What autotuning decided, per built graph: the heuristics' plan kept, another plan kept, or
# another plan that timed faster as a candidate but not when run as _run runs it.
autotune_stats = {"heuristic": 0, "tuned": 0, "rejected_in_use": 0}
_cudnn_mod = None


def _cudnn():
    """The cudnn frontend module, imported on first GPU use (never at import time)."""
    global _cudnn_mod
    if _cudnn_mod is None:
        try:
            import cudnn
        except ImportError as e:
            raise ImportError("the cuDNN convolution path needs nvidia-cudnn-frontend 1.23.x: "
                              "pip install 'nvidia-cudnn-frontend>=1.23,<1.24' "
                              "(or the project's GPU extra, pip install 'mpinet[gpu]')") from e
        _cudnn_mod = cudnn
    return _cudnn_mod


def _types(dtype):
    """(io data type, compute data type) for a NumPy/CuPy dtype."""
    dt = _cudnn().data_type
    table = {"float32": (dt.FLOAT, dt.FLOAT), "float16": (dt.HALF, dt.FLOAT),
             "bfloat16": (dt.BFLOAT16, dt.FLOAT)}
    if dtype.name not in table:
        raise TypeError(f"cuDNN convolution got dtype {dtype.name}; it supports "
                        f"{sorted(SUPPORTED_DTYPES)}: cast the arrays, or use the plain xp "
                        f"(im2col) path for other dtypes (check with supports(dtype))")
    return table[dtype.name]


_supported_dtype_cache: dict = {}  # dtype -> bool (dtype.name costs ~2 us: NumPy builds it)


def supports(dtype) -> bool:
    """True if the cuDNN path takes this dtype (float32, float16, bfloat16). float64 is left to
    the caller's xp path: cuDNN 9.19's graph engines returned wrong float64 results on an H100."""
    ok = _supported_dtype_cache.get(dtype)
    if ok is None:
        ok = _supported_dtype_cache[dtype] = getattr(dtype, "name", str(dtype)) in SUPPORTED_DTYPES
    return ok


def _handle(cp, device_id: int):
    """This device's cuDNN handle, bound to the current CuPy stream."""
    entry = _handles.get(device_id)
    if entry is None:
        entry = _handles[device_id] = [_cudnn().create_handle(), None]
    stream = cp.cuda.get_current_stream().ptr
    if entry[1] != stream:
        _cudnn().set_stream(handle=entry[0], stream=stream)
        entry[1] = stream
    return entry[0]


def _contiguous_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return strides[::-1]


def _pair(v, name):
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or an (h, w) pair, got {v}")
    return v


def output_size(x_shape, w_shape, stride, padding, dilation):
    """(N, K, Ho, Wo) of a convolution of x (N, C, H, W) with w (K, C/groups, R, S)."""
    n, _, h, w = x_shape
    k, _, r, s = w_shape
    ho = (h + 2 * padding[0] - dilation[0] * (r - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (s - 1) - 1) // stride[1] + 1
    return (n, k, ho, wo)


def _check(where, x_shape, w_shape, groups, stride, padding, dilation):
    """Validate shapes and groups; return the output shape."""
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ValueError(f"{where}: expected input (N, C, H, W) and weight (K, C/groups, R, S), "
                         f"got input {tuple(x_shape)} and weight {tuple(w_shape)}")
    c, k, cg = x_shape[1], w_shape[0], w_shape[1]
    if groups < 1 or c % groups or k % groups or cg * groups != c:
        raise ValueError(f"{where}: groups={groups} does not fit input channels {c} and weight "
                         f"{tuple(w_shape)}; expected weight (K, C/groups, R, S) with C and K "
                         f"divisible by groups")
    y = output_size(x_shape, w_shape, stride, padding, dilation)
    if y[2] < 1 or y[3] < 1:
        raise ValueError(f"{where}: input {tuple(x_shape)} is too small for weight "
                         f"{tuple(w_shape)} with stride {stride}, padding {padding}, "
                         f"dilation {dilation} (output would be {y})")
    return y


@dataclass
class _Plan:
    graph: object
    uid_order: list        # variant-pack uids in the order _execute_with_ptrs expects them
    roles: list            # for each uid in uid_order: 0, 1 (inputs) or 2 (output)
    uid_of: list           # uid of role 0, 1, 2
    workspace: int         # bytes
    plan_index: int        # -1: execute the graph's own candidate; else execute this plan
    raw_ptrs: bool         # the 1.23 fast path (_execute_with_ptrs) is usable


def _build(op, dtype, a_shape, b_shape, out_shape, stride, padding, dilation, handle,
           modes=("A", "FALLBACK")):
    """Build (but do not yet tune) a graph for one convolution op on contiguous NCHW tensors,
    with the candidate plans of heuristics ``modes`` in that order.

    op "fprop": a=x, b=w, out=y.  "dgrad": a=gy, b=w, out=gx.  "wgrad": a=x, b=gy, out=gw.
    """
    cudnn = _cudnn()
    io, compute = _types(dtype)
    g = cudnn.pygraph(io_data_type=io, intermediate_data_type=compute,
                      compute_data_type=compute, handle=handle)
    a = g.tensor(name="A", dim=list(a_shape), stride=_contiguous_strides(a_shape), data_type=io)
    b = g.tensor(name="B", dim=list(b_shape), stride=_contiguous_strides(b_shape), data_type=io)
    conv = dict(padding=list(padding), stride=list(stride), dilation=list(dilation),
                compute_data_type=compute)
    if op == "fprop":
        out = g.conv_fprop(image=a, weight=b, **conv)
    elif op == "dgrad":
        out = g.conv_dgrad(loss=a, filter=b, **conv)
    else:
        out = g.conv_wgrad(image=a, loss=b, **conv)
    out.set_output(True).set_dim(list(out_shape)).set_stride(
        _contiguous_strides(out_shape)).set_data_type(io)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([getattr(cudnn.heur_mode, m) for m in modes])
    # PyTorch's filter: never engines that down-convert inputs; TF32 only when allowed.
    notes = [cudnn.numerical_note.DOWN_CONVERT_INPUTS]
    if dtype.name == "float32" and not allow_tf32:
        notes.append(cudnn.numerical_note.TENSOR_CORE)
    if deterministic:
        notes.append(cudnn.numerical_note.NONDETERMINISTIC)
    g.deselect_numeric_notes(notes)
    g.check_support()
    uid_of = [a.get_uid(), b.get_uid(), out.get_uid()]
    return g, uid_of


def _finish(g, uid_of, workspace, plan_index):
    """Record how to execute: by sorted raw pointers where this frontend build offers it (one
    list, no dict to hash), else by a uid -> pointer dict."""
    raw = plan_index < 0 and hasattr(g, "_execute_with_ptrs")
    order = sorted(uid_of)
    if raw:
        try:
            order = [int(u) for u in g._get_variant_pack_uids_sorted()]
        except Exception:  # no prepared variant-pack template in this build: use the dict path
            raw = False
    if sorted(order) != sorted(uid_of):
        raw, order = False, sorted(uid_of)
    roles = [uid_of.index(u) for u in order]
    return _Plan(g, order, roles, uid_of, workspace, plan_index, raw)


def _plan_heuristic(g, uid_of):
    g.build_plans(_cudnn().build_plan_policy.HEURISTICS_CHOICE)
    return _finish(g, uid_of, g.get_workspace_size(), -1)


def _median_ms(cp, run, start, stop, trials):
    """Median over ``trials`` of 3 back-to-back ``run()`` calls, after 2 warm-up calls: ms per
    call, by CUDA events on the current stream."""
    for _ in range(2):
        run()
    samples = []
    for _ in range(trials):
        start.record()
        for _ in range(3):
            run()
        stop.record()
        stop.synchronize()
        samples.append(cp.cuda.get_elapsed_time(start, stop) / 3)
    return sorted(samples)[trials // 2]


def _time_plan(cp, g, pack, workspace, index, handle, start, stop):
    """ms per run of candidate plan ``index`` of graph ``g`` (3 trials), with a workspace of the
    plan's own size."""
    ws = cp.empty(workspace + 1, dtype=cp.uint8)  # alive until the timing has run

    def run():
        g._execute_plan_at_index(pack, ws.data.ptr, index, handle, [], [], [])

    return _median_ms(cp, run, start, stop, trials=3)


def _plan_benchmarked(cp, g, uid_of, ptrs, handle, rebuild, device_id):
    """Build up to ``max_benchmark_plans`` candidates, time each on the caller's arrays (whose
    output the real run overwrites), keep the fastest. The heuristics' own choice (the first
    plan that builds) is kept unless another is more than 5% faster: it then runs through the
    cheaper raw-pointer path (on a fresh graph from ``rebuild()``, whose candidate is surely that
    plan), and timing noise does not flip plans. A winner other than the heuristics' plan must
    win again when both run exactly as ``_run`` will run them (shared workspace, the execute
    call each will use): once on an H100 a weight-grad plan timed fast here then ran 3-5x
    slower in use, so the candidate timing alone is not trusted."""
    built = []
    for i in range(min(g.get_execution_plan_count(), max_benchmark_plans)):
        try:
            g.build_plan_at_index(i)
            built.append((i, g.get_workspace_size_plan_at_index(i)))
        except Exception:  # a candidate cuDNN cannot build for this shape: skip it
            continue
    if not built:
        return _plan_heuristic(g, uid_of)
    pack = dict(zip(uid_of, ptrs, strict=True))
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    timed, error = [], None
    for i, w in built:
        try:
            timed.append((_time_plan(cp, g, pack, w, i, handle, start, stop), i, w))
        except Exception as e:  # built but not runnable here: skip it
            error = e
    if not timed:
        warnings.warn(f"cuDNN autotuning ran none of {len(built)} built plans (last error: "
                      f"{error}); using the heuristics' plan", RuntimeWarning, stacklevel=3)
        return _plan_heuristic(g, uid_of)
    best = min(timed)
    first = timed[0] if timed[0][1] == built[0][0] else None
    heuristic = _plan_heuristic(*rebuild())
    if first is not None and first[0] <= 1.05 * best[0]:
        autotune_stats["heuristic"] += 1
        return heuristic
    tuned = _finish(g, uid_of, best[2], best[1])
    t_tuned, t_heur = (_time_in_use(cp, p, ptrs, handle, device_id, start, stop)
                       for p in (tuned, heuristic))
    if t_tuned > 0.95 * t_heur:
        autotune_stats["rejected_in_use"] += 1
        return heuristic
    autotune_stats["tuned"] += 1
    return tuned


def _time_in_use(cp, plan, ptrs, handle, device_id, start, stop):
    """ms per run of ``plan`` through ``_execute``, exactly as training runs it (5 trials)."""
    return _median_ms(cp, lambda: _execute(cp, plan, ptrs, handle, device_id), start, stop,
                      trials=5)


def _workspace(cp, nbytes: int, device_id: int):
    """A scratch buffer of at least ``nbytes`` for the current stream, kept between calls (an
    allocation per call is host time; calls on one stream run in order, so one buffer serves
    them all). Grows to the largest plan's need."""
    key = (device_id, cp.cuda.get_current_stream().ptr)
    ws = _workspaces.get(key)
    if ws is None or ws.nbytes < nbytes:
        ws = _workspaces[key] = cp.empty(nbytes, dtype=cp.uint8)
    return ws.data.ptr


def _run(op, a, b, out_shape, stride, padding, dilation, out=None):
    """Execute (building and caching on first use) conv ``op`` on a, b into a new array of
    out_shape, or into ``out`` if it is a C-contiguous array of that shape and a's dtype.
    stride/padding/dilation: normalised (h, w) tuples."""
    cp = _compile.cp()
    if a.dtype != b.dtype:
        raise TypeError(f"cuDNN conv_{op}: operands have dtypes {a.dtype.name} and "
                        f"{b.dtype.name}; expected the same dtype for both")
    if not a.flags.c_contiguous:
        a = cp.ascontiguousarray(a)
    if not b.flags.c_contiguous:
        b = cp.ascontiguousarray(b)
    device_id = a.device.id
    handle = _handle(cp, device_id)
    if out is None or out.shape != out_shape or out.dtype != a.dtype \
            or not out.flags.c_contiguous or out.data.ptr % 256:
        out = cp.empty(out_shape, dtype=a.dtype)
    ptrs = (a.data.ptr, b.data.ptr, out.data.ptr)
    key = (op, a.dtype, a.shape, b.shape, out_shape, stride, padding, dilation, device_id,
           allow_tf32, benchmark, deterministic)
    plan = _plans.get(key)
    if plan is None:
        def build(modes=("A", "FALLBACK")):
            return _build(op, a.dtype, a.shape, b.shape, out_shape, stride, padding, dilation,
                          handle, modes)

        # Autotuning also times mode B's candidates (a wider, slower-to-rank list); the
        # heuristics' own plan is always mode A's first.
        plan = _plan_benchmarked(cp, *build(("A", "B", "FALLBACK")), ptrs, handle, build,
                                 device_id) if benchmark else _plan_heuristic(*build())
        _plans[key] = plan
    _execute(cp, plan, ptrs, handle, device_id)
    return out


def _execute(cp, plan, ptrs, handle, device_id):
    """Run ``plan`` on (a, b, out) device pointers ``ptrs`` on the current stream."""
    ws_ptr = _workspace(cp, plan.workspace, device_id) if plan.workspace else 0
    if plan.raw_ptrs:
        plan.graph._execute_with_ptrs([ptrs[r] for r in plan.roles], ws_ptr, handle)
    elif plan.plan_index >= 0:
        plan.graph._execute_plan_at_index(dict(zip(plan.uid_of, ptrs, strict=True)), ws_ptr,
                                          plan.plan_index, handle, [], [], [])
    else:
        plan.graph._execute(dict(zip(plan.uid_of, ptrs, strict=True)), ws_ptr, handle)


def _check_gradient(where, x_shape, w_shape, gy_shape, groups, stride, padding, dilation):
    """Validate a backward call: gy must have the forward output's shape for x and w."""
    y_shape = _check(where, x_shape, w_shape, groups, stride, padding, dilation)
    if tuple(gy_shape) != y_shape:
        raise ValueError(f"{where}: gradient has shape {tuple(gy_shape)}, expected {y_shape} "
                         f"for input {tuple(x_shape)} and weight {tuple(w_shape)}")


def _geometry(op, a_shape, b_shape, out_shape, stride, padding, dilation, groups):
    """(normalised stride, padding, dilation, output shape) for a call, validated once per
    distinct argument set and then served from ``_checked`` (this runs on every call)."""
    key = (op, a_shape, b_shape, out_shape, stride, padding, dilation, groups)
    try:
        return _checked[key]
    except KeyError:
        pass
    except TypeError:  # unhashable arguments (lists): validate every time
        key = None
    stride, padding, dilation = (_pair(stride, "stride"), _pair(padding, "padding"),
                                 _pair(dilation, "dilation"))
    if op == "fprop":  # a = x, b = w
        result_shape = _check("conv_fprop", a_shape, b_shape, groups, stride, padding, dilation)
    else:
        result_shape = tuple(int(n) for n in out_shape)
        if op == "dgrad":  # a = gy, b = w, out_shape = x's
            _check_gradient("conv_dgrad", result_shape, b_shape, a_shape, groups, stride,
                            padding, dilation)
        else:  # wgrad: a = x, b = gy, out_shape = w's
            _check_gradient("conv_wgrad", a_shape, result_shape, b_shape, groups, stride,
                            padding, dilation)
    result = (stride, padding, dilation, tuple(result_shape))
    if key is not None:
        _checked[key] = result
    return result


def conv_fprop(x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """y = conv2d(x, w): x (N, C, H, W), w (K, C/groups, R, S) -> y (N, K, Ho, Wo)."""
    stride, padding, dilation, y_shape = _geometry("fprop", x.shape, w.shape, None, stride,
                                                   padding, dilation, groups)
    return _run("fprop", x, w, y_shape, stride, padding, dilation)


def conv_dgrad(gy, w, x_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """Gradient w.r.t. the input: gy (N, K, Ho, Wo), w (K, C/groups, R, S) -> gx of x_shape."""
    stride, padding, dilation, x_shape = _geometry("dgrad", gy.shape, w.shape, tuple(x_shape),
                                                   stride, padding, dilation, groups)
    return _run("dgrad", gy, w, x_shape, stride, padding, dilation)


def conv_wgrad(x, gy, w_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
               out=None):
    """Gradient w.r.t. the weight: x (N, C, H, W), gy (N, K, Ho, Wo) -> gw of w_shape.
    ``out``: an array to write gw into (used if contiguous, of w_shape and x's dtype)."""
    stride, padding, dilation, w_shape = _geometry("wgrad", x.shape, gy.shape, tuple(w_shape),
                                                   stride, padding, dilation, groups)
    return _run("wgrad", x, gy, w_shape, stride, padding, dilation, out)


def cache_info() -> dict:
    """How many built graphs execute by each path: 'raw_ptrs' (sorted pointer list, fastest
    host path), 'tuned_plan' (autotuned plan index, uid dict) and 'dict' (uid dict); and the
    autotuning decisions (``autotune_stats``)."""
    info = {"raw_ptrs": 0, "tuned_plan": 0, "dict": 0}
    for plan in _plans.values():
        info["raw_ptrs" if plan.raw_ptrs else "tuned_plan" if plan.plan_index >= 0
             else "dict"] += 1
    info.update({f"autotune_{k}": v for k, v in autotune_stats.items()})
    return info


def clear_cache() -> None:
    """Forget every built graph. (Changing ``allow_tf32``, ``benchmark`` or ``deterministic``
    needs no clearing: they are part of the cache key.)"""
    _plans.clear()
