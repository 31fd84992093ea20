"""Layers that own parameters. Ops (mpinet.ops) do the math; layers never write gradients."""
from .module import Module, Sequential

__all__ = ["Module", "Sequential"]
