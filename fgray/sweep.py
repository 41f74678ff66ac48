"""``python -m fgray.sweep SWEEP.yaml``: a sweep file -> Ray Tune (Optuna + ASHA) -> report.

Bad input exits 2 with one line: a schema error (an unknown key, a bad value) or a storage one (a
sweep already there, nothing to resume) before Ray starts; one that the checks loading timm and the
methods find (a model name, a weights file) once the local Ray started beside them is stopped; and,
once Ray is up, before any trial (``fgray.sweep_checks``): a path of this machine on a cluster, a
trial's resources that fit no node type, settings the dataset's splits cannot train.
Uses the running cluster when there is one (``RAY_ADDRESS``, ``ray job submit``), otherwise
starts a local Ray instance.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import sys
import time
from typing import Any

from fgray.config import ConfigError, SweepConfig, grid_points, validate
from fgray.held_out import evaluate_best
from fgray.interrupts import Interrupted, graceful_stop, resume_command
from fgray.profiles import PROFILES
from fgray.provenance import STORAGE_VARIABLE, check_resume
from fgray.startup import Rendering, render_ahead
from fgray.sweep_file import check_deep, load_sweep
from fgray.sweep_ray import start_ray

DEFAULT_RANDOM_SAMPLES = 8
_IMPORTED = time.time()  # command_started's fallback where /proc is missing


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fgray.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="sweep file (YAML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one value (repeatable), validated like the file")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="smoke: shrink to a CPU-minutes run")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep from its storage folder")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved trials and exit")
    parser.add_argument("--storage",
                        help="results folder or URI (overrides FGRAY_STORAGE and the file's storage)")
    parser.add_argument("--force", action="store_true", help="--resume even if the sweep's settings changed")
    parser.add_argument("--verbose", action="store_true", help="keep Ray's notices that fgray hides")
    parser.add_argument("--cluster-config", metavar="PATH",
                        help="Ray autoscaler config (cluster.yaml) whose node types every trial must fit "
                             "(default: FGRAY_CLUSTER_CONFIG, else Ray's copy on a `ray up` head, else the live nodes)")
    return parser.parse_args(argv)


def resolve_storage(storage: str) -> str:
    from fgray.storage import absolute

    return absolute(storage)


def planned_trials(sweep: SweepConfig) -> tuple[list[dict[str, Any]] | None, int]:
    """(grid override rows or None for sampled searches, number of trials). An exhaustive grid (or
    the base config alone) runs each row once per seed: ``num_samples`` counts a sampled search's
    suggestions. More samples than grid points made Optuna's grid sampler repeat points at random,
    identical runs that weighted some seeds more than others in the seed statistics."""
    search = sweep.search
    if search.space or search.points:
        if search.is_grid and search.algorithm in ("auto", "grid"):
            rows = grid_points(search)
            return rows, len(rows) * search.seeds
        return None, (search.num_samples or DEFAULT_RANDOM_SAMPLES) * search.seeds
    return [{}], search.seeds


def placement(res) -> str:
    """Where a trial's processes run, as the --dry-run line says it."""
    if res.in_trial:
        return (f"placement: each trial trains in its own Tune trial process, on a node with its CPUs"
                f"{' and GPU' if res.gpus_per_worker else ''} (cluster.yaml: a GPU worker), its {res.data_actors} "
                f"view worker(s) forked beside it")
    driver = ("on a node with " + ", ".join(f"{k} {v:g}" for k, v in res.driver_resources.items())
              if res.driver_resources else "on any node (0.01 CPU)")
    return (f"placement: a TorchTrainer per trial, {res.workers_per_trial} worker(s) each with "
            f"{res.data_actors} Ray Data view actor(s) on its node; the trial's driver {driver}")


def describe_plan(sweep: SweepConfig, storage: str) -> str:
    rows, count = planned_trials(sweep)
    res = sweep.resources
    gpus = res.workers_per_trial * res.gpus_per_worker
    longest = sweep.longest_trial  # the method's other stages (OLDFS's decoder) add epochs
    stages = f" (up to {longest} per trial with the method's other stages)" if longest != sweep.train.epochs else ""
    lines = [
        f"sweep {sweep.name}: method {sweep.method.name}, data {sweep.data.name} ({sweep.data.protocol}), "
        f"backbone {sweep.backbone.name}, {sweep.train.epochs} epochs{stages} x batch {sweep.train.batch_size}",
        f"trials: {count} ({'exhaustive grid' if rows is not None else 'Optuna TPE'}"
        f"{', ASHA on ' + sweep.search.metric if sweep.search.scheduler.name == 'asha' else ''})",
        f"resources per trial: {res.workers_per_trial} worker(s) x "
        f"{res.trial_process_cpus if res.in_trial else res.cpus_per_worker:g} CPU"
        f"{f' + {res.gpus_per_worker:g} GPU' if res.gpus_per_worker else ''}; up to {res.max_concurrent_trials} "
        f"concurrent -> needs {gpus * res.max_concurrent_trials:g} GPU(s) at full concurrency",
        placement(res),
        f"results: {storage}/{sweep.name}",
    ]
    if sweep.eval.transfer:
        lines.insert(2, "also tested, without training, on: " + ", ".join(
            f"{t.name} ({t.reader}, {t.images} images{f', first {t.classes} classes' if t.classes else ''})"
            for t in sweep.eval.transfer))
    if not sweep.has_validation:
        lines.insert(2, "no validation split (data.val_fraction 0): no early stopping; "
                        "every row's final model is tested")
    if rows is not None:
        lines += [f"  trial {i + 1}: " + (", ".join(f"{k}={_short(v)}" for k, v in row.items()) or "(base config)")
                  for i, row in enumerate(rows)]
    else:
        lines += [f"  {k}: {d.kind} {_short(getattr(d, d.kind))}" for k, d in sweep.search.space.items()]
    return "\n".join(lines + feed_lines(sweep, rows))


def feed_lines(sweep: SweepConfig, rows: list[dict[str, Any]] | None) -> list[str]:
    """Per GPU trial, its view workers' rate against its GPU step's (``fgray.feed``): one line when every
    trial shares it, else one per trial; a warning where a trial would wait for its views."""
    from fgray import feed

    per_trial = [feed.experiment_line(sweep.experiment(row, deep=False)) for row in (rows or [{}])]
    if not any(per_trial):
        return []
    if len(set(per_trial)) == 1:
        return [f"feed{' (every trial)' if len(per_trial) > 1 else ''}: {per_trial[0]}"]
    return [f"  trial {i + 1} feed: {line}" for i, line in enumerate(per_trial) if line]


def _short(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def preflight(sweep: SweepConfig) -> None:
    """Checks that need more than the schema (e.g. pretrained weights on disk), before trials start."""
    from fgray.methods.registry import method_class

    for overrides in (grid_points(sweep.search) if sweep.search.is_grid else [{}]):
        experiment = sweep.experiment(overrides)
        method_class(experiment.method.name).preflight(experiment.method)


# --------------------------------------------------------------------------------------------
# Ray side (imported lazily: a schema error is rejected before Ray is even imported)


def experiment_exists(storage: str, name: str) -> bool:
    from ray import tune

    from fgray.storage import ray_storage

    return tune.Tuner.can_restore(*ray_storage(f"{storage}/{name}"))


def build_search(sweep: SweepConfig):
    """(param_space, search_alg, num_samples) for Tune from the validated search section."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from fgray.results import POINT_KEY, SEED_KEY

    search = sweep.search
    rows, num_samples = planned_trials(sweep)
    space: dict[str, Any] = {}
    if rows is not None:  # exhaustive: Optuna's GridSampler over grid keys and table-row indices
        grid = {k: list(d.grid) for k, d in search.space.items()}
        if search.points:
            grid[POINT_KEY] = list(range(len(search.points)))
        if search.seeds > 1:  # seed repeats: one more grid axis
            grid[SEED_KEY] = [sweep.train.seed + i for i in range(search.seeds)]
        if not grid:
            return {}, None, num_samples
        space = {k: tune.choice(v) for k, v in grid.items()}
        return space, OptunaSearch(sampler=optuna.samplers.GridSampler(grid, seed=search.seed)), num_samples
    makers = {"uniform": tune.uniform, "loguniform": tune.loguniform,
              "randint": lambda lo, hi: tune.randint(lo, hi + 1)}
    for key, dist in search.space.items():
        space[key] = tune.choice(dist.choice) if dist.kind == "choice" else makers[dist.kind](*getattr(dist, dist.kind))
    searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=search.seed))
    if search.seeds > 1:  # each suggestion runs with every seed; TPE sees the mean over them
        from ray.tune.search import Repeater

        searcher = Repeater(searcher, repeat=search.seeds, set_index=True)
    return space, searcher, num_samples


def build_tuner(sweep: SweepConfig, storage: str, resume: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from fgray.cli_progress import ProgressPrinter
    from fgray.cluster_fit import trial_bundle
    from fgray.results import objective
    from fgray.storage import ray_storage
    from fgray.sweep_metrics import MetricsExporter
    from fgray.trial import trial_driver

    res, search = sweep.resources, sweep.search
    trainable = tune.with_resources(  # the bundle the start of the sweep checked against the node types
        tune.with_parameters(trial_driver, sweep=sweep.model_dump(mode="json"), storage=storage), trial_bundle(res))
    storage_path, filesystem = ray_storage(storage)  # an S3 endpoint reaches Ray through the filesystem
    if resume:
        return tune.Tuner.restore(ray_storage(f"{storage}/{sweep.name}")[0], trainable=trainable,
                                  resume_unfinished=True, resume_errored=True, storage_filesystem=filesystem)
    space, search_alg, num_samples = build_search(sweep)
    # Without a validation split nothing can be compared while trials run: no early stopping, and
    # the searcher (a grid) is handed the epoch count.
    metric, mode = objective(sweep)
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=sweep.longest_trial,
                               grace_period=search.scheduler.grace_period,
                               reduction_factor=search.scheduler.reduction_factor)
                 if search.scheduler.name == "asha" and sweep.has_validation else FIFOScheduler())
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=search_alg, scheduler=scheduler,
                                    num_samples=num_samples, max_concurrent_trials=res.max_concurrent_trials,
                                    # A trial that trains in its process hands it to the next trial (no process
                                    # start, torch imported). A TorchTrainer's driver is never reused: it keeps
                                    # its finished trainer's controller and placement group (CPUs/GPUs) alive.
                                    reuse_actors=res.in_trial),
        run_config=tune.RunConfig(name=sweep.name, storage_path=storage_path, storage_filesystem=filesystem,
                                  verbose=0,
                                  callbacks=[ProgressPrinter(sweep.longest_trial, search.metric),
                                             MetricsExporter(sweep.name, search.metric)],
                                  # Tune retries a failed trial (a one-worker trial's training, a DDP trial's
                                  # driver, which resumes its Train run) from its checkpoint; Train retries a
                                  # DDP worker group only after a node preemption (trial.py).
                                  failure_config=tune.FailureConfig(max_failures=res.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )


def run_sweep(sweep: SweepConfig, storage: str, resume: bool = False, record: bool = True,
              verbose: bool = False, data_ready: Rendering | None = None,
              cluster_config: str | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep, evaluate the best trials on test, write the report. ``record``: store
    the sweep and fgray version with the results (a new sweep, or a forced resume); ``data_ready``:
    ``render_ahead``'s dataset (None: resolved here); ``cluster_config``: ``--cluster-config``."""
    from fgray.report import write_outputs
    from fgray.results import collect_trials

    start_ray(verbose)
    from fgray import provenance
    from fgray.sweep_checks import before_trials
    from fgray.trial_inputs import prepare_frozen

    # Shared storage and paths, resources that fit a node, settings the data can train: before any trial.
    before_trials(sweep, storage, data_ready, cluster_config)
    if record:
        provenance.record(sweep, storage)

    prepare_frozen(sweep, storage)  # frozen models' caches and boxes, before trials hold the resources
    with graceful_stop() as stop:
        results = build_tuner(sweep, storage, resume).fit()
    if stop.signum is not None:  # Tune saved its state; unfinished trials are neither tested nor reported
        raise Interrupted(stop.signum)
    trials = collect_trials(results, storage, sweep.name, epochs=sweep.longest_trial,
                            points=sweep.search.points, base_seed=sweep.train.seed)
    tests = evaluate_best(sweep, storage, trials)
    return write_outputs(sweep, storage, trials, tests)


def check_storage(sweep: SweepConfig, storage: str, resume: bool, force: bool) -> None:
    """A sweep already in the storage (refused without ``--resume``), or the one to resume; storage
    that cannot be reached (no such bucket, no credentials, no network) is one line naming the cause."""
    from fgray.storage import check_reachable

    try:
        check_reachable(storage)
        exists = experiment_exists(storage, sweep.name)
    except OSError as err:  # pyarrow's filesystem errors: the first line says what failed
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"storage {storage}: cannot be reached ({cause})") from None
    if exists and not resume:
        raise ConfigError(f"{storage}/{sweep.name} already holds a sweep: pass --resume to continue it, "
                          f"or --set name=... / --storage ... for a new one")
    if resume and not exists:
        raise ConfigError(f"--resume: no sweep to resume in {storage}/{sweep.name}")
    if resume:
        check_resume(sweep, storage, force)


def checked(sweep: SweepConfig) -> SweepConfig:
    """The checks that load timm and the methods' code: model names and arguments, the method's
    files (``preflight``)."""
    sweep = check_deep(sweep)
    preflight(sweep)
    return sweep


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sweep = load_sweep(args.sweep, args.set, args.profile, deep=False)
        override = args.storage or os.environ.get(STORAGE_VARIABLE)  # cluster.yaml sets the variable
        if override:
            sweep = validate(SweepConfig, {**sweep.model_dump(), "storage": override}, deep=False)
        storage = resolve_storage(sweep.storage)
        if args.dry_run:
            from fgray.preflight import dry_run_checks

            sweep = check_deep(sweep)
            fits = dry_run_checks(sweep, storage, args.cluster_config)  # against cluster.yaml's node types
            print(describe_plan(sweep, storage) + (f"\n{fits}" if fits else ""))
            return 0
        # The synthetic set renders in a forked process from here on (before this process imports
        # Ray Tune for the storage check), beside the checks that load timm, in a thread, and Ray's
        # start, mostly waiting for its processes, in the main thread (ray.init wants it).
        data_ready = render_ahead(sweep.data)
        check_storage(sweep, storage, args.resume, args.force)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        checks = pool.submit(checked, sweep)
        ours = start_ray(args.verbose)
        try:
            sweep = checks.result()
        except BaseException as err:
            if ours:
                import ray

                ray.shutdown()
            if not isinstance(err, ConfigError):
                raise
            print(f"error: {err}", file=sys.stderr)
            return 2
    print(describe_plan(sweep, storage).splitlines()[0], flush=True)
    try:
        summary = run_sweep(sweep, storage, resume=args.resume, record=not args.resume or args.force,
                            verbose=args.verbose, data_ready=data_ready, cluster_config=args.cluster_config)
    except ConfigError as err:  # found once Ray is up: the cluster's shape, a dataset missing there
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"interrupted ({stop}): the sweep's state is saved in {storage}/{sweep.name}; nothing was "
              f"tested and no report written. Continue it with:\n  {resume_command(argv)}", file=sys.stderr,
              flush=True)
        return stop.exit_code
    print(f"done in {time.time() - command_started():.0f} s: {summary['report']}", flush=True)
    return 0 if summary["num_completed"] > 0 else 1


def command_started() -> float:
    """When this command started, in ``time.time()``'s seconds: the process's start on Linux (so the
    interpreter's imports, the checks and Ray's start count: the end line is the wall time its user
    waited), elsewhere when this module was imported."""
    try:
        with open("/proc/self/stat") as stat:  # field 22, starttime: clock ticks after boot
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as stat:
            boot = next(int(line.split()[1]) for line in stat if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


def exit_now(code: int) -> None:
    """Stop Ray, flush, and leave without the interpreter's teardown: after Ray's, its C++ side held
    the prompt seconds more after everything was written (bench/README.md, small_trial.py)."""
    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
