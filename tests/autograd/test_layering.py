"""autograd sits below ops (tests/test_architecture.py checks every import against the layer
order in docs/ARCHITECTURE.md); Variable's operators still work after `import mpinet.autograd`
alone, because `import mpinet` imports mpinet.ops, which attaches them."""
import pathlib
import subprocess
import sys

import mpinet

ROOT = pathlib.Path(mpinet.__file__).parent


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
