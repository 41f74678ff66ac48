"""The console during a sweep: one line per trial-epoch and per trial outcome, in place of Tune's
tables. A Tune callback, so it sits with the CLI (``fgray.sweep`` imports it once Ray is up)."""
from __future__ import annotations

from ray.tune import Callback

from fgray.report import format_value
from fgray.results import SETTINGS_ERROR, error_line, error_tail


class ProgressPrinter(Callback):
    """Replaces Tune's tables with one readable line per trial-epoch and per trial outcome."""

    def __init__(self, epochs: int, metric: str):
        self.epochs, self.metric = epochs, metric
        self.names: dict[str, str] = {}

    def _name(self, trial) -> str:
        # Short running numbers: Tune's ids are hard to tell apart in a scrolling console.
        return self.names.setdefault(trial.trial_id,
                                     f"trial {len(self.names) + 1:>2} ({trial.trial_id})")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(SETTINGS_ERROR):  # its last result (results.settings_failure): it ends, not retried
            print(f"{self._name(trial)} FAILED (its settings cannot train; not retried): {result[SETTINGS_ERROR]}",
                  flush=True)
            return
        losses = " ".join(f"{k.removeprefix('train/')} {v:.3f}" for k, v in result.items()
                          if k.startswith("train/loss") and isinstance(v, (int, float)))
        value = result.get(self.metric)
        shown = f"{self.metric} {format_value(self.metric, value)}" if value is not None else ""
        epochs = result.get("trial_epochs", self.epochs)  # rows can differ (a method's optional stage)
        print(f"{self._name(trial)} epoch {result.get('epoch', '?')}/{epochs}  {losses}  "
              f"{shown}  [{result.get('train/images_per_s', 0):.0f} img/s, "
              f"{result.get('time/epoch_s', 0):.0f} s]", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (trial.last_result or {}).get(SETTINGS_ERROR):
            return  # its FAILED line is out
        params = ", ".join(f"{k}={format_value('', v)}" for k, v in (trial.config or {}).items())
        print(f"{self._name(trial)} finished  {params}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        # The trial's error.txt (its actor's log may hold several trials: Tune reuses actors).
        error = trial.get_error()
        print(f"{self._name(trial)} FAILED: {error_line(error) or 'see its error.txt'}", flush=True)
        for line in error_tail(error):
            print(f"    {line}", flush=True)
