"""Stateless differentiable ops, one module per family. Layers in mpinet.nn call these."""
