"""validate(): the layout rule and the one-line refusal of arrays that cannot be used."""

import numpy as np
import pytest

from xpcnn import data
from xpcnn.data import DataError


def test_float_images_are_kept_as_given():
    split = data.validate(np.full((2, 28, 28), 0.75), np.array([1, 2]), "x")
    assert split.images.dtype == np.float32 and split.images.shape == (2, 1, 28, 28) and split.images.max() == 0.75
    with pytest.raises(DataError, match=r"x: image 1 contains NaN or infinity"):
        data.validate(np.array([np.zeros((2, 2)), np.full((2, 2), np.inf)]), np.array([1, 2]), "x")


def test_layout_rule_and_override():
    rng = np.random.default_rng(2)
    nchw = rng.integers(0, 256, (6, 3, 17, 23), dtype=np.uint8)
    labels = np.arange(6) % 3
    for array, layout in ((nchw, "auto"), (nchw.transpose(0, 2, 3, 1), "auto"), (nchw.transpose(0, 2, 3, 1), "nhwc"),
                          (nchw, "nchw")):
        split = data.validate(array, labels, "x", layout)
        assert split.images.shape == (6, 3, 17, 23) and split.images.flags.c_contiguous
        np.testing.assert_array_equal(split.images, nchw)
    assert data.validate(nchw[:, 0], labels, "x").images.shape == (6, 1, 17, 23)  # (N, H, W): one channel
    ambiguous = rng.integers(0, 256, (6, 3, 8, 3), dtype=np.uint8)  # axis 1 and the last are both 3
    assert data.resolve_layout(ambiguous.shape) == "nchw"
    assert data.validate(ambiguous, labels, "x").images.shape == (6, 3, 8, 3)
    np.testing.assert_array_equal(data.validate(ambiguous, labels, "x", "nhwc").images, ambiguous.transpose(0, 3, 1, 2))
    assert data.resolve_layout((5, 28, 28, 1)) == "nhwc" and data.resolve_layout((5, 1, 28, 28)) == "nchw"
    assert data.resolve_layout((5, 4, 9, 9)) == "nchw" and data.resolve_layout((5, 9, 9, 4)) == "nhwc"
    with pytest.raises(DataError, match="layout must be one of auto, nchw, nhwc, got 'hwc'"):
        data.validate(nchw, labels, "x", "hwc")
    with pytest.raises(DataError, match="layout must be one of"):
        data.load("embedded", layout="NCHW")


@pytest.mark.parametrize("images,labels,message", [
    (np.zeros((4, 5)), np.zeros(4, int),
     r"x: images must have shape \(N, H, W\), \(N, C, H, W\) or \(N, H, W, C\), got \(4, 5\)"),
    (np.zeros((2, 1, 3, 4, 5)), np.zeros(2, int), r"got \(2, 1, 3, 4, 5\)"),
    (np.zeros((4, 0, 5)), np.zeros(4, int), r"x: images have an empty dimension: shape \(4, 0, 5\)"),
    (np.zeros((4, 3, 5)), np.zeros(3, int), "x: 4 images but 3 labels"),
    (np.zeros((4, 3, 5)), np.zeros((4, 2), int), r"x: labels must have shape \(N,\), got \(4, 2\)"),
    (np.zeros((4, 3, 5)), np.zeros(4), "x: labels must be integers, got dtype float64"),
    (np.zeros((4, 3, 5), bool), np.zeros(4, int), "x: images must be integers or floats, got dtype bool"),
    (np.full((4, 3, 5), 256, np.int16), np.zeros(4, int), "x: integer pixel values must lie in 0-255, found 256-256"),
    (np.full((4, 3, 5), 1e300), np.zeros(4, int), "x: image 0 has values beyond float32's range"),
    (np.zeros((4, 3, 5)), np.array([0, 1, -1, 2]), r"x: label -1 at index 2 is negative \(labels are 0..K-1\)"),
])
def test_bad_arrays_get_one_line(images, labels, message):
    with pytest.raises(DataError, match=message) as info:
        data.validate(images, labels, "x")
    assert "\n" not in str(info.value)


def test_nan_in_a_colour_image_names_it():
    images = np.zeros((5, 4, 6, 3), np.float32)
    images[3, 1, 2, 0] = np.nan
    with pytest.raises(DataError, match="x: image 3 contains NaN or infinity"):
        data.validate(images, np.arange(5) % 2, "x")


def test_integer_images_become_uint8_and_labels_int64():
    split = data.validate(np.full((2, 3, 3), 200, np.int32), np.array([[1], [0]], np.uint16), "x")
    assert split.images.dtype == np.uint8 and split.images.shape == (2, 1, 3, 3) and split.images.max() == 200
    assert split.labels.dtype == np.int64 and split.labels.tolist() == [1, 0]  # (N, 1) labels (Keras' CIFAR) accepted
