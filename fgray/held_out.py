"""The held-out evaluation after a sweep: which trials are tested, grouped into shared passes, and
their metrics (test split, ``eval.transfer`` datasets, untrained baseline) printed and returned
for ``fgray.report``. No Ray here: the scoring function is passed in (``fgray.eval.distributed``
by default), so tests run it with a fake one.
"""
from __future__ import annotations

from typing import Any, Callable

from fgray.config import ExperimentConfig, SweepConfig

# (models: [(experiment, checkpoint path or None for the untrained backbone)], embedding cache
# folder) -> metrics of each model, in order: its test split's, with the "split" they were scored on,
# and each eval.transfer dataset's as "<name>/<metric>", with "<name>/split" (which images).
EvaluateSplit = Callable[[list[tuple[ExperimentConfig, str | None]], str | None],
                         list[dict[str, Any]]]
Models = list[tuple[str, tuple[ExperimentConfig, "str | None"]]]  # (name, (experiment, checkpoint))


def evaluate_best(sweep: SweepConfig, storage: str, trials: list[dict[str, Any]],
                  evaluate: EvaluateSplit | None = None) -> dict[str, Any]:
    """Test metrics of every seed of the best ``eval.test_top`` rows (chosen on the mean validation
    metric over their seeds; a row is one trial without seed repeats) and of the untrained backbone
    of each of those seeds, each printed as one line per dataset (test split, then each transfer set).

    Models that share their data and eval settings are evaluated together: one decode and one
    actor start per split. ``evaluate(models, cache_dir)`` scores a group (default:
    ``fgray.eval.distributed.evaluate_split``; tests pass a fake one and need no Ray).
    Returns {"trials": {id: metrics}, "protocol": test split, "transfer": {name: its images},
    "baseline": metrics (mean over seeds, per seed in "seeds")}.
    """
    from fgray.results import SEED_KEY

    if evaluate is None:
        from fgray.eval.distributed import evaluate_split as evaluate
    best, first_row = tested_trials(sweep, trials)
    models: Models = [(t["trial_id"], (sweep.experiment(t["overrides"]), t["checkpoint"])) for t in best]
    seeds = sorted({t["overrides"].get(SEED_KEY, sweep.train.seed) for t in best})
    own: dict[str, str] = {}  # trial id -> its untrained model, where it is not the baseline's
    if best and sweep.eval.baseline:  # the untrained backbone of every evaluated seed: paired gains
        baseline_models = [(f"baseline@{seed}", (sweep.experiment({**first_row, SEED_KEY: seed}), None))
                           for seed in seeds]
        untrained = {_untrained_key(model[0]): name for name, model in baseline_models}
        for trial in best:  # rows of other methods or backbones (a leaderboard): each its own untrained model
            experiment = sweep.experiment({**trial["overrides"]})
            key = _untrained_key(experiment)
            if key not in untrained:
                untrained[key] = f"untrained@{len(untrained)}"
                baseline_models.append((untrained[key], (experiment, None)))
            if untrained[key] not in dict(baseline_models[: len(seeds)]):
                own[trial["trial_id"]] = untrained[key]
        models += baseline_models
    results = _score_groups(models, f"{storage}/{sweep.name}/_embeddings", evaluate)

    out: dict[str, Any] = {"trials": {}}
    for trial in best:
        result = _take_splits(results[trial["trial_id"]], out)
        out["trials"][trial["trial_id"]] = result
        _print_result(f"test ({trial['trial_id']})", result, sweep)
    baselines = {seed: _take_splits(results[f"baseline@{seed}"], {})  # the trials' splits are recorded
                 for seed in seeds if f"baseline@{seed}" in results}
    if baselines:
        out["baseline"] = _baseline(baselines, dict(models)[f"baseline@{seeds[0]}"][0], sweep)
    if own:  # paired with the trial: the same method, backbone and seed, untrained
        out["untrained"] = {trial_id: _take_splits(dict(results[name]), {}) for trial_id, name in own.items()}
    return out


def _untrained_key(experiment: ExperimentConfig) -> str:
    """What decides an untrained model's embedding: its method and backbone, and the seed of its init."""
    return (experiment.method.name + experiment.backbone.model_dump_json()
            + str(experiment.train.seed) + experiment.data.model_dump_json())


def tested_trials(sweep: SweepConfig, trials: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict]:
    """(the trials to test, the overrides of the best row: what the untrained baseline is built from)."""
    from fgray.results import seed_rows

    metric = sweep.search.metric
    if sweep.has_validation:
        rows = [r for r in seed_rows(trials, metric, sweep.search.mode) if r["values"]][: sweep.eval.test_top]
        best = [t for r in rows for t in r["trials"] if t["checkpoint"] and metric in t["metrics"]]
    else:  # nothing to choose by: every row's final model is tested
        rows = seed_rows(trials, metric, sweep.search.mode)
        best = [t for r in rows for t in r["trials"] if t["checkpoint"] and t["status"] == "completed"]
    return best, rows[0]["overrides"] if rows else {}


def _score_groups(models: Models, cache_dir: str, evaluate: EvaluateSplit) -> dict[str, dict[str, Any]]:
    """Each model's metrics; models sharing data and eval settings (so also transfer sets) in one call."""
    groups: dict[str, Models] = {}
    for name, model in models:
        key = model[0].data.model_dump_json() + model[0].eval.model_dump_json()
        groups.setdefault(key, []).append((name, model))
    results: dict[str, dict[str, Any]] = {}
    for group in groups.values():
        results.update(zip([name for name, _ in group], evaluate([model for _, model in group], cache_dir)))
    return results


def _take_splits(result: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """``result`` without its split descriptions, which go to out["protocol"] and out["transfer"][name]."""
    out["protocol"] = result.pop("split")
    for key in [k for k in result if k.endswith("/split")]:
        out.setdefault("transfer", {})[key.removesuffix("/split")] = result.pop(key)
    return result


def _baseline(baselines: dict[int, dict[str, Any]], experiment: ExperimentConfig,
              sweep: SweepConfig) -> dict[str, Any]:
    """The untrained backbone's metrics: one seed's, or the mean over seeds (each seed's in "seeds")."""
    from fgray.results import mean_std

    init = "pretrained weights" if experiment.backbone.pretrained else "random init"
    first = next(iter(baselines.values()))
    baseline = dict(first) if len(baselines) == 1 else {
        k: mean_std([b[k] for b in baselines.values()])["mean"]
        for k, v in first.items() if isinstance(v, (int, float))}
    baseline["init"] = init
    if len(baselines) > 1:
        baseline["seeds"] = {str(seed): b for seed, b in baselines.items()}
    seeds = f", mean of {len(baselines)} seeds" if len(baselines) > 1 else ""
    _print_result(f"test (untrained {experiment.backbone.name}, {init}{seeds})", baseline, sweep)
    return baseline


def _print_result(label: str, result: dict[str, Any], sweep: SweepConfig) -> None:
    """One console line for the test split, one per transfer dataset the result holds."""
    print(f"{label}: {headline(result)}", flush=True)
    for transfer in sweep.eval.transfer:
        if f"{transfer.name}/recall@1" in result:
            print(f"{label} on {transfer.name}: {headline(result, transfer.name + '/')}", flush=True)


def headline(result: dict[str, Any], prefix: str = "") -> str:
    """recall@1 (and the first linear probe's top-1) of a result, in percent."""
    probe = [k for k in result if k.startswith(prefix + "probe@") and k.endswith("/top1")]
    return (f"recall@1 {100 * result[prefix + 'recall@1']:.2f}%"
            + (f", {probe[0].removeprefix(prefix)} {100 * result[probe[0]]:.2f}%" if probe else ""))
