"""Define-by-run autograd: Variable/Parameter, Function, the backward walk, no_grad."""
from .function import Function
from .graph import backward
from .mode import enable_grad, is_grad_enabled, no_grad
from .variable import Parameter, Variable, as_variable

__all__ = ["Function", "Parameter", "Variable", "as_variable", "backward", "no_grad",
           "enable_grad", "is_grad_enabled"]
