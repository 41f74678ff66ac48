"""The trial's pieces that need no running Ray."""
from __future__ import annotations

import json

import ray.train

from fgray.checkpoint import META_FILE
from fgray.trial import _checkpoint_epoch


def test_a_trainer_finds_its_resume_epoch_from_the_meta_file_alone(tmp_path):
    # Each trainer builds its dataset from the epoch it resumes at before it loads the weights: a
    # checkpoint holding only its meta file is enough (a remote one is not downloaded for it).
    (tmp_path / META_FILE).write_text(json.dumps({"epoch": 3, "stage": "train", "metrics": {}, "sizes": {}}))
    assert _checkpoint_epoch(ray.train.Checkpoint(str(tmp_path))) == 3
