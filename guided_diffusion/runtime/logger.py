"""Logging as sinks: stdout, CSV, JSONL and log.txt by default; wandb and tensorboard on request.

A ``Logger`` gathers key/value pairs between two ``dumpkvs`` calls and writes one row to every sink::

    log = Logger(run_dir, rank=dist_util.get_rank())
    log.logkv_mean("loss", loss)      # averaged over the calls since the last dump, then over ranks
    log.logkv("step", step)           # last value wins (rank 0's)
    row = log.dumpkvs(step)           # collective when distributed: every rank must call it
    log.log("saved checkpoint")       # rank 0 prints it and appends it to log.txt
    log.close()

Files in ``dir`` (rank 0 alone writes; other ranks' loggers never touch the disk):

- ``progress.csv``: one row per dump; a key that appears later widens the header and the file is
  rewritten (atomically) with empty cells for the earlier rows.  An existing file is continued, so a
  resumed run appends to its own history.
- ``progress.jsonl``: one JSON object per dump.
- ``log.txt``: the messages of ``log`` and the key/value tables.

Optional sinks, imported only when enabled: ``wandb`` (True, a project name, or a dict of
``wandb.init`` arguments; ``WANDB_MODE=offline`` works as wandb defines it; the run id is kept in
``<dir>/wandb_id.txt``, so a restarted run resumes its W&B run) and ``tensorboard=True``
(``torch.utils.tensorboard``, needs the ``tensorboard`` package).

ADM-style module functions (``configure``, ``logkv``, ``logkv_mean``, ``dumpkvs``, ``log``) forward
to the current logger.  ``progress_bar`` is tqdm on rank 0 only, off when stderr is not a terminal
(CI logs stay readable) unless ``GD_PROGRESS=1``; ``GD_PROGRESS=0`` turns it off everywhere.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import sys
import uuid
from collections import defaultdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from . import dist_util

__all__ = [
    "Logger", "configure", "get_logger", "read_csv", "logkv", "logkv_mean", "dumpkvs", "log", "progress_bar",
    "FORMATS",
]

FORMATS = ("stdout", "csv", "jsonl", "log")


def _scalar(val: Any) -> Any:
    """A Python number for tensors/numpy scalars; other values unchanged."""
    if hasattr(val, "item") and callable(val.item):
        try:
            return val.item()
        except (ValueError, RuntimeError):  # not a one-element tensor/array
            return val
    return val


def _is_number(val: Any) -> bool:
    return isinstance(val, numbers.Number) and not isinstance(val, bool)


def _fmt(val: Any) -> str:
    if isinstance(val, float):
        return f"{val:<8.3g}"
    return str(val)


# ---------------------------------------------------------------------------------------- files


class _TextFile:
    """A local text file opened for appending; ``rewrite`` replaces it atomically."""

    def __init__(self, path: str):
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def append(self, text: str) -> None:
        self._f.write(text)
        self._f.flush()

    def read(self) -> str:
        with open(self.path, "r", encoding="utf-8") as f:
            return f.read()

    def rewrite(self, text: str) -> None:
        self._f.close()
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class _RemoteFile:
    """A blobfile path (gs://, az://...): kept in memory and rewritten whole (blobs cannot append)."""

    def __init__(self, path: str):
        import blobfile as bf

        self._bf, self.path = bf, path
        self._text = ""
        if bf.exists(path):
            with bf.BlobFile(path, "r") as f:
                self._text = f.read()

    def append(self, text: str) -> None:
        self.rewrite(self._text + text)

    def read(self) -> str:
        return self._text

    def rewrite(self, text: str) -> None:
        self._text = text
        with self._bf.BlobFile(self.path, "w") as f:
            f.write(text)

    def close(self) -> None:
        pass


def _open(dir: str, name: str):
    path = f"{dir.rstrip('/')}/{name}" if "://" in dir else os.path.join(dir, name)
    return _RemoteFile(path) if "://" in dir else _TextFile(path)


# ---------------------------------------------------------------------------------------- sinks


class _StdoutSink:
    def write_kvs(self, kvs: Dict[str, Any], step: Optional[int]) -> None:
        _write_stdout(_table(kvs))

    def write_text(self, text: str) -> None:
        _write_stdout(text)

    def close(self) -> None:
        pass


class _LogTxtSink:
    def __init__(self, dir: str):
        self.f = _open(dir, "log.txt")

    def write_kvs(self, kvs: Dict[str, Any], step: Optional[int]) -> None:
        self.f.append(_table(kvs) + "\n")

    def write_text(self, text: str) -> None:
        self.f.append(text + "\n")

    def close(self) -> None:
        self.f.close()


class _CSVSink:
    def __init__(self, dir: str):
        self.f = _open(dir, "progress.csv")
        text = self.f.read()
        first = text.split("\n", 1)[0] if text else ""
        self.keys: List[str] = next(csv.reader([first])) if first else []

    @staticmethod
    def _line(values: Sequence[Any]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        return buf.getvalue()

    def write_kvs(self, kvs: Dict[str, Any], step: Optional[int]) -> None:
        new = [k for k in kvs if k not in self.keys]
        if new:
            old_keys = self.keys
            self.keys = old_keys + new
            text = self.f.read()
            rows = list(csv.reader(io.StringIO(text)))[1:] if old_keys else []
            out = self._line(self.keys) + "".join(self._line(r + [""] * len(new)) for r in rows)
            self.f.rewrite(out)
        self.f.append(self._line(["" if kvs.get(k) is None else kvs[k] for k in self.keys]))

    def write_text(self, text: str) -> None:
        pass

    def close(self) -> None:
        self.f.close()


class _JSONLSink:
    def __init__(self, dir: str):
        self.f = _open(dir, "progress.jsonl")

    def write_kvs(self, kvs: Dict[str, Any], step: Optional[int]) -> None:
        self.f.append(json.dumps(kvs, default=str) + "\n")

    def write_text(self, text: str) -> None:
        pass

    def close(self) -> None:
        self.f.close()


class _TensorBoardSink:
    def __init__(self, dir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "tensorboard=True but the tensorboard package is not installed: "
                "`pip install tensorboard` (or guided-diffusion-cl[log]), or disable it"
            ) from e
        self.writer = SummaryWriter(log_dir=os.path.join(dir, "tb"))
        self.n = 0

    def write_kvs(self, kvs: Dict[str, Any], step: Optional[int]) -> None:
        step = self.n if step is None else step
        for k, v in kvs.items():
            if _is_number(v):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()
        self.n += 1

    def write_text(self, text: str) -> None:
        pass

    def close(self) -> None:
        self.writer.close()


WANDB_ID_FILE = "wandb_id.txt"


def stable_run_id(dir: str) -> str:
    """The W&B run id of this run folder: read from ``wandb_id.txt``, or made and written there once."""
    path = os.path.join(dir, WANDB_ID_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            run_id = f.read().strip()
        if run_id:
            return run_id
    run_id = uuid.uuid4().hex[:12]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(run_id + "\n")
    os.replace(tmp, path)
    return run_id


# The W&B runs open in this process by id, with the number of sinks that use each: a continual run's
# loggers (the run's and each task's) share one W&B run, the run folder's.
_WANDB_RUNS: Dict[str, List[Any]] = {}


class _WandbSink:
    """One W&B run per run folder (``wandb_id.txt``; a continual run's task loggers pass the run's id), its
    step wandb's own counter, so that the steps of task after task (each counting from 0) stay one
    increasing axis; the trainer's step is logged as the value ``step``."""

    def __init__(self, dir: str, spec: Union[bool, str, Dict[str, Any]]):
        try:
            import wandb
        except ImportError as e:
            raise ImportError(
                "wandb logging is enabled but the wandb package is not installed: "
                "`pip install wandb` (or guided-diffusion-cl[log]), or disable it"
            ) from e
        kwargs: Dict[str, Any] = {}
        if isinstance(spec, str):
            kwargs["project"] = spec
        elif isinstance(spec, dict):
            kwargs.update(spec)
        kwargs.setdefault("dir", dir)  # mode comes from WANDB_MODE unless given here
        if "id" not in kwargs:  # one W&B run per run folder: a restarted (preempted) run continues it
            kwargs["id"] = stable_run_id(dir)
            kwargs.setdefault("resume", "allow")
        self.wandb = wandb
        self.id = kwargs.get("id")
        shared = _WANDB_RUNS.get(self.id) if self.id else None
        if shared is not None:
            shared[1] += 1
            self.run = shared[0]
        else:
            self.run = wandb.init(**kwargs)
            if self.id:
                _WANDB_RUNS[self.id] = [self.run, 1]

    def write_kvs(self, kvs: Dict[str, Any], step: Optional[int]) -> None:
        data = {k: v for k, v in kvs.items() if _is_number(v)}
        if step is not None and "step" not in data:
            data["step"] = step
        self.run.log(data)  # wandb's own step: one increasing axis over tasks and restarts

    def write_text(self, text: str) -> None:
        pass

    def close(self) -> None:
        shared = _WANDB_RUNS.get(self.id) if self.id else None
        if shared is not None:
            shared[1] -= 1
            if shared[1] > 0:
                return
            del _WANDB_RUNS[self.id]
        self.run.finish()


def _table(kvs: Dict[str, Any]) -> str:
    if not kvs:
        return "(no values)"
    keys = [k[:40] for k in kvs]
    vals = [_fmt(v)[:40] for v in kvs.values()]
    kw, vw = max(map(len, keys)), max(map(len, vals))
    dash = "-" * (kw + vw + 7)
    lines = [dash] + [f"| {k:<{kw}} | {v:<{vw}} |" for k, v in zip(keys, vals)] + [dash]
    return "\n".join(lines)


def _write_stdout(text: str) -> None:
    # tqdm.write keeps an open progress bar intact; plain print when tqdm is missing.
    try:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stdout)
    except ImportError:
        print(text, flush=True)
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------- Logger


class Logger:
    """Key/value logging to sinks; rank 0 writes, means are reduced over ranks on ``dumpkvs``.

    Args:
        dir: run folder (local or blobfile URL), created by rank 0; None for stdout only.
        rank: this process's rank (default ``dist_util.get_rank()``); ranks other than 0 write nothing.
        formats: any of "stdout", "csv", "jsonl", "log".
        wandb: None/False, True, a project name, or a dict of ``wandb.init`` arguments.
        tensorboard: write scalars to ``dir/tb`` with ``torch.utils.tensorboard``.
        reduce: average ``logkv_mean`` values over ranks in ``dumpkvs`` when a process group is
            active (then ``dumpkvs`` is collective).  Set False for a logger used by rank 0 alone.
    """

    def __init__(
        self,
        dir: Optional[str] = None,
        rank: Optional[int] = None,
        formats: Sequence[str] = FORMATS,
        wandb: Union[None, bool, str, Dict[str, Any]] = None,
        tensorboard: bool = False,
        reduce: bool = True,
    ):
        if isinstance(formats, str):
            formats = [f for f in formats.split(",") if f]
        bad = [f for f in formats if f not in FORMATS]
        if bad:
            raise ValueError(f"unknown log format(s) {bad}: choose from {list(FORMATS)}")
        self.dir = dir
        self.rank = dist_util.get_rank() if rank is None else int(rank)
        self.reduce = reduce
        self._kvs: Dict[str, Any] = {}
        self._sums: Dict[str, float] = defaultdict(float)
        self._counts: Dict[str, int] = defaultdict(int)
        self.sinks: List[Any] = []
        if self.rank != 0:
            return
        if "stdout" in formats:
            self.sinks.append(_StdoutSink())
        if dir is None:
            if wandb or tensorboard:
                raise ValueError("wandb/tensorboard logging needs a dir")
            return
        if "://" not in dir:
            os.makedirs(dir, exist_ok=True)
        if "csv" in formats:
            self.sinks.append(_CSVSink(dir))
        if "jsonl" in formats:
            self.sinks.append(_JSONLSink(dir))
        if "log" in formats:
            self.sinks.append(_LogTxtSink(dir))
        if tensorboard:
            self.sinks.append(_TensorBoardSink(dir))
        if wandb:
            self.sinks.append(_WandbSink(dir, wandb))

    def log_external(self, kvs: Dict[str, Any]) -> None:
        """``kvs`` to the W&B and TensorBoard sinks only (a continual run's per-task metrics: the CSV files
        and stdout have them in their own form)."""
        for sink in self.sinks:
            if isinstance(sink, (_WandbSink, _TensorBoardSink)):
                sink.write_kvs({k: _scalar(v) for k, v in kvs.items()}, None)

    # -- values

    def logkv(self, key: str, val: Any) -> None:
        """Record ``val`` under ``key`` for the next dump (the last value wins; rank 0's is written)."""
        self._kvs[key] = _scalar(val)

    def logkv_mean(self, key: str, val: Any) -> None:
        """Add ``val`` to the running mean of ``key`` (over calls, then over ranks at the dump)."""
        v = float(_scalar(val))
        self._sums[key] += v
        self._counts[key] += 1

    def dumpkvs(self, step: Optional[int] = None) -> Dict[str, Any]:
        """Write one row to every sink, clear the values and return the row.

        Means are count-weighted over every value logged on every rank (= the mean of the ranks'
        means when they log equally often).  Collective when a process group is active and
        ``reduce`` is on: every rank must call it, even with nothing logged.
        """
        sums = {k: (self._sums[k], self._counts[k]) for k in self._sums}
        if self.reduce and dist_util.is_initialized():
            merged: Dict[str, List[float]] = {}
            for part in dist_util.all_gather_object(sums):
                for k, (s, n) in part.items():
                    acc = merged.setdefault(k, [0.0, 0])
                    acc[0] += s
                    acc[1] += n
            sums = {k: (s, n) for k, (s, n) in merged.items()}
        row: Dict[str, Any] = {}
        if step is not None and "step" not in self._kvs:
            row["step"] = step
        row.update(self._kvs)
        for k, (s, n) in sums.items():
            row[k] = s / n if n else math.nan
        for sink in self.sinks:
            sink.write_kvs(row, step)
        self._kvs.clear()
        self._sums.clear()
        self._counts.clear()
        return row

    def state_dict(self) -> Dict[str, Any]:
        """The running means not yet dumped (this rank's), for a checkpoint: a run resumed between two
        dumps then writes the same means as an uninterrupted one."""
        return {"sums": dict(self._sums), "counts": dict(self._counts)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._sums = defaultdict(float, {k: float(v) for k, v in state.get("sums", {}).items()})
        self._counts = defaultdict(int, {k: int(v) for k, v in state.get("counts", {}).items()})

    # -- messages

    def log(self, *args: Any) -> None:
        """Rank 0 prints the message and appends it to log.txt; other ranks do nothing."""
        if self.rank != 0:
            return
        text = " ".join(str(a) for a in args)
        for sink in self.sinks:
            sink.write_text(text)

    def progress_bar(self, iterable: Optional[Iterable] = None, total: Optional[int] = None,
                     desc: Optional[str] = None, disable: Optional[bool] = None, **kwargs):
        """``progress_bar`` for this logger's rank."""
        return progress_bar(iterable, total=total, desc=desc, rank=self.rank, disable=disable, **kwargs)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def __enter__(self) -> "Logger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_csv(path: str) -> List[Dict[str, str]]:
    """The rows of a CSV file with a header (``progress.csv``, ``metrics.csv`` and the tools' tables),
    local or blobfile path; [] when the file does not exist."""
    import blobfile as bf

    if not bf.exists(path):
        return []
    with bf.BlobFile(path, "r") as f:
        return list(csv.DictReader(io.StringIO(f.read())))


# ---------------------------------------------------------------------------------------- progress


def progress_bar(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: Optional[str] = None,
                 rank: Optional[int] = None, disable: Optional[bool] = None, **kwargs):
    """A tqdm bar on rank 0 only (a silent pass-through elsewhere).

    ``disable=None``: shown only when stderr is a terminal, or when ``GD_PROGRESS=1``; ``GD_PROGRESS=0``
    hides it.  An explicit ``disable`` overrides that, but ranks other than 0 never show a bar.
    Extra keyword arguments go to tqdm (``initial``, ``unit``...).
    """
    from tqdm import tqdm

    rank = dist_util.get_rank() if rank is None else rank
    if disable is None:
        forced = os.environ.get("GD_PROGRESS", "")
        if forced in ("0", "1"):
            disable = forced == "0"
        else:
            disable = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    if rank != 0:
        disable = True
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, disable=disable, **kwargs)


# ---------------------------------------------------------------------------------------- module API

_CURRENT: Optional[Logger] = None


def configure(dir: Optional[str] = None, rank: Optional[int] = None, formats: Sequence[str] = FORMATS,
              **kwargs) -> Logger:
    """Make a new current logger (closing the previous one) and return it."""
    global _CURRENT
    if _CURRENT is not None:
        _CURRENT.close()
    _CURRENT = Logger(dir, rank=rank, formats=formats, **kwargs)
    return _CURRENT


def get_logger() -> Logger:
    """The current logger; a stdout-only one when ``configure`` was never called."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = Logger(None, formats=("stdout",))
    return _CURRENT


def logkv(key: str, val: Any) -> None:
    get_logger().logkv(key, val)


def logkv_mean(key: str, val: Any) -> None:
    get_logger().logkv_mean(key, val)


def dumpkvs(step: Optional[int] = None) -> Dict[str, Any]:
    return get_logger().dumpkvs(step)


def log(*args: Any) -> None:
    get_logger().log(*args)
