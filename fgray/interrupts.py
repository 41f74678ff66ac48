"""Ctrl-C and ``ray job stop`` during a sweep: Tune saves its state, and the sweep says it was
interrupted instead of testing unfinished trials and reporting success.

Tune's own SIGINT handler stops the run gracefully (a last experiment snapshot) but leaves no trace
that it fired: ``Tuner.fit()`` returns as after a finished run. So fgray turns Tune's SIGINT handler
off (``TUNE_DISABLE_SIGINT_HANDLER``, a documented Tune variable), catches SIGINT and SIGTERM itself,
remembers which arrived, and hands the stop to the handler Tune keeps for SIGUSR1 (Tune installs it
in ``fit()`` for every run: the same graceful stop). A second signal stops at once, as Tune's does.
No Ray import here: the handler only reads what ``signal`` holds while ``fit()`` runs.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The sweep was stopped by ``signum``; its state is saved for ``--resume``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopRequest:
    """Which stop signal arrived while ``graceful_stop`` was active (None: none)."""

    signum: int | None = None


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """While active, the first SIGINT / SIGTERM asks Tune to stop gracefully and is recorded; the
    second raises KeyboardInterrupt. Outside the main thread (no handlers can be set) it does nothing."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # signal.signal would raise there
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def handler(signum: int, frame) -> None:
        if request.signum is not None:
            raise KeyboardInterrupt
        request.signum = signum
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if callable(tune_stop):  # Tune's graceful stop, installed by fit()
            tune_stop(signum, frame)
        else:  # fit() is not running (yet): nothing to stop gracefully
            raise KeyboardInterrupt

    saved_variable = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, handler)
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if saved_variable is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved_variable


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that continues this sweep: the same arguments, with ``--resume``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["python", "-m", "fgray.sweep", *args])
