"""Folders of class subfolders of image files (ImageFolder)."""

import os

import numpy as np
import pytest
from datafiles import write_images

from xpcnn import data
from xpcnn.data import DataError


def test_image_folder_rgb(tmp_path):
    written = write_images(tmp_path, {"cat": 7, "dog": 6, "emu": 7})
    (tmp_path / "cat" / "notes.txt").write_text("not an image")  # other files are ignored
    dataset = data.load(str(tmp_path))
    assert dataset.classes == 3 and dataset.class_names == ("cat", "dog", "emu") and dataset.image_shape == (3, 7, 9)
    assert len(dataset.train) == 18 and len(dataset.validation) == 2 and dataset.test is None
    images = np.concatenate([dataset.train.images, dataset.validation.images])
    labels = np.concatenate([dataset.train.labels, dataset.validation.labels])
    assert sorted(labels.tolist()) == [0] * 7 + [1] * 6 + [2] * 7
    for path, pixels in written.items():  # every image, once, with its class's label
        label = ("cat", "dog", "emu").index(os.path.basename(os.path.dirname(path)))
        match = [i for i in range(len(images)) if np.array_equal(images[i], pixels)]
        assert len(match) == 1 and labels[match[0]] == label
    again = data.load(str(tmp_path))  # shuffled once with a fixed seed
    np.testing.assert_array_equal(again.train.labels, dataset.train.labels)


def test_image_folder_with_splits_and_grey(tmp_path):
    write_images(tmp_path / "train", {"a": 3, "b": 4}, size=(5, 6), mode="L")
    test = write_images(tmp_path / "test", {"b": 2}, size=(5, 6), mode="L", seed=1)
    write_images(tmp_path / "val", {"a": 1, "b": 1}, size=(5, 6), mode="L", seed=2)
    dataset = data.load(str(tmp_path))
    assert dataset.image_shape == (1, 6, 5) and dataset.classes == 2 and dataset.class_names == ("a", "b")
    assert len(dataset.train) == 7 and len(dataset.validation) == 2 and len(dataset.test) == 2
    assert dataset.test.labels.tolist() == [1, 1]
    np.testing.assert_array_equal(dataset.test.images, np.stack(list(test.values())))
    write_images(tmp_path / "test", {"zebra": 1}, size=(5, 6), mode="L")
    with pytest.raises(DataError, match=r"test/zebra: class 'zebra' is not among the training classes"):
        data.load(str(tmp_path))


def test_image_folder_problems_get_one_line(tmp_path):
    from PIL import Image

    write_images(tmp_path, {"a": 2, "b": 2})
    odd = tmp_path / "b" / "odd.png"
    Image.fromarray(np.zeros((7, 10, 3), np.uint8)).save(odd)
    with pytest.raises(DataError, match=r"b/odd.png: 10x7 pixels, RGB differs from .*[ab]/000.png \(9x7 pixels, RGB\); "
                                        r"all images must have the same size and mode"):
        data.load(str(tmp_path))
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(odd)
    with pytest.raises(DataError, match=r"odd.png: 9x7 pixels, L differs from .*\(9x7 pixels, RGB\)"):
        data.load(str(tmp_path))
    good = odd.with_name("000.png").read_bytes()
    odd.write_bytes(good[:60] + b"\x00" * 40 + good[100:])  # a corrupt PNG
    with pytest.raises(DataError) as info:
        data.load(str(tmp_path))
    assert str(info.value).startswith(f"{odd}: not a readable image (") and "\n" not in str(info.value)
    odd.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"odd.png: not a readable image \(UnidentifiedImageError"):
        data.load(str(tmp_path))
    odd.unlink()
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"/c: no image files \(.png, .jpg, .jpeg, .bmp\)"):
        data.load(str(tmp_path))
    single = tmp_path / "single"
    write_images(single, {"only": 2})
    with pytest.raises(DataError, match=r"single: one class subfolder \(only\): a classifier needs at least 2"):
        data.load(str(single))


def test_image_folder_without_pillow_names_the_extra(tmp_path, monkeypatch):
    write_images(tmp_path, {"a": 1, "b": 1})
    import sys

    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    with pytest.raises(DataError, match=r"reading a folder of images needs Pillow: pip install 'xpcnn\[image\]'"):
        data.load(str(tmp_path))
