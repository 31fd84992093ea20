"""Packaging and the import rules a user relies on."""
import os
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_package_directory_is_listed_in_pyproject():
    """The package list is explicit (so models/ installs as mpinet.models, never as a bare
    top-level `models`); a new subpackage must be added there or it would be missing from
    an installed mpinet."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in (("mpinet", "mpinet"), ("models", "mpinet.models")):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            if "__init__.py" in files:
                rel = os.path.relpath(dirpath, os.path.join(ROOT, top))
                found.add(name if rel == "." else name + "." + rel.replace(os.sep, "."))
    assert found == listed, f"in the tree but not listed: {sorted(found - listed)}; " \
                            f"listed but missing: {sorted(listed - found)}"


def test_import_never_needs_cuda_or_initialises_mpi():
    code = ("import sys, mpinet, mpinet.nn, mpinet.ops.conv, mpinet.optim, mpinet.models, "
            "mpinet.data, mpinet.train, mpinet.model, mpinet.training, mpinet.checkpoint; "
            "print('cupy' in sys.modules, 'mpi4py.MPI' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_old_flat_parameters_path_still_works_with_a_deprecation_warning():
    import importlib

    import mpinet.flat

    sys.modules.pop("mpinet.nn.flat", None)
    with pytest.warns(DeprecationWarning, match="mpinet.flat"):
        old = importlib.import_module("mpinet.nn.flat")
    assert old.FlatParameters is mpinet.flat.FlatParameters
