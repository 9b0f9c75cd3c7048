"""The DKDM cache on disk: safetensors shards in one global order, and a JSON header written last.

    <cache_dir>/
        shard_000000.safetensors   entries [0, S): x float32 [n,C,H,W], t int64 [n], y int64 [n] (if labelled)
        shard_000001.safetensors   entries [S, 2S) ...
        cache.json                 the header: the preparation's identity (``key``: teacher path and
                                   sha256, image shape, T, mode, rho, global batch, seed, ...), the
                                   world size that prepared it, the step, and each shard's range,
                                   size and sha256

An entry is a state of one teacher trajectory: ``x`` is x_t of the T-step ancestral chain and ``t``
the number of teacher steps still to apply (T: pure noise, whose next step calls the network at
index T-1; 0: a finished sample). ``y`` is its class label.

The order of entries does not depend on the number of ranks: rank r of W uses the contiguous
slice ``rank_slice(N, r, W)`` and reads only the shards that overlap it, so a cache prepared with
one world size is read by any other that divides N. Nothing here unpickles: shards are
safetensors, the header is JSON, and every shard read is checked against its sha256. Every file is
written atomically (temporary name, then rename), so a killed writer leaves whole shards only; a
cache is complete once ``cache.json`` exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..runtime.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    read_bytes,
)

FORMAT = "guided-diffusion-cl/dkdm-cache"
VERSION = 1
HEADER = "cache.json"


class CacheError(CheckpointError):
    """A cache that is missing, incomplete, corrupt or made for another setting; the message says which."""


def shard_name(index: int) -> str:
    return f"shard_{index:06d}.safetensors"


def shard_ranges(n_total: int, shard_size: int) -> List[Tuple[int, int]]:
    """[start, stop) of every shard: consecutive blocks of ``shard_size`` entries (the last may be short)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [(s, min(s + shard_size, n_total)) for s in range(0, n_total, shard_size)]


def rank_slice(n_total: int, rank: int, world_size: int) -> Tuple[int, int]:
    """The contiguous entries [lo, hi) that rank ``rank`` of ``world_size`` uses."""
    if n_total % world_size:
        raise CacheError(
            f"a cache of {n_total} entries cannot be split over {world_size} ranks; use a world size that divides it"
        )
    n = n_total // world_size
    return rank * n, (rank + 1) * n


def key_digest(key: Dict[str, Any]) -> str:
    """A short hash of a preparation's identity (stored in every shard to recognise leftovers)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------------------------
# Shards


def write_shard(cache_dir: str, index: int, start: int, x: torch.Tensor, t: torch.Tensor,
                y: Optional[torch.Tensor], key: Dict[str, Any]) -> None:
    """Write shard ``index`` (entries ``start``..) atomically; its metadata names the preparation."""
    from safetensors.torch import save as st_save

    tensors = {"x": x.detach().to("cpu", torch.float32).contiguous(),
               "t": t.detach().to("cpu", torch.int64).contiguous()}
    if y is not None:
        tensors["y"] = y.detach().to("cpu", torch.int64).contiguous()
    meta = {"format": FORMAT, "version": VERSION, "key": key_digest(key), "start": int(start), "count": int(t.shape[0])}
    # One metadata entry: safetensors orders several in hash-map order, and shards should be byte-identical.
    blob = st_save(tensors, metadata={"dkdm": json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(os.path.join(cache_dir, shard_name(index)), blob)


def shard_metadata(path: str) -> Optional[Dict[str, Any]]:
    """A shard's own metadata, read from its safetensors header alone; None if unreadable."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return None
            header = json.loads(f.read(n))
        return json.loads((header.get("__metadata__") or {})["dkdm"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _whole_size(path: str) -> Optional[int]:
    """The size a complete safetensors file must have, from its own header; None if unreadable."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n)) if n <= 100_000_000 else None
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, struct.error):
        return None


def shard_is_done(cache_dir: str, index: int, start: int, count: int, key: Dict[str, Any]) -> bool:
    """True if shard ``index`` exists whole and was written by this same preparation (resume)."""
    path = os.path.join(cache_dir, shard_name(index))
    meta = shard_metadata(path)
    if meta is None or _whole_size(path) != os.path.getsize(path):  # a truncated shard is prepared again
        return False
    if meta.get("key") != key_digest(key):
        raise CacheError(
            f"{os.path.join(cache_dir, shard_name(index))} belongs to another preparation (different "
            "teacher, seed or settings); remove the folder or choose another cache_dir"
        )
    return meta.get("start") == start and meta.get("count") == count


def _sha256_file(path: str) -> Tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


# ----------------------------------------------------------------------------------------------
# Header


def write_header(cache_dir: str, key: Dict[str, Any], ranges: Sequence[Tuple[int, int]], **extra) -> Dict[str, Any]:
    """Hash every shard and write ``cache.json`` (last: it marks the cache complete)."""
    shards = []
    for i, (start, stop) in enumerate(ranges):
        path = os.path.join(cache_dir, shard_name(i))
        if not os.path.exists(path):
            raise CacheError(f"cannot finish the cache in {cache_dir}: {shard_name(i)} is missing")
        sha, size = _sha256_file(path)
        shards.append({"file": shard_name(i), "start": start, "count": stop - start, "size": size, "sha256": sha})
    header = {"format": FORMAT, "version": VERSION, "key": key, "n_total": ranges[-1][1] if ranges else 0,
              **extra, "shards": shards}
    atomic_write_text(os.path.join(cache_dir, HEADER), json.dumps(header, indent=2, sort_keys=True))
    return header


def read_header(cache_dir: str) -> Optional[Dict[str, Any]]:
    """The header of a complete cache, or None if ``cache_dir`` holds none (yet)."""
    path = os.path.join(cache_dir, HEADER)
    if not os.path.exists(path):
        return None
    try:
        header = json.loads(read_bytes(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise CacheError(f"corrupt cache header {path}: {e}") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise CacheError(f"{path} is not a version-{VERSION} DKDM cache header")
    return header


def damaged_shards(cache_dir: str, header: Dict[str, Any]) -> Dict[str, str]:
    """The shards of a complete cache whose size or sha256 differ from the header's: file -> reason."""
    out = {}
    for shard in header["shards"]:
        path = os.path.join(cache_dir, shard["file"])
        if not os.path.exists(path):
            out[shard["file"]] = f"{path} is missing"
        elif _sha256_file(path) != (shard["sha256"], shard["size"]):
            out[shard["file"]] = f"{path} does not match the size/sha256 in {HEADER} (truncated or corrupt)"
    return out


def check_key(header: Dict[str, Any], key: Dict[str, Any], cache_dir: str) -> None:
    """Raise CacheError naming every field where the cache differs from what is configured."""
    have = header.get("key", {})
    diff = [f"{k}: cache {have.get(k)!r} vs configured {key.get(k)!r}"
            for k in sorted(set(have) | set(key)) if have.get(k) != key.get(k)]
    if diff:
        raise CacheError(
            f"the cache in {cache_dir} was prepared for another setting ({'; '.join(diff[:4])}); "
            "prepare it again in another cache_dir (or remove this one)"
        )


def read_entries(cache_dir: str, start: int, stop: int, header: Optional[Dict[str, Any]] = None,
                 verify: bool = True) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Entries [start, stop) in global order: (x, t, y or None), reading only the overlapping shards."""
    from safetensors.torch import load as st_load

    header = header or read_header(cache_dir)
    if header is None:
        raise CacheError(f"no complete DKDM cache in {cache_dir} (run scripts/dynamic_prepare.py)")
    if not 0 <= start <= stop <= header["n_total"]:
        raise CacheError(f"entries [{start}, {stop}) are outside the cache of {header['n_total']} in {cache_dir}")
    xs, ts, ys = [], [], []
    for shard in header["shards"]:
        s0, s1 = shard["start"], shard["start"] + shard["count"]
        if s1 <= start or s0 >= stop:
            continue
        path = os.path.join(cache_dir, shard["file"])
        data = read_bytes(path)
        if len(data) != shard["size"] or (verify and hashlib.sha256(data).hexdigest() != shard["sha256"]):
            raise CacheError(f"{path} does not match the size/sha256 in {HEADER} (truncated or corrupt)")
        tensors = st_load(data)
        a, b = max(start, s0) - s0, min(stop, s1) - s0
        xs.append(tensors["x"][a:b])
        ts.append(tensors["t"][a:b])
        if "y" in tensors:
            ys.append(tensors["y"][a:b])
    if not ts:
        raise CacheError(f"no shard of {cache_dir} covers entries [{start}, {stop})")
    y = torch.cat(ys) if ys else None
    return torch.cat(xs), torch.cat(ts), y
