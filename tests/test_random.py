"""mpinet.random: the keyed streams against a pure-Python splitmix64, and the process state a
checkpoint saves (init generator + default dropout generator) round-tripping exactly."""
import numpy as np

from mpinet import random as mrandom
from mpinet.nn import init
from mpinet.ops import dropout as dropout_ops

M = (1 << 64) - 1


def _mix(z: int) -> int:  # splitmix64's finalizer on Python ints (the reference)
    z = (z + 0x9E3779B97F4A7C15) & M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def test_keyed_bits_match_a_pure_python_splitmix64():
    key, counters = (7, 0x5348554646, 3), [0, 1, 2, 1000, 2 ** 40]
    state = 0
    for k in key:
        state = _mix(state ^ k)
    expected = [_mix(state ^ c) for c in counters]
    assert mrandom.keyed_bits(key, counters).tolist() == expected
    assert mrandom.keyed_bits((3, 7), [0]).tolist() != mrandom.keyed_bits((7, 3), [0]).tolist()


def test_public_seed_names_are_the_one_implementation():
    assert init.manual_seed is mrandom.manual_seed
    assert dropout_ops.default_generator() is mrandom.dropout_generator()
    assert dropout_ops.DropoutGenerator is mrandom.DropoutGenerator


def test_rng_states_round_trip_continues_both_streams():
    init.manual_seed(3)
    x = np.ones((4, 5), np.float32)
    dropout_ops.dropout(x, 0.5)
    saved = mrandom.rng_states()
    want_w = init.generator().random(6)
    want_mask = dropout_ops.dropout(x, 0.5).data
    init.manual_seed(99)  # move both generators elsewhere
    dropout_ops.dropout(x, 0.5)
    mrandom.set_rng_states(saved)
    np.testing.assert_array_equal(init.generator().random(6), want_w)
    np.testing.assert_array_equal(dropout_ops.dropout(x, 0.5).data, want_mask)
