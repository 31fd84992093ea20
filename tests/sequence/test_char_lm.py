"""The character-level language model on the Python standard library's source: corpus,
model, sampling, and the CLI end to end (issue 18, item 4)."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from mpi4py import MPI

from mpinet.autograd import Variable, no_grad
from mpinet.comm import create_communicator
from mpinet.data import text
from mpinet.data.registry import get_dataset
from mpinet.training import Model
from mpinet.models import build_model
from mpinet.nn import init
from mpinet.sample import sample_text

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_corpus_is_fixed_and_splits_do_not_overlap():
    train = get_dataset("python-source", "train", seq_len=32, max_chars=50_000)
    test = get_dataset("python-source", "test", seq_len=32, max_chars=50_000)
    assert train.x.shape[1] == 32 and train.vocab_size == text.VOCAB_SIZE == 98
    np.testing.assert_array_equal(train.y[:, :-1], train.x[:, 1:])  # y is x shifted by one
    ids = text.encode(text.python_source_text(50_000))
    np.testing.assert_array_equal(train.x[0], ids[:32])  # windows of 33 characters
    assert train.y[0, -1] == ids[32]
    np.testing.assert_array_equal(train.x[1], ids[33:65])
    np.testing.assert_array_equal(test.y[-1], ids[len(ids) // 33 * 33 - 32:len(ids) // 33 * 33])
    assert len(train) + len(test) == len(ids) // 33 and len(test) == round(len(ids) // 33 * 0.1)
    assert text.decode(text.encode("def f(x):\n\treturn x  # é")) == "def f(x):\n\treturn x  # ?"
    assert text.python_source_text(200).startswith("# file: argparse.py\n")


def test_generate_carries_the_state_like_the_full_forward():
    init.manual_seed(0)
    net = build_model("char-lstm", num_classes=98, hidden_size=16, embed_dim=8)
    prompt = text.encode("import os\n")
    ids = net.generate(prompt, 5, temperature=0)  # greedy
    # Greedy means: each new id is the argmax of the full forward over all ids so far.
    seq = np.concatenate([prompt, ids])
    with no_grad():
        logits = net(Variable(seq[None, :-1])).data[0]  # (V, T)
    np.testing.assert_array_equal(logits[:, len(prompt) - 1:].argmax(0), ids)
    a = sample_text(net, "def ", 30, temperature=1.0, seed=3)
    assert a == sample_text(net, "def ", 30, temperature=1.0, seed=3) and len(a) == 34
    assert a != sample_text(net, "def ", 30, temperature=1.0, seed=4)


def test_char_lstm_learns_python_source_through_the_api():
    train = get_dataset("python-source", "train", seq_len=24, max_chars=30_000)
    test = get_dataset("python-source", "test", seq_len=24, max_chars=30_000)
    init.manual_seed(0)
    model = Model(build_model("char-lstm", num_classes=train.vocab_size, hidden_size=32,
                              embed_dim=16), create_communicator("mpi", MPI.COMM_SELF))
    model.compile("adam", lr=0.01, clip_norm=1.0)
    before = model.evaluate(test)["loss"] / math.log(2)
    model.fit(train, epochs=2, batch_size=32, verbose=False)
    after = model.evaluate(test)["loss"] / math.log(2)
    assert before > 6.0  # ~log2(98) untrained
    assert after < 4.2, after  # characters' frequencies at least: the model learned something


def test_cli_trains_and_samples_the_char_model(tmp_path):
    weights = tmp_path / "char.safetensors"
    cmd = [sys.executable, "-m", "mpinet.train", "--model", "char-lstm", "--dataset",
           "python-source", "--seq-len", "16", "--train-samples", "64", "--epochs", "1",
           "--model-opt", "hidden_size=16", "--optimizer", "adam", "--lr", "0.01",
           "--clip-norm", "1.0", "--sample", "40", "--quiet", "--save-weights", str(weights)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "sample:\ndef " in run.stdout and "bpc" in run.stdout
    sample = subprocess.run([sys.executable, "-m", "mpinet.sample", "--weights", str(weights),
                             "--model-opt", "hidden_size=16", "--length", "25", "--prompt",
                             "class "], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert sample.stdout.startswith("class ") and len(sample.stdout.rstrip("\n")) >= 31
    bad = subprocess.run([sys.executable, "-m", "mpinet.sample", "--weights", str(weights)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "mpinet.sample: error" in bad.stderr  # hidden_size differs


def test_embedding_tokens_out_of_the_vocabulary_are_refused():
    init.manual_seed(0)
    net = build_model("char-lstm", num_classes=10, hidden_size=4, embed_dim=2)
    with pytest.raises(IndexError, match=r"index 12 at position \(0, 1\) .* vocabulary of size 10"):
        net(Variable(np.array([[1, 12]])))


def test_char_transformer_is_causal_learns_and_samples():
    init.manual_seed(0)
    net = build_model("char-transformer", num_classes=98, embed_dim=16, num_heads=2,
                      num_layers=1, max_len=24)
    x = text.encode(text.python_source_text(2000))[:40].reshape(2, 20)
    with no_grad():
        before = net(Variable(x)).data
        changed = x.copy()
        changed[:, 12] = (changed[:, 12] + 1) % 98
        after = net(Variable(changed)).data
    np.testing.assert_array_equal(before[:, :, :12], after[:, :, :12])  # no peeking ahead
    assert not np.allclose(before[:, :, 12:], after[:, :, 12:])
    ids = net.generate(text.encode("import "), 6, temperature=0)
    seq = np.concatenate([text.encode("import "), ids])
    with no_grad():
        logits = net(Variable(seq[None, :-1])).data[0]
    np.testing.assert_array_equal(logits[:, 6:].argmax(0), ids)  # greedy = argmax of forward
    with pytest.raises(ValueError, match=r"sequences of 30 tokens .* exceed max_len=24"):
        net(Variable(np.zeros((1, 30), np.int64)))
    train = get_dataset("python-source", "train", seq_len=16, max_chars=20_000)
    model = Model(net, create_communicator("mpi", MPI.COMM_SELF))
    model.compile("adam", lr=0.01, clip_norm=1.0)
    history = model.fit(train, epochs=1, batch_size=32, verbose=False)
    assert history.history["loss"][0] < math.log(98)  # below the uniform guess after one epoch
