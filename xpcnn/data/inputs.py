"""Images to classify, read from one file each: an image file (PNG, JPEG, BMP through Pillow) or an
array file (``.npy``, or ``.npz`` with ``images``, ``x_test`` or ``x_train``), checked like training
data and shaped like the network's input (no resizing).  What ``xpcnn predict`` reads; any problem
is one :class:`~xpcnn.data.DataError` naming the file."""

from __future__ import annotations

import os

import numpy as np

from xpcnn.data.dataset import DataError, regular_file, validate
from xpcnn.data.readers.image_folder import read_image

ARRAY_KEYS = ("images", "x_test", "x_train")  # the arrays of an .npz tried in turn


def read_images(path: str, image_shape: tuple, layout: str = "auto") -> tuple[list[str], np.ndarray]:
    """(names, images (n, C, H, W)) of one file: ``path`` for an image file, ``path[i]`` for image i
    of an array file.  An image file's alpha channel (LA, RGBA) is dropped unless the network takes
    one; a grey image is made RGB, and an RGB one grey, when the network takes the other (ITU-R 601
    luma); any other shape than ``image_shape`` is a DataError."""
    want = tuple(image_shape)
    if path.endswith((".npy", ".npz")):
        batch = _read_array_file(path, layout)
        names = [f"{path}[{index}]" for index in range(len(batch))]
    else:
        batch, names = read_image(path)[None], [path]
        read_shape = tuple(batch.shape[1:])
        if batch.shape[1] in (2, 4) and want[0] not in (2, 4):  # LA, RGBA: the alpha channel is dropped
            batch = batch[:, :batch.shape[1] - 1]
        if batch.shape[1] != want[0] and {batch.shape[1], want[0]} <= {1, 3}:
            batch = _convert_channels(batch, want[0])
        if tuple(batch.shape[1:]) != want:
            raise DataError(f"{path}: image of {read_shape[2]}x{read_shape[1]} pixels, {_MODES[read_shape[0]]}; the "
                            f"network takes {want[2]}x{want[1]} pixels, {_MODES.get(want[0], f'{want[0]} channels')} "
                            f"(no resizing: give images like the training ones)")
    if tuple(batch.shape[1:]) != want:
        raise DataError(f"{path}: images of shape {tuple(batch.shape[1:])} (C, H, W), the network takes {want} "
                        "(no resizing: give images like the training ones)")
    return names, batch


_MODES = {1: "grey (L)", 2: "grey with alpha (LA)", 3: "RGB", 4: "RGBA"}


def _read_array_file(path: str, layout: str) -> np.ndarray:
    if os.path.exists(path):
        regular_file(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # .npy
            array = loaded
        else:
            with loaded:
                key = next((k for k in ARRAY_KEYS if k in loaded.files), None)
                if key is None:
                    raise DataError(f"{path}: no 'images', 'x_test' or 'x_train' array "
                                    f"(has {', '.join(loaded.files) or 'none'})")
                array = loaded[key]
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as exc:  # a damaged or foreign file: OSError, ValueError, BadZipFile ...
        raise DataError(f"{path}: not a readable array file ({type(exc).__name__}: {exc})") from None
    if not isinstance(array, np.ndarray) or array.ndim not in (2, 3, 4):
        raise DataError(f"{path}: expected images (H, W), (N, H, W) or (N, C, H, W) / (N, H, W, C), "
                        f"got shape {getattr(array, 'shape', None)}")
    if array.ndim == 2:
        array = array[None]
    return validate(array, np.zeros(len(array), np.int64), path, layout=layout).images


def _convert_channels(batch: np.ndarray, channels: int) -> np.ndarray:
    """Grey <-> RGB for an image file whose mode differs from the training images' (ITU-R 601 luma)."""
    if channels == 3:
        return np.repeat(batch, 3, axis=1)
    weights = np.array([0.299, 0.587, 0.114])[None, :, None, None]
    return np.rint((batch * weights).sum(axis=1, keepdims=True)).astype(np.uint8)
