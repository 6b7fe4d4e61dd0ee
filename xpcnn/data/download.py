"""Verified downloads of the named datasets (MNIST, Fashion-MNIST, CIFAR-10): their mirrors and
sha256 checksums, the cache folder, and :func:`download`, which writes a file only once its
checksum matches."""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import urllib.request
from collections.abc import Mapping, Sequence

from tqdm import tqdm

from xpcnn.data.dataset import DataError
from xpcnn.io.files import atomic_write

# sha256 of the gzip files as distributed, and of their decompressed bytes.
DOWNLOAD_SHA256 = {
    "train-images-idx3-ubyte.gz": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", None),
    "train-labels-idx1-ubyte.gz": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                                   "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte.gz": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                                  "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte.gz": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaef0a1d8d3d9e8ba4",
                                  "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# Fashion-MNIST (Zalando Research, MIT): the same IDX file names and format as MNIST.  The sha256 of
# the gzip files as distributed (the project's README lists their md5; these sha256 values agree
# across independent checksum lists).
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": ("08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc", None),
    "train-labels-idx1-ubyte.gz": ("b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc", None),
    "t10k-images-idx3-ubyte.gz": ("78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229", None),
    "t10k-labels-idx1-ubyte.gz": ("42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf", None),
}
FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # the project's own (sha256-verified)
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
# CIFAR-10, the BINARY version (records of 1 label byte + 3072 pixel bytes; no pickle is ever
# loaded).  The authors' page documents md5 c32a1d4ab5d03f1284b67883e8d87530 for this file
# (170,052,171 bytes); the sha256 below is the one TensorFlow Datasets' checksum registry records for
# the same URL, and the download is verified against it.
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_SHA256 = {CIFAR10_ARCHIVE: ("c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", None)}
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)

Checksums = Mapping[str, tuple[str, str | None]]  # file name -> (sha256 of the file, of its gunzipped bytes)

# name -> (cache subfolder (None: the cache folder itself, where MNIST always went), mirrors, checksums)
DOWNLOADS: dict[str, tuple[str | None, Sequence[str], Checksums]] = {
    "mnist": (None, MIRRORS, DOWNLOAD_SHA256),
    "fashion-mnist": ("fashion-mnist", FASHION_MNIST_MIRRORS, FASHION_MNIST_SHA256),
    "cifar10": ("cifar10", CIFAR10_MIRRORS, CIFAR10_SHA256),
}


def cache_dir() -> str:
    return os.environ.get("XPCNN_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "xpcnn")


def _matches(packed: bytes, sums: tuple[str, str | None]) -> bool:
    """The sha256 of the gzip file, or (a re-compressed copy) of its decompressed bytes."""
    if hashlib.sha256(packed).hexdigest() == sums[0]:
        return True
    if sums[1] is None:
        return False
    try:
        return hashlib.sha256(gzip.decompress(packed)).hexdigest() == sums[1]
    except (OSError, EOFError):
        return False


def _verified(path: str, sums: tuple[str, str | None]) -> bool:
    with open(path, "rb") as handle:
        return _matches(handle.read(), sums)


def download(directory: str | None = None, mirrors: Sequence[str] | None = None, checksums: Checksums | None = None,
             progress: bool = True, timeout: float = 30.0, dataset: str = "mnist") -> str:
    """Fetch the files of ``dataset`` (a name in :data:`DOWNLOADS`: 'mnist', 'fashion-mnist',
    'cifar10') into ``directory`` (default: ``$XPCNN_DATA`` or ``~/.cache/xpcnn``, and a subfolder
    named after the dataset except for MNIST) from the first mirror that serves a file whose sha256
    matches.  Each file is written atomically; files already present and verified are kept.
    ``mirrors`` and ``checksums`` replace the dataset's (tests use a loopback server)."""
    if dataset not in DOWNLOADS:
        raise DataError(f"unknown dataset {dataset!r} to download; choose one of {', '.join(DOWNLOADS)}")
    subfolder, default_mirrors, default_checksums = DOWNLOADS[dataset]
    if directory is None:
        directory = cache_dir() if subfolder is None else os.path.join(cache_dir(), subfolder)
    mirrors = default_mirrors if mirrors is None else mirrors
    checksums = checksums or default_checksums
    os.makedirs(directory, exist_ok=True)
    for name, sums in checksums.items():
        target = os.path.join(directory, name)
        if os.path.isfile(target) and _verified(target, sums):
            continue
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            chunks, done = [], 0
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, desc=name, unit="B", unit_scale=True, file=sys.stderr,
                              disable=not progress, leave=False) as bar:
                        while chunk := response.read(1 << 16):
                            chunks.append(chunk)
                            done += len(chunk)
                            bar.update(len(chunk))
                packed = b"".join(chunks)
                if total is not None and done != total:
                    raise DataError(f"received {done} of {total} bytes")
                if not _matches(packed, sums):
                    raise DataError(f"sha256 {hashlib.sha256(packed).hexdigest()} does not match {sums[0]}")
                with atomic_write(target) as out:  # verified first, so only a good file is ever named
                    out.write(packed)
                break
            except Exception as exc:  # network error or verification failure: try the next mirror
                failures.append(f"{url}: {exc}")
        else:
            raise DataError(f"could not download {name}: " + "; ".join(failures))
    return directory
