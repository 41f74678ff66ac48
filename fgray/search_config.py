"""The ``search`` and ``paper`` sections of a sweep file: what varies between trials (distributions,
grids, a table's rows, seed repeats, ASHA) and the published numbers printed beside ours; with the
row arithmetic the plan, the checks and the results share (``grid_points``, ``switched_method``)."""
from __future__ import annotations

import itertools
import math
from typing import Any, Literal

from pydantic import Field, model_validator

from fgray.validation import Strict


class Distribution(Strict):
    """One searched key: exactly one of the fields is set."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None  # inclusive bounds
    choice: list[Any] | None = None
    grid: list[Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Distribution":
        kinds = [k for k in ("uniform", "loguniform", "randint", "choice", "grid") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of uniform, loguniform, randint, choice, grid")
        low_high = self.uniform or self.loguniform or self.randint
        if low_high is not None and not low_high[0] < low_high[1]:
            raise ValueError(f"{kinds[0]} needs low < high, got {list(low_high)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs low > 0, got {list(self.loguniform)}")
        if (self.choice is not None and not self.choice) or (self.grid is not None and not self.grid):
            raise ValueError(f"{kinds[0]} needs at least one value")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("uniform", "loguniform", "randint", "choice", "grid") if getattr(self, k) is not None)

    def values_to_check(self) -> list[Any]:
        """Values that must each validate in the experiment schema (bounds for ranges)."""
        return list(getattr(self, self.kind))


class SchedulerConfig(Strict):
    name: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)  # epochs before ASHA may stop a trial
    reduction_factor: float = Field(2.0, gt=1)


class SearchConfig(Strict):
    space: dict[str, Distribution] = {}  # dotted key -> distribution, e.g. method.temperature
    points: list[dict[str, Any]] = []  # explicit rows of a paper table: each a dict of dotted overrides
    algorithm: Literal["auto", "optuna", "grid"] = "auto"  # auto: grid if everything is a grid/points
    num_samples: int | None = Field(None, ge=1)  # a sampled search's trials (8); a grid runs every row
    metric: str = "val/recall@1"
    mode: Literal["max", "min"] = "max"
    seed: int = 0  # the searcher's seed (TPE / grid order), not the trials'
    # Seed repeats: every row / sampled configuration runs with train.seed, train.seed + 1, ...; the
    # report shows mean +- std per row. Grids enumerate the seeds as one more axis; sampled searches
    # repeat each suggestion (Tune's Repeater), and the searcher sees the mean over the repeats.
    seeds: int = Field(1, ge=1)
    scheduler: SchedulerConfig = SchedulerConfig()

    @property
    def is_grid(self) -> bool:
        return all(d.kind == "grid" for d in self.space.values())

    def grid_size(self) -> int:
        sizes = [len(d.grid) for d in self.space.values()] + ([len(self.points)] if self.points else [])
        return math.prod(sizes) if sizes else 1


class PaperRow(Strict):
    """A published result, matched to our trials by the config values in ``match``."""

    match: dict[str, Any]  # dotted key -> value, e.g. {method.alpha: 1.2, method.beta: 0.01}
    # e.g. {"rank@1": 53.19, "map": 26.31} (percent, as printed); a transfer set's: {"nabirds/recall@1": 79.2}
    metrics: dict[str, float]
    # paper: the final text's cells; draft: an earlier manuscript's (ASS), printed in their own columns.
    # A trial's values per source merge every row that matches it (the first row wins a repeated metric).
    source: Literal["paper", "draft"] = "paper"
    note: str = ""


class PaperConfig(Strict):
    source: str = ""  # e.g. "PP-SSL (001) Table 6, CUB-200-2011, ResNet-50"
    rows: list[PaperRow] = []


def switched_method(overrides: dict[str, Any], base: str) -> str | None:
    """The method a row switches to (``method.name`` or ``method: {name: ...}``), None if it keeps ``base``."""
    section = overrides.get("method")
    name = section.get("name") if isinstance(section, dict) else overrides.get("method.name")
    return name if name is not None and name != base else None


def grid_points(search: SearchConfig) -> list[dict[str, Any]]:
    """All override dicts of an exhaustive grid: the product of grid keys and table rows."""
    axes = [[{k: v} for v in d.grid] for k, d in search.space.items() if d.kind == "grid"]
    if search.points:
        axes.append(search.points)
    return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*axes)] if axes else [{}]
