"""A character-level text corpus that is on every machine: the Python standard library's source.

``load_python_source(split)`` reads a fixed list of pure-Python stdlib modules from the running
interpreter (``sysconfig.get_paths()["stdlib"]``), in the sorted order of PYTHON_SOURCE_FILES,
joins them (each file preceded by a ``# file: NAME`` line), caps the text at ``max_chars``, and
cuts it into non-overlapping windows of ``seq_len + 1`` characters: x = the first seq_len
characters (token ids), y = the next character at every position. The last ``test_fraction`` of
the text (whole windows) is the test split, so train and test never share a character.
Nothing is downloaded; the text differs only between Python versions (RESULTS.md names the
version a figure was measured with).

Vocabulary (fixed, the same for every corpus): id 0 = any character outside it, ids 1.. = tab,
newline and the 95 printable ASCII characters ' '..'~' (VOCAB_SIZE = 98).
"""
from __future__ import annotations

import os
import sysconfig

import numpy as np

from .arrays import TensorDataset
from .dataset import DataFormatError, check_split

# Pure-Python modules present in every CPython 3.8+ (sorted; relative to the stdlib directory).
PYTHON_SOURCE_FILES = tuple(sorted([
    "argparse.py", "base64.py", "bisect.py", "calendar.py", "collections/__init__.py",
    "configparser.py", "copy.py", "csv.py", "dataclasses.py", "difflib.py", "enum.py",
    "fractions.py", "functools.py", "gettext.py", "heapq.py", "inspect.py", "json/decoder.py",
    "json/encoder.py", "logging/__init__.py", "ntpath.py", "optparse.py", "pathlib.py",
    "pprint.py", "queue.py", "random.py", "shlex.py", "shutil.py", "statistics.py",
    "string.py", "tarfile.py", "textwrap.py", "threading.py", "tokenize.py", "typing.py",
    "uuid.py", "zipfile.py",
]))

_CHARS = "\t\n" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE = len(_CHARS) + 1  # + the unknown-character id 0
_TABLE = np.zeros(128, dtype=np.int64)  # ASCII code -> id (0: unknown)
for _i, _c in enumerate(_CHARS):
    _TABLE[ord(_c)] = _i + 1


def encode(text: str) -> np.ndarray:
    """Characters -> int64 ids (characters outside the vocabulary -> 0)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ids = np.zeros(codes.shape, dtype=np.int64)
    ascii_ = codes < 128
    ids[ascii_] = _TABLE[codes[ascii_]]
    return ids


def decode(ids) -> str:
    """int ids -> text (id 0, the unknown character, becomes '?')."""
    return "".join("?" if i == 0 else _CHARS[i - 1] for i in np.asarray(ids).ravel().tolist())


def python_source_text(max_chars: int | None = None, stdlib_dir: str | None = None) -> str:
    """The corpus text: PYTHON_SOURCE_FILES of this interpreter's stdlib, joined, capped."""
    root = stdlib_dir or sysconfig.get_paths()["stdlib"]
    parts, total = [], 0
    for name in PYTHON_SOURCE_FILES:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"python-source corpus: {path} is missing from this "
                                    f"Python's standard library (looked in {root})")
        with open(path, encoding="utf-8", errors="replace") as f:
            part = f"# file: {name}\n" + f.read()
        parts.append(part)
        total += len(part)
        if max_chars is not None and total >= max_chars:
            break
    text = "".join(parts)
    return text if max_chars is None else text[:max_chars]


def load_python_source(split: str = "train", seq_len: int = 128, max_chars: int = 1_000_000,
                       test_fraction: float = 0.1) -> TensorDataset:
    """The python-source split as a TensorDataset: x (N, seq_len) ids, y (N, seq_len) ids of
    the next character; ``vocab_size``, ``decode`` attached for models and sampling."""
    check_split(split)
    if seq_len < 1:
        raise ValueError(f"python-source: seq_len must be >= 1, got {seq_len}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"python-source: test_fraction must be in (0, 1), got {test_fraction}")
    ids = encode(python_source_text(max_chars))
    window = seq_len + 1
    n_windows = len(ids) // window
    n_test = max(1, int(round(n_windows * test_fraction)))
    if n_windows - n_test < 1:
        raise DataFormatError(sysconfig.get_paths()["stdlib"],
                              f"python-source: {len(ids)} characters make {n_windows} windows "
                              f"of {window}; raise max_chars or lower seq_len")
    windows = ids[:n_windows * window].reshape(n_windows, window)
    part = windows[:n_windows - n_test] if split == "train" else windows[n_windows - n_test:]
    data = TensorDataset(part[:, :-1].copy(), part[:, 1:].copy(), name="python-source")
    data.vocab_size = VOCAB_SIZE
    data.num_classes = VOCAB_SIZE
    return data
