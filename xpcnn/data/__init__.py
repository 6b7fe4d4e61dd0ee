"""Image classification data: the embedded 5,000 MNIST digits, IDX folders, ``.npz`` files, folders
of image files per class, verified downloads (MNIST, Fashion-MNIST, CIFAR-10), the article's task,
per-channel normalisation and batching.

==================  ===============================================================================
module              what it holds
==================  ===============================================================================
``dataset``         :class:`Split`, :class:`Dataset`, :class:`DataError`; :func:`validate` (the
                    checks every array passes) and :func:`finish_dataset` (one shape, K, holdout)
``readers``         one module per format (``idx``, ``npz``, ``image_folder``, ``cifar10``,
                    ``embedded``), one registry, and :func:`load`, which asks it
``download``        mirrors, checksums, the cache folder, :func:`download`
``transforms``      :func:`channel_stats`, normalisation, the random shifts of augmentation
``batches``         :func:`batch_indices`, :func:`to_batch`, :func:`targets_to_batch`
``inputs``          images to classify, one file each (:func:`~xpcnn.data.inputs.read_images`)
``targets``         the task's targets: :data:`TASKS`, :func:`task_targets`
==================  ===============================================================================

In memory every split is ``Split(images, labels)``: images (N, C, H, W), either uint8 (0-255, scaled
to [0, 1] on the device by :func:`to_batch`) or float32 (used as given: no scaling; store uint8 if
your pixels are 0-255), and labels int64 in 0..K-1.  A :class:`Dataset` holds the splits with
``classes`` (K >= 2) and ``image_shape`` (C, H, W).

Input layouts (IDX and ``.npz`` arrays):

* (N, H, W): one channel.
* 4-D with ``layout="auto"`` (the default): channels-last (N, H, W, C), as Keras-style files store
  colour images, when the last axis is 1, 3 or 4 and axis 1 is not; otherwise channels-first
  (N, C, H, W).  ``layout="nchw"`` or ``"nhwc"`` overrides the guess.
* Float images must be finite (kept as float32, values as given); uint8 passes through; other
  integer types must lie in 0-255 and become uint8.  Labels may be (N,) or (N, 1) integers.
* K is the largest label + 1 over all splits unless ``classes=K`` is given (then every label must be
  below it); either way K >= 2.

A dataset without a validation split of its own validates on the last 10% of its training images
(at most 5,000).  Every problem is a :class:`DataError` whose message is one line naming the file;
a file that is not a regular one (a FIFO, a device) is refused before it is opened, and an IDX
file is read into its array as it is decompressed (1x its declared size).

A run checks the dataset as a whole too (:func:`float_range_problem`: float pixels that look like
0-255; :func:`layout_problem`: a layout that gives 1, 3 or 4 channels only the other way;
:func:`label_warnings`: classes without training images), one line each.
"""

from xpcnn.data.batches import batch_indices, targets_to_batch, to_batch
from xpcnn.data.dataset import (
    LAYOUTS,
    MAX_CLASS_NAME,
    MAX_INFERRED_CLASSES,
    VALIDATION_HOLDOUT,
    DataError,
    Dataset,
    Split,
    check_classes,
    content_sha256,
    finish_dataset,
    float_range_problem,
    label_warnings,
    layout_problem,
    other_layout,
    resolve_layout,
    shape_text,
    validate,
)
from xpcnn.data.download import CIFAR10_ARCHIVE, DOWNLOAD_SHA256, DOWNLOADS, FASHION_MNIST_SHA256, cache_dir, download
from xpcnn.data.readers import Reader, ReadOptions, load, reader_for, register
from xpcnn.data.readers.cifar10 import CIFAR10_CLASSES, load_cifar10_binary
from xpcnn.data.readers.embedded import EMBEDDED_PATH, EMBEDDED_SHA256, EMBEDDED_TRAIN, load_embedded
from xpcnn.data.readers.idx import FASHION_MNIST_CLASSES, IDX_FILE_LIMIT, load_idx_dir, read_idx
from xpcnn.data.readers.image_folder import load_image_folder, read_image
from xpcnn.data.readers.npz import load_npz
from xpcnn.data.targets import TASKS, task_targets
from xpcnn.data.transforms import channel_stats, check_normalize, random_shift, shift_batch

__all__ = [
    "batch_indices", "targets_to_batch", "to_batch",
    "LAYOUTS", "MAX_CLASS_NAME", "MAX_INFERRED_CLASSES", "VALIDATION_HOLDOUT", "Dataset", "DataError", "Split",
    "check_classes", "content_sha256", "finish_dataset", "float_range_problem", "label_warnings",
    "layout_problem", "other_layout", "resolve_layout", "shape_text", "validate",
    "CIFAR10_ARCHIVE", "DOWNLOAD_SHA256", "DOWNLOADS", "FASHION_MNIST_SHA256", "cache_dir", "download",
    "Reader", "ReadOptions", "load", "reader_for", "register",
    "CIFAR10_CLASSES", "load_cifar10_binary", "EMBEDDED_PATH", "EMBEDDED_SHA256", "EMBEDDED_TRAIN", "load_embedded",
    "FASHION_MNIST_CLASSES", "IDX_FILE_LIMIT", "load_idx_dir", "read_idx", "load_image_folder", "read_image",
    "load_npz", "TASKS", "task_targets", "channel_stats", "check_normalize", "random_shift", "shift_batch",
]
