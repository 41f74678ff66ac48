"""The trial's Ray Train settings that need no running Ray."""
from __future__ import annotations

import ray.train

from fgray.trial import ordered_ingest


def test_ddp_ingest_keeps_the_rows_in_order():
    # Train replaces a dataset's own execution options with its DataConfig's (whose default copies
    # the global DataContext: preserve_order off), so the order must be asked for there.
    config = ray.train.DataConfig(datasets_to_split=[], execution_options=ordered_ingest())
    assert config._resolve_execution_options("train_0").preserve_order
