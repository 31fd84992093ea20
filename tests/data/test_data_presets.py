"""Augmentation presets (mpinet.data.presets): the dihedral transform against NumPy's rot90/flip,
masks moved with their images, keyed choices (same for a resumed or re-sharded batch), the
preset each data set gets, and the CLI's --augment values."""

import numpy as np
import pytest

from mpinet.data.presets import (
    Compose,
    Dihedral,
    build_augmentation,
    preset_for_dataset,
)
from mpinet.data.sampler import Batch


def batch(indices, epoch=0):
    return Batch(np.asarray(indices, dtype=np.int64), len(indices), epoch, 0, None)


def test_dihedral_codes_are_the_eight_symmetries():
    img = np.arange(9.0).reshape(1, 1, 3, 3)
    outs = {Dihedral.apply(img, np.array([c]))[0, 0].tobytes() for c in range(8)}
    want = {np.rot90(m, k).tobytes() for m in (img[0, 0], img[0, 0].T) for k in range(4)}
    assert outs == want and len(outs) == 8


def test_masks_follow_their_images_and_choices_are_keyed():
    rng = np.random.default_rng(0)
    x = rng.random((6, 2, 5, 5))
    y = (x[:, 0] > 0.5).astype(np.int64)  # a mask that is a function of channel 0
    t = Dihedral(seed=3, labels_too=True)
    xa, ya = t(x, y, batch(range(10, 16)))
    np.testing.assert_array_equal(ya, (xa[:, 0] > 0.5).astype(np.int64))
    # the same sample in another batch (other rank, resumed run) gets the same symmetry
    xb, _ = t(x[3:4], y[3:4], batch([13]))
    np.testing.assert_array_equal(xb[0], xa[3])
    codes = [tuple(t.choices(batch(range(64), epoch=e))) for e in (0, 1)]
    assert codes[0] != codes[1] and set(codes[0]) == set(range(8))
    with pytest.raises(ValueError, match="square images"):
        Dihedral.apply(np.zeros((1, 1, 4, 6)), np.array([1]))


def test_presets_by_data_set_and_their_transforms():
    assert [
        preset_for_dataset(n) for n in ("digits", "cifar10", "mask-folder", "fashion-mnist")
    ] == ["digits", "photo", "microscopy", "digits"]
    mean, std = np.array([0.5]), np.array([0.25])
    assert build_augmentation("none", (1, 8, 8)) == (None, None)
    train, evaluation = build_augmentation("digits", (1, 8, 8), mean, std)
    x = np.full((2, 1, 8, 8), 0.75, np.float32)
    np.testing.assert_allclose(train(x, None, batch([0, 1]))[0], 1.0)  # only normalized
    train, _ = build_augmentation("microscopy", (1, 8, 8), mean, std, segmentation=True)
    assert isinstance(train, Compose) and train.transforms[0].labels_too
    assert train.state_dict() == {"parts": [{"seed": 0}, {"seed": 0}]}
    train, _ = build_augmentation("photo", (3, 32, 32), mean.repeat(3), std.repeat(3))
    assert train.crop_padding == 4 and train.flip
    with pytest.raises(ValueError, match="choose one of"):
        build_augmentation("blur", (1, 8, 8))


def test_cli_augment_values():
    from mpinet.train import ConfigError, _augment_preset, load_config

    assert _augment_preset(load_config(["--augment"])) == "digits"
    assert _augment_preset(load_config(["--augment", "--dataset", "cifar10"])) == "photo"
    assert _augment_preset(load_config(["--augment", "microscopy"])) == "microscopy"
    assert _augment_preset(load_config([])) == "none"
    assert _augment_preset({"augment": True, "dataset": "mask-folder"}) == "microscopy"
    with pytest.raises(ConfigError, match="--augment 'blur' is unknown"):
        _augment_preset({"augment": "blur", "dataset": "digits"})
