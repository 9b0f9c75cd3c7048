"""Image sets to evaluate (npz, image folder, data set by name) and cached reference statistics.

A reference statistics file is a small ``.npz`` with ADM's key names: ``mu``, ``sigma`` (pool
features) and, where the extractor has spatial features, ``mu_s``, ``sigma_s``; plus ``n`` (images),
``extractor`` (the feature extractor's name), ``source`` (what the images were) and
``source_sha256`` (a hash of the images' bytes and shape). A cached file is reused only when its
extractor and source hash match; otherwise it is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np


@dataclass
class ImageSet:
    """uint8 NHWC images, optional int64 labels (None: unknown), and a one-line description."""

    images: np.ndarray
    labels: Optional[np.ndarray]
    num_classes: int
    description: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sha256(self) -> str:
        return images_sha256(self.images)


def images_sha256(images: np.ndarray) -> str:
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def missing_input(source: str) -> str:
    """Why ``source`` (an input of evaluate.py) names nothing: a missing file, a missing folder or a
    mistyped data set name (with the closest name)."""
    import difflib

    from ..data import dataset_names

    names = dataset_names()
    if source.endswith(".npz"):
        return f"{source}: no such file"
    match = difflib.get_close_matches(source, names, n=1, cutoff=0.75)
    if match and os.sep not in source:
        return f"{source!r} is not a data set name (did you mean {match[0]!r}?); data sets: {', '.join(names)}"
    if os.sep in source or "." in os.path.basename(source):
        return f"{source}: no such file or folder"
    return f"{source!r} is neither a file, a folder nor a data set name ({', '.join(names)})"


def load_image_set(source: str, split: str = "test", classes: Optional[Sequence[int]] = None,
                   data_dir: Optional[str] = None, limit: int = 0) -> ImageSet:
    """An ``ImageSet`` from an ADM ``.npz`` (``arr_0``, optional ``arr_1``), an image folder, or a
    data set name (``mnist5k``, ``cifar10`` with ``data_dir``, ...; ``split`` train/test).
    ``classes`` keeps only those labels; ``limit`` > 0 keeps ``limit`` evenly spaced images (in
    file order, so a set sorted by class stays balanced)."""
    from ..data import (
        dataset_names,
        load_dataset,
        read_image_folder,
        read_npz,
        subset_by_classes,
    )

    if source.endswith(".npz") and os.path.isfile(source):
        with np.load(source, allow_pickle=False) as z:
            has_images = "arr_0" in z.files
        if not has_images:
            raise ValueError(f"{source} holds no images ('arr_0'); statistics files are read with load_reference_stats")
        arrays = read_npz(source)
        with np.load(source, allow_pickle=False) as z:
            labelled = "arr_1" in z.files
        what = f"{source}"
    elif os.path.isdir(source):
        arrays, labelled, what = read_image_folder(source), True, f"folder {source}"
    elif source in dataset_names():
        arrays = load_dataset(source, data_dir=data_dir, split=split)
        labelled, what = True, f"{source} {split}"
    else:
        raise FileNotFoundError(missing_input(source))
    if classes is not None:
        if not labelled:
            raise ValueError(f"{source} has no labels: cannot keep classes {list(classes)}")
        arrays = subset_by_classes(arrays, classes)
        what += f" classes {' '.join(map(str, classes))}"
    images, labels = arrays.images, arrays.labels if labelled else None
    if limit and limit < len(images):
        keep = np.linspace(0, len(images) - 1, limit).round().astype(np.int64)
        images, labels = images[keep], None if labels is None else labels[keep]
    return ImageSet(images, labels, arrays.num_classes, f"{what} ({len(images)} images)")


def save_reference_stats(path: str, stats: Dict[str, np.ndarray], *, n: int, extractor: str, source: str,
                         source_sha256: str) -> None:
    """Write ``stats`` (``mu``, ``sigma`` [, ``mu_s``, ``sigma_s``]) and provenance to ``path``."""
    from ..runtime.checkpoint import atomic_write_bytes

    arrays = {k: np.asarray(v, np.float64) for k, v in stats.items() if k in ("mu", "sigma", "mu_s", "sigma_s")}
    if "mu" not in arrays or "sigma" not in arrays:
        raise ValueError("reference statistics need mu and sigma")
    buf = io.BytesIO()
    np.savez(buf, **arrays, n=np.int64(n), extractor=np.str_(extractor), source=np.str_(source),
             source_sha256=np.str_(source_sha256))
    atomic_write_bytes(path, buf.getvalue())


def load_reference_stats(path: str) -> Optional[Dict]:
    """The statistics in an ``.npz`` (ours or ADM's reference batches), or None if it has none.

    Keys: ``mu``, ``sigma`` and, when present, ``mu_s``, ``sigma_s``, ``n``, ``extractor``,
    ``source``, ``source_sha256`` (ADM's files carry no provenance: extractor is "")."""
    with np.load(path, allow_pickle=False) as z:
        if "mu" not in z.files or "sigma" not in z.files:
            return None
        out = {k: np.asarray(z[k], np.float64) for k in ("mu", "sigma", "mu_s", "sigma_s") if k in z.files}
        out["n"] = int(z["n"]) if "n" in z.files else 0
        for k in ("extractor", "source", "source_sha256"):
            out[k] = str(z[k]) if k in z.files else ""
    return out


def cached_reference_stats(path: str, extractor_name: str, source_sha256: str) -> Optional[Dict]:
    """The statistics at ``path`` if it exists and matches the extractor and the images' hash."""
    if not path or not os.path.isfile(path):
        return None
    stats = load_reference_stats(path)
    if stats is None or stats["extractor"] != extractor_name or stats["source_sha256"] != source_sha256:
        return None
    return stats
