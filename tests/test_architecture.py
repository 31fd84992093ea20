"""The layer order written in docs/ARCHITECTURE.md holds in the code.

The doc's `tier N: rooms` lines are the law: a module may import its own room and rooms of a
lower tier, nothing else (top-level and function-level imports alike), every room must be
placed in a tier, and module-level imports must form no circle. The doc is parsed, not copied,
so moving a room means editing the doc, and the test follows.
"""
import ast
import pathlib
import re

import mpinet

PACKAGE = pathlib.Path(mpinet.__file__).parent  # mpinet/
CHECKOUT = PACKAGE.parent
DOC = CHECKOUT / "docs" / "ARCHITECTURE.md"
ZOO = CHECKOUT / "models"  # installed as mpinet.models


def read_tiers(text: str) -> dict:
    """{room: tier} from the doc's `tier N: room room ...` lines."""
    tiers = {}
    for number, rooms in re.findall(r"^tier (\d+): (.+)$", text, flags=re.M):
        for room in rooms.split():
            assert room not in tiers, f"{room} is placed twice in {DOC.name}"
            tiers[room] = int(number)
    return tiers


def source_files() -> dict:
    """{module name: path} for mpinet/ and the zoo (as mpinet.models)."""
    files = {}
    for top, prefix in ((PACKAGE, ["mpinet"]), (ZOO, ["mpinet", "models"])):
        for path in sorted(top.rglob("*.py")):
            parts = prefix + list(path.relative_to(top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def imports_of(path: pathlib.Path, module: str, top_level_only: bool = False):
    """(absolute name, line) of every import in ``path``; relative imports resolved.
    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield name, node.lineno
            for alias in node.names:
                yield f"{name}.{alias.name}", node.lineno


def room_of(module: str) -> str | None:
    """`mpinet.ops.conv` -> `ops`, `mpinet.train` -> `train`; None for the package face."""
    parts = module.split(".")
    if parts[0] != "mpinet" or len(parts) == 1:
        return None
    return parts[1]


def violations(tiers: dict, files: dict) -> list:
    found = []
    for module, path in files.items():
        here = room_of(module)
        if here is None:  # mpinet/__init__.py: the face may import any room
            continue
        if here not in tiers:
            found.append(f"{path}: room '{here}' is in no tier of {DOC.name}")
            continue
        for name, line in imports_of(path, module):
            target = name if name in files else name.rsplit(".", 1)[0]
            if target not in files:  # not mpinet's (numpy, mpi4py, ...)
                continue
            there = room_of(target)  # None: a name of the face, e.g. mpinet.__version__
            if there is None or there == here:
                continue
            if there not in tiers:
                found.append(f"{path}:{line}: imports {target}, room '{there}' is in no tier")
            elif tiers[there] >= tiers[here]:
                found.append(f"{path}:{line}: {here} (tier {tiers[here]}) imports {target} "
                             f"({there}, tier {tiers[there]})")
    return found


def module_cycles(files: dict) -> list:
    """Circles among module-level imports (what Python runs at import time)."""
    graph = {m: set() for m in files}
    for module, path in files.items():
        for name, _ in imports_of(path, module, top_level_only=True):
            target = name if name in files else name.rsplit(".", 1)[0]
            if target in files and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return cycles


def test_every_import_follows_the_written_layer_order():
    tiers = read_tiers(DOC.read_text())
    assert tiers, f"no 'tier N: rooms' lines found in {DOC}"
    bad = violations(tiers, source_files())
    assert not bad, "\n".join(bad)


def test_no_circle_among_module_level_imports():
    cycles = module_cycles(source_files())
    assert not cycles, "\n".join(cycles)


def test_the_check_can_fail(tmp_path):
    # An arrow against the order, an unplaced room, and a circle are each reported.
    tiers = {"backend": 0, "ops": 4, "autograd": 2}
    files = {}
    for name, text in (("mpinet.autograd.variable", "def f():\n    from ..ops import arith\n"),
                       ("mpinet.ops.arith", "from mpinet import backend\n"),
                       ("mpinet.backend", "import os\n"),
                       ("mpinet.newroom", "from mpinet import backend\n")):
        path = tmp_path / (name.replace(".", "_") + ".py")
        path.write_text(text)
        files[name] = path
    bad = violations(tiers, files)
    assert any("autograd (tier 2) imports mpinet.ops.arith" in b for b in bad), bad
    assert any("room 'newroom' is in no tier" in b for b in bad), bad
    assert len(bad) == 2, bad

    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from mpinet import b\n")
    b.write_text("import mpinet.a\n")
    assert module_cycles({"mpinet.a": a, "mpinet.b": b})
