"""The Grafana dashboard in the repository charts what fgray exports: every query names fgray's
gauges (as Ray exports them, prefixed ``ray_``) and groups by tags those gauges carry."""
from __future__ import annotations

import json
import re
from pathlib import Path

from fgray.sweep_metrics import SEARCH_METRIC, SWEEP_TRIALS, TRIAL_GAUGES, TRIAL_STATUS

DASHBOARD = Path(__file__).resolve().parent.parent / "grafana" / "fgray_dashboard.json"
TAGS = {**{name: {"sweep", "trial"} for name in TRIAL_GAUGES}, SEARCH_METRIC: {"sweep", "trial", "metric"},
        TRIAL_STATUS: {"sweep", "trial", "status"}, SWEEP_TRIALS: {"sweep", "state"}}


def _queries(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_panel_queries_a_metric_fgray_exports_by_its_tags():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = {f"ray_{name}": tags for name, tags in TAGS.items()}
    charted = set()
    for expr in _queries(dashboard):
        names = set(re.findall(r"\b(ray_fgray_\w+)", expr))
        assert names and names <= set(exported), expr
        charted |= names
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            labels = {label.strip() for label in grouping.split(",")}
            assert all(labels <= exported[name] for name in names), expr
        assert all(label in {"sweep", "trial", "metric", "status", "state"}
                   for label in re.findall(r"\{\{(\w+)\}\}", json.dumps(expr)))
    assert charted == set(exported)  # every gauge has a panel
    sweep_var = next(v for v in dashboard["templating"]["list"] if v["name"] == "sweep")
    assert re.search(r"label_values\((ray_fgray_\w+), sweep\)", sweep_var["definition"]).group(1) in exported
