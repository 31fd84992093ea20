"""No code path unpickles checkpoint data: a checkpoint from a stranger cannot run code.

Two checks: the package source (code tokens only, not comments or docstrings) has no pickle
loading, no ``allow_pickle=True``, no ``torch.load`` and no ``np.load`` without
``allow_pickle=False``; and loading checkpoints and weights works with every unpickling entry
point replaced by one that fails the test.
(mpi4py's object collectives pickle in memory between the job's own ranks; they never read files.)
"""
from __future__ import annotations

import io
import os
import pickle
import re
import tokenize

import numpy as np
import pytest

from ckpt_helpers import REPO, LocalComm, sample_state
from mpinet import checkpoint

FORBIDDEN = [
    (re.compile(r"\bimport (c?pickle|dill|shelve|joblib|cloudpickle)\b"),
     "imports a pickle library"),
    (re.compile(r"\bfrom (c?pickle|dill|shelve|joblib|cloudpickle)\b"), "imports a pickle library"),
    (re.compile(r"\b(pickle|dill|cloudpickle|joblib|marshal)\.loads?\b"), "unpickles"),
    (re.compile(r"\bUnpickler\b"), "unpickles"),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
    (re.compile(r"\btorch\.load\b"), "torch.load unpickles"),
]
NP_LOAD = re.compile(r"\b(np|numpy)\.load\s*\(")


def _code_only(source: str) -> list:
    """[(line number, code text)] with comments and string literals blanked out."""
    lines: dict = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            continue
        if tok.type in (tokenize.NEWLINE, tokenize.NL):
            continue
        lines.setdefault(tok.start[0], []).append(tok.string)
    return [(n, " ".join(parts).replace(" . ", ".").replace(" .", ".").replace(". ", "."))
            for n, parts in sorted(lines.items())]


def _package_sources() -> list:
    files = []
    for top in ("mpinet", "models"):
        for root, _, names in os.walk(os.path.join(REPO, top)):
            files += [os.path.join(root, n) for n in names if n.endswith(".py")]
    assert any(f.endswith(os.path.join("mpinet", "checkpoint", "format.py")) for f in files)
    return sorted(files)


def test_package_source_never_unpickles():
    problems = []
    for path in _package_sources():
        with open(path, encoding="utf-8") as f:
            source = f.read()
        code = _code_only(source)
        for lineno, text in code:
            for pattern, why in FORBIDDEN:
                if pattern.search(text):
                    problems.append(f"{os.path.relpath(path, REPO)}:{lineno}: {why}: {text}")
        # np.load may appear only with allow_pickle=False in the same call (its own line or
        # the next few, for a call spread over lines).
        for i, (lineno, text) in enumerate(code):
            if NP_LOAD.search(text):
                window = " ".join(t for _, t in code[i:i + 4])
                if not re.search(r"allow_pickle\s*=\s*False", window):
                    problems.append(f"{os.path.relpath(path, REPO)}:{lineno}: np.load without "
                                    f"allow_pickle=False: {text}")
    assert not problems, "unpickling code paths:\n" + "\n".join(problems)


def test_scanner_sees_code_but_not_comments():
    """The scanner above must be able to fail."""
    code = _code_only('import pickle\nx = np.load(f)  # allow_pickle=False\n"torch.load(p)"\n')
    texts = [t for _, t in code]
    assert any(FORBIDDEN[0][0].search(t) for t in texts)
    assert any(NP_LOAD.search(t) for t in texts)
    assert not any("allow_pickle" in t or "torch" in t for t in texts)


def test_loading_never_calls_an_unpickler(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load path tried to unpickle")

    class RefusingUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    path = checkpoint.save(tmp_path / "ck", sample_state(4), 4, LocalComm())
    from mpinet.models import build_model

    net = build_model("mlp", in_features=4, hidden=(3,), num_classes=2)
    checkpoint.save_weights(tmp_path / "w.safetensors", net, LocalComm())

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    monkeypatch.setattr(np, "load", refuse)
    state = checkpoint.load(path)
    assert state["global_step"] == 4
    assert checkpoint.latest(tmp_path / "ck") == path
    assert set(checkpoint.load_weights(tmp_path / "w.safetensors")) == set(net.state_dict())
    with pytest.raises(AssertionError, match="unpickle"):
        pickle.loads(pickle.dumps(1))  # the trap is armed
