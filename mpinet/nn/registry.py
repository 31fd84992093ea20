"""The architectures a model file can name, and how a network remembers which one it is.

A network records its architecture as plain JSON data in ``network.architecture``:

  * a zoo model built by ``mpinet.models.build_model(name, **options)``:
    ``{"kind": "zoo", "name": "resnet18", "options": {"num_classes": 10, ...}}``;
  * an instance of a class (or the result of a function) decorated with ``register_model``:
    ``{"kind": "registered", "name": "mypkg.nets.TinyNet", "arguments": {"width": 16, ...}}``,
    every constructor argument bound by name, defaults included.

    @mpinet.register_model                 # name: "<module>.<qualified name>", or name="..."
    class TinyNet(mpinet.nn.Module):
        def __init__(self, num_classes=10, width=16): ...

Rebuilding (``build_registered``; the model file builds zoo models itself) calls the same
builder with the same arguments. A model file never imports code: loading one that names a
registered class needs that class registered in the loading process, i.e. the module defining
it imported first (the error says which name is missing).
Arguments must be JSON data (numbers, strings, bools, None, lists, dicts); tuples come back as
lists.
"""
from __future__ import annotations

import functools
import inspect
import json

ATTRIBUTE = "architecture"
_REGISTRY: dict = {}  # name -> the registered class or (wrapped) function


def register_model(obj=None, *, name: str | None = None):
    """Decorator for an ``nn.Module`` subclass, or a function returning a Module, so that its
    instances record their constructor arguments and a model file can rebuild them.

    ``@register_model`` or ``@register_model(name="stable.name")``. Registering a name again
    replaces the earlier entry (re-running a notebook cell)."""
    def decorate(target):
        key = name or f"{target.__module__}.{target.__qualname__}"
        if isinstance(target, type):
            _record_from_init(target, key)
            _REGISTRY[key] = target
            return target
        if not callable(target):
            raise TypeError(f"register_model: expected a Module class or a function, got "
                            f"{type(target).__name__}")
        signature = inspect.signature(target)

        @functools.wraps(target)
        def built(*args, **kwargs):
            module = target(*args, **kwargs)
            record(module, "registered", key, _bound_arguments(signature, args, kwargs, key))
            return module

        _REGISTRY[key] = built
        return built

    return decorate if obj is None else decorate(obj)


def _record_from_init(cls, key: str) -> None:
    original = cls.__init__
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if type(self) is cls:  # a registered subclass records its own arguments instead
            arguments = _bound_arguments(signature, (self, *args), kwargs, key)
            arguments.pop(next(iter(signature.parameters)), None)  # self
            record(self, "registered", key, arguments)

    cls.__init__ = __init__


def _bound_arguments(signature, args, kwargs, key: str) -> dict:
    """Every parameter by name (defaults included); **kwargs merged in."""
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in signature.parameters.values()):
        # *args cannot be passed by name when rebuilding
        return {"$error": f"{key} takes *args, which a model file cannot record; give it "
                          f"named parameters"}
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    out = {}
    for pname, value in bound.arguments.items():
        if signature.parameters[pname].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[pname] = value
    return out


def record(module, kind: str, name: str, arguments: dict) -> None:
    """Attach the architecture to ``module`` (plain attribute, not a parameter or buffer)."""
    key = "options" if kind == "zoo" else "arguments"
    object.__setattr__(module, ATTRIBUTE, {"kind": kind, "name": name, key: arguments})


def architecture_of(network) -> dict:
    """The recorded architecture as JSON data; ValueError (saying how to fix it) if there is
    none or its arguments are not JSON data."""
    arch = getattr(network, ATTRIBUTE, None)
    if not isinstance(arch, dict):
        raise ValueError(f"{type(network).__name__} does not record how to rebuild it: build it "
                         f"with mpinet.models.build_model(name, ...) or decorate its class with "
                         f"@mpinet.register_model")
    key = "options" if arch["kind"] == "zoo" else "arguments"
    arguments = arch[key]
    if "$error" in arguments:
        raise ValueError(arguments["$error"])
    for pname, value in arguments.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"{arch['name']}: argument {pname!r} is a {type(value).__name__}, "
                             f"not JSON data (numbers, strings, lists, dicts), so a model file "
                             f"cannot record it; pass plain values to the constructor") from None
    return json.loads(json.dumps({"kind": arch["kind"], "name": arch["name"], key: arguments}))


def build_registered(name: str, arguments: dict):
    """A fresh instance of the registered class (or builder) ``name`` with ``arguments``;
    ValueError if ``name`` is not registered in this process."""
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ValueError(f"the model class {name!r} is not registered in this process "
                         f"(registered: {known}); import the module that defines it (decorated "
                         f"with @mpinet.register_model) before loading")
    return _REGISTRY[name](**arguments)


__all__ = ["architecture_of", "build_registered", "record", "register_model"]
