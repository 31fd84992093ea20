"""Augmentation against NumPy loop oracles; its randomness is keyed by (seed, epoch, sample)."""
import json

import numpy as np
import pytest

from mpinet import backend
from mpinet.data import Augment, Batch, channel_stats, flip_horizontal, normalize, pad_crop


def batch_of(indices, epoch=0):
    return Batch(np.asarray(indices, dtype=np.int64), len(indices), epoch, 0, None)


def images(n=6, c=3, h=5, w=7, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w)).astype(np.float32)


def test_pad_crop_matches_a_loop_oracle():
    x = images()
    p = 2
    dy = np.array([0, 1, 2, 3, 4, 2])
    dx = np.array([4, 3, 2, 1, 0, 2])
    got = pad_crop(x, p, dy, dx)
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    for n in range(len(x)):
        np.testing.assert_array_equal(got[n], padded[n, :, dy[n]:dy[n] + 5, dx[n]:dx[n] + 7])
    np.testing.assert_array_equal(got[5], x[5])  # offset = padding is the identity
    masks = (x[:, 0] > 0.5).astype(np.int64)  # (N, H, W) works too
    # padding is 0 in both
    np.testing.assert_array_equal(pad_crop(masks, p, dy, dx), got[:, 0] > 0.5)


def test_flip_and_normalize_match_numpy():
    x = images()
    flip = np.array([True, False, True, False, False, True])
    got = flip_horizontal(x, flip)
    for n in range(len(x)):
        np.testing.assert_array_equal(got[n], x[n, :, :, ::-1] if flip[n] else x[n])
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    want = (x - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(normalize(x, mean, std), want, rtol=1e-6, atol=1e-6)
    assert normalize(x, mean, std).dtype == np.float32
    with pytest.raises(ValueError, match="3 channels"):
        normalize(x, [0.1], [1.0])


def test_choices_depend_on_sample_and_epoch_not_batch_composition():
    aug = Augment(crop_padding=4, flip=True, seed=9)
    dy_a, dx_a, f_a = aug.random_choices(batch_of([5, 8, 13]))
    dy_b, dx_b, f_b = aug.random_choices(batch_of([13, 2, 5]))
    assert (dy_a[0], dx_a[0], f_a[0]) == (dy_b[2], dx_b[2], f_b[2])  # sample 5
    assert (dy_a[2], dx_a[2], f_a[2]) == (dy_b[0], dx_b[0], f_b[0])  # sample 13
    many = batch_of(np.arange(4000))
    dy, dx, flip = aug.random_choices(many)
    assert set(np.unique(dy)) == set(range(9)) and set(np.unique(dx)) == set(range(9))
    assert abs(flip.mean() - 0.5) < 0.03
    dy1, _, flip1 = aug.random_choices(batch_of(np.arange(4000), epoch=1))
    assert (dy1 != dy).mean() > 0.8 and (flip1 != flip).mean() > 0.4
    dy_s, _, _ = Augment(crop_padding=4, flip=True, seed=10).random_choices(many)
    assert (dy_s != dy).mean() > 0.8


def test_augment_applies_choices_and_moves_masks_with_images():
    x = images(n=8, c=1, h=6, w=6)
    y = (x[:, 0] > 0.5).astype(np.int64)  # a mask that is a function of the image
    aug = Augment(crop_padding=2, flip=True, seed=1, labels_too=True)
    b = batch_of(np.arange(10, 18))
    xa, ya = aug(x, y, b)
    dy, dx, flip = aug.random_choices(b)
    np.testing.assert_array_equal(xa, flip_horizontal(pad_crop(x, 2, dy, dx), flip))
    np.testing.assert_array_equal(ya, (xa[:, 0] > 0.5).astype(np.int64))
    xn, yn = Augment(mean=[0.5], std=[0.5])(x, y, b)  # normalization only: the eval transform
    np.testing.assert_allclose(xn, (x - 0.5) / 0.5, rtol=1e-6)
    assert yn is y
    state = json.loads(json.dumps(aug.state_dict()))
    other = Augment(crop_padding=2, flip=True, labels_too=True)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other(x, y, b)[0], xa)


def test_channel_stats():
    x = images(n=50, c=3, h=4, w=4)
    mean, std = channel_stats(x, chunk=7)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-5)
    u8 = (x * 255).astype(np.uint8)
    np.testing.assert_allclose(channel_stats(u8)[0], (u8 / 255.0).mean(axis=(0, 2, 3)), rtol=1e-9)


@pytest.mark.gpu
def test_augment_on_gpu_equals_numpy():
    dev = backend.select_device(device="gpu")
    x = images(n=16)
    y = np.zeros((16,), np.int64)
    aug = Augment(crop_padding=3, flip=True, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4], seed=2)
    b = batch_of(np.arange(100, 116), epoch=3)
    want, _ = aug(x, y, b)
    got, _ = aug(dev.xp.asarray(x), dev.xp.asarray(y), b)
    assert backend.is_gpu_array(got)
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-6, atol=1e-6)
