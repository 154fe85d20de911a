"""Pre-emption: SIGTERM (what SLURM and most schedulers send before killing a
job) and SIGUSR1 (SLURM's ``--signal``) stop a run cleanly.

During training the signal only raises a flag, which the epoch loop reads
after each optimisation step: it then writes a resumable mid-epoch
checkpoint and leaves (:class:`Interrupted`).  A signal that arrives while a
checkpoint is being written waits for the write to finish.  Outside the
training loop (evaluation, start-up) the signal raises :class:`Interrupted`
at once.  Ctrl-C stays Python's KeyboardInterrupt.
"""
from __future__ import annotations

import signal
from typing import Any

__all__ = ["Interrupted", "StopSignals", "STOP_SIGNALS"]

STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None),
                                 getattr(signal, "SIGUSR1", None)) if s is not None)


class Interrupted(Exception):
    """The run stopped on a signal; ``str()`` says what was kept.
    ``exit_code``: 128 + the signal number, the shell's convention."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """Context manager installing the handlers (main thread only; elsewhere
    it does nothing).  ``deferred``: True inside the training loop, where
    the signal only sets ``received``; False elsewhere, where it raises."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferred = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        self.received = signum
        if not self.deferred:
            raise Interrupted(signum, f"stopped by {signal.Signals(signum).name}")

    def __enter__(self) -> "StopSignals":
        try:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave the handlers alone
            self._previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""
