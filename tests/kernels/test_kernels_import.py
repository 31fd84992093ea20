"""The GPU kernel modules on a machine without CUDA: they import without loading cupy, and every
kernel function the rest of mpinet calls (``kernels.<family>.<name>``, ``optim.kernels.<name>``)
exists. The GPU tests (tests/gpu/test_kernels.py) check what the kernels compute."""
import ast
import pathlib
import subprocess
import sys

import mpinet

ROOT = pathlib.Path(mpinet.__file__).parent
FAMILIES = ("activation", "batch_norm", "cudnn", "dropout", "elementwise", "pool")


def _kernel_calls():
    """(file, family or 'optim', name) for every ``kernels.<family>.<name>`` attribute chain in
    mpinet/, and every ``kernels.<name>`` in mpinet/optim/ (the optimizers' own kernels)."""
    found = []
    for path in ROOT.rglob("*.py"):
        if "kernels" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute) or not isinstance(node.value, ast.Attribute):
                continue
            inner = node.value
            if isinstance(inner.value, ast.Name) and inner.value.id == "kernels":
                found.append((path.name, inner.attr, node.attr))
        if path.parent.name == "optim":
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                        and node.value.id == "kernels":
                    found.append((path.name, "optim", node.attr))
    return found


def test_kernel_modules_import_without_cupy():
    # A fresh interpreter in which `import cupy` fails: importing the kernels must not try.
    code = ("import sys; sys.modules['cupy'] = None; sys.modules['cudnn'] = None\n"
            "import mpinet.kernels, mpinet.optim.kernels, mpinet.ops.conv, mpinet.optim\n"
            f"for f in {FAMILIES!r}: assert hasattr(mpinet.kernels, f), f\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT.parent)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_every_kernel_the_code_calls_exists():
    import mpinet.kernels
    from mpinet.optim import kernels as optim_kernels

    calls = _kernel_calls()
    families = {c[1] for c in calls}
    # the ops reach every family; the optimizers reach their update kernels
    assert set(FAMILIES) <= families and "optim" in families, families
    missing = []
    for where, family, name in calls:
        module = optim_kernels if family == "optim" else getattr(mpinet.kernels, family, None)
        if module is None or not hasattr(module, name):
            missing.append(f"{where}: kernels.{family}.{name}")
    assert not missing, missing


def test_names_imported_from_kernels_exist():
    """``from ..kernels.<module> import name`` anywhere in mpinet resolves (amp, flat, optim)."""
    import importlib
    import importlib.util

    bad = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and "kernels" in node.module:
                package = ".".join(("mpinet",) + path.relative_to(ROOT).parent.parts)
                module = importlib.import_module("." * node.level + node.module, package)
                bad += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                        if not hasattr(module, a.name)
                        and importlib.util.find_spec(f"{module.__name__}.{a.name}") is None]
    assert not bad, bad
