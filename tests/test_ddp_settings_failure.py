"""A TorchTrainer trial whose workers fail on their settings is not retried (issue 29): Train V2 retries
any worker-group failure it is allowed to, so ``trial.fit`` runs Train with no retries of real failures
(preemptions stay unlimited), turns a rank's ``ConfigError`` into the trial's settings failure, and lets
any other failure reach Tune, which retries it. A real TorchTrainer on the tests' local Ray."""
from __future__ import annotations

import pytest
import ray.train
import ray.train.torch
from ray.train import FailureConfig, RunConfig, ScalingConfig

from fgray import trial
from tests.failing_ranks import fail_on_one_rank
from fgray.validation import ConfigError


def _trainer(tmp_path, error, failing_rank=1):
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    return attempts, ray.train.torch.TorchTrainer(
        fail_on_one_rank, train_loop_config={"attempts": str(attempts), "error": error, "failing_rank": failing_rank},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        # The trial's own failure settings (trial._drive).
        run_config=RunConfig(name="settings", storage_path=str(tmp_path / "runs"),
                             failure_config=FailureConfig(max_failures=0, max_preemption_failures=-1)))


def test_a_rank_that_fails_on_its_settings_fails_the_trial_once_with_that_line(ray_local, tmp_path):
    attempts, trainer = _trainer(tmp_path, ConfigError("train.batch_size: larger than a rank's split"))
    with pytest.raises(ConfigError, match="^train.batch_size: larger than a rank's split$"):
        trial.fit(trainer)
    assert len([p for p in attempts.iterdir() if p.name.startswith("rank1-")]) == 1  # started once


def test_any_other_failure_raises_as_train_raised_it_for_tune_to_retry(ray_local, tmp_path):
    _, trainer = _trainer(tmp_path, RuntimeError("CUDA error: an illegal memory access"), failing_rank=0)
    with pytest.raises(ray.train.WorkerGroupError) as failed:
        trial.fit(trainer)
    assert not isinstance(failed.value, ConfigError) and trial.settings_cause(failed.value) is None
