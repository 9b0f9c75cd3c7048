"""Fault class: damaged files. A truncated or corrupt checkpoint, method state, DKDM cache shard or
npz data set is detected (sizes and sha256 in a manifest written last), reported by name, and the
previous good file used (or the damaged one made again); a checkpoint of another format version
fails with a clear message; no file can execute code when loaded (``weights_only=True``,
safetensors, ``allow_pickle=False``). (Unit level: tests/test_checkpoint.py.)
"""

import json
import os
import pickle
import shutil
import types

import numpy as np
import pytest
import torch
from test_reliability_inputs import one_error, run_script, snapshot, write_npz
from test_reliability_signals import SHAPE, Toy, shared_work
from tools import fault_matrix as fm

from guided_diffusion.continual import loop
from guided_diffusion.data import load_dataset
from guided_diffusion.dkdm.format import read_entries, read_header, shard_name
from guided_diffusion.dkdm.prepare import CacheSpec, prepare_cache
from guided_diffusion.runtime import dist_util
from guided_diffusion.runtime import checkpoint as ckpt
from guided_diffusion.script_util import create_gaussian_diffusion

CASE = fm.CASES["gd"]


@pytest.fixture(scope="module")
def gd_reference(tmp_path_factory):
    return fm.reference(CASE, shared_work(tmp_path_factory), "1")  # made once per session (the kill tests share it)


def copy_run(ref, tmp_path):
    """A copy of the finished reference run in ``tmp_path/out``; returns (out_dir, run_dir)."""
    out_dir = str(tmp_path / "out")
    shutil.copytree(ref, os.path.join(out_dir, CASE.name))
    return out_dir, os.path.join(out_dir, CASE.name)


def rerun_here(out_dir, *extra):
    """The case's command again, in this process (for runs that stop before any training)."""
    script, *args = CASE.args(out_dir)
    return run_script(os.path.basename(script), *args, *extra)


def flip_byte(path, offset=-20):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0xFF
    open(path, "wb").write(bytes(data))


def truncate(path, keep=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


class Opens:
    """Unpickling this object would create ``path`` (the way a malicious pickle runs code)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---------------------------------------------------------------------------------------------- a continual run


def test_task_damage_names_what_is_wrong(gd_reference, tmp_path):
    _, run = copy_run(gd_reference, tmp_path)
    ctx = types.SimpleNamespace(task_dir=lambda task: f"{run}/task_{task.index}")
    task = types.SimpleNamespace(index=2, num_steps=4)
    assert loop._task_damage(ctx, task) is None
    flip_byte(f"{run}/task_2/method_state.pt")
    assert "method_state.pt does not match its sha256" in loop._task_damage(ctx, task)
    truncate(f"{run}/task_2/ema_0.9_000004.pt")
    reason = loop._task_damage(ctx, task)
    assert "final checkpoint (step 4) is not intact" in reason and "ema_0.9_000004.pt has" in reason
    open(f"{run}/task_2/task_done.json", "w").write('{"task": 2,')
    assert "task_done.json is corrupt" in loop._task_damage(ctx, task)


def test_damaged_final_checkpoint_and_method_state_are_redone_identically(gd_reference, tmp_path):
    """The last task's final optimizer file truncated and its method state corrupt: the rerun names
    the file, redoes the task from its previous intact checkpoint (step 2) and ends bit-identical."""
    out_dir, run = copy_run(gd_reference, tmp_path)
    truncate(f"{run}/task_2/opt000004.pt")
    flip_byte(f"{run}/task_2/method_state.pt")
    p = fm.launch(CASE, out_dir)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (f"task 2 is marked done but its final checkpoint (step 4) is not intact: {run}/task_2/opt000004.pt has "
            in p.stdout), p.stdout[-3000:]
    assert "skipping checkpoint at step 4" in p.stdout and "task 2: resumed from step 2" in p.stdout
    assert fm.compare_runs(gd_reference, run) == []


def test_checkpoint_of_another_format_version_fails_clearly(gd_reference, tmp_path):
    out_dir, run = copy_run(gd_reference, tmp_path)
    path = f"{run}/task_2/checkpoint000004.json"
    manifest = json.load(open(path))
    manifest["format_version"] = 0
    open(path, "w").write(json.dumps(manifest))
    before = snapshot(run)
    code, _, err = rerun_here(out_dir)
    one_error(code, err, path, "checkpoint format 0; this version reads format 1",
              "resume it with the version of the project that wrote it")
    assert snapshot(run) == before


def test_older_run_without_file_hashes_still_resumes(gd_reference, tmp_path):
    """task_done.json of runs before the method-state hash: read as it is (nothing redone)."""
    out_dir, run = copy_run(gd_reference, tmp_path)
    for k in range(3):
        path = f"{run}/task_{k}/task_done.json"
        done = json.load(open(path))
        del done["files"]
        open(path, "w").write(json.dumps(done))
    before = snapshot(run)
    code, out, err = rerun_here(out_dir)
    assert code == 0 and "tasks 0..2 already finished" in out, err[-3000:]
    after = snapshot(run)
    del before["config.yaml"], after["config.yaml"]  # rewritten: the copy's out_dir is not the reference's
    assert after == before


def test_rerun_with_another_model_fails_before_touching_the_run(gd_reference, tmp_path):
    out_dir, run = copy_run(gd_reference, tmp_path)
    before = snapshot(run)
    code, _, err = rerun_here(out_dir, "model.num_channels=64")  # the run folder's config.yaml differs
    one_error(code, err, f"{run} holds another run: model.num_channels: 32 there, 64 here", "--force")
    code, _, err = rerun_here(out_dir, "model.num_channels=64", "--force")  # forced: the checkpoints refuse it
    one_error(code, err, f"{run}/task_2/model000004.pt does not fit the configured model", "shape mismatch")
    assert snapshot(run) == before  # config.yaml included: it is written only after the input checks


# ---------------------------------------------------------------------------------------------- DKDM cache


def test_damaged_cache_shards_are_prepared_again(tmp_path):
    spec = CacheSpec(24, 20, SHAPE, "dynamic", (0, 1, 2), 3, 7, True, identity={"teacher_sha256": "toy"})
    diffusion = create_gaussian_diffusion(steps=20, noise_schedule="cosine")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prepare_cache(Toy(), diffusion, spec, a, prepare_batch=4, device="cpu")
        shutil.copytree(a, b)
        truncate(os.path.join(b, shard_name(1)))
        flip_byte(os.path.join(b, shard_name(2)))
        messages = []
        log = types.SimpleNamespace(log=messages.append)
        stats = prepare_cache(Toy(), diffusion, spec, b, prepare_batch=4, device="cpu", logger=log)
        assert stats["shards_done"] == 2 and stats["shards_skipped"] == 2 and not stats["complete_before"]
        damage = next(m for m in messages if "preparing 2 shard(s) again" in m)
        assert shard_name(1) in damage and shard_name(2) in damage and "truncated or corrupt" in damage
        # Without a header (a preparation killed before it): a truncated shard is prepared again too.
        os.remove(os.path.join(b, "cache.json"))
        truncate(os.path.join(b, shard_name(3)), keep=0.9)
        stats = prepare_cache(Toy(), diffusion, spec, b, prepare_batch=4, device="cpu")
        assert stats["shards_done"] == 1 and stats["shards_skipped"] == 3
    finally:
        torch.set_num_threads(threads)
    assert read_header(a)["shards"] == read_header(b)["shards"]
    for u, v in zip(read_entries(a, 0, 24), read_entries(b, 0, 24)):
        assert torch.equal(u, v)


# ---------------------------------------------------------------------------------------------- data sets


def test_truncated_or_pickled_npz_dataset_is_named(tmp_path):
    path = write_npz(tmp_path / "data.npz", classes=10)
    truncate(path)
    with pytest.raises(ValueError, match=f"{path}: corrupt or truncated npz"):
        load_dataset("npz", data_dir=path)
    code, _, err = run_script("continual_train.py", "--config", "yaml/mnist/naive.yaml", "data.dataset=npz",
                              f"data.data_dir={path}", f"data.test_dir={path}", f"out_dir={tmp_path}")
    one_error(code, err, path, "corrupt or truncated npz")
    evil = str(tmp_path / "evil.npz")
    marker = tmp_path / "pwned"
    np.savez(evil, arr_0=np.array([Opens(str(marker))], dtype=object))
    with pytest.raises(ValueError, match="holds pickled objects; this reader loads plain arrays only"):
        load_dataset("npz", data_dir=evil)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- no code from files


def test_no_loader_executes_code_from_a_file(tmp_path):
    marker = tmp_path / "pwned"
    evil = str(tmp_path / "evil.pt")
    torch.save({"w": torch.ones(2), "x": Opens(str(marker))}, evil)
    with pytest.raises(ckpt.CheckpointError, match="evil.pt"):
        ckpt.load_torch(evil)
    with pytest.raises(ckpt.CheckpointError, match="evil.pt"):
        ckpt.load_state_dict_file(evil)
    with pytest.raises(RuntimeError, match="evil.pt"):
        dist_util.load_state_dict(evil)
    # A complete checkpoint (valid manifest) whose state file carries code: refused at resume.
    run = str(tmp_path / "run")
    ckpt.write_checkpoint(run, 2, {"model000002.pt": {"w": torch.ones(2)}, "state000002.pt": {"x": Opens(str(marker))}})
    assert ckpt.latest_checkpoint(run) == 2  # intact as far as sizes and hashes go
    with pytest.raises(ckpt.CheckpointError, match="state000002.pt"):
        ckpt.load_checkpoint_files(run, 2)
    # CIFAR python batches are pickles: read with an unpickler that refuses any global.
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (cifar / name).write_bytes(pickle.dumps({b"data": Opens(str(marker))}))
    with pytest.raises(ValueError, match="refusing to load global"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert not marker.exists()


def test_truncated_safetensors_export_is_named(tmp_path):
    net = torch.nn.Linear(3, 2)
    path = str(tmp_path / "ema.safetensors")
    ckpt.save_safetensors(net.state_dict(), path, {"kind": "linear"})
    truncate(path, keep=0.8)
    with pytest.raises(ckpt.CheckpointError, match=f"cannot read safetensors file {path}"):
        ckpt.load_weights(torch.nn.Linear(3, 2), path)

