"""Checkpoints: atomic writes, manifests, corruption detection, strict weight loading."""

import os

import pytest
import torch

from guided_diffusion.runtime import checkpoint as ckpt


def _write(run, step, value=1.0):
    return ckpt.write_checkpoint(str(run), step, {f"model{step:06d}.pt": {"w": torch.full((3,), value)}})


def test_latest_complete_and_round_trip(tmp_path):
    _write(tmp_path, 10, 1.0)
    _write(tmp_path, 20, 2.0)
    assert ckpt.list_manifests(str(tmp_path)) == [10, 20]
    assert ckpt.latest_checkpoint(str(tmp_path)) == 20
    files = ckpt.load_checkpoint_files(str(tmp_path), 20)
    assert torch.equal(files["model000020.pt"]["w"], torch.full((3,), 2.0))


def test_truncated_newest_falls_back_to_previous(tmp_path):
    _write(tmp_path, 10, 1.0)
    _write(tmp_path, 20, 2.0)
    path = tmp_path / "model000020.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    seen = []
    assert ckpt.latest_checkpoint(str(tmp_path), log=seen.append) == 10
    assert "model000020.pt" in seen[0] and "truncated" in seen[0]


def test_corrupt_same_size_detected_by_hash(tmp_path):
    _write(tmp_path, 5)
    path = tmp_path / "model000005.pt"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    reason = ckpt.verify_checkpoint(str(tmp_path), 5)
    assert reason is not None and "sha256" in reason and "model000005.pt" in reason
    assert ckpt.latest_checkpoint(str(tmp_path)) is None


def test_missing_manifest_means_incomplete(tmp_path):
    _write(tmp_path, 5)
    os.remove(tmp_path / "checkpoint000005.json")
    assert ckpt.latest_checkpoint(str(tmp_path)) is None


def test_atomic_write_leaves_no_temp_on_failure(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    target = tmp_path / "x.pt"
    ckpt.atomic_torch_save({"a": torch.ones(1)}, str(target))
    with pytest.raises(Exception):
        ckpt.atomic_torch_save({"a": Boom()}, str(target))
    assert torch.equal(ckpt.load_torch(str(target))["a"], torch.ones(1))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_load_refuses_code_and_names_file(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, str(path))
    with pytest.raises(ckpt.CheckpointError, match="evil.pt"):
        ckpt.load_torch(str(path))


def test_load_weights_strict_messages(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    other = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    path = tmp_path / "w.pt"
    torch.save(other.state_dict(), str(path))
    with pytest.raises(ckpt.CheckpointError, match=r"shape mismatch.*0\.weight"):
        ckpt.load_weights(net, str(path))
    torch.save({"0.weight": torch.zeros(4, 3)}, str(path))
    with pytest.raises(ckpt.CheckpointError, match="missing key"):
        ckpt.load_weights(net, str(path))
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        ckpt.load_weights(net, str(tmp_path / "nothere.pt"))


def test_safetensors_export_round_trip(tmp_path):
    net = torch.nn.Linear(3, 2)
    path = str(tmp_path / "ema.safetensors")
    ckpt.save_safetensors(net.state_dict(), path, {"model": {"kind": "linear"}})
    assert os.path.exists(str(tmp_path / "ema.json"))
    other = torch.nn.Linear(3, 2)
    ckpt.load_weights(other, path)
    assert torch.equal(other.weight, net.weight)


def test_prune_keeps_newest(tmp_path):
    for s in (1, 2, 3, 4):
        _write(tmp_path, s)
    ckpt.prune_checkpoints(str(tmp_path), keep=2)
    assert ckpt.list_manifests(str(tmp_path)) == [3, 4]
    assert not (tmp_path / "model000001.pt").exists()
