"""The sweep's console: Ray's known harmless notices are dropped, real errors still reach it."""
from __future__ import annotations

import ray._private.worker as ray_worker

from fgray.sweep_ray import _quiet_known_notices

NOTICE = ("WARNING: 4 PYTHON worker processes have been started on node: 859fb41c with address: 192.0.2.2, "
          "which is 4x the maximum expected startup concurrency (1).")
CRASH = "A worker died or was killed while executing a task by an unexpected system error."


def test_worker_pool_notices_are_dropped_and_real_errors_still_print(capsys, monkeypatch):
    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)  # undone after
    _quiet_known_notices()
    _quiet_known_notices()  # a second start (tests, a resumed sweep in one process) filters once
    for line in (NOTICE, CRASH):  # as Ray's error listener prints each job error for the driver
        ray_worker.print_to_stdstream({"lines": [line], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    out = capsys.readouterr().out
    assert "worker processes have been started" not in out
    assert CRASH in out and "(raylet)" in out
