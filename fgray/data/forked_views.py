"""A one-worker trial's training batches, drawn by forked ``DataLoader`` workers of its own process.

They are the batches of the Ray Data pipeline (``pipeline.train_dataset``): the same index
(``pipeline.train_index``) through the same ``ViewActor``, whose per-image seeds make an image's views
the same whichever process draws them. What differs is where they are drawn. A Tune trial process
that trains forks its view workers: they inherit its imports (torch, torchvision) and the split's
rows, so the first batch is ready a fraction of a second after the fork. A Ray Data actor is a new
process that imports torch, and its executor starts helper actors: on a laptop's few cores, seconds
between a trial's start and its first step, and imports competing with training (bench/README.md).
A thread would not do: the views re-seed torch's global generator, which the training step draws from.
"""
from __future__ import annotations

import ctypes
import functools
import os
import signal
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fgray.data.view_actor import ViewActor, runs
from fgray.validation import ConfigError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: Linux only, as this path is (``fgray.config.FORKED_VIEWS``)


class _Steps(IterableDataset):
    """Index blocks of one training step each -> that step's batch. Worker w of n draws blocks w, w + n,
    ...; the loader hands them on in block order."""

    def __init__(self, blocks: list[pa.Table], views: ViewActor):
        self.blocks, self.views = blocks, views

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        info = get_worker_info()
        first, stride = (info.id, info.num_workers) if info is not None else (0, 1)
        for block in self.blocks[first::stride]:
            yield self.views({name: block.column(name).to_numpy() for name in block.column_names})


def step_blocks(order: list[pa.Table], batch_size: int) -> list[pa.Table]:
    """Each epoch's index cut into the rows of one training step: ``batch_size`` rows (a partial last
    one is dropped, as the Ray Data path's ``drop_last``), or one ``group`` (ASS: a composed step's
    anchors and candidates, or a plain step's batch)."""
    blocks = []
    for epoch in order:
        if "group" in epoch.column_names:
            blocks += [epoch.slice(s.start, s.stop - s.start) for s in runs(epoch.column("group").to_numpy())]
            continue
        if epoch.num_rows < batch_size:
            raise ConfigError(f"data: the training split has {epoch.num_rows} images a rank, fewer than "
                              f"train.batch_size ({batch_size}): not one step an epoch")
        starts = range(0, epoch.num_rows - batch_size + 1, batch_size)
        blocks += [epoch.slice(start, batch_size) for start in starts]
    return blocks


def forked_batches(blocks: list[pa.Table], views: ViewActor, workers: int,
                   prefetch: int = 4) -> Iterator[dict[str, np.ndarray]]:
    """The batches of ``blocks``, drawn by ``workers`` forked processes (``prefetch`` steps ahead each).
    The workers start here, so they draw while the caller builds its model, and end with the
    iterator, or with the thread that forked them (``_die_with_parent``)."""
    loader = DataLoader(_Steps(blocks, views), batch_size=None, num_workers=workers, collate_fn=_as_drawn,
                        multiprocessing_context="fork", prefetch_factor=prefetch,
                        worker_init_fn=functools.partial(_die_with_parent, os.getpid()),
                        # The workers' base seed from a generator of their own, not the trainer's stream.
                        generator=torch.Generator())
    return _drain(iter(loader))


def _die_with_parent(parent: int, worker_id: int) -> None:
    """SIGKILL this worker when the trial's thread that forked it dies (Linux's parent-death signal).
    A worker outliving a killed trial kept its copies of the trial's sockets to Ray open, so Ray saw
    the trial die only minutes later, and its retry waited as long; and
    DataLoader's own check of its parent ends the worker at a put that can block forever."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # best effort: DataLoader's own check remains
    if os.getppid() != parent:  # the parent died before the signal was set
        os._exit(0)


def _as_drawn(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return batch  # numpy, as Ray Data hands batches on (DataLoader's default would make tensors)


def _drain(iterator) -> Iterator[dict[str, np.ndarray]]:
    # A generator, so the caller can close() it: the loader's iterator, dropped, stops its workers.
    yield from iterator
