"""The ``data`` section of a config: which data set, where it is read from and how its images are shaped
(registered on import; ``data.load_dataset`` and ``experiment.load_split`` read it)."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.config import ConfigError, register_section_schema


@dataclass
class DataConfig:
    dataset: str = "mnist5k"  # mnist5k | digits | cifar10 | cifar100 | mnist | fashion_mnist | image_folder | npz | task_dict
    data_dir: str = ""  # folder or file of the dataset (not needed for mnist5k / digits)
    test_dir: str = ""  # explicit test split for image_folder / npz (else a fixed 10% per-class holdout)
    image_size: int = 28
    channels: int = 0  # 0: the dataset's own channel count
    resize: str = "auto"  # auto | pad | resize | center_crop
    random_flip: bool = False
    allow_pickle: bool = False  # task_dict npz files holding pickled objects (can execute code!)


def check_data(d: DataConfig, cfg) -> None:
    if d.channels not in (0, 1, 3):
        raise ConfigError(f"data.channels must be 0 (dataset's own), 1 or 3, got {d.channels}")


register_section_schema("data", None, DataConfig, check_data,
                        choices={"resize": ("auto", "pad", "resize", "center_crop")}, positive=("image_size",))
