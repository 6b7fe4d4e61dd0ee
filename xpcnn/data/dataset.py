"""The containers every reader fills, and the checks every array passes on its way in.

In memory every split is ``Split(images, labels)``: images (N, C, H, W), either uint8 (0-255, scaled
to [0, 1] on the device by :func:`~xpcnn.data.batches.to_batch`) or float32 (used as given: no
scaling; store uint8 if your pixels are 0-255), and labels int64 in 0..K-1.  A :class:`Dataset`
holds the splits with ``classes`` (K >= 2) and ``image_shape`` (C, H, W).

:func:`validate` turns one reader's arrays into a Split; :func:`finish_dataset` turns a reader's
splits into the Dataset (one image shape and pixel type, K inferred or checked, the validation
holdout).  Every problem is a :class:`DataError` whose message is one line naming the file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

VALIDATION_HOLDOUT = 5000  # at most this many (10%) of the last training images validate
LAYOUTS = ("auto", "nchw", "nhwc")
MAX_CLASS_NAME = 255  # characters: the longest file name most file systems allow (class folders)
MAX_INFERRED_CLASSES = 100_000  # a larger label is more likely a broken file: pass classes= explicitly


class DataError(ValueError):
    """A data file or array that cannot be used; the message names it and says why."""


@dataclass
class Split:
    images: np.ndarray  # (N, C, H, W) uint8 (0-255) or float32 (as given)
    labels: np.ndarray  # (N,) int64, 0..K-1
    layout: str | None = None  # how 4-D arrays were read ('nchw', 'nhwc'); None: 3-D (one channel), or not known

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, count: int) -> Split:
        return Split(self.images[:count], self.labels[:count], self.layout)

    def split_at(self, count: int) -> tuple[Split, Split]:
        """The first ``count`` images and the rest."""
        return self.take(count), Split(self.images[count:], self.labels[count:], self.layout)


@dataclass
class Dataset:
    """The splits (``validation`` and ``test`` may be None; ``train`` may be empty when only a test
    split was found), K = ``classes``, ``image_shape`` = (C, H, W), where it came from, and the
    class names where the source has them (ImageFolder, CIFAR-10, Fashion-MNIST)."""

    train: Split
    validation: Split | None
    test: Split | None
    source: str
    classes: int = 0  # 0 (or None): inferred from the labels
    image_shape: tuple = ()  # () (or None): from the images
    class_names: tuple | None = None
    layout: str | None = None  # how 4-D image arrays were read ('nchw', 'nhwc'); None: 3-D or not known

    def __post_init__(self) -> None:
        splits = [s for s in (self.train, self.validation, self.test) if s is not None]
        if not self.image_shape:
            self.image_shape = tuple(int(d) for d in next((s for s in splits if len(s)), self.train).images.shape[1:])
        if not self.classes:
            self.classes = max((int(s.labels.max()) + 1 for s in splits if len(s)), default=0)


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def shape_text(shape: Sequence[int]) -> str:
    """(3, 32, 32) -> '3x32x32'."""
    return "x".join(str(int(d)) for d in shape)


def regular_file(path: str) -> int:
    """The size of ``path`` in bytes, or a one-line DataError when it is missing or not a regular
    file (a FIFO or a device would block or never end): checked before the file is opened."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: not a regular file")
    return info.st_size


# -- validation ---------------------------------------------------------------

def resolve_layout(shape: tuple, layout: str = "auto") -> str:
    """'nchw' or 'nhwc' for a 4-D image array of ``shape``: with ``layout="auto"``, channels-last
    (N, H, W, C, as Keras-style files store colour images) when the last axis is 1, 3 or 4 and axis 1
    is not; otherwise channels-first (N, C, H, W).  'nchw' or 'nhwc' overrides the guess."""
    if layout not in LAYOUTS:
        raise DataError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout != "auto":
        return layout
    return "nhwc" if shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4) else "nchw"


def check_classes(classes: object, where: str) -> None:
    """A one-line DataError unless ``classes`` is an integer >= 2."""
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 2:
        raise DataError(f"{where}: classes must be an integer >= 2, got {classes!r}")


def validate(images: ArrayLike, labels: ArrayLike, where: str, layout: str = "auto",
             classes: int | None = None) -> Split:
    """Check images ((N, H, W): one channel; (N, C, H, W) or (N, H, W, C): see :func:`resolve_layout`)
    and labels ((N,) or (N, 1) integers >= 0, below ``classes`` if given) and return the canonical
    Split: images (N, C, H, W) uint8 or float32, labels int64.  Float images must be finite (kept as
    float32, values as given); uint8 passes through; other integer types must lie in 0-255 and become
    uint8."""
    images, labels = np.asarray(images), np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:  # Keras' CIFAR labels are (N, 1)
        labels = labels[:, 0]
    if images.ndim not in (3, 4):
        raise DataError(f"{where}: images must have shape (N, H, W), (N, C, H, W) or (N, H, W, C), got {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must have shape (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    channels_last = images.ndim == 4 and resolve_layout(images.shape, layout) == "nhwc"
    if 0 in images.shape[1:]:
        raise DataError(f"{where}: images have an empty dimension: shape {images.shape}")
    if images.dtype.kind == "f":
        def first_bad(array: np.ndarray) -> int | None:  # index of the first image with a non-finite value, or None
            bad = ~np.isfinite(array).reshape(len(array), -1).all(axis=1) if len(array) else np.zeros(0, bool)
            return int(np.argmax(bad)) if bad.any() else None

        if (index := first_bad(images)) is not None:
            raise DataError(f"{where}: image {index} contains NaN or infinity")
        if images.dtype != np.float32:  # (finite float32 stays finite: nothing to check again)
            with np.errstate(over="ignore"):
                images = images.astype(np.float32)
            if (index := first_bad(images)) is not None:
                raise DataError(f"{where}: image {index} has values beyond float32's range")
    elif images.dtype.kind in "iu":
        if images.dtype != np.uint8:
            if images.size and (images.min() < 0 or images.max() > 255):
                raise DataError(f"{where}: integer pixel values must lie in 0-255, found "
                                f"{int(images.min())}-{int(images.max())}")
            images = images.astype(np.uint8)
    else:
        raise DataError(f"{where}: images must be integers or floats, got dtype {images.dtype}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if labels.dtype == np.uint64 and labels.size and labels.max() > np.iinfo(np.int64).max:
        first = int(np.argmax(labels > np.iinfo(np.int64).max))  # (int64 would wrap it to a negative label)
        raise DataError(f"{where}: label {int(labels[first])} at index {first} is too large (labels are 0..K-1)")
    if classes is not None:
        check_classes(classes, where)
        out_of_range = (labels < 0) | (labels >= classes)
        if out_of_range.any():
            first = int(np.argmax(out_of_range))
            raise DataError(f"{where}: label {int(labels[first])} at index {first} is outside 0-{classes - 1}")
    elif labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        first = int(np.argmax(labels < 0))
        raise DataError(f"{where}: label {int(labels[first])} at index {first} is negative (labels are 0..K-1)")
    read_as = None if images.ndim == 3 else "nhwc" if channels_last else "nchw"
    if images.ndim == 3:
        images = images[:, None]
    elif channels_last:
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return Split(images, labels.astype(np.int64), read_as)


# -- one Dataset from a reader's splits -----------------------------------------------------------

def finish_dataset(parts: list, source: str, classes: int | None, class_names: Sequence[str] | None = None) -> Dataset:
    """The Dataset from ``parts`` = [(role, Split or None, where)] with role train / validation / test:
    one image shape and pixel type for all splits, K inferred (the largest label + 1) or checked, and,
    when there is no validation split, the last 10% of the training images (at most
    ``VALIDATION_HOLDOUT``) validate."""
    splits = {role: (split, where) for role, split, where in parts
              if split is not None and (role == "train" or len(split))}  # an empty test split is none
    shaped = [(split, where) for split, where in splits.values()]
    if not shaped or not any(len(split) for split, _ in shaped):
        names = " and ".join(role for role, split, _ in parts if split is not None) or "no split"
        raise DataError(f"{source}: no images ({names}: empty)")
    first, first_where = shaped[0]
    shape = tuple(int(d) for d in first.images.shape[1:])
    for split, where in shaped[1:]:
        if tuple(split.images.shape[1:]) != shape:
            raise DataError(f"{where}: images are {shape_text(split.images.shape[1:])} but those of {first_where} "
                            f"are {shape_text(shape)}")
        if split.images.dtype != first.images.dtype:  # uint8 is scaled by 1/255 on the way in, float32 is not
            raise DataError(f"{where}: images are {split.images.dtype} but those of {first_where} are "
                            f"{first.images.dtype}: give every split the same pixel type (uint8 0-255 or float)")
    if classes is None:
        top = max((int(split.labels.max()) for split, _ in shaped if len(split)), default=-1)
        if top + 1 > MAX_INFERRED_CLASSES:
            where = next(w for s, w in shaped if len(s) and int(s.labels.max()) == top)
            raise DataError(f"{where}: label {top} implies {top + 1} classes; "
                            f"pass classes= explicitly if that is meant")
        if top < 1:
            raise DataError(f"{source}: every label is 0, one class: a classifier needs at least 2 "
                            f"(labels 0..K-1, K >= 2)")
        classes = top + 1
    else:
        check_classes(classes, source)
        for split, where in shaped:
            if len(split) and int(split.labels.max()) >= classes:
                first_bad = int(np.argmax(split.labels >= classes))
                raise DataError(f"{where}: label {int(split.labels[first_bad])} at index {first_bad} is outside "
                                f"0-{classes - 1}")
    long = [name for name in class_names or () if len(name) > MAX_CLASS_NAME]
    if long:  # (a checkpoint stores the names, and its reader takes them no longer than this)
        raise DataError(f"{source}: class name {long[0][:40]!r}... is {len(long[0])} characters long, more than "
                        f"{MAX_CLASS_NAME}")
    train = splits.get("train", (None,))[0]
    validation = splits.get("validation", (None,))[0]
    test = splits.get("test", (None,))[0]
    if train is None:
        train = Split(np.zeros((0, *shape), first.images.dtype), np.zeros(0, np.int64))
    elif validation is None:
        cut = len(train) - min(VALIDATION_HOLDOUT, len(train) // 10)
        train, validation = train.split_at(cut)
    return Dataset(train, validation, test, source, int(classes), shape,
                   tuple(class_names) if class_names is not None else None, first.layout)


# -- the checks of a dataset as a whole, for a run: one line each --------------------------------

FLOAT_PIXEL_LIMIT = 2.0  # float pixels above this, none below 0: most likely 0-255 (or 0-16) values


def float_range_problem(dataset: Dataset) -> str | None:
    """Float images are used as given (uint8 ones are scaled by 1/255): the line saying so when the
    training images look like unscaled pixels (none negative, some above :data:`FLOAT_PIXEL_LIMIT`),
    with the fixes; None otherwise."""
    images = dataset.train.images
    if images.dtype.kind != "f" or not images.size:
        return None
    low, high = float(images.min()), float(images.max())
    if low < 0 or high <= FLOAT_PIXEL_LIMIT:
        return None
    scale = 255 if high > 16 else 16 if high > 15 else high
    return (f"{dataset.source}: float pixels span {low:g}-{high:g}, and float images are used as given (uint8 "
            f"ones are scaled to [0, 1]): divide them by {scale:g}, store them as uint8 0-255, or add --normalize")


def label_warnings(dataset: Dataset) -> list[str]:
    """Lines naming the classes no training image has (labels that skip 0 are likely 1-based)."""
    if not len(dataset.train):
        return []
    counts = np.bincount(dataset.train.labels, minlength=dataset.classes)
    empty = [int(k) for k in np.flatnonzero(counts == 0)]
    if not empty:
        return []
    shown = ", ".join(map(str, empty[:10])) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
    hint = (": the labels look 1-based; xpcnn's run 0..K-1 (subtract 1)" if empty[0] == 0 and len(empty) == 1
            and dataset.class_names is None else "")
    return [f"warning: {dataset.source}: {len(empty)} of {dataset.classes} classes have no training images "
            f"(class{'es' if len(empty) > 1 else ''} {shown}){hint}"]


def other_layout(dataset: Dataset) -> tuple[str, tuple] | None:
    """The layout the 4-D image arrays were not read in, and the image shape (C, H, W) it would give;
    None for 3-D arrays or a source that does not say."""
    c, h, w = dataset.image_shape
    if dataset.layout == "nchw":  # the arrays were (N, c, h, w); as channels-last: (N, H=c, W=h, C=w)
        return "nhwc", (w, c, h)
    if dataset.layout == "nhwc":  # the arrays were (N, h, w, c); as channels-first: (N, C=h, H=w, W=c)
        return "nchw", (h, w, c)
    return None


def layout_problem(dataset: Dataset) -> str | None:
    """The line for images whose layout is most likely wrong: channels other than 1, 3 or 4 where
    the other layout gives 1, 3 or 4 (``--layout auto`` never picks that; an explicit one may)."""
    other = other_layout(dataset)
    if other is None or dataset.image_shape[0] in (1, 3, 4) or other[1][0] not in (1, 3, 4):
        return None
    return (f"{dataset.source}: read as {dataset.layout}, the images have {dataset.image_shape[0]} channels of "
            f"{dataset.image_shape[1]}x{dataset.image_shape[2]} pixels; --layout {other[0]} reads them as "
            f"{shape_text(other[1])} (channels x height x width)")
