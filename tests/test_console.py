"""The sweep's console: Ray's known harmless notices are dropped, real errors still reach it."""
from __future__ import annotations

import io
import logging

import ray  # noqa: F401  (sets up the "ray" logger's console handler, as the sweep's process has it)

from fgray.sweep_ray import _DropNotices, _quiet_known_notices

TOKEN = "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out."
RESTORE = "Experiment has been interrupted... To continue, run Tuner.restore(path, trainable=...)"
STOP = "RuntimeError: `Study.stop` is supposed to be invoked inside an objective function"
CRASH = "A worker died or was killed while executing a task by an unexpected system error."


def test_known_notices_are_dropped_and_real_errors_still_print():
    _quiet_known_notices()
    _quiet_known_notices()  # a second start (tests, a resumed sweep in one process) filters once
    handlers = logging.getLogger("ray").handlers
    assert handlers and all(sum(isinstance(f, _DropNotices) for f in h.filters) == 1 for h in handlers)
    # pytest >= 9.2 also hangs its own capture handlers on non-propagating loggers such as "ray"; the console
    # is Ray's handler.
    handlers = [h for h in handlers if not type(h).__module__.startswith("_pytest")]
    assert handlers
    console = io.StringIO()
    streams = [h.setStream(console) for h in handlers]  # the console Ray's handler writes to, read here
    try:
        # The token notice from whichever Ray module logs it; Tune's restore hint from Tune's runner only.
        logging.getLogger("ray.some_module.authentication").warning(TOKEN)
        logging.getLogger("ray.tune.tune").warning(RESTORE)
        logging.getLogger("ray.tune.search.optuna.optuna_search").warning(STOP)
        logging.getLogger("ray.train.somewhere").warning(f"{CRASH} Tuner.restore( is named elsewhere")
        logging.getLogger("ray.tune.tune").error(CRASH)
    finally:
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream)
    out = console.getvalue()
    assert "Token authentication" not in out and "To continue" not in out and "Study.stop" not in out
    assert out.count(CRASH) == 2  # every other record, a real error included, still prints


def test_a_sweep_run_from_a_thread_sets_no_signal_handler():
    # Signal handlers can be set only in the main thread: a sweep started from another thread (the
    # two-node simulation, a notebook's worker) runs without fgray's Ctrl-C handling instead of failing.
    import threading

    from fgray.interrupts import graceful_stop

    seen = {}

    def run():
        with graceful_stop() as stop:
            seen["signum"] = stop.signum

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == {"signum": None}
