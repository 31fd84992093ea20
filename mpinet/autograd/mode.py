"""Global autograd switch: inside ``no_grad()`` ops record nothing, so inference keeps no graph."""
from __future__ import annotations

import contextlib
import threading

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def _grad_mode(enabled: bool):
    previous = is_grad_enabled()
    _state.enabled = enabled
    try:
        yield
    finally:
        _state.enabled = previous


def no_grad():
    """Context manager: ops inside record no graph (evaluation, optimizer updates)."""
    return _grad_mode(False)


def enable_grad():
    """Context manager: re-enable recording inside a ``no_grad`` block."""
    return _grad_mode(True)
