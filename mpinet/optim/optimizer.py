"""Optimizer base: per-parameter state, flat mode, zero_grad and a safetensors-ready state dict.

Two modes, same numbers:
  * per-parameter: one update per Parameter (state buffers shaped like each parameter);
  * flat: given a FlatParameters (``flat=`` or as ``params``), the state buffers are flat too and
    ONE update runs over the whole flat data/grad buffer (one fused kernel on GPU). Each
    parameter's state entry is then a view into the flat state buffer, so the state dict looks
    the same in both modes and a checkpoint written in one mode loads in the other.

State dict (``state_dict()``) -- exactly this shape::

    {"scalars": {"optimizer": "SGD",              # class name, checked on load
                 "num_params": 3,
                 "hyper": {"lr": 0.1, "momentum": 0.9, ...},   # every hyper-parameter
                 "step": {"0": 5, "1": 5, "2": 5}},            # updates applied, by param index
     "tensors": {"0.momentum_buffer": array, "1.momentum_buffer": array, ...}}

``scalars`` is JSON-able; ``tensors`` is a flat name -> array dict (copies, on the optimizer's
device, shaped like the parameter), i.e. what ``safetensors.numpy.save_file`` takes after
``backend.to_numpy``. A parameter that has not been updated yet (step 0) has no tensors.

Weight decay applies to every parameter given (biases and norm weights included); to exclude some,
give them to a second optimizer with weight_decay=0.
"""
from __future__ import annotations

from ..autograd import Parameter
from ..flat import FlatParameters
from .. import backend
from .hyper import HYPER_SIZE
from .kernels import write_hyper_


class Optimizer:
    """Base class; subclasses define ``hyper_names``, ``_buffer_names()`` and ``_update_()``."""

    hyper_names: tuple[str, ...] = ("lr",)

    def __init__(self, params, lr: float, flat: FlatParameters | None = None):
        if isinstance(params, FlatParameters):
            if flat is not None and flat is not params:
                raise ValueError("got a FlatParameters as params and a different one as flat=; "
                                 "pass it once")
            flat = params
        params = list(params.params if isinstance(params, FlatParameters) else params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{type(self).__name__}: params[{i}] is a {type(p).__name__}, "
                                f"expected a Parameter (pass model.parameters())")
        if flat is not None and (len(flat.params) != len(params)
                                 or any(a is not b
                                        for a, b in zip(flat.params, params, strict=True))):
            raise ValueError(f"{type(self).__name__}: params must be exactly flat.params, in the "
                             f"same order ({len(flat.params)} parameters); got {len(params)} "
                             f"others. Pass the FlatParameters alone.")
        if lr < 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {lr}")
        self.params: list[Parameter] = params
        self.flat = flat
        self.lr = float(lr)  # LR schedules set this attribute before each step
        # state[i]: buffer name -> array shaped like params[i] (a view of the flat state buffer
        # in flat mode); steps[i]: updates applied to params[i].
        self.state: list[dict] = [{} for _ in params]
        self.steps: list[int] = [0] * len(params)
        self._flat_state: dict = {}  # flat mode: buffer name -> flat array
        self._hyper = None  # GPU: device array of the step's hyper-parameters (_device_hyper)

    # ---- subclass interface ---------------------------------------------------------------
    def _buffer_names(self) -> tuple[str, ...]:
        """Names of the per-parameter state buffers this configuration needs."""
        raise NotImplementedError

    def _update_(self, p, g, state: dict, step: int) -> None:
        """Update arrays ``p`` (and ``state``) in place from ``g``; ``step`` = 1 on the first."""
        raise NotImplementedError

    def _device_hyper_values(self, step: int) -> tuple:
        """GPU: the values the fused update kernel reads from device memory for update number
        ``step`` (learning rate, bias corrections: what may change from step to step)."""
        raise NotImplementedError

    # ---- hyper-parameters in device memory (GPU) ------------------------------------------
    def _device_hyper(self, p, step: int):
        """GPU: the device array the fused kernels read this step's hyper-parameters from,
        written now (one tiny launch), except inside a CUDA-graph capture: a captured write
        would replay the capture-time values forever, so there the graph runner calls
        ``write_device_hyper`` before each replay instead. CPU: None."""
        if not backend.is_gpu_array(p):
            return None
        if self._hyper is None:
            self._hyper = backend.xp_of(p).zeros(HYPER_SIZE, dtype="float64")
        if not backend.is_capturing():
            write_hyper_(self._hyper, self._device_hyper_values(step))
        return self._hyper

    def write_device_hyper(self) -> None:
        """Write the next flat step's hyper-parameters (current ``lr``, step count + 1) into the
        device array: what a replayed CUDA graph of the step reads. Call before each replay."""
        if self._hyper is None:
            raise RuntimeError(f"{type(self).__name__}.write_device_hyper: no device "
                               f"hyper-parameters yet; run one step on the GPU first")
        write_hyper_(self._hyper, self._device_hyper_values(self.steps[0] + 1))

    def device_state(self) -> list:
        """The arrays an update reads and writes besides the parameters and gradients: the
        state buffers (flat mode: the flat ones) and the device hyper-parameters."""
        arrays = list(self._flat_state.values()) if self.flat is not None else \
            [a for state in self.state for a in state.values()]
        return arrays + ([self._hyper] if self._hyper is not None else [])

    def count_replayed_step(self) -> None:
        """Book a step that a CUDA graph replay applied (the host did not run ``step``)."""
        self.steps = [self.steps[0] + 1] * len(self.params)

    # ---- stepping -----------------------------------------------------------------------
    def step(self) -> None:
        """Apply one update with the current ``lr``.

        Per-parameter mode skips parameters whose grad is None (as PyTorch does); flat mode
        updates the whole buffer (a parameter that got no gradient has zeros there).
        """
        if self.flat is not None:
            self._step_flat()
            return
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if not self.state[i]:
                xp = backend.xp_of(p.data)
                self.state[i] = {name: xp.zeros_like(p.data) for name in self._buffer_names()}
            self.steps[i] += 1
            self._update_(p.data, p.grad, self.state[i], self.steps[i])

    def _step_flat(self) -> None:
        flat = self.flat
        if not self._flat_state and self._buffer_names():  # first step: create the state
            xp = backend.xp_of(flat.data)
            self._flat_state = {name: xp.zeros_like(flat.data) for name in self._buffer_names()}
            self._bind_flat_views()
        step = self.steps[0] + 1
        self._update_(flat.data, flat.grad, self._flat_state, step)
        self.steps = [step] * len(self.params)

    def step_slice(self, start: int, stop: int, lr: float | None = None) -> None:
        """Flat mode: update only ``flat[start:stop]``, as one part of a step closed by
        ``finish_step()``. Data parallelism in mode "forward" (cxxnet's PullWait) updates one
        gradient bucket at a time, right before its layers' next forward; ``lr`` is the rate of
        the step the gradients belong to (a schedule may have moved ``self.lr`` since)."""
        if self.flat is None:
            raise TypeError(f"{type(self).__name__}.step_slice needs flat mode (build the "
                            f"optimizer on a FlatParameters)")
        flat = self.flat
        if not 0 <= start <= stop <= flat.size:
            raise ValueError(f"step_slice [{start}, {stop}) is outside the flat buffer of "
                             f"{flat.size} elements")
        if not self._flat_state:
            xp = backend.xp_of(flat.data)
            self._flat_state = {name: xp.zeros_like(flat.data) for name in self._buffer_names()}
            self._bind_flat_views()
        current = self.lr
        self.lr = current if lr is None else float(lr)
        try:
            self._update_(flat.data[start:stop], flat.grad[start:stop],
                          {name: buf[start:stop] for name, buf in self._flat_state.items()},
                          self.steps[0] + 1)
        finally:
            self.lr = current

    def finish_step(self) -> None:
        """Close a step whose slices were applied with ``step_slice``."""
        self.steps = [self.steps[0] + 1] * len(self.params)

    def _bind_flat_views(self) -> None:
        for i, (p, start) in enumerate(zip(self.params, self.flat.offsets, strict=True)):
            self.state[i] = {name: buf[start:start + p.size].reshape(p.shape)
                             for name, buf in self._flat_state.items()}

    def zero_grad(self) -> None:
        """Clear gradients before the next backward.

        Flat mode zeroes the flat gradient buffer in place (the views stay valid: communication
        buckets are slices of it). Per-parameter mode sets ``p.grad = None``, except for a grad
        that views another buffer (a FlatParameters the optimizer was not told about), which is
        zeroed in place so the view survives.
        """
        if self.flat is not None:
            self.flat.zero_grad()
            return
        for p in self.params:
            if p.grad is None:
                continue
            if getattr(p.grad, "base", None) is not None:
                p.grad.fill(0)
            else:
                p.grad = None

    # ---- state --------------------------------------------------------------------------
    def hyper(self) -> dict:
        return {name: getattr(self, name) for name in self.hyper_names}

    def state_dict(self) -> dict:
        """``{"scalars": {...}, "tensors": {...}}``; see the module docstring for the layout."""
        tensors = {}
        for i, state in enumerate(self.state):
            for name, arr in state.items():
                tensors[f"{i}.{name}"] = arr.copy()
        scalars = {"optimizer": type(self).__name__, "num_params": len(self.params),
                   "hyper": self.hyper(), "step": {str(i): s for i, s in enumerate(self.steps)}}
        return {"scalars": scalars, "tensors": tensors}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters, step counts and buffers (NumPy or CuPy arrays accepted).

        Checks the optimizer type, the parameter count, the buffer names and every shape, and
        raises naming the offending entry before changing anything.
        """
        name = type(self).__name__
        scalars, tensors = state_dict["scalars"], state_dict["tensors"]
        if scalars["optimizer"] != name:
            raise ValueError(f"load_state_dict: the state is from a {scalars['optimizer']} "
                             f"optimizer, this is a {name}; build the same optimizer type")
        if scalars["num_params"] != len(self.params):
            raise ValueError(f"load_state_dict into {name}: the state has "
                             f"{scalars['num_params']} parameters, this optimizer "
                             f"{len(self.params)}; build it over the same parameter list")
        missing_hyper = [h for h in self.hyper_names if h not in scalars["hyper"]]
        if missing_hyper:
            raise KeyError(f"load_state_dict into {name}: hyper-parameters {missing_hyper} "
                           f"missing from the state")
        steps = [int(scalars["step"][str(i)]) for i in range(len(self.params))]
        if self.flat is not None and len(set(steps)) != 1:
            raise ValueError(f"load_state_dict into {name} in flat mode: parameters have "
                             f"different step counts {sorted(set(steps))} (per-parameter state "
                             f"where some got no gradient); load it into a per-parameter "
                             f"optimizer instead")
        for h in self.hyper_names:  # set before _buffer_names(): it may depend on them
            setattr(self, h, scalars["hyper"][h])
        buffer_names = self._buffer_names()
        expected = {f"{i}.{b}": p.shape for i, p in enumerate(self.params) if steps[i] > 0
                    for b in buffer_names}
        if set(tensors) != set(expected):
            raise KeyError(f"load_state_dict into {name}: tensors missing "
                           f"{sorted(set(expected) - set(tensors))[:10]}, unexpected "
                           f"{sorted(set(tensors) - set(expected))[:10]}")
        for key, shape in expected.items():
            if tuple(tensors[key].shape) != tuple(shape):
                raise ValueError(f"load_state_dict into {name}: {key!r} has shape "
                                 f"{tuple(tensors[key].shape)}, the parameter has {tuple(shape)}")
        self.steps = steps
        self.state = [{} for _ in self.params]
        self._flat_state = {}
        if self.flat is not None and steps[0] > 0:
            xp = backend.xp_of(self.flat.data)
            self._flat_state = {b: xp.zeros_like(self.flat.data) for b in buffer_names}
            self._bind_flat_views()
        for i, p in enumerate(self.params):
            if steps[i] == 0:
                continue
            if self.flat is None:
                xp = backend.xp_of(p.data)
                self.state[i] = {b: xp.zeros_like(p.data) for b in buffer_names}
            for b in buffer_names:
                self.state[i][b][...] = _on_device_like(tensors[f"{i}.{b}"], p.data)

    def __repr__(self) -> str:
        mode = "flat" if self.flat is not None else "per-parameter"
        args = ", ".join(f"{k}={v}" for k, v in self.hyper().items())
        return f"{type(self).__name__}({args}; {len(self.params)} params, {mode})"


def _on_device_like(value, target):
    """``value`` as an array on ``target``'s device with its dtype."""
    if backend.is_gpu_array(target):
        return backend.xp_of(target).asarray(value, dtype=target.dtype)
    return backend.to_numpy(value).astype(target.dtype, copy=False)
