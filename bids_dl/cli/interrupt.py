"""Stopping a run: Ctrl-C (SIGINT, exit 130) and SIGTERM (exit 143) still leave the reports.

Slurm sends SIGTERM at a job's time limit (then SIGKILL after ``KillWait``), and Python's
default for SIGTERM ends the process at once, skipping every ``finally``. While the graph runs,
both signals raise :class:`RunStopped` instead, the workers are ended, the reports written, and
the process exits without waiting for MultiProc's pool threads, which can hang.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator

LOGGER = logging.getLogger("bids_dl")
#: The signals that stop a run, and how long its workers get to end before SIGKILL.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
WORKER_GRACE_S = 5.0


class RunStopped(BaseException):
    """A signal stopped the run. A BaseException, as KeyboardInterrupt, so that nipype's
    ``except Exception`` around a node does not take it for that node's failure."""

    def __init__(self, signum: int) -> None:
        self.signal_name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        #: the shell's convention: 128 + the signal's number (130, 143)
        self.exit_code = 128 + signum
        super().__init__(self.signal_name)


class SignalGuard:
    """Within :meth:`installed`, the first SIGINT or SIGTERM raises :class:`RunStopped`; after
    :meth:`hold`, and after that first one, a signal is only noted (in :attr:`stopped`), so
    that the outputs written in a ``finally`` are never cut short."""

    def __init__(self) -> None:
        self.stopped: RunStopped | None = None
        self._raising = True

    def _handle(self, signum: int, frame) -> None:
        self.stopped = self.stopped or RunStopped(signum)
        if self._raising:
            self._raising = False
            raise self.stopped

    def hold(self) -> None:
        """From now on, note a signal without raising."""
        self._raising = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalGuard]:
        previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def stop_worker_processes() -> None:
    """End this process's children (MultiProc's forkserver and workers): nothing computes on
    after the run stopped, and no orphan outlives it.

    multiprocessing's resource tracker is left alone: it ignores SIGTERM by design, and ends
    by itself, cleaning up, once this process has exited.
    """
    import psutil

    children = [
        child
        for child in psutil.Process().children(recursive=True)
        if not any("resource_tracker" in part for part in _command_line(child))
    ]
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=WORKER_GRACE_S)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def _command_line(process) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:  # ended meanwhile, or not ours to read
        return []


def exit_now(code: int) -> None:
    """Flush the output and end the process without joining MultiProc's pool threads.

    ``logging.shutdown`` is not called: a signal that arrives while a handler holds its lock
    leaves the lock held, and the shutdown would wait on it forever. Every handler has flushed
    after each record anyway.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
