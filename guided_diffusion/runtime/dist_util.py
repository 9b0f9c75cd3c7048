"""Launcher-agnostic distribution: torchrun, SLURM ``srun``, ``mpiexec`` or one plain process.

How a process learns its place (``init``), in this order:

1. **torchrun / env://** -- ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``
   are in the environment (torchrun, ``python -m torch.distributed.run``, or set by hand).
2. **SLURM srun** -- ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS``), ``SLURM_LOCALID``;
   the master is the first host of ``SLURM_STEP_NODELIST``/``SLURM_JOB_NODELIST`` (``node[01-03,07]``
   lists are expanded here), the port is ``MASTER_PORT`` or derived from ``SLURM_JOB_ID``.  A batch
   script that runs ``python`` without ``srun`` (no ``SLURM_STEP_ID``) is one plain process, with a
   warning, instead of waiting for ranks that will never come.
3. **mpiexec** -- MPICH/Hydra and Intel MPI (``PMI_RANK``/``PMI_SIZE``, ``MPI_LOCALRANKID``), Open MPI
   (``OMPI_COMM_WORLD_RANK``/``_SIZE``/``_LOCAL_RANK``), MVAPICH (``MV2_COMM_WORLD_*``).  mpi4py is
   imported only here, only to broadcast rank 0's address (127.0.0.1 when every rank is on one host)
   and a free port, and to derive the local rank from the host names when the launcher does not
   export it.  Communication itself goes through torch.distributed (NCCL or gloo), never MPI.
4. Otherwise **one plain process**: no process group; every helper behaves as a world of 1.

Backend: NCCL when CUDA is available, gloo otherwise (or ``backend=``).  Device: ``cuda:{local_rank}``
(never ``rank % 8``); when the launcher gives each process a single visible GPU, ``cuda:0``.

Hangs.  ``timeout_s`` is passed to ``init_process_group``: rendezvous and every gloo collective give
up after it with an error instead of waiting forever for a dead or hung rank; ``barrier`` on gloo is
a ``monitored_barrier`` that names the missing ranks.  With NCCL the timeout is enforced by the NCCL
watchdog (``TORCH_NCCL_ASYNC_ERROR_HANDLING``, on by default in recent torch), which aborts the job.

Checkpoints.  ``load_state_dict`` is *not* collective: every rank reads the file itself, so calling it
from rank 0 only cannot deadlock (the ADM fault behind guided-diffusion #23/#68).

Typical script::

    dist_util.init()
    device = dist_util.dev()
    with dist_util.main_first():      # rank 0 downloads/writes, the others wait, then read
        data = prepare_data()
    ...
    dist_util.cleanup()
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Optional

import torch
import torch.distributed as dist

from .config import register_section_schema

__all__ = [
    "DistConfig", "RankFailure", "describe_failure", "init", "setup_dist", "cleanup", "is_initialized", "launcher",
    "get_rank", "get_world_size", "get_local_rank",
    "is_main", "dev", "backend", "barrier", "broadcast_object", "all_gather_object", "all_reduce_mean",
    "all_gather_tensor", "sync_params", "load_state_dict", "main_first", "rank0_first",
    "expand_nodelist", "detect",
]

# Environment variables that name an MPI rank / world size / local rank, by implementation.
_MPI_RANK = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")
_MPI_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_MPI_LOCAL = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")


@dataclass
class DistConfig:
    """The ``dist`` section of a config (registered below): ``init``'s backend and timeout."""

    backend: str = ""  # "" -> nccl on CUDA, gloo on CPU
    timeout_s: int = 1800  # a dead or hung rank makes the others fail after this long


register_section_schema("dist", None, DistConfig)


class RankFailure(RuntimeError):
    """A collective gave up: another rank died or hangs (raised by ``barrier``; see ``describe_failure``)."""


@dataclass
class Launch:
    """Where this process stands, as read from the environment (``detect``)."""

    kind: str  # "torchrun" | "slurm" | "mpi" | "none"
    rank: int = 0
    world_size: int = 1
    local_rank: Optional[int] = None  # None: to be derived (MPI without a local-rank variable)
    master_addr: Optional[str] = None
    master_port: Optional[int] = None


@dataclass
class _State:
    initialized: bool = False  # init() has run (with or without a process group)
    group: bool = False  # we (or the caller) hold a torch.distributed process group
    kind: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Optional[torch.device] = None
    backend: Optional[str] = None
    timeout_s: float = 1800.0


_STATE = _State()


# ---------------------------------------------------------------------------------------- detection


def _first(env: Mapping[str, str], names: Iterable[str]) -> Optional[str]:
    for n in names:
        v = env.get(n)
        if v not in (None, ""):
            return v
    return None


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None


def expand_nodelist(nodelist: str) -> List[str]:
    """Expand a SLURM host list: ``"node[01-03,07],gpu5"`` -> node01 node02 node03 node07 gpu5.

    Handles zero padding and several bracket groups in one name (``rack[1-2]-n[1-2]``).
    """
    # Split at the commas that are outside brackets.
    parts, depth, cur = [], 0, ""
    for ch in nodelist.strip():
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth != 0:
        raise ValueError(f"unbalanced brackets in SLURM node list {nodelist!r}")
    parts.append(cur)
    hosts: List[str] = []
    for part in parts:
        part = part.strip()
        if part:
            hosts.extend(_expand_one(part))
    return hosts


def _expand_one(name: str) -> List[str]:
    m = re.search(r"\[([^\]]*)\]", name)
    if m is None:
        return [name]
    head, tail = name[: m.start()], name[m.end():]
    values = []
    for item in m.group(1).split(","):
        item = item.strip()
        if "-" in item:
            lo, hi = item.split("-", 1)
            width = len(lo)
            values.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
        elif item:
            values.append(item)
    return [head + v + rest for v in values for rest in _expand_one(tail)]


def detect(env: Optional[Mapping[str, str]] = None) -> Launch:
    """Read the launcher from ``env`` (default ``os.environ``); pure, no communication.

    For MPI the address and port (and possibly the local rank) are left ``None``: ``init`` gets
    them through mpi4py.
    """
    env = os.environ if env is None else env

    # 1. torchrun / env://
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local = env.get("LOCAL_RANK")
        if local is None and world > 1:
            raise RuntimeError(
                "RANK and WORLD_SIZE are set but LOCAL_RANK is not: set LOCAL_RANK too "
                "(torchrun sets all three)"
            )
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if missing and world > 1:
            raise RuntimeError(f"RANK/WORLD_SIZE are set but {' and '.join(missing)} not: set them or use torchrun")
        return Launch(
            "torchrun", rank, world, int(local or 0), env.get("MASTER_ADDR"),
            int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else None,
        )

    # 2. SLURM srun (unless an MPI launcher inside the allocation disagrees with SLURM_PROCID)
    if "SLURM_PROCID" in env and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env):
        rank = _int(env, "SLURM_PROCID")
        world = _int(env, "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS")
        mpi_rank = _first(env, _MPI_RANK)
        in_step = "SLURM_STEP_ID" in env or "SLURM_STEPID" in env
        if mpi_rank is not None and int(mpi_rank) != rank:
            pass  # mpiexec inside an allocation: the SLURM variables are the batch step's; use MPI
        elif not in_step:
            if world > 1 and mpi_rank is None:
                warnings.warn(
                    f"SLURM_NTASKS={world} but this process was not started by srun (no SLURM_STEP_ID): "
                    "running as one process. Start the script with `srun python ...` to use every task.",
                    stacklevel=3,
                )
                return Launch("none")
        else:
            nodelist = _first(env, ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"))
            addr = env.get("MASTER_ADDR")
            if not addr and world > 1:
                if not nodelist:
                    raise RuntimeError("SLURM run without SLURM_JOB_NODELIST: set MASTER_ADDR")
                addr = expand_nodelist(nodelist)[0]
            port = env.get("MASTER_PORT")
            if port:
                port_i = int(port)
            else:
                # Same on every task of the job, different between jobs that share a node.
                job = int(_first(env, ("SLURM_JOB_ID", "SLURM_JOBID")) or 0)
                port_i = 15000 + job % 20000
            return Launch("slurm", rank, world, int(env.get("SLURM_LOCALID", 0)), addr, port_i)

    # 3. mpiexec
    mpi_rank = _first(env, _MPI_RANK)
    if mpi_rank is not None:
        size = _first(env, _MPI_SIZE)
        local = _first(env, _MPI_LOCAL)
        return Launch(
            "mpi", int(mpi_rank), int(size) if size is not None else -1,
            int(local) if local is not None else None,
        )

    # 4. one plain process
    return Launch("none")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _address_towards(host: str) -> str:
    """This host's IPv4 address on the route to ``host`` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        # getfqdn can resolve to an unroutable name (an ADM fault); the plain host name is safer.
        return socket.gethostbyname(socket.gethostname())


def _resolve_mpi(launch: Launch) -> Launch:
    """Fill in world size, local rank, address and port of an MPI launch through mpi4py."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(
            "this process was started by mpiexec/mpirun (an MPI rank variable is set) but mpi4py "
            "cannot be imported: `pip install guided-diffusion-cl[mpi]` (or conda install mpi4py), "
            "or launch with torchrun instead"
        ) from e
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    if launch.rank != rank or launch.world_size not in (-1, world):
        raise RuntimeError(
            f"MPI environment says rank {launch.rank} of {launch.world_size} but mpi4py says {rank} of "
            f"{world}: mpi4py is probably built against another MPI than the mpiexec that started the run"
        )
    host = socket.gethostname()
    hosts = comm.allgather(host)
    local = launch.local_rank if launch.local_rank is not None else hosts[:rank].count(host)
    if rank == 0:
        if os.environ.get("MASTER_ADDR"):
            addr = os.environ["MASTER_ADDR"]
        elif len(set(hosts)) == 1:
            addr = "127.0.0.1"
        else:
            addr = _address_towards(next(h for h in hosts if h != host))
        port = int(os.environ.get("MASTER_PORT") or _free_port())
        info = (addr, port)
    else:
        info = None
    addr, port = comm.bcast(info, root=0)
    return Launch("mpi", rank, world, local, addr, port)


# ---------------------------------------------------------------------------------------- init


def _pick_device(local_rank: int, backend: Optional[str]) -> torch.device:
    if backend == "gloo" or not torch.cuda.is_available():
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if local_rank < n:
        index = local_rank
    elif n == 1:
        index = 0  # the launcher bound one GPU to this process (CUDA_VISIBLE_DEVICES per task)
    else:
        raise RuntimeError(
            f"local rank {local_rank} but only {n} GPUs are visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}): start at most "
            f"{n} processes per node"
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init(backend: Optional[str] = None, timeout_s: float = 1800) -> torch.device:
    """Detect the launcher, create the process group (world > 1) and pick the device; idempotent.

    Args:
        backend: "nccl", "gloo" or None (NCCL when CUDA is available, else gloo).  "gloo" also keeps
            the device on the CPU.
        timeout_s: seconds before rendezvous or a collective fails instead of hanging on a dead rank.
    Returns the device of this process (also ``dev()``).
    """
    if _STATE.initialized:
        return _STATE.device
    if backend == "":
        backend = None
    if backend not in (None, "nccl", "gloo", "mpi"):
        raise ValueError(f"unknown backend {backend!r}: use 'nccl', 'gloo' or leave it empty")
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("backend 'nccl' needs CUDA, which is not available here: use 'gloo'")
    timeout = datetime.timedelta(seconds=float(timeout_s))

    if dist.is_available() and dist.is_initialized():
        # The caller created the group: adopt it.
        rank, world = dist.get_rank(), dist.get_world_size()
        local_s = _first(os.environ, ("LOCAL_RANK", "SLURM_LOCALID") + _MPI_LOCAL)
        if local_s is None and world > 1 and torch.cuda.is_available():
            warnings.warn("process group created outside dist_util without LOCAL_RANK: using cuda:0", stacklevel=2)
        local = int(local_s or 0)
        _STATE.__dict__.update(
            initialized=True, group=True, kind="external", rank=rank, world_size=world, local_rank=local,
            backend=dist.get_backend(), timeout_s=float(timeout_s),
        )
        _STATE.device = _pick_device(local, _STATE.backend)
        return _STATE.device

    launch = detect()
    if launch.kind == "mpi" and launch.world_size != 1:
        launch = _resolve_mpi(launch)
    if launch.local_rank is None:
        launch.local_rank = 0
    if launch.world_size > 1:
        if not dist.is_available():
            raise RuntimeError("this torch build has no torch.distributed; cannot run with several processes")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        device = _pick_device(launch.local_rank, backend)
        os.environ.update(
            RANK=str(launch.rank), WORLD_SIZE=str(launch.world_size), LOCAL_RANK=str(launch.local_rank),
            MASTER_ADDR=str(launch.master_addr), MASTER_PORT=str(launch.master_port),
        )
        dist.init_process_group(
            backend=backend, init_method="env://", rank=launch.rank, world_size=launch.world_size,
            timeout=timeout,
        )
        group = True
    else:
        device = _pick_device(launch.local_rank, backend)
        backend = None
        group = False
    _STATE.__dict__.update(
        initialized=True, group=group, kind=launch.kind, rank=launch.rank, world_size=launch.world_size,
        local_rank=launch.local_rank, device=device, backend=backend, timeout_s=float(timeout_s),
    )
    return device


def setup_dist() -> None:
    """ADM's name for ``init()`` (guided-diffusion's ``dist_util.setup_dist``): the process group from whatever
    launched this process (mpiexec, torchrun, SLURM or none), NCCL on GPUs, gloo on CPU."""
    init()


def cleanup() -> None:
    """Destroy the process group (if ours) and forget the state; ``init`` may be called again."""
    if _STATE.group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _STATE.__dict__.update(_State().__dict__)


# ---------------------------------------------------------------------------------------- queries


def is_initialized() -> bool:
    """True when a process group is active (False for a plain single process)."""
    return _STATE.group and dist.is_available() and dist.is_initialized()


def launcher() -> str:
    """How this process was started: "torchrun", "slurm", "mpi", "external" or "none"."""
    return _STATE.kind


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else _STATE.rank


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else _STATE.world_size


def get_local_rank() -> int:
    return _STATE.local_rank


def is_main() -> bool:
    return get_rank() == 0


def backend() -> Optional[str]:
    """The process group's backend, or None for a single process."""
    return _STATE.backend


def dev() -> torch.device:
    """This process's device: the one chosen by ``init``; before it, cuda:0 or cpu."""
    if _STATE.device is not None:
        return _STATE.device
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


# ---------------------------------------------------------------------------------------- collectives
# Every function below is collective when a process group is active: all ranks must call it.


def _comm_device() -> torch.device:
    return _STATE.device if _STATE.backend == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Wait for every rank; on gloo, fail after ``timeout_s`` naming the ranks that did not arrive."""
    if not is_initialized():
        return
    start = time.time()
    try:
        if _STATE.backend == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=_STATE.timeout_s), wait_all_ranks=True)
        elif _STATE.backend == "nccl":
            dist.barrier(device_ids=[_STATE.device.index])
        else:
            dist.barrier()
    except RuntimeError as e:
        raise RankFailure(
            f"rank {get_rank()}: barrier failed after {time.time() - start:.1f}s (timeout_s={_STATE.timeout_s:g}); "
            f"another rank died or is hung: {e}"
        ) from e


# Words of the errors gloo and NCCL raise when a peer is gone or does not answer in time.
_PEER_FAILURE = ("timed out", "timeout", "connection closed by peer", "connection reset by peer", "broken pipe",
                 "nccl communicator was aborted", "watchdog caught collective operation timeout")


def describe_failure(e: BaseException) -> Optional[str]:
    """One line for an error from a collective whose peer died or hung (the others' view of a lost
    rank); None for any other error. With ``dist.timeout_s`` (``init(timeout_s=)``) every collective
    gives up after that long, so a script can print this and exit instead of waiting forever."""
    if isinstance(e, RankFailure):
        return str(e)
    dist_error = getattr(dist, "DistError", ())
    text = str(e).strip()
    if not (is_initialized() and get_world_size() > 1):
        return None
    if not (isinstance(e, dist_error) if dist_error else False) and not (
            isinstance(e, RuntimeError) and any(w in text.lower() for w in _PEER_FAILURE)):
        return None
    first = text.splitlines()[0] if text else type(e).__name__
    return (f"rank {get_rank()} of {get_world_size()}: a collective operation failed ({first}); another rank "
            f"died or is hung (each collective waits at most dist.timeout_s={_STATE.timeout_s:g}s): see that "
            "rank's own error above; rerun the same command to resume from the latest checkpoint")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank."""
    if not is_initialized():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=_comm_device() if _STATE.backend == "nccl" else None)
    return box[0]


def all_gather_object(obj: Any) -> List[Any]:
    """A list with every rank's ``obj``, in rank order."""
    if not is_initialized():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over ranks (a new floating tensor on the input's device; input unchanged)."""
    t = tensor.detach()
    if not t.is_floating_point():
        t = t.double()
    if not is_initialized():
        return t.clone()
    buf = t.to(_comm_device(), copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return (buf / get_world_size()).to(tensor.device)


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (collective when a process group is active)."""
    if get_world_size() > 1 and is_initialized():
        return bool(all_reduce_mean(torch.tensor([1.0 if flag else 0.0])).item() > 0)
    return flag


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order; dim 0 may differ between ranks.

    The other dimensions and the dtype must agree.  Padding to the largest size is internal.
    """
    if t.dim() == 0:
        t = t.reshape(1)
    if not is_initialized():
        return t.detach().clone()
    cdev = _comm_device()
    world = get_world_size()
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=cdev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s.item()) for s in sizes]
    m = max(sizes_i)
    buf = torch.zeros((m, *t.shape[1:]), dtype=t.dtype, device=cdev)
    buf[: t.shape[0]] = t.detach().to(cdev)
    parts = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(parts, buf)
    return torch.cat([p[:k] for p, k in zip(parts, sizes_i)], dim=0).to(t.device)


@torch.no_grad()
def sync_params(params: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's values into ``params`` (parameters or buffers) on every rank, in place."""
    if not is_initialized():
        return
    cdev = _comm_device()
    for p in params:
        if p.device == cdev:
            dist.broadcast(p.data, src=0)
        else:
            buf = p.data.to(cdev)
            dist.broadcast(buf, src=0)
            p.data.copy_(buf)


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first, the others run it after rank 0 has finished it.

    For "rank 0 writes (downloads, prepares), the others wait and then read".  If rank 0 raises
    inside the block, the other ranks raise a RuntimeError instead of waiting forever.
    """
    if not is_initialized():
        yield
        return
    if is_main():
        ok = False
        try:
            yield
            ok = True
        finally:
            broadcast_object(ok)
    else:
        if not broadcast_object(None):
            raise RuntimeError(f"rank {get_rank()}: rank 0 failed inside main_first(); see its error")
        yield


rank0_first = main_first


# ---------------------------------------------------------------------------------------- files


def load_state_dict(path: str, map_location: Any = "cpu") -> Any:
    """ADM's name for loading a torch-saved object (state dict) from a local or blobfile path; *not*
    collective (every rank reads the file itself). ``checkpoint.load_torch``: ``weights_only=True``,
    FileNotFoundError for a missing file, ``CheckpointError`` (a RuntimeError) naming an unreadable one."""
    from .checkpoint import load_torch

    return load_torch(path, map_location)
