"""The start of a sweep, before its trials: the built-in synthetic set rendered by a forked process
while the sweep checks its file and starts Ray (``fgray.sweep``). It imports no Ray."""
from __future__ import annotations

import multiprocessing

from fgray.config import DataConfig


class Rendering:
    """The built-in synthetic set found, or rendered (seconds on a fresh machine), by a process forked
    now, while this one loads timm for the checks and starts Ray: rendering is single-threaded Python,
    which in a thread would hold the GIL the others need. The process ends after its one task, even
    when this one has left (a check failed): it then finishes the set, for the next run."""

    def __init__(self, data: DataConfig):
        context = multiprocessing.get_context("fork")  # before Ray or torch start a thread here
        self.receive, send = context.Pipe(duplex=False)
        self.process = context.Process(target=_render_into, args=(data, send), name="fgray-render")
        self.process.start()
        send.close()

    def result(self):
        """The ``PreparedDataset``, or the render's exception raised here."""
        outcome = self.receive.recv()
        self.process.join()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def render_ahead(data: DataConfig) -> Rendering | None:
    """``Rendering`` of the built-in synthetic set. None (resolved when Ray is up): a prepared dataset
    (its manifest is read in milliseconds), or a process that cannot fork safely (one in Ray, or
    with other threads)."""
    from fgray.data.sources.synthetic_shards import fork_is_safe

    if data.name != "synthetic" or not fork_is_safe():
        return None
    return Rendering(data)


def resolve_dataset(data: DataConfig):
    """``pipeline.resolve_dataset``, importing the pipeline (and Ray) only when called."""
    from fgray.data import pipeline

    return pipeline.resolve_dataset(data)


def _render_into(data: DataConfig, send) -> None:
    try:
        outcome = resolve_dataset(data)
    except Exception as err:  # handed to the sweep, which reports it
        outcome = err
    try:
        send.send(outcome)
    except OSError:  # the sweep has left (a check failed): the set is complete for the next run
        pass
