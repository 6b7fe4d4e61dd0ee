"""Writers of small data files for the tests of xpcnn.data: IDX folders, .npz archives, image
folders, CIFAR-10 binary archives (``from datafiles import ...``: pytest puts this folder on
``sys.path``)."""

import gzip
import io
import os
import struct
import tarfile

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(directory, train=(20, 3), test=(10, 5), gz=True, shape=(28, 28), classes=10, prefix="",
                  test_name="t10k"):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, (count, _seed) in (("train", train), (test_name, test)):
        images = rng.integers(0, 256, (count, *shape)).astype(np.uint8)
        labels = (np.arange(count) % classes).astype(np.uint8)
        rng.shuffle(labels)
        arrays[split] = (images, labels)
        for kind, array in ((f"images-idx{len(shape) + 1}", images), ("labels-idx1", labels)):
            payload = idx_bytes(array)
            name = f"{prefix}{split}-{kind}-ubyte"
            with open(os.path.join(directory, name + (".gz" if gz else "")), "wb") as handle:
                handle.write(gzip.compress(payload) if gz else payload)
    return arrays


def npz_file(tmp_path, name="d.npz", **arrays) -> str:
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def write_images(root, spec, size=(9, 7), mode="RGB", seed=0):
    """spec: {class: count}; returns {path: (C, H, W) array}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    for name, count in spec.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
            path = root / name / f"{index:03d}.png"
            Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(path)
            written[str(path)] = pixels.transpose(2, 0, 1)
    return written


def cifar_records(count, seed, label_max=10):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, label_max, count).astype(np.uint8)
    pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
    return np.concatenate([labels[:, None], pixels], axis=1).tobytes(), labels, pixels.reshape(count, 3, 32, 32)


def cifar_tarball(path, members, compress=True):
    """members: [(name, bytes or None for a symlink)]"""
    with tarfile.open(path, "w:gz" if compress else "w") as archive:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            if payload is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                archive.addfile(info)
            else:
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
    return str(path)
