"""Channel statistics, normalisation on the device, random shifts of colour images."""

import numpy as np
import pytest

from xpcnn import data
from xpcnn.data import DataError, transforms


def test_channel_stats_numbers():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (50, 3, 9, 11), dtype=np.uint8)
    images[:, 2] = 17  # a constant channel: std reported as 1 (normalising only centres it)
    mean, std = data.channel_stats(data.Split(images, np.zeros(50, np.int64)))
    assert mean.dtype == std.dtype == np.float64 and mean.shape == std.shape == (3,)
    scaled = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-14)
    np.testing.assert_allclose(std[:2], scaled.std(axis=(0, 2, 3))[:2], rtol=1e-12)
    assert mean[2] == 17 / 255 and std[2] == 1.0
    embedded = data.channel_stats(data.load_embedded().train)
    np.testing.assert_allclose(embedded, ([0.1312846], [0.3085501]), atol=1e-7)  # MNIST-like: 0.13, 0.31
    floats = rng.normal(3.0, 2.0, (40, 2, 4, 4)).astype(np.float32)  # float images: as given
    mean, std = data.channel_stats(floats)
    np.testing.assert_allclose(mean, floats.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, floats.astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-12)
    with pytest.raises(DataError, match="no images"):
        data.channel_stats(images[:0])
    with pytest.raises(DataError, match=r"normalize: 2 means and 2 stds for 3-channel images"):
        data.check_normalize(([0, 0], [1, 1]), 3)
    with pytest.raises(DataError, match="stds finite and > 0"):
        data.check_normalize(([0], [0]), 1)


def _bitwise(actual, expected):
    np.testing.assert_array_equal(actual, expected)


def _ulps(actual, expected):
    assert actual.dtype == expected.dtype
    np.testing.assert_allclose(actual, expected, rtol=0, atol=16 * np.finfo(expected.dtype).eps)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_to_batch_normalises_on_the_device(backend, dtype):
    from xpcnn import to_numpy

    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (4, 3, 5, 6), dtype=np.uint8)
    mean, std = data.channel_stats(images)
    batch = data.to_batch(images, backend, dtype, normalize=(mean, std))
    assert tuple(batch.shape) == (4, 3, 5, 6) and str(batch.dtype).endswith(dtype)
    import array_api_compat
    assert array_api_compat.device(batch) == backend.device
    host = np.dtype(dtype).type
    per_channel = (slice(None), None, None)
    expected = (images.astype(dtype) / host(255) - mean.astype(dtype)[per_channel]) / std.astype(dtype)[per_channel]
    same_bits = _bitwise if backend.name != "jax" else _ulps  # XLA's CPU division is not correctly rounded
    same_bits(to_numpy(batch), expected)  # elsewhere: the same IEEE operations, bit for bit
    out = to_numpy(batch).astype(np.float64)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-5)
    size = len(transforms._NORMALIZE_CACHE)
    data.to_batch(images[:2], backend, dtype, normalize=(mean, std))  # cached: no second transfer
    assert len(transforms._NORMALIZE_CACHE) == size
    floats = rng.normal(size=(2, 1, 3, 3)).astype(np.float32)  # float images: as given, then normalised
    batch = data.to_batch(floats, backend, dtype, normalize=([0.5], [2.0]))
    same_bits(to_numpy(batch), (floats.astype(dtype) - host(0.5)) / host(2.0))
    with pytest.raises(DataError, match="normalize: 1 means and 1 stds for 3-channel images"):
        data.to_batch(images, backend, dtype, normalize=([0.5], [2.0]))


def test_random_shift_moves_every_channel_alike():
    from xpcnn.data.transforms import random_shift

    rng = np.random.default_rng(8)
    colour = rng.integers(0, 256, (6, 3, 9, 13), dtype=np.uint8)
    shifted = random_shift(colour, 2, np.random.default_rng([1, 2, 3]))
    assert shifted.shape == colour.shape and shifted.dtype == np.uint8
    for channel in range(3):  # each channel moves as a one-channel image would, by the same draws
        np.testing.assert_array_equal(shifted[:, channel],
                                      random_shift(colour[:, channel], 2, np.random.default_rng([1, 2, 3])))
    grey = colour[:, :1]
    np.testing.assert_array_equal(random_shift(grey, 2, np.random.default_rng([1, 2, 3]))[:, 0],
                                  random_shift(grey[:, 0], 2, np.random.default_rng([1, 2, 3])))


def test_plot_pictures_for_one_and_three_channels():
    from xpcnn.tools.plots import _as_picture

    grey, cmap = _as_picture(np.zeros((1, 4, 5), np.uint8))
    assert grey.shape == (4, 5) and cmap == "gray"
    rgb, cmap = _as_picture(np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    assert rgb.shape == (4, 5, 3) and cmap is None and rgb.min() == 0 and rgb.max() == 1
