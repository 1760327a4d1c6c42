"""Stopping a run cleanly: the first SIGINT/SIGTERM asks the loop to save its state and stop."""
from __future__ import annotations

import signal
import threading


class TrainingInterrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM) ended the run after its state was saved: ``where`` it stopped, and the
    folder where ``resume=True`` continues it (the CLI says how its command resumes instead)."""

    def __init__(self, where: str, out_dir: str | None = None):
        super().__init__(where if out_dir is None else f"{where}; continue with resume=True (--resume) in {out_dir}")
        self.where = where


class StopSignals:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks; a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        # Handlers can only be installed from the main thread; elsewhere signals keep their defaults.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
