"""The table of a mechanism sweep (issue 27: sweeps/*_mechanism.yaml), from its summary.json: per row
the test Recall@1 mean ± std over seeds and, paired seed by seed (same seed, same untrained backbone),
the difference to a control row, its mean ± std and its smallest value.

    python bench/mechanism_table.py ~/fgray_results/oldfs_mechanism \\
        --control method.alpha=0.0 --pair-by method.base
    python bench/mechanism_table.py ~/fgray_results/ppssl_mechanism --control method.beta=0 --control method.ais=false

``--control KEY=VALUE`` (repeatable): the control row is the one whose overrides hold all of them;
``--pair-by KEY``: each row is compared with the control row that has its value of KEY (one control
per base method). Rows are printed in the sweep's order.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

import yaml


def _matches(overrides: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(_lookup(overrides, key) == value for key, value in wanted.items())


def _lookup(overrides: dict[str, Any], key: str) -> Any:
    """A dotted key's value in a row's overrides, also inside a whole section (``method: {...}``)."""
    if key in overrides:
        return overrides[key]
    section, _, rest = key.partition(".")
    inner = overrides.get(section)
    return inner.get(rest) if isinstance(inner, dict) else None


def _pm(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"


def _label(overrides: dict[str, Any]) -> str:
    parts = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            parts += [f"{key}.{k}={v}" for k, v in value.items() if k == "name"]
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts) or "(base)"


def table(summary: dict[str, Any], control: dict[str, Any], pair_by: str | None) -> list[str]:
    rows = summary["rows"]
    by_seed = [dict(zip(r["test"]["seeds"], r["test"]["values"])) for r in rows]
    controls = [i for i, r in enumerate(rows) if _matches(r["overrides"], control)]
    lines = ["| row | seeds | test R@1 (%) | untrained (%) | paired Δ vs control (%) | smallest Δ |",
             "|---|---|---|---|---|---|"]
    for i, row in enumerate(rows):
        key = _lookup(row["overrides"], pair_by) if pair_by else None
        match = next((c for c in controls if not pair_by or _lookup(rows[c]["overrides"], pair_by) == key), None)
        if match is None or match == i:
            delta, smallest = ("control" if match == i else "-"), "-"
        else:
            diffs = [v - by_seed[match][s] for s, v in by_seed[i].items() if s in by_seed[match]]
            delta = _pm(diffs)
            smallest = f"{100 * min(diffs):+.2f}" if diffs else "-"
        lines.append(f"| {_label(row['overrides'])} | {len(by_seed[i])} | {_pm(row['test']['values'])} | "
                     f"{_pm(row['untrained']['values'])} | {delta} | {smallest} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="<storage>/<sweep name>, holding summary.json")
    parser.add_argument("--control", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--pair-by", metavar="KEY")
    args = parser.parse_args()
    with open(os.path.join(os.path.expanduser(args.folder), "summary.json")) as f:
        summary = json.load(f)
    control = {}
    for item in args.control:
        key, _, value = item.partition("=")
        control[key] = yaml.safe_load(value)
    print("\n".join(table(summary, control, args.pair_by)))


if __name__ == "__main__":
    main()
