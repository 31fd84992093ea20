"""Module: a tree of layers with deterministic named parameters and buffers."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterator

import numpy as np

from .. import backend
from ..autograd import Parameter, Variable, no_grad


class Module:
    """Base class of every layer and model.

    Assigning a Parameter or a Module as an attribute registers it; ``register_buffer`` registers
    a non-learned array (e.g. batch-norm running statistics). Iteration order is registration
    order, recursively, so parameter names and order are identical on every rank (never a set).
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "path", type(self).__name__)  # e.g. "features.3"; set by parent
        object.__setattr__(self, "_forward_pre_hooks", [])

    # ---- registration -------------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               f"before assigning attributes")
        for registry in (self._parameters, self._buffers, self._modules):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            if value.name is None:
                value.name = name
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
            value._set_path(name if self.path == type(self).__name__ else f"{self.path}.{name}")
        object.__setattr__(self, name, value)

    def _set_path(self, path: str) -> None:
        object.__setattr__(self, "path", path)
        for name, child in self._modules.items():
            child._set_path(f"{path}.{name}")

    def register_buffer(self, name: str, array) -> None:
        """A persistent non-learned array: saved in state_dict, broadcast by data parallelism."""
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def set_buffer(self, name: str, array) -> None:
        """Replace a buffer's array (ops that produce new running statistics use this)."""
        if name not in self._buffers:
            raise KeyError(f"{self.path}: no buffer named {name!r}; has {list(self._buffers)}")
        self.register_buffer(name, array)

    def update_buffer_(self, name: str, value) -> None:
        """Write ``value`` into buffer ``name`` in place (nothing to do if it is that array).

        Training updates buffers in place rather than rebinding them: a CUDA graph of the
        training step (mpinet.training.cuda_graph) replays kernels on the arrays it saw at
        capture, so a rebound buffer would never see the replays' updates."""
        buf = self._buffers.get(name)
        if buf is None:
            raise KeyError(f"{self.path}: no buffer named {name!r}; has {list(self._buffers)}")
        if value is not buf:
            buf[...] = value

    # ---- traversal ----------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self) -> Iterator["Module"]:
        return iter(self._modules.values())

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        seen: set[int] = set()  # a parameter shared by two layers is listed once
        for prefix, module in self.named_modules():
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, object]]:
        for prefix, module in self.named_modules():
            for name, b in module._buffers.items():
                yield (f"{prefix}.{name}" if prefix else name), b

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, object]":
        """Parameters then buffers, by dotted name, as arrays on the current device."""
        state = OrderedDict((n, p.data) for n, p in self.named_parameters())
        state.update(self.named_buffers())
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into parameters and buffers, checking names, shapes and dtypes.

        ``strict`` refuses missing or unexpected names. Arrays may be NumPy or CuPy; they are
        moved to each parameter's device and cast to its dtype.
        """
        own = dict(self.named_parameters())
        owners = {}
        for prefix, module in self.named_modules():
            for name in module._buffers:
                owners[f"{prefix}.{name}" if prefix else name] = (module, name)
        expected = list(own) + list(owners)
        if strict:
            missing = [k for k in expected if k not in state]
            unexpected = [k for k in state if k not in own and k not in owners]
            if missing or unexpected:
                raise KeyError(f"load_state_dict into {type(self).__name__}: missing "
                               f"{missing[:10]}{'...' if len(missing) > 10 else ''}, unexpected "
                               f"{unexpected[:10]}{'...' if len(unexpected) > 10 else ''}")
        for key, value in state.items():
            if key in own:
                target = own[key].data
            elif key in owners:
                module, name = owners[key]
                target = module._buffers[name]
            else:
                continue
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"load_state_dict: {key!r} has shape {tuple(value.shape)} in the "
                                 f"state but {tuple(target.shape)} in the model")
            converted = backend.xp_of(target).asarray(
                backend.to_numpy(value) if not backend.is_gpu_array(target) else value,
                dtype=target.dtype)
            if key in own:
                own[key].data[...] = converted  # in place: data may view a flat buffer
            else:
                module.register_buffer(name, converted.copy())

    # ---- modes and devices --------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for _, module in self.named_modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def to(self, target: backend.Backend | None = None) -> "Module":
        """Move every parameter and buffer to ``target`` (default: the current backend)."""
        target = target or backend.current()
        for _, p in self.named_parameters():
            p.data = backend.to_device(p.data, target)
            p.grad = None if p.grad is None else backend.to_device(p.grad, target)
        for _, module in self.named_modules():
            for name, b in list(module._buffers.items()):
                module.register_buffer(name, backend.to_device(b, target))
        return self

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def apply(self, fn: Callable[["Module"], None]) -> "Module":
        for _, module in self.named_modules():
            fn(module)
        return self

    # ---- calling ------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def __call__(self, *args, **kwargs):
        for hook in self._forward_pre_hooks:
            hook(self)
        return self.forward(*args, **kwargs)

    def register_forward_pre_hook(self, hook: Callable[["Module"], None]) -> Callable[[], None]:
        """Call ``hook(module)`` right before each forward of this module; returns a remover.

        Data parallelism uses it to wait for a layer's reduced gradients and apply its update
        only right before the layer's weights are needed again (cxxnet's PullWait).
        """
        self._forward_pre_hooks.append(hook)
        return lambda: self._forward_pre_hooks.remove(hook)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            lines.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")

    # ---- Keras-style summary ------------------------------------------------------------
    def summary(self, input_shape: tuple, batch_size: int = 1, dtype=None) -> str:
        """A table of each layer's output shape and parameter count (runs one dummy forward).

        ``input_shape`` excludes the batch, e.g. (3, 32, 32). ``dtype`` of the dummy input:
        default the model's ``input_dtype`` attribute (int64 token ids for language models),
        else float32. Returns the text (print it).
        """
        dtype = dtype or getattr(self, "input_dtype", np.float32)
        rows: list[tuple[str, str, str, int]] = []
        originals = {}
        for name, module in self.named_modules():
            if module is self:
                continue
            own = int(sum(p.size for p in module._parameters.values()))
            if module._modules and own == 0:
                continue  # containers: their leaves are listed
            originals[id(module)] = module.forward

            def recording(*args, _m=module, _n=name, _own=own, **kw):
                out = originals[id(_m)](*args, **kw)
                # (output, state) of a recurrent layer: the output's shape
                shown = out[0] if isinstance(out, tuple) and out else out
                shape = shown.shape if hasattr(shown, "shape") else "?"
                rows.append((_n, type(_m).__name__, str(tuple(shape)), _own))
                return out

            object.__setattr__(module, "forward", recording)
        was_training = self.training
        try:
            self.eval()
            x = backend.current().xp.zeros((batch_size,) + tuple(input_shape), dtype=dtype)
            with no_grad():
                self(Variable(x))
        finally:
            for _, module in self.named_modules():
                module.__dict__.pop("forward", None)
            self.train(was_training)
        width = max([len(r[0]) + len(r[1]) + 4 for r in rows] + [20])  # +1: a gap before shapes
        line = "-" * (width + 40)
        out = [line, f"{'Layer (type)':<{width}}{'Output shape':<26}{'Params':>14}", line]
        for name, kind, shape, count in rows:
            out.append(f"{name + ' (' + kind + ')':<{width}}{shape:<26}{count:>14,}")
        total = self.num_parameters()
        trainable = total
        out += [line, f"Total params: {total:,}", f"Trainable params: {trainable:,}", line]
        return "\n".join(out)


class Sequential(Module):
    """Layers applied in order; children are named "0", "1", ... (or by keyword)."""

    def __init__(self, *layers: Module, **named: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)
        for name, layer in named.items():
            setattr(self, name, layer)

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def append(self, layer: Module) -> "Sequential":
        setattr(self, str(len(self._modules)), layer)
        return self
