"""Data: readers of image data sets, named data sets with train/test splits, model tensors, and an
infinite, resumable, world-size-invariant loader."""

from .benchmarks import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    read_cifar10,
    read_cifar100,
    read_digits,
    read_idx,
    read_mnist,
    read_mnist5k,
)
from .datasets import (
    DATASETS,
    HOLDOUT_FRACTION,
    HOLDOUT_SEED,
    convert_channels,
    dataset_names,
    holdout_indices,
    load_dataset,
    prepare_images,
    register_dataset,
    subset_by_classes,
    to_tensor,
)
from .formats import (
    IMAGE_EXTENSIONS,
    ImageArrays,
    image_folder_classes,
    read_image_folder,
    read_npz,
    read_task_dict,
    resize_cover_crop,
    write_task_dict,
)
from .loader import InfiniteLoader, concat_data

__all__ = [
    "DATASETS", "HOLDOUT_FRACTION", "HOLDOUT_SEED", "convert_channels", "dataset_names", "holdout_indices",
    "load_dataset", "prepare_images", "register_dataset", "subset_by_classes", "to_tensor",
    "FASHION_MNIST_CLASSES", "MNIST_CLASSES", "IMAGE_EXTENSIONS", "ImageArrays", "image_folder_classes", "read_cifar10",
    "read_cifar100", "read_digits", "read_idx", "read_image_folder", "read_mnist", "read_mnist5k", "read_npz",
    "read_task_dict", "resize_cover_crop", "write_task_dict", "InfiniteLoader", "concat_data",
]
