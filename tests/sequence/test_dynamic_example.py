"""The documented dynamic-graph example (examples/dynamic_rnn.py) runs and learns."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_dynamic_rnn_example_learns_to_sum_sequences_of_varying_length(capsys):
    spec = importlib.util.spec_from_file_location(
        "dynamic_rnn", os.path.join(ROOT, "examples", "dynamic_rnn.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    before, after = example.main(["--steps", "300"])
    assert after < before / 10, (before, after)
    assert "before" in capsys.readouterr().out
