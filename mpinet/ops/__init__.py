"""Stateless differentiable ops, one module per family. Layers in mpinet.nn call these.

Importing this package imports ``arith`` and ``shape``, which attach Variable's operators
(+ - * / ** @, [], reshape, transpose, .T, sum, mean): mpinet.autograd never imports ops.
``import mpinet`` imports this package, so every path that creates Variables has them."""
from . import arith, shape  # noqa: F401 - importing them installs Variable's operators
