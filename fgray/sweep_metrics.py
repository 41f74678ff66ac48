"""fgray's metrics in Ray's metrics system (the dashboard's Metrics tab, Prometheus, Grafana).

A Tune callback in the sweep's process: it sees every trial's per-epoch results and every change of
a trial's state, for one-worker trials and DDP trials alike, and sets ``ray.util.metrics`` gauges
tagged by sweep and trial. Ray exports them (prefixed ``ray_``) on each node's metrics port, with
the sweep's process's node as their source; ``grafana/fgray.json`` charts them.
"""
from __future__ import annotations

from typing import Any

from ray.tune import Callback

from fgray.ray_compat import Gauge
from fgray.results import SETTINGS_ERROR

# fgray's name -> (the result key it reads, what it means); every gauge is tagged (sweep, trial).
TRIAL_GAUGES = {
    "fgray_trial_epoch": ("epoch", "epochs a trial has finished"),
    "fgray_trial_train_loss": ("train/loss", "a trial's mean training loss over its last epoch"),
    "fgray_trial_images_per_second": ("train/images_per_s", "training images per second of a trial (all ranks)"),
    "fgray_trial_data_wait_share": ("train/data_wait", "share of a trial's last epoch spent waiting for batches"),
}
SEARCH_METRIC = "fgray_trial_search_metric"  # tagged (sweep, trial, metric): the value Tune and ASHA rank
TRIAL_STATUS = "fgray_trial_status"  # tagged (sweep, trial, status): 1 for the trial's status, 0 for the others
SWEEP_TRIALS = "fgray_sweep_trials"  # tagged (sweep, state): how many trials are in each state
STATES = ("running", "finished", "stopped", "failed")


class MetricsExporter(Callback):
    """Gauges for every trial-epoch and every trial's state (``STATES``): a trial that ends before
    its last epoch was stopped by ASHA, one that raised failed."""

    def __init__(self, sweep: str, metric: str):
        self.sweep, self.metric = sweep, metric
        self.states: dict[str, str] = {}
        self._gauges: dict[str, Gauge] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment (for --resume); gauges are made anew after.
        return {**self.__dict__, "_gauges": None}

    @property
    def gauges(self) -> dict[str, Gauge]:
        if self._gauges is None:
            trial_tags = ("sweep", "trial")
            self._gauges = {name: Gauge(name, description=text, tag_keys=trial_tags)
                            for name, (_key, text) in TRIAL_GAUGES.items()}
            self._gauges[SEARCH_METRIC] = Gauge(SEARCH_METRIC, description="a trial's value of the sweep's search "
                                                "metric", tag_keys=(*trial_tags, "metric"))
            self._gauges[TRIAL_STATUS] = Gauge(TRIAL_STATUS, description="1 for a trial's current status",
                                               tag_keys=(*trial_tags, "status"))
            self._gauges[SWEEP_TRIALS] = Gauge(SWEEP_TRIALS, description="trials of a sweep in each state",
                                               tag_keys=("sweep", "state"))
        return self._gauges

    def _tags(self, trial) -> dict[str, str]:
        return {"sweep": self.sweep, "trial": trial.trial_id}

    def _set_state(self, trial, state: str) -> None:
        self.states[trial.trial_id] = state
        for each in STATES:
            self.gauges[TRIAL_STATUS].set(float(each == state), tags={**self._tags(trial), "status": each})
        for each in STATES:
            self.gauges[SWEEP_TRIALS].set(float(sum(s == each for s in self.states.values())),
                            tags={"sweep": self.sweep, "state": each})

    def on_trial_start(self, iteration, trials, trial, **info):
        self._set_state(trial, "running")

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._set_state(trial, "running")

    def on_trial_result(self, iteration, trials, trial, result: dict[str, Any], **info):
        if result.get(SETTINGS_ERROR):  # no epoch, and the metric's worst value: nothing to chart
            return
        tags = self._tags(trial)
        for name, (key, _text) in TRIAL_GAUGES.items():
            value = result.get(key)
            if isinstance(value, (int, float)):
                self.gauges[name].set(float(value), tags=tags)
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            self.gauges[SEARCH_METRIC].set(float(value), tags={**tags, "metric": self.metric})

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if last.get(SETTINGS_ERROR):  # ended by settings that cannot train (results.settings_failure)
            self._set_state(trial, "failed")
            return
        ended = last.get("epoch", 0) >= last.get("trial_epochs", 0)
        self._set_state(trial, "finished" if ended else "stopped")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._set_state(trial, "failed")
