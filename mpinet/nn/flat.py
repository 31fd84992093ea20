"""Deprecated path: FlatParameters lives in ``mpinet.flat`` (below both nn and optim, which
share it). This alias keeps ``from mpinet.nn.flat import FlatParameters`` working."""
import warnings

from ..flat import ALIGN_BYTES, FlatParameters

warnings.warn("mpinet.nn.flat is deprecated; import FlatParameters from mpinet.flat",
              DeprecationWarning, stacklevel=2)

__all__ = ["ALIGN_BYTES", "FlatParameters"]
