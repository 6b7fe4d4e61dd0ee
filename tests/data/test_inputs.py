"""xpcnn.data.inputs: the images ``xpcnn predict`` classifies, one file each, checked like training data."""

import numpy as np
import pytest

from xpcnn.data import DataError
from xpcnn.data.inputs import read_images


def test_an_array_file_gives_one_name_per_image(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)  # channels last
    np.savez(tmp_path / "x.npz", x_test=images)
    names, batch = read_images(str(tmp_path / "x.npz"), (3, 5, 4))
    assert names == [f"{tmp_path / 'x.npz'}[{i}]" for i in range(3)]
    np.testing.assert_array_equal(batch, images.transpose(0, 3, 1, 2))


def test_a_grey_image_file_becomes_rgb_and_back(tmp_path):
    image = pytest.importorskip("PIL.Image")
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    image.fromarray(grey).save(tmp_path / "g.png")
    names, batch = read_images(str(tmp_path / "g.png"), (3, 4, 5))
    assert names == [str(tmp_path / "g.png")] and batch.shape == (1, 3, 4, 5)
    assert all((batch[0, c] == grey).all() for c in range(3))
    image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "c.png")
    np.testing.assert_array_equal(read_images(str(tmp_path / "c.png"), (1, 4, 5))[1][0, 0], grey)  # luma of grey


@pytest.mark.parametrize("make,message", [
    (lambda p: np.save(p / "a.npy", np.zeros((2, 6, 6), np.uint8)),
     "images of shape (1, 6, 6) (C, H, W), the network takes"),
    (lambda p: np.savez(p / "a.npz", y=np.zeros(3)), "no 'images', 'x_test' or 'x_train' array (has y)"),
    (lambda p: (p / "a.npy").write_bytes(b"not numpy"), "not a readable array file"),
])
def test_bad_input_files_are_one_data_error(tmp_path, make, message):
    make(tmp_path)
    path = str(tmp_path / ("a.npy" if (tmp_path / "a.npy").exists() else "a.npz"))
    with pytest.raises(DataError) as info:
        read_images(path, (1, 5, 5))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_an_alpha_channel_is_dropped_and_a_wrong_size_named_in_the_files_terms(tmp_path):
    image = pytest.importorskip("PIL.Image")
    rgba = np.random.default_rng(3).integers(0, 256, (4, 5, 4), dtype=np.uint8)
    image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    _, batch = read_images(str(tmp_path / "a.png"), (3, 4, 5))
    np.testing.assert_array_equal(batch[0], rgba[:, :, :3].transpose(2, 0, 1))
    _, grey = read_images(str(tmp_path / "a.png"), (1, 4, 5))  # RGBA -> RGB -> luma
    luma = rgba[:, :, :3] @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_array_equal(grey[0, 0], np.rint(luma).astype(np.uint8))
    image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "g.png")
    with pytest.raises(DataError, match=r"g.png: image of 6x6 pixels, grey \(L\); the network takes 5x4 pixels, "
                                        r"grey \(L\) \(no resizing"):
        read_images(str(tmp_path / "g.png"), (1, 4, 5))
