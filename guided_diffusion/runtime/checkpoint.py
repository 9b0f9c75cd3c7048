"""Checkpoint files: atomic writes, a manifest written last, and discovery of the latest complete one.

A checkpoint at step N is a set of files in one run folder, with ADM's names where ADM has them:

    model{N:06d}.pt          model state_dict (torch.save, tensors only)
    ema_{rate}_{N:06d}.pt    EMA state_dict per rate
    opt{N:06d}.pt            optimizer (and grad scaler) state
    state{N:06d}.pt          loop state: step, data position, schedule-sampler history, extras
    checkpoint{N:06d}.json   the manifest: file names, sizes and sha256 -- written LAST

Every file is written to a temporary name and renamed into place, so a killed writer leaves either
the old file or the new one, never half a file. A checkpoint counts as complete only when its
manifest exists and every file it lists has the recorded size (and hash, when verified). Loading
uses ``torch.load(weights_only=True)``: no file can execute code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import blobfile as bf
import torch

from . import faults

MANIFEST_RE = re.compile(r"^checkpoint(\d{6,})\.json$")
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or incompatible; the message names it."""


class CheckpointFormatError(CheckpointError):
    """A checkpoint written in another format version: never skipped silently (that would restart the run)."""


def _is_local(path: str) -> bool:
    return "://" not in path


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    if _is_local(path):
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            faults.point("atomic_write")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    else:  # object stores publish a blob only once its upload completes
        with bf.BlobFile(path, "wb") as f:
            f.write(data)


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes (read in blocks): what pins a teacher or an evaluation classifier."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def atomic_torch_save(obj: Any, path: str) -> Dict[str, Any]:
    """torch.save ``obj`` atomically; return the manifest entry (size, sha256)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def atomic_write_text(path: str, text: str) -> Dict[str, Any]:
    data = text.encode()
    atomic_write_bytes(path, data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_bytes(path: str) -> bytes:
    if not bf.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    with bf.BlobFile(path, "rb") as f:
        return f.read()


def load_torch(path: str, map_location="cpu", data: Optional[bytes] = None) -> Any:
    """Load a file written by torch.save with ``weights_only=True``; errors name the file."""
    if data is None:
        data = read_bytes(path)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, wrong format (UnicodeDecodeError, ...)
        if data[:2] != b"PK" and data[:1] != b"\x80":  # neither torch.save's zip nor its legacy pickle
            raise CheckpointError(f"cannot read checkpoint file {path}: not a file written by torch.save "
                                  f"({len(data)} bytes of another format)") from None
        first = (str(e).strip().splitlines() or [""])[0][:300]  # torch's own text runs over several lines
        raise CheckpointError(f"cannot read checkpoint file {path}: {type(e).__name__}: {first}") from None


def load_state_dict_file(path: str, map_location="cpu") -> Dict[str, torch.Tensor]:
    """Read model weights from ``.pt`` (a state_dict, or a dict holding one) or ``.safetensors``."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load as st_load

        try:
            sd = st_load(read_bytes(path))
        except FileNotFoundError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read safetensors file {path}: {e}") from None
        return {k: v.to(map_location) for k, v in sd.items()}
    obj = load_torch(path, map_location)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    return obj


def unet_shapes(sd: Dict[str, torch.Tensor], prefix: str = "") -> Tuple[Optional[int], Optional[int], int]:
    """(input channels, output channels, label rows) of an ADM UNet state_dict (keys under ``prefix``);
    None for a channel count the weights do not hold, 0 rows without a label embedding."""
    first, out, emb = (sd.get(prefix + k) for k in ("input_blocks.0.0.weight", "out.2.weight", "label_emb.weight"))
    c_in = int(first.shape[1]) if first is not None and first.dim() == 4 else None
    c_out = int(out.shape[0]) if out is not None else None
    return c_in, c_out, int(emb.shape[0]) if emb is not None else 0


def load_weights(module: torch.nn.Module, path: str, what: str = "model") -> None:
    """Strictly load weights from ``path`` into ``module``; mismatches give one message naming them."""
    load_checked(module, load_state_dict_file(path), path, what)


def load_checked(module: torch.nn.Module, sd: Dict[str, torch.Tensor], path: str, what: str = "model") -> None:
    """``module.load_state_dict(sd, strict=True)``, but a missing or unexpected key or a wrong shape
    (another model config, channel count, ...) raises one ``CheckpointError`` naming ``path``."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs {what} {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {'; '.join(shapes[:3])}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
        raise CheckpointError(
            f"{path} does not fit the configured {what}: {'; '.join(parts)}. "
            "Check that the config's model options match the ones the checkpoint was trained with."
        )
    module.load_state_dict(sd, strict=True)


def save_safetensors(state_dict: Dict[str, torch.Tensor], path: str, metadata: Dict[str, Any]) -> None:
    """Inference weights as safetensors plus a JSON config beside them (``.json``)."""
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write_bytes(path, st_save(tensors, metadata={"format": "pt"}))
    atomic_write_text(os.path.splitext(path)[0] + ".json", json.dumps(metadata, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------------------------
# Checkpoint sets


def manifest_path(run_dir: str, step: int) -> str:
    return bf.join(run_dir, f"checkpoint{step:06d}.json")


def write_checkpoint(run_dir: str, step: int, files: Dict[str, Any], extra: Optional[dict] = None) -> str:
    """Write each ``name -> object`` with torch.save, then the manifest (last). Returns its path."""
    entries = {}
    for name, obj in files.items():
        entries[name] = atomic_torch_save(obj, bf.join(run_dir, name))
    faults.point("checkpoint_write")
    manifest = {"format_version": FORMAT_VERSION, "step": step, "files": entries, **(extra or {})}
    path = manifest_path(run_dir, step)
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True))
    return path


def list_manifests(run_dir: str) -> List[int]:
    if not bf.exists(run_dir):
        return []
    steps = []
    for name in bf.listdir(run_dir):
        m = MANIFEST_RE.match(name)
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps)


def read_manifest(run_dir: str, step: int) -> dict:
    path = manifest_path(run_dir, step)
    try:
        manifest = json.loads(read_bytes(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt manifest {path}: {e}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{path} has checkpoint format {manifest.get('format_version')!r}; this version reads "
            f"format {FORMAT_VERSION}: resume it with the version of the project that wrote it, or start a "
            "new run (another name or out_dir)"
        )
    return manifest


def verify_checkpoint(run_dir: str, step: int, check_hash: bool = True) -> Optional[str]:
    """None if the checkpoint is complete and intact, else the reason (naming the file)."""
    try:
        manifest = read_manifest(run_dir, step)
    except CheckpointFormatError:
        raise
    except (CheckpointError, FileNotFoundError) as e:
        return str(e)
    for name, entry in manifest["files"].items():
        reason = verify_file(bf.join(run_dir, name), entry, check_hash)
        if reason is not None:
            return reason
    return None


def verify_file(path: str, entry: Dict[str, Any], check_hash: bool = True) -> Optional[str]:
    """None if ``path`` has the size (and sha256) of its manifest ``entry``, else the reason."""
    if not bf.exists(path):
        return f"{path} is missing"
    size = bf.stat(path).size
    if size != entry["size"]:
        return f"{path} has {size} bytes, the manifest says {entry['size']} (truncated?)"
    if check_hash and hashlib.sha256(read_bytes(path)).hexdigest() != entry["sha256"]:
        return f"{path} does not match its sha256 in the manifest (corrupt)"
    return None


def latest_checkpoint(run_dir: str, log=None) -> Optional[int]:
    """The step of the newest complete, intact checkpoint in ``run_dir`` (None if there is none).

    A newer checkpoint that is incomplete or corrupt is reported through ``log`` and skipped, so
    that the previous good one is used. One of another format version raises ``CheckpointFormatError``.
    """
    for step in reversed(list_manifests(run_dir)):
        reason = verify_checkpoint(run_dir, step)
        if reason is None:
            return step
        if log is not None:
            log(f"skipping checkpoint at step {step}: {reason}")
    return None


def load_checkpoint_files(run_dir: str, step: int, map_location="cpu") -> Dict[str, Any]:
    manifest = read_manifest(run_dir, step)
    return {name: load_torch(bf.join(run_dir, name), map_location) for name in manifest["files"]}


def prune_checkpoints(run_dir: str, keep: int, protect: tuple = ()) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (manifest first, then its files)."""
    if keep <= 0:
        return
    steps = [s for s in list_manifests(run_dir) if s not in protect]
    for step in steps[:-keep]:
        try:
            manifest = read_manifest(run_dir, step)
        except (CheckpointError, FileNotFoundError):
            continue
        bf.remove(manifest_path(run_dir, step))
        for name in manifest["files"]:
            path = bf.join(run_dir, name)
            if bf.exists(path):
                bf.remove(path)


def folder_stamp(folder: str) -> List[Tuple[str, int, float]]:
    """(name, size, modification time) of the weight files in ``folder``: what a cache of what they
    compute is keyed by, so that new weights in the same place are not mistaken for the old."""
    names = sorted(f for f in os.listdir(folder) if f.endswith((".safetensors", ".bin")))
    return [(f, os.path.getsize(os.path.join(folder, f)), os.path.getmtime(os.path.join(folder, f))) for f in names]


def cached_torch(directory: str, key: Any, make: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """The dict cached in ``directory`` under ``key`` (JSON-able: a hash names the file), or ``make()``
    saved there atomically; a damaged cache file is made again."""
    path = os.path.join(directory, hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24] + ".pt")
    if os.path.exists(path):
        try:
            return load_torch(path)
        except CheckpointError:
            pass
    out = make()
    os.makedirs(directory, exist_ok=True)
    atomic_torch_save(out, path)
    return out
