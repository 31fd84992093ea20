"""autograd sits below ops: no module under mpinet/autograd/ imports mpinet.ops, nn, optim or
kernels (at top level or inside a function), and Variable's operators still work after
`import mpinet.autograd` alone (mpinet.ops attaches them; `import mpinet` imports it)."""
import ast
import pathlib
import subprocess
import sys

import mpinet

ROOT = pathlib.Path(mpinet.__file__).parent
FORBIDDEN = ("ops", "nn", "optim", "kernels")


def _imported_modules(source: str, path: pathlib.Path):
    """Absolute module names that ``source`` (the text of ``path``) imports, anywhere in it,
    relative imports resolved."""
    package = ["mpinet", *path.relative_to(ROOT).parent.parts]
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{a.name}" for a in node.names)  # `from .. import ops`


def _forbidden(modules):
    return [m for m in modules
            if m.split(".")[0] == "mpinet" and len(m.split(".")) > 1
            and m.split(".")[1] in FORBIDDEN]


def test_autograd_imports_nothing_above_it():
    bad = []
    for path in sorted((ROOT / "autograd").glob("*.py")):
        bad += [f"{path.name} imports {m}"
                for m in _forbidden(_imported_modules(path.read_text(), path))]
    assert not bad, bad


def test_the_check_sees_lazy_and_absolute_imports():
    # what the old variable.py did (a relative import of ops inside a method), and friends
    as_path = ROOT / "autograd" / "variable.py"
    for source in ("def f():\n    from ..ops import arith\n",
                   "def f():\n    from .. import nn\n",
                   "import mpinet.optim.kernels\n",
                   "from mpinet.kernels import cudnn\n"):
        assert _forbidden(_imported_modules(source, as_path)), source
    assert not _forbidden(_imported_modules("from .. import backend\n", as_path))


def test_variable_operators_work_after_importing_autograd_alone():
    code = ("import numpy as np\n"
            "from mpinet.autograd import Variable\n"
            "x = Variable(np.arange(6.0).reshape(2, 3), requires_grad=True)\n"
            "y = ((-x + 1) * 2 - x / 4) ** 2 @ Variable(np.ones((3, 2)))\n"
            "z = (2 + y.T.reshape(4).transpose()[1:] - 1 * y.sum()).mean() + y.mean(axis=0).sum()\n"
            "z.backward()\n"
            "print(x.grad.shape, type(z).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(2,", "3)", "Variable"], out.stdout
