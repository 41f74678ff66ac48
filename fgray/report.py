"""Renders a sweep's trial records (``fgray.results``) into ``summary.json``,
``results.parquet``, ``report.md`` (ours beside the paper's table) and plots in
``<storage>/<sweep name>/``. No Ray here: the console lines during a sweep are
``fgray.cli_progress``'s."""
from __future__ import annotations

import io
import json
import posixpath
from typing import Any

import pandas as pd
import pyarrow.fs as pafs

from fgray.config import PaperRow, SweepConfig
from fgray.report_plots import curves_figure, knob_order, knobs, table_figure
from fgray.results import finite, mean_std, rank_trials, seed_rows, seed_table
from fgray.storage import filesystem, write_bytes

PERCENT_METRICS = ("recall@", "map", "rank@", "probe@")
SOURCES = ("paper", "draft")  # PaperRow.source: the final text's cells, an earlier manuscript's


def format_value(key: str, value: Any) -> str:
    """A value as the console and report.md show it: metrics in %, other floats to 4 digits."""
    if isinstance(value, float):
        return f"{100 * value:.2f}%" if any(p in key for p in PERCENT_METRICS) else f"{value:.4g}"
    return str(value)


def _matching_rows(sweep: SweepConfig, overrides: dict[str, Any]) -> list[PaperRow]:
    """The paper rows whose ``match`` the configuration (the sweep with ``overrides``) satisfies."""
    experiment = sweep.experiment(overrides).model_dump()
    return [row for row in sweep.paper.rows
            if all(_plain(_lookup(experiment, k)) == _plain(v) for k, v in row.match.items())]


def _paper_row(sweep: SweepConfig, overrides: dict[str, Any]) -> PaperRow | None:
    """The first paper row (any source) that matches: whether a configuration has published values."""
    return next(iter(_matching_rows(sweep, overrides)), None)


def published(sweep: SweepConfig, overrides: dict[str, Any]) -> dict[str, dict[str, float] | None]:
    """The published values of a configuration per source ("paper", "draft"): the metrics of every
    paper row that matches it, merged (the first row wins a metric two rows give), or None."""
    found: dict[str, dict[str, float] | None] = {source: None for source in SOURCES}
    for row in _matching_rows(sweep, overrides):
        found[row.source] = {**row.metrics, **(found[row.source] or {})}
    return found


def _own(values: dict[str, Any] | None, sweep: SweepConfig, prefix: str = "") -> dict[str, Any]:
    """One dataset's metrics: the test split's (``prefix`` "") or a transfer set's ("<name>/" cut off)."""
    transfer = tuple(f"{t.name}/" for t in sweep.eval.transfer)
    return {k.removeprefix(prefix): v for k, v in (values or {}).items()
            if (k.startswith(prefix) if prefix else not k.startswith(transfer))}


def _plain(value: Any) -> Any:
    """Tuples (validated config) and lists (YAML) compare equal: e.g. method.ica.targets [q, k]."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _lookup(tree: dict, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def write_outputs(sweep: SweepConfig, storage: str, trials: list[dict[str, Any]],
                  tests: dict[str, Any]) -> dict[str, Any]:
    """Write summary.json, results.parquet, report.md and plots; return the summary."""
    out_dir = f"{storage}/{sweep.name}"
    metric, mode = sweep.search.metric, sweep.search.mode
    for trial in trials:
        trial["test"] = tests.get("trials", {}).get(trial["trial_id"])
        trial.update(published(sweep, trial["overrides"]))  # trial["paper"], trial["draft"]
    rows = seed_table(trials, tests.get("baseline"), metric, mode, untrained=tests.get("untrained"))
    # The best trial: the best seed of the best row (the best trial itself without seed repeats).
    best_row = [t for t in trials if rows and t["trial_id"] in rows[0]["trials"] and t["checkpoint"]]
    ranked = rank_trials(best_row, metric, mode)
    summary = {
        "name": sweep.name,
        "method": sweep.method.name,
        "data": {"name": sweep.data.name, "protocol": sweep.data.protocol, "split": tests.get("protocol")},
        "metric": sweep.search.metric,
        "mode": sweep.search.mode,
        "num_trials": len(trials),
        "num_completed": sum(t["status"] != "error" for t in trials),
        "num_errors": sum(t["status"] == "error" for t in trials),
        "best": ranked[0]["trial_id"] if ranked else None,
        "baseline": tests.get("baseline"),
        "seeds": sweep.search.seeds,
        "rows": rows,  # per configuration over its seeds: mean +- std, paired gain, within noise of the best
        "trials": trials,
        # per eval.transfer set: its images, a table per row (mean +- std over seeds), the untrained backbone
        "transfer": transfer_summary(sweep, trials, tests),
        "paper_source": sweep.paper.source,
        "report": f"{out_dir}/report.md",
    }
    summary["plots"] = write_plots(sweep, out_dir, trials, rows)
    write_bytes(f"{out_dir}/summary.json", json.dumps(summary, indent=2, default=str).encode())
    frame = results_frame(trials)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes(f"{out_dir}/results.parquet", buffer.getvalue())
    write_bytes(f"{out_dir}/report.md", markdown_report(sweep, summary, frame).encode())
    return summary


def results_frame(trials: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for t in trials:
        row = {"trial_id": t["trial_id"], "status": t["status"], "epochs": t["epochs"], "checkpoint": t["checkpoint"]}
        row.update({f"config/{k}": json.dumps(v) if isinstance(v, (list, dict)) else v
                    for k, v in t["overrides"].items()})
        row.update(t["metrics"])
        row.update({f"test/{k}": v for k, v in (t.get("test") or {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_report(sweep: SweepConfig, summary: dict[str, Any], frame: pd.DataFrame) -> str:
    metric, ks = sweep.search.metric, sweep.eval.ks
    shown = [f"recall@{k}" for k in ks[:2]] + ["map@r", "map"]
    lines = [f"# {sweep.name}", "",
             f"method **{sweep.method.name}**, backbone {sweep.backbone.name}, data {sweep.data.name} "
             f"({summary['data'].get('split') or sweep.data.protocol}); {summary['num_trials']} trials, "
             f"{summary['num_errors']} failed; search metric `{metric}` ({sweep.search.mode}). Metrics in %.", "",
             "Training stages (one epoch counter): " + " -> ".join(
                 f"{stage.name} ({stage.epochs} epochs)" for stage in sweep.method.stages(sweep.train.epochs)) + ".",
             ""]
    if not sweep.has_validation:
        lines += ["No validation split (`data.val_fraction: 0`): every row trained on the whole training split, "
                  "nothing was stopped early, and each row's final-epoch model was tested.", ""]
    keys = sorted({k for t in summary["trials"] for k in t["overrides"]})
    val_shown = shown if sweep.has_validation else []  # no validation split: no val columns
    header = ["trial", *keys, "status", "epochs", *[f"val {m}" for m in val_shown], *[f"test {m}" for m in shown]]
    values = [{source: _own(t.get(source), sweep) for source in SOURCES} for t in summary["trials"]]
    columns = _source_columns(values)
    header += [f"{source} {k}" for source, k in columns]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # Rows in knob order (then seed), not in the order trials happened to start.
    by_knobs = sorted(range(len(values)), key=lambda i: [knob_order(summary["trials"][i]["overrides"].get(k))
                                                          for k in keys])
    for t, published_values in ((summary["trials"][i], values[i]) for i in by_knobs):
        test = t.get("test") or {}
        cells = [t["trial_id"] + (" **best**" if t["trial_id"] == summary["best"] else ""),
                 *[format_value("", t["overrides"].get(k, "")) for k in keys],
                 t["status"], str(t["epochs"] or "-"),
                 *[_pct(t["metrics"].get(f"val/{m}")) for m in val_shown], *[_pct(test.get(m)) for m in shown]]
        cells += [_published_cell(published_values, source, k) for source, k in columns]
        lines.append("| " + " | ".join(cells) + " |")
    baseline = summary.get("baseline")
    if baseline:
        lines += ["", f"**Untrained backbone** (same architecture, {baseline.get('init', 'random init')}) on the same "
                  f"test split: " + ", ".join(f"{m} {_pct(baseline.get(m))}" for m in shown)]
    lines += _seed_lines(summary, sweep)
    lines += _probe_lines(summary)
    lines += _transfer_lines(summary)
    if sweep.paper.source:
        lines += ["", f"Paper values: {sweep.paper.source}. They were measured on the paper's data and schedule; "
                  "ours on the data and budget of this sweep."]
    if any(row.source == "draft" for row in sweep.paper.rows):
        lines += ["", "Draft values (`draft` columns) are an earlier manuscript's numbers, from another "
                  "setup: "
                  "they are not the published paper's."]
    errors = [t for t in summary["trials"] if t["error"]]
    if errors:
        lines += ["", "## Failed trials"]
        for t in errors:  # the cause, and where it was raised (the full text: the trial's error.txt)
            lines += [f"- {t['trial_id']}: {t['error']}"]
            if t.get("traceback"):
                lines += ["", "  ```", *[f"  {line}" for line in t["traceback"]], "  ```", ""]
    plots = summary.get("plots", [])
    if "table.png" in plots:
        lines += ["", "![the table: ours beside the paper's](table.png)"]
    if "curves.png" in plots:
        lines += ["", f"![{metric} per epoch](curves.png)"]
    return "\n".join(lines + [""])


def _seed_lines(summary: dict[str, Any], sweep: SweepConfig) -> list[str]:
    """The seed-repeat table: each configuration's mean +- std over its seeds, beside the paper; for
    rows of several methods (a leaderboard) also with one seed."""
    methods = {sweep.experiment(r["overrides"], deep=False).method.name for r in summary["rows"]}
    if summary.get("seeds", 1) < 2 and len(methods) < 2:
        return []
    metric = summary["metric"]
    keys = sorted({k for r in summary["rows"] for k in r["overrides"]})
    drafts = any(r.source == "draft" for r in sweep.paper.rows)
    # Rows of several methods (a leaderboard): supervised ones read the training labels, so they are
    # ranked in a group of their own after the self-supervised ones.
    labels = {i: sweep.experiment(r["overrides"], deep=False).method.supervised for i, r in enumerate(summary["rows"])}
    grouped = len(set(labels.values())) > 1
    by_trial = {t["trial_id"]: t for t in summary["trials"]}
    header = ["row", *keys, *(["labels"] if grouped else []), "seeds", f"val {metric.removeprefix('val/')}",
              "test recall@1", "untrained recall@1", "gain (min)", "img/s", "wall (s)", *SOURCES[: 2 if drafts else 1]]
    lines = ["", f"**Seed repeats** ({summary['seeds']} seeds per row; mean ± std in %, std over seeds; "
             "gain = test minus the untrained backbone of the same seed; img/s: training images per second "
             "in the last epoch, wall: a trial's training time, each a mean over seeds). ≈ marks rows whose "
             "validation metric is within noise of the best row (Welch's t-test, p >= 0.05)."
             + (" Supervised rows (labels: yes) train on the training classes' labels: they are ranked "
                "apart from the self-supervised ones." if grouped else ""), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i in sorted(labels, key=lambda i: (labels[i], i)):
        row = summary["rows"][i]
        values = published(sweep, row["overrides"])
        texts = [", ".join(f"{k} {v:.2f}" for k, v in _own(values[source], sweep).items()) or "-"
                 for source in SOURCES[: 2 if drafts else 1]]
        ranked = finite(row["val"].get("mean"))  # without a validation split no row is "best"
        first = i == min(j for j in labels if labels[j] == labels[i])  # the best of its group
        mark = (" **best**" if first else " ≈" if row["within_noise_of_best"] else "") if ranked else ""
        gain = row["gain"]
        members = [by_trial[t] for t in row["trials"] if t in by_trial]
        speed = mean_std([t["metrics"]["train/images_per_s"] for t in members if "train/images_per_s" in t["metrics"]])
        wall = mean_std([t["wall_s"] for t in members if finite(t.get("wall_s"))])
        cells = [f"{i + 1}{mark}", *[format_value("", row["overrides"].get(k, "")) for k in keys],
                 *(["yes" if labels[i] else "no"] if grouped else []),
                 str(len(row["seeds"])), _pm(row["val"]), _pm(row["test"]), _pm(row["untrained"]),
                 f"{_pm(gain)} ({_pct(gain['min'])})" if gain["values"] else "-",
                 f"{speed['mean']:.0f}" if finite(speed["mean"]) else "-",
                 f"{wall['mean']:.0f}" if finite(wall["mean"]) else "-", *texts]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _source_columns(values: list[dict[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    """(source, metric) columns of the published values: the paper's group, then the draft's."""
    return [(source, k) for source in SOURCES
            for k in sorted({k for v in values for k in v.get(source) or {}})]


def _published_cell(values: dict[str, dict[str, Any] | None], source: str, key: str) -> str:
    value = (values.get(source) or {}).get(key)
    return f"{value:.2f}" if value is not None else "-"


def transfer_summary(sweep: SweepConfig, trials: list[dict[str, Any]],
                     tests: dict[str, Any]) -> dict[str, Any]:
    """Per ``eval.transfer`` dataset: which images, the metrics shown, one entry per row (configuration)
    with each metric's values over its tested seeds (mean, std) and the published values, and the
    untrained backbone's metrics. Trials carry their ``test`` metrics ("<name>/recall@1", ...)."""
    rows = seed_rows(trials, sweep.search.metric, sweep.search.mode)
    out = {}
    for transfer in sweep.eval.transfer:
        prefix = f"{transfer.name}/"
        shown = [f"recall@{k}" for k in transfer.ks or sweep.eval.ks] + ["map@r", "map"]
        entries = []
        for row in rows:
            tested = [t for t in row["trials"] if finite((t.get("test") or {}).get(prefix + "recall@1"))]
            if not tested:
                continue
            metrics = {}
            for m in shown:
                values = [t["test"][prefix + m] for t in tested if finite(t["test"].get(prefix + m))]
                metrics[m] = {"values": values, **mean_std(values)}
            found = published(sweep, row["overrides"])
            entries.append({"overrides": row["overrides"], "trials": [t["trial_id"] for t in tested],
                            "metrics": metrics,
                            **{source: _own(found[source], sweep, prefix) or None for source in SOURCES}})
        baseline = _own(tests.get("baseline"), sweep, prefix)
        images = tests.get("transfer", {}).get(transfer.name)
        out[transfer.name] = {"dataset": transfer.reader, "images": images, "metrics": shown, "rows": entries,
                              "untrained": baseline or None}
    return out


def _transfer_lines(summary: dict[str, Any]) -> list[str]:
    """One table per transfer dataset: each tested row (mean ± std over its seeds), the untrained
    backbone, and the published values of the row."""
    lines = []
    for name, table in (summary.get("transfer") or {}).items():
        shown, entries = table["metrics"], table["rows"]
        keys = sorted({k for e in entries for k in e["overrides"]})
        columns = _source_columns(entries)
        header = ["trial", *keys, *shown, *[f"{source} {k}" for source, k in columns]]
        spread = ", mean ± std over seeds" if any(len(e["trials"]) > 1 for e in entries) else ""
        lines += ["", f"## Transfer: {name}", "",
                  f"Tested without training on it: {table['images'] or table['dataset']}. Each model embeds "
                  f"it with its own eval transform; metrics in %{spread}.", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for e in entries:
            stats = [e["metrics"][m] for m in shown]
            cells = [", ".join(e["trials"]), *[format_value("", e["overrides"].get(k, "")) for k in keys],
                     *[_pm(s) if len(e["trials"]) > 1 else _pct(s["mean"]) for s in stats],
                     *[_published_cell(e, source, k) for source, k in columns]]
            lines.append("| " + " | ".join(cells) + " |")
        untrained = table.get("untrained")
        if untrained:
            lines.append("| " + " | ".join([f"untrained ({summary['baseline'].get('init', 'random init')})",
                                            *[""] * len(keys), *[_pct(untrained.get(m)) for m in shown],
                                            *["-"] * len(columns)]) + " |")
    return lines


def _pm(stats: dict[str, Any]) -> str:
    return f"{_pct(stats['mean'])} ± {_pct(stats['std'])}" if finite(stats.get("mean")) else "-"


def _probe_lines(summary: dict[str, Any]) -> list[str]:
    """The linear-probe table (top-1 / top-5 % per label fraction) of the test-evaluated models."""
    models = [(f"{t['trial_id']}" + (" **best**" if t["trial_id"] == summary["best"] else ""), t["test"])
              for t in summary["trials"] if t.get("test")]
    if summary.get("baseline"):
        models.append((f"untrained ({summary['baseline'].get('init', 'random init')})", summary["baseline"]))
    keys = sorted({k for _, m in models for k in m if k.startswith("probe@")},
                  key=lambda k: (-int(k.split("@")[1].split("/")[0]), k))
    notes = sorted({m["probe_note"] for _, m in models if m.get("probe_note")})
    if not keys:
        return ["", f"Linear probe {notes[0]}."] if notes else []
    header = ["model", *[k.replace("probe@", "").replace("/", "% labels, ") for k in keys]]
    lines = ["", "**Linear probe** on frozen features (fitted on the training images, scored on test):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([name + (f" ({m['probe_note']})" if m.get("probe_note") else ""),
                                 *[_pct(m.get(k)) for k in keys]]) + " |" for name, m in models]
    return lines


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}" if finite(value) else "-"


def write_plots(sweep: SweepConfig, out_dir: str, trials: list[dict[str, Any]],
                rows: list[dict[str, Any]]) -> list[str]:
    """The pictures of the sweep (``fgray.report_plots``), written beside report.md; their file names.
    ``table.png``: the rows over their one or two knobs, ours beside the paper's; ``curves.png``: the
    search metric per epoch (none without a validation split: there is no such metric)."""
    written = []
    test_rows = [r for r in rows if r["test"]["values"]]
    use_test = bool(test_rows)
    metric = "test recall@1" if use_test else sweep.search.metric
    shown = [{**r, "ours": _percent(r["test"] if use_test else r["val"])} for r in (test_rows or rows)]
    paper_values = [_paper_value(sweep, r["overrides"]) for r in shown]
    paper_metric = next((name for value, name in paper_values if name), "")
    table = table_figure(shown, [value for value, _ in paper_values], metric, paper_metric)
    if table is not None:
        write_bytes(f"{out_dir}/table.png", table)
        written.append("table.png")
    if sweep.has_validation:
        progress = _progress(out_dir)
        axes = knobs(rows)
        row_of = {trial_id: ", ".join(f"{k}={format_value('', r['overrides'].get(k))}" for k in axes) or "all seeds"
                  for r in rows for trial_id in r["trials"]}
        curves = curves_figure(progress, row_of if sweep.search.seeds > 1 else {}, sweep.search.metric)
        if curves is not None:
            write_bytes(f"{out_dir}/curves.png", curves)
            written.append("curves.png")
    return written


def _percent(stats: dict[str, Any]) -> dict[str, float]:
    return {"mean": 100 * stats["mean"], "std": 100 * stats["std"]}


def _paper_value(sweep: SweepConfig, overrides: dict[str, Any]) -> tuple[float | None, str]:
    """The published Recall@1 (or rank-1, the same quantity) of a row, with the metric's name."""
    values = _own(published(sweep, overrides)["paper"], sweep)
    name = next((k for k in ("recall@1", "rank@1") if k in values), None)
    return (values[name], name) if name else (None, "")


def _progress(out_dir: str) -> dict[str, pd.DataFrame]:
    """Every trial's per-epoch results, from the progress.csv Tune writes in each trial's folder."""
    fs, base = filesystem(out_dir)
    found = {}
    for folder in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        path = posixpath.join(folder.path, "progress.csv")
        if folder.type != pafs.FileType.Directory or fs.get_file_info(path).type != pafs.FileType.File:
            continue
        with fs.open_input_stream(path) as stream:
            progress = pd.read_csv(io.BytesIO(stream.read()))
        trial_id = str(progress["trial_id"].iloc[0]) if "trial_id" in progress and len(progress) else folder.base_name
        found[trial_id] = progress
    return found
