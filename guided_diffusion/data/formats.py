"""The ``ImageArrays`` container and readers of generic files: ADM image folders, ADM ``.npz`` and
Continual-Diffusers task dicts (the standard benchmarks are in ``benchmarks``).

- ADM image folder (``read_image_folder``): images anywhere below a folder; the class is the file
  name's prefix before the first ``_`` (ADM's ``load_data``), or the first-level sub-folder
  (ImageNet style), or none (unconditional).
- ADM ``.npz`` (``read_npz``): ``arr_0`` uint8 NHWC (or NHW for grayscale), optional ``arr_1`` labels.
- Continual-Diffusers task dicts (``read_task_dict``): ``{task_id: {'images', 'labels'}}``.

All file I/O goes through ``blobfile``, so ``gs://`` and ``az://`` paths work too. A missing path
raises ``FileNotFoundError`` naming it and the expected layout; a corrupt, truncated or wrongly
shaped file raises ``ValueError`` naming the file and what is wrong.
"""

from __future__ import annotations

import gzip
import io
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import blobfile as bf
import numpy as np

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff")


# ----------------------------------------------------------------------------------------------
# The container


@dataclass
class ImageArrays:
    """A data set in memory.

    images: uint8 (N, H, W, C), C = 1 or 3.  labels: int64 (N,), global class ids in
    [0, num_classes).  task_ids: optional int64 (N,), the task each sample came from (task dicts).
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: List[str] = field(default_factory=list)
    task_ids: Optional[np.ndarray] = None

    def __post_init__(self):
        im, lab = self.images, self.labels
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 4 or im.shape[-1] not in (1, 3):
            raise ValueError(
                f"ImageArrays.images must be uint8 (N,H,W,C) with C in (1,3), got "
                f"{getattr(im, 'dtype', type(im))} {getattr(im, 'shape', '')}"
            )
        self.labels = lab = np.asarray(lab).astype(np.int64, copy=False)
        if lab.shape != (im.shape[0],):
            raise ValueError(f"ImageArrays.labels must have shape ({im.shape[0]},), got {lab.shape}")
        self.num_classes = int(self.num_classes)
        if self.num_classes < 1:
            raise ValueError(f"ImageArrays.num_classes must be >= 1, got {self.num_classes}")
        if lab.size and (lab.min() < 0 or lab.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), found [{lab.min()}, {lab.max()}]")
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        self.class_names = [str(n) for n in self.class_names]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.task_ids is not None:
            self.task_ids = np.asarray(self.task_ids).astype(np.int64, copy=False)
            if self.task_ids.shape != (im.shape[0],):
                raise ValueError(f"ImageArrays.task_ids must have shape ({im.shape[0]},), got {self.task_ids.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index) -> "ImageArrays":
        """The samples at ``index`` (an index array or boolean mask); classes are unchanged."""
        index = np.asarray(index)
        return ImageArrays(
            self.images[index], self.labels[index], self.num_classes, list(self.class_names),
            None if self.task_ids is None else self.task_ids[index],
        )


# ----------------------------------------------------------------------------------------------
# Small helpers


def missing_file(path: str, layout: str) -> FileNotFoundError:
    return FileNotFoundError(f"{path}: not found. Expected {layout}")


def maybe_gunzip(raw: bytes, path: str) -> bytes:
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zipfile.BadZipFile) as e:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from None


def _progress(items: Sequence, desc: str, unit: str = "file"):
    """tqdm over ``items`` when there are more than 1,000 of them (rank 0 only)."""
    disable = len(items) <= 1000
    try:
        import torch.distributed as dist

        disable = disable or (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)
    except Exception:  # pragma: no cover - torch without distributed
        pass
    if disable:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit)


def labels_1d(labels, n: int, path: str, what: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim > 1:
        arr = np.squeeze(arr)  # Continual-Diffusers squeezes (N,1) labels
        if arr.ndim == 0:
            arr = arr.reshape(1)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{path}: {what} must have shape ({n},), got {np.asarray(labels).shape}")
    if arr.size and arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and np.all(arr == np.round(arr)):
            arr = np.round(arr)
        else:
            raise ValueError(f"{path}: {what} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{path}: {what} must be >= 0, found {arr.min()}")
    return arr


def _images_nhwc(arr, path: str, what: str = "images") -> np.ndarray:
    """Accept uint8 NHWC (C in 1, 3) or NHW (grayscale)."""
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path}: {what} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{path}: {what} must be uint8 (0..255), got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: {what} must be (N,H,W,C) with C in (1,3) or (N,H,W), got shape {arr.shape}")
    return arr


def _num_classes(labels: np.ndarray) -> int:
    return int(labels.max()) + 1 if labels.size else 1


# ----------------------------------------------------------------------------------------------
# Spatial helpers shared with ``datasets.to_tensor``


def resize_cover_crop(image: np.ndarray, size: int) -> np.ndarray:
    """ADM's center crop: BOX-halve while the short side is >= 2*size, BICUBIC so the short side is
    ``size``, then crop the center. ``image`` and result are uint8 (H, W, C)."""
    from PIL import Image

    gray = image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if gray else image)
    while min(pil.size) >= 2 * size:
        pil = pil.resize(tuple(s // 2 for s in pil.size), resample=Image.BOX)
    scale = size / min(pil.size)
    pil = pil.resize(tuple(max(size, round(s * scale)) for s in pil.size), resample=Image.BICUBIC)
    arr = np.asarray(pil)
    if gray:
        arr = arr[..., None]
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


# ----------------------------------------------------------------------------------------------
# ADM image folder

_FOLDER_LAYOUT = (
    "a folder of images ({exts}) at any depth, named '<class>_<anything>.<ext>' (ADM), "
    "or with one sub-folder per class (class_from='dir')"
)


def list_image_files(root: str) -> List[str]:
    """All image files below ``root`` (recursive, sorted)."""
    if not bf.exists(root) or not bf.isdir(root):
        raise missing_file(root, _FOLDER_LAYOUT.format(exts=", ".join(IMAGE_EXTENSIONS)))
    out = []
    for dirpath, _dirnames, filenames in bf.walk(root):
        for name in filenames:
            if "." in name and name.rsplit(".", 1)[1].lower() in IMAGE_EXTENSIONS:
                out.append(bf.join(dirpath, name))
    out.sort()
    if not out:
        raise missing_file(bf.join(root, "*.png"), _FOLDER_LAYOUT.format(exts=", ".join(IMAGE_EXTENSIONS)))
    return out


def _relpath(path: str, root: str) -> str:
    root = root.rstrip("/")
    return path[len(root) + 1 :] if path.startswith(root + "/") else bf.basename(path)


def _class_of(path: str, root: str, class_from: str) -> str:
    if class_from == "prefix":
        base = bf.basename(path)
        if "_" not in base:
            raise ValueError(
                f"{path}: class_from='prefix' needs file names '<class>_<anything>.<ext>'; "
                f"use class_from='dir' for class sub-folders or 'none' for unconditional images"
            )
        return base.split("_", 1)[0]
    if class_from == "dir":
        rel = _relpath(path, root)
        if "/" not in rel:
            raise ValueError(f"{path}: class_from='dir' needs every image inside a class sub-folder of {root}")
        return rel.split("/", 1)[0]
    return ""


def _resolve_class_from(paths: List[str], root: str, class_from: str) -> str:
    if class_from not in ("auto", "prefix", "dir", "none"):
        raise ValueError(f"class_from must be auto, prefix, dir or none, got {class_from!r}")
    if class_from != "auto":
        return class_from
    if all("_" in bf.basename(p) for p in paths):
        return "prefix"
    if all("/" in _relpath(p, root) for p in paths):
        return "dir"
    return "none"


def image_folder_classes(root: str, class_from: str = "auto") -> List[str]:
    """The sorted class names of an image folder (reads only the listing)."""
    paths = list_image_files(root)
    mode = _resolve_class_from(paths, root, class_from)
    if mode == "none":
        return ["0"]
    return sorted({_class_of(p, root, mode) for p in paths})


def _decode_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with bf.BlobFile(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: cannot decode image ({e})") from None
    if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return np.asarray(img.convert("L"))[..., None]
    return np.asarray(img.convert("RGB"))


def read_image_folder(
    root: str,
    class_from: str = "auto",
    class_names: Optional[Sequence[str]] = None,
    image_size: Optional[int] = None,
) -> ImageArrays:
    """Decode every image below ``root`` into memory.

    class_from: ``prefix`` (ADM: the file name before its first ``_``), ``dir`` (the first-level
    sub-folder), ``none`` (one class) or ``auto`` (prefix if every file name has a ``_``, else dir if
    every file is in a sub-folder, else none). Classes are sorted names mapped to 0..K-1, or the
    order of ``class_names`` when given (to label a test folder like its training folder).
    Images keep their size unless ``image_size`` is given (then ADM's resize + center crop); all
    must then share one size. They are RGB unless every file is grayscale.
    """
    paths = list_image_files(root)
    mode = _resolve_class_from(paths, root, class_from)
    names = [_class_of(p, root, mode) if mode != "none" else "0" for p in paths]
    classes = list(class_names) if class_names is not None else sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise ValueError(f"{root}: classes {unknown[:5]} are not among the {len(classes)} known classes")
    labels = np.array([index[n] for n in names], dtype=np.int64)
    images = []
    for p in _progress(paths, desc=f"reading {root}"):
        arr = _decode_image(p)
        if image_size:
            arr = resize_cover_crop(arr, int(image_size))
        images.append(arr)
    if any(a.shape[-1] == 3 for a in images):
        images = [np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a for a in images]
    sizes = {a.shape[:2] for a in images}
    if len(sizes) > 1:
        raise ValueError(
            f"{root}: images have different sizes {sorted(sizes)[:4]}; pass image_size to resize them on load"
        )
    return ImageArrays(np.stack(images), labels, len(classes), classes)


# ----------------------------------------------------------------------------------------------
# ADM npz

_NPZ_LAYOUT = "an .npz with 'arr_0' uint8 (N,H,W,C) or (N,H,W) images and optional 'arr_1' int labels"


def _open_npz(path: str, allow_pickle: bool = False):
    """Load every array of an npz into a dict (closing the file)."""
    if not bf.exists(path) or bf.isdir(path):
        raise missing_file(path, _NPZ_LAYOUT)
    try:
        with bf.BlobFile(path, "rb") as f:
            with np.load(f, allow_pickle=allow_pickle) as z:
                if not isinstance(z, np.lib.npyio.NpzFile):
                    raise ValueError("not an npz archive (a bare .npy?)")
                return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, pickle.UnpicklingError, ValueError) as e:
        msg = str(e)
        if "allow_pickle" in msg:
            raise ValueError(f"{path}: holds pickled objects; this reader loads plain arrays only ({msg})") from None
        raise ValueError(f"{path}: corrupt or truncated npz ({msg})") from None


def read_npz(path: str) -> ImageArrays:
    """ADM's sample/reference format: ``arr_0`` uint8 NHWC (or NHW), optional ``arr_1`` labels
    (missing: every label 0, one class). Pickled objects are never loaded."""
    z = _open_npz(path)
    if "arr_0" not in z:
        raise ValueError(f"{path}: no 'arr_0' array (found {sorted(z)}); expected {_NPZ_LAYOUT}")
    images = _images_nhwc(z["arr_0"], path, "arr_0")
    if "arr_1" in z:
        labels = labels_1d(z["arr_1"], images.shape[0], path, "arr_1")
    else:
        labels = np.zeros(images.shape[0], np.int64)
    return ImageArrays(images, labels, _num_classes(labels))


def npz_num_classes(path: str) -> int:
    """Classes of an ADM npz (max label + 1; 1 without labels), reading only ``arr_1``."""
    if not bf.exists(path) or bf.isdir(path):
        raise missing_file(path, _NPZ_LAYOUT)
    try:
        with bf.BlobFile(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            labels = z["arr_1"] if "arr_1" in z.files else np.zeros(0, np.int64)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: corrupt or truncated npz ({e})") from None
    return _num_classes(labels_1d(labels, labels.shape[0] if labels.ndim else 1, path, "arr_1"))


# ----------------------------------------------------------------------------------------------
# Continual-Diffusers task dicts

_TASK_LAYOUT = (
    "an .npz task dict {task_id: {'images': uint8 NHWC, 'labels': ints}}: either the safe flat layout "
    "'task<k>_images' / 'task<k>_labels', or pickled objects (Continual-Diffusers' 'data_structure' key, "
    "or one object per task id)"
)


def write_task_dict(path: str, tasks: Dict[int, Dict[str, np.ndarray]]) -> None:
    """Write ``{task_id: {'images', 'labels'?}}`` in the safe flat layout (no pickles)."""
    arrays = {}
    for k, d in tasks.items():
        arrays[f"task{int(k)}_images"] = np.asarray(d["images"])
        if d.get("labels") is not None:
            arrays[f"task{int(k)}_labels"] = np.asarray(d["labels"])
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with bf.BlobFile(path, "wb") as f:
        f.write(buf.getvalue())


def _flat_tasks(z: Dict[str, np.ndarray], path: str) -> Optional[Dict[int, dict]]:
    pat = re.compile(r"task(\d+)_(images|labels)")
    matched = {k: pat.fullmatch(k) for k in z}
    if not any(matched.values()):
        return None
    extra = sorted(k for k, m in matched.items() if not m)
    if extra:
        raise ValueError(f"{path}: unexpected keys {extra} in a flat task dict (only task<k>_images/_labels)")
    tasks: Dict[int, dict] = {}
    for k, m in matched.items():
        tasks.setdefault(int(m.group(1)), {})[m.group(2)] = z[k]
    for t, d in tasks.items():
        if "images" not in d:
            raise ValueError(f"{path}: task{t}_labels without task{t}_images")
    return tasks


def _unpickled_tasks(z: Dict[str, np.ndarray], path: str) -> dict:
    def unwrap(v):
        if isinstance(v, np.ndarray) and v.ndim == 0:
            v = v.item()
        if isinstance(v, (bytes, np.bytes_)):
            v = pickle.loads(bytes(v))  # allowed only after the caller's allow_pickle opt-in
        return v

    if "data_structure" in z:  # Continual-Diffusers: np.savez(p, data_structure=pickle.dumps(d))
        tasks = unwrap(z["data_structure"])
    elif all(k.isdigit() for k in z):  # np.savez(p, **{str(k): {...}})
        tasks = {int(k): unwrap(v) for k, v in z.items()}
    elif len(z) == 1:  # np.savez(p, d) or np.savez(p, data=d)
        tasks = unwrap(next(iter(z.values())))
    else:
        raise ValueError(f"{path}: cannot find the task dict among keys {sorted(z)}; expected {_TASK_LAYOUT}")
    if not isinstance(tasks, dict):
        raise ValueError(f"{path}: expected a dict of tasks, got {type(tasks).__name__}")
    return tasks


def read_task_dict(path: str, allow_pickle: bool = False, class_names: Optional[Sequence[str]] = None) -> ImageArrays:
    """The union of every task of a Continual-Diffusers task dict, with per-sample ``task_ids``.

    Task ids are the dict's keys (1-based in Continual-Diffusers) in increasing order; labels are
    global class ids (squeezed, like Continual-Diffusers). A file where no task has labels is one
    unconditional class. Text labels are classes: their sorted distinct texts, or, with
    ``class_names`` (a test file read against its training file's texts), the index of each text
    among those (a text not among them is an error); integer labels ignore ``class_names``. Pickled layouts can execute arbitrary code when loaded, so they are read
    only with ``allow_pickle=True`` (config ``data.allow_pickle: true``) for files you trust;
    ``write_task_dict`` converts them to the safe flat layout.
    """
    if not bf.exists(path) or bf.isdir(path):
        raise missing_file(path, _TASK_LAYOUT)
    z = _open_npz_any(path, allow_pickle=False)
    tasks = None if z is None else _flat_tasks(z, path)
    if tasks is None:
        if not allow_pickle:
            raise ValueError(
                f"{path}: this task dict stores pickled Python objects, and unpickling can execute "
                f"arbitrary code. If you trust the file, pass allow_pickle=True (config: "
                f"data.allow_pickle=true), or convert it once with write_task_dict() to the safe flat "
                f"layout 'task<k>_images'/'task<k>_labels'"
            )
        z = _open_npz_any(path, allow_pickle=True)
        try:
            tasks = _unpickled_tasks(z, path)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as e:
            raise ValueError(f"{path}: cannot unpickle the task dict ({e})") from None
    if not tasks:
        raise ValueError(f"{path}: the task dict is empty")
    names = _text_label_names(tasks, path)
    if names and class_names is not None:
        unknown = sorted(set(names) - {str(n) for n in class_names})
        if unknown:
            raise ValueError(f"{path}: text labels {unknown[:5]} are not classes of the training file "
                             f"({len(class_names)} texts); a test file's texts must all occur in the training file")
        names = [str(n) for n in class_names]
    ids, parts, has_labels = [], [], []
    for key in sorted(tasks, key=lambda k: int(k)):
        d = tasks[key]
        if not isinstance(d, dict) or "images" not in d:
            raise ValueError(f"{path}: task {key} must be a dict with 'images' (and optional 'labels')")
        images = _images_nhwc(np.asarray(d["images"]), path, f"task {key} images")
        lab = d.get("labels")
        has = lab is not None and np.asarray(lab).size > 0
        if has and names:  # text labels: the class id is the text's rank among the file's texts
            lab = np.asarray([names.index(str(t)) for t in np.asarray(lab).reshape(-1)], np.int64)
        labels = labels_1d(lab, images.shape[0], path, f"task {key} labels") if has else None
        ids.append(int(key))
        parts.append((images, labels))
        has_labels.append(has)
    if any(has_labels) and not all(has_labels):
        missing = [t for t, h in zip(ids, has_labels) if not h]
        raise ValueError(f"{path}: tasks {missing} have no labels while others do; give every task labels or none")
    shapes = {p[0].shape[1:] for p in parts}
    if len(shapes) > 1:
        raise ValueError(f"{path}: tasks have different image shapes {sorted(shapes)}")
    images = np.concatenate([p[0] for p in parts])
    if all(has_labels):
        labels = np.concatenate([p[1] for p in parts])
    else:
        labels = np.zeros(images.shape[0], np.int64)
    task_ids = np.concatenate([np.full(p[0].shape[0], t, np.int64) for t, p in zip(ids, parts)])
    if names:  # every text is a class (its prompt), whether or not this split holds it
        return ImageArrays(images, labels, len(names), class_names=names, task_ids=task_ids)
    return ImageArrays(images, labels, _num_classes(labels), task_ids=task_ids)


def _text_label_names(tasks: dict, path: str) -> List[str]:
    """The sorted distinct texts when a task dict's labels are strings (Continual-Diffusers' text
    conditioning: each text is a prompt, and a class); [] for integer labels."""
    texts = []
    for key, d in tasks.items():
        lab = d.get("labels") if isinstance(d, dict) else None
        arr = np.asarray(lab) if lab is not None else np.zeros(0)
        if arr.size and (arr.dtype.kind in "US" or (arr.dtype.kind == "O" and isinstance(arr.reshape(-1)[0], str))):
            texts.append([str(t) for t in arr.reshape(-1)])
        elif arr.size and texts:
            raise ValueError(f"{path}: task {key} has integer labels while others have text labels")
    if texts and len(texts) != sum(1 for d in tasks.values() if isinstance(d, dict) and d.get("labels") is not None
                                   and np.asarray(d["labels"]).size):
        raise ValueError(f"{path}: some tasks have text labels and others integer labels; give one kind")
    return sorted({t for ts in texts for t in ts})


def _open_npz_any(path: str, allow_pickle: bool):
    """Like ``_open_npz`` but returns None when (only) pickled objects block loading."""
    try:
        return _open_npz(path, allow_pickle=allow_pickle)
    except ValueError as e:
        if not allow_pickle and "pickled objects" in str(e):
            return None
        raise
