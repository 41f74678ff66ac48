"""Pictures for report.md: a paper table read as the paper prints it, ours beside the paper's.

- ``table_figure``: a table over one knob as the metric against the knob (mean ± std over seeds;
  bars for a categorical knob such as ``method.name``), over two knobs as a heatmap of the grid (mean
  over seeds), with the paper's values in a second panel. Rows in knob order, not trial order.
- ``curves_figure``: the search metric per epoch, one line per row with a band for the spread over
  its seeds (one line per trial without seed repeats).
Plain matplotlib, each function returns PNG bytes (None when there is nothing to draw).
"""
from __future__ import annotations

import io
import math
from typing import Any, Sequence

import pandas as pd

from fgray.results import SEED_KEY, finite


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    image = io.BytesIO()
    fig.tight_layout()
    fig.savefig(image, format="png", dpi=110)
    _pyplot().close(fig)
    return image.getvalue()


def knobs(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The keys whose values differ between rows (the table's axes), in the order rows name them,
    less those another axis decides (a leaderboard's ``backbone.name`` or ``method.beta`` follow its
    ``method.name``: one axis, not three)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["overrides"] if k not in keys and k != SEED_KEY]
    remaining = [k for k in keys if len({_label(r["overrides"].get(k)) for r in rows}) > 1]
    axes: list[str] = []
    while remaining:  # the key that decides the most others first (row keys may come sorted by name)
        axis = max(remaining, key=lambda k: sum(_decides(rows, k, other) for other in remaining))
        axes.append(axis)
        remaining = [k for k in remaining if k != axis and not _decides(rows, axis, k)]
    return sorted(axes, key=keys.index)


def _decides(rows: Sequence[dict[str, Any]], axis: str, key: str) -> bool:
    """Every value of ``axis`` goes with one value of ``key``."""
    seen: dict[str, str] = {}
    for row in rows:
        value = _label(row["overrides"].get(axis))
        if seen.setdefault(value, _label(row["overrides"].get(key))) != _label(row["overrides"].get(key)):
            return False
    return True


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def knob_order(value: Any) -> tuple:
    """Numbers by value, then everything else by its text (a knob's axis order)."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, "") if numeric else (1, 0, _label(value))


def table_figure(rows: Sequence[dict[str, Any]], paper: Sequence[float | None], metric: str,
                 paper_metric: str) -> bytes | None:
    """``rows``: ``seed_table`` entries with ``ours`` = {"mean", "std"} (percent) set by the caller;
    ``paper``: the published value per row (percent) or None. One or two knobs; else None."""
    axes = knobs(rows)
    if not rows or len(axes) not in (1, 2) or not any(finite(r["ours"]["mean"]) for r in rows):
        return None
    has_paper = any(p is not None for p in paper)
    if len(axes) == 1:
        return _one_knob(rows, paper, axes[0], metric, paper_metric, has_paper)
    return _two_knobs(rows, paper, axes, metric, paper_metric, has_paper)


def _one_knob(rows, paper, key, metric, paper_metric, has_paper) -> bytes:
    plt = _pyplot()
    order = sorted(range(len(rows)), key=lambda i: knob_order(rows[i]["overrides"].get(key)))
    values = [rows[i]["overrides"].get(key) for i in order]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    means = [rows[i]["ours"]["mean"] for i in order]
    stds = [rows[i]["ours"]["std"] if finite(rows[i]["ours"]["std"]) else 0.0 for i in order]
    fig, panels = plt.subplots(1, 2 if has_paper else 1, figsize=(9 if has_paper else 5.5, 3.8), squeeze=False)
    ax = panels[0][0]
    if numeric:
        ax.errorbar(values, means, yerr=stds, marker="o", capsize=4)
        ax.set_xticks(values, [_label(v) for v in values])
    else:
        ax.bar(range(len(values)), means, yerr=stds, capsize=4, color="tab:blue")
        ax.set_xticks(range(len(values)), [_label(v) for v in values], rotation=30, ha="right")
    ax.set(title="ours (mean ± std over seeds)", xlabel=key, ylabel=f"{metric} (%)")
    ax.grid(alpha=0.3)
    if has_paper:
        ax = panels[0][1]
        published = [paper[i] if paper[i] is not None else math.nan for i in order]
        if numeric:
            ax.plot(values, published, marker="s", color="tab:orange")
            ax.set_xticks(values, [_label(v) for v in values])
        else:
            ax.bar(range(len(values)), published, color="tab:orange")
            ax.set_xticks(range(len(values)), [_label(v) for v in values], rotation=30, ha="right")
        ax.set(title="paper (its data and schedule)", xlabel=key, ylabel=f"{paper_metric} (%)")
        ax.grid(alpha=0.3)
    return _png(fig)


def table_grid(rows: Sequence[dict[str, Any]], first: str, second: str, values: Sequence[Any]) -> pd.DataFrame:
    """``values`` (one per row) laid on the grid of two knobs: ``first`` down, ``second`` across, each
    in knob order; NaN where no row sits."""
    ys = sorted({_label(r["overrides"].get(first)): r["overrides"].get(first) for r in rows}.values(), key=knob_order)
    xs = sorted({_label(r["overrides"].get(second)): r["overrides"].get(second) for r in rows}.values(),
                key=knob_order)
    grid = pd.DataFrame(math.nan, index=[_label(y) for y in ys], columns=[_label(x) for x in xs])
    for row, value in zip(rows, values):
        if value is not None:
            grid.loc[_label(row["overrides"].get(first)), _label(row["overrides"].get(second))] = value
    return grid


def _two_knobs(rows, paper, axes, metric, paper_metric, has_paper) -> bytes:
    plt = _pyplot()
    first, second = axes
    grids = {"ours": table_grid(rows, first, second, [r["ours"]["mean"] for r in rows]),
             "std": table_grid(rows, first, second, [r["ours"]["std"] for r in rows]),
             "paper": table_grid(rows, first, second, paper)}
    ys, xs = list(grids["ours"].index), list(grids["ours"].columns)
    shown = [("ours", f"ours: {metric} (%), mean ± std over seeds")]
    if has_paper:
        shown.append(("paper", f"paper: {paper_metric} (%), its data and schedule"))
    fig, panels = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 0.6 * len(ys) + 2.6), squeeze=False)
    for ax, (name, title) in zip(panels[0], shown):
        grid = grids[name]
        image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, fraction=0.046)
        ax.set_xticks(range(len(xs)), xs)
        ax.set_yticks(range(len(ys)), ys)
        ax.set(title=title, xlabel=second, ylabel=first)
        for i, y in enumerate(grid.index):
            for j, x in enumerate(grid.columns):
                value = grid.loc[y, x]
                if not finite(value):
                    continue
                spread = grids["std"].loc[y, x] if name == "ours" else math.nan
                text = f"{value:.1f}" + (f"\n±{spread:.1f}" if finite(spread) else "")
                bright = image.norm(value) > 0.6  # dark text on viridis' light end
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if bright else "white")
    return _png(fig)


def curves_figure(progress: dict[str, pd.DataFrame], row_of: dict[str, str], metric: str) -> bytes | None:
    """``progress``: trial id -> its per-epoch results (``epoch`` and ``metric`` columns); ``row_of``:
    trial id -> its row's label. One line per row: the mean over its seeds per epoch, with a band
    of ± one std where it has more than one seed."""
    frames = [frame.assign(row=row_of.get(trial, trial))[["row", "epoch", metric]]
              for trial, frame in progress.items() if metric in frame and "epoch" in frame]
    if not frames:
        return None
    data = pd.concat(frames)
    data = data[data[metric].map(finite)]
    if data.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row, group in data.groupby("row", sort=True):
        stats = group.groupby("epoch")[metric].agg(["mean", "std", "count"]).sort_index()
        line, = ax.plot(stats.index, 100 * stats["mean"], marker="o", label=str(row))
        spread = stats["std"].where(stats["count"] > 1)
        if spread.notna().any():
            ax.fill_between(stats.index, 100 * (stats["mean"] - spread), 100 * (stats["mean"] + spread),
                            alpha=0.2, color=line.get_color())
    ax.set(xlabel="epoch", ylabel=f"{metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)
