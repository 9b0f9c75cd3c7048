"""Preemption: SIGTERM, SIGUSR1 (SLURM) and SIGINT (Ctrl-C) noted while a ``PreemptionFlag`` is open, so that
the work stops at its next boundary with a checkpoint and raises ``Preempted`` (scripts turn it into exit
code 0 and a line on how to resume). A second Ctrl-C stops at once (``KeyboardInterrupt``)."""

from __future__ import annotations

import signal
import sys
from typing import Any, Dict, Optional

from . import dist_util


class Preempted(Exception):
    """Raised after a checkpoint was written because a preemption signal arrived."""


class PreemptionFlag:
    """Remembers whether SIGTERM/SIGUSR1/SIGINT arrived while it is open; ``close`` restores the handlers.

    Flags nest and share one state: the outermost installs the handlers and forgets old signals,
    inner ones (a ``TrainLoop.run`` inside the continual loop) see and keep what arrived, so a
    signal during a task's last step still stops the continual loop at its next boundary.
    """

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None),
                                getattr(signal, "SIGINT", None)) if s)
    _depth = 0
    _received: Optional[str] = None
    _old: Dict[int, Any] = {}

    def __init__(self):
        cls = PreemptionFlag
        if cls._depth == 0:
            cls._received = None
            try:
                cls._old = {s: signal.signal(s, cls._handle) for s in self.SIGNALS}
            except ValueError:  # not the main thread: signals cannot be caught here
                cls._old = {}
        cls._depth += 1
        self._open = True

    @staticmethod
    def _handle(signum, frame):
        name = signal.Signals(signum).name
        if name == "SIGINT":
            if PreemptionFlag._received == "SIGINT":  # the second Ctrl-C: stop now
                raise KeyboardInterrupt
            if dist_util.is_main():
                print("SIGINT: writing a checkpoint at the next step boundary, then stopping (Ctrl-C again: stop "
                      "at once, keeping the last checkpoint)", file=sys.stderr, flush=True)
        PreemptionFlag._received = name

    @property
    def received(self) -> Optional[str]:
        return PreemptionFlag._received

    def close(self):
        cls = PreemptionFlag
        if not self._open:
            return
        self._open = False
        cls._depth -= 1
        if cls._depth == 0:
            for s, h in cls._old.items():
                signal.signal(s, h)
            cls._old = {}


def preemption_requested() -> Optional[str]:
    """The signal an open ``PreemptionFlag`` caught ("SIGTERM", "SIGUSR1"), else None."""
    return PreemptionFlag._received if PreemptionFlag._depth > 0 else None
