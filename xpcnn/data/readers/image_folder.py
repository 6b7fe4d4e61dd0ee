"""``--data folder`` of class subfolders of image files (the ImageFolder convention), read with
Pillow (the ``image`` extra)."""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np

from xpcnn.data.dataset import DataError, Dataset, Split, finish_dataset, regular_file
from xpcnn.data.readers.base import ReadOptions, subfolders

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def _pillow(root: str) -> ModuleType:
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"{root}: reading a folder of images needs Pillow: pip install 'xpcnn[image]'") from None
    return Image


def _image_files(folder: str) -> list[str]:
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
            and os.path.isfile(os.path.join(folder, name))]


def read_image(path: str, Image: ModuleType | None = None) -> np.ndarray:
    """One image file -> (C, H, W) uint8: L -> 1 channel, LA -> 2, RGB -> 3, RGBA -> 4 (palette
    images become RGB or RGBA, bilevel ones L).  Any failure is a one-line DataError."""
    Image = Image or _pillow(path)
    if os.path.exists(path):
        regular_file(path)  # (a FIFO would block)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif mode == "1":
                image = image.convert("L")
            elif mode not in ("L", "LA", "RGB", "RGBA"):
                raise DataError(f"{path}: unsupported image mode {mode} (8-bit L, LA, RGB, RGBA, P or 1)")
            array = np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # UnidentifiedImageError, OSError (truncated), SyntaxError, ValueError ...
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise DataError(f"{path}: not a readable image ({detail})") from None
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def _read_class_folders(root: str, names: list[str], Image: ModuleType, reference: list,
                        shuffle: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Every image of root/<name>/ for each name (label = its index in ``names``), in that order or
    (``shuffle``) in one fixed-seed (0) shuffle of it; ``reference`` is [path, shape] of the first
    image read, shared across splits."""
    paths = []
    for label, name in enumerate(names):
        folder = os.path.join(root, name)
        if os.path.isdir(folder):
            paths += [(path, label) for path in _image_files(folder)]
    if shuffle:  # the files, before they are read: no second copy of the images
        paths = [paths[index] for index in np.random.default_rng(0).permutation(len(paths))]
    images, labels = None, np.array([label for _, label in paths], np.int64)
    for index, (path, _) in enumerate(paths):
        array = read_image(path, Image)
        if not reference:
            reference += [path, array.shape]
        if array.shape != reference[1]:
            raise DataError(f"{path}: {_describe(array.shape)} differs from {reference[0]} "
                            f"({_describe(reference[1])}); all images must have the same size and mode")
        if images is None:
            try:
                images = np.empty((len(paths), *array.shape), np.uint8)
            except MemoryError:
                raise DataError(f"{root}: {len(paths)} images of {_describe(array.shape)} need "
                                f"{len(paths) * array.size / 2 ** 30:.1f} GiB of memory, more than there is: "
                                f"resize them (xpcnn does not)") from None
        images[index] = array
    if images is None:
        images = np.zeros((0, *(reference[1] if reference else (1, 1, 1))), np.uint8)
    return images, labels


def _describe(shape: tuple) -> str:
    return f"{shape[2]}x{shape[1]} pixels, {({1: 'L', 2: 'LA', 3: 'RGB', 4: 'RGBA'})[shape[0]]}"


def load_image_folder(root: str, classes: int | None = None) -> Dataset:
    """``root/<class>/*.png|jpg|jpeg|bmp`` (the ImageFolder convention: the classes are the sorted
    subfolder names), or ``root/train/<class>/...`` with optional ``root/test/<class>/...`` and
    ``root/val/<class>/...`` (or ``validation``).  Needs Pillow (the ``image`` extra).  The training
    images are shuffled once with a fixed seed (0), so the validation holdout takes every class."""
    train_root = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) and \
        subfolders(os.path.join(root, "train")) else root
    split_roots = {"train": train_root}
    if train_root != root:
        for role, options in (("test", ("test",)), ("validation", ("val", "validation"))):
            folder = next((os.path.join(root, o) for o in options if os.path.isdir(os.path.join(root, o))), None)
            if folder is not None:
                split_roots[role] = folder
    names = subfolders(train_root)
    if not names:
        raise DataError(f"{train_root}: no class subfolders (expected {os.path.join(train_root, '<class>', '*.png')})")
    if len(names) == 1 and classes is None:
        raise DataError(f"{train_root}: one class subfolder ({names[0]}): a classifier needs at least 2")
    for name in names:
        if not _image_files(os.path.join(train_root, name)):
            raise DataError(f"{os.path.join(train_root, name)}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    for folder in split_roots.values():
        for name in subfolders(folder):
            if name not in names:
                raise DataError(f"{os.path.join(folder, name)}: class {name!r} is not among the training classes")
    Image = _pillow(root)
    reference: list = []
    parts = []
    for role, folder in split_roots.items():
        images, labels = _read_class_folders(folder, names, Image, reference, shuffle=role == "train")
        parts.append((role, Split(images, labels), folder))
    return finish_dataset(parts, root, len(names) if classes is None else classes,
                          names if classes in (None, len(names)) else None)


def takes(spec: str) -> bool:
    """A folder with (class) subfolders."""
    return os.path.isdir(spec) and bool(subfolders(spec))


def read(spec: str, options: ReadOptions) -> Dataset:
    return load_image_folder(spec, options.classes)
