"""A Train worker function for tests/test_ddp_settings_failure.py, importable by Ray's workers (the
tests' Ray puts the repository on their path; a test module itself is not importable there)."""
from __future__ import annotations

import tempfile

import ray.train


def fail_on_one_rank(config: dict) -> None:
    """Leaves a file per start (the test counts the worker group's starts), then raises ``config["error"]``
    on rank ``config["failing_rank"]``; the other rank returns."""
    rank = ray.train.get_context().get_world_rank()
    tempfile.NamedTemporaryFile(dir=config["attempts"], prefix=f"rank{rank}-", delete=False).close()
    if rank == config["failing_rank"]:
        raise config["error"]
