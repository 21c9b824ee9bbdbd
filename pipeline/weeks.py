"""What the score, report and audit stages share without importing one another (each stage is its own process,
and the report has no need of the models' imports): the week a scoring date falls in, and the value x risk grid
of ``score.segments``."""

from __future__ import annotations

import datetime as dt

from features import schemas as s
from models import segments as seg
from pipeline.config import ScoreConfig


def iso_week(as_of: dt.date) -> str:
    """The ISO week of ``as_of`` as ``YYYY-Www`` (1998-03-02 -> 1998-W10), the weekly report's folder name."""
    year, week, _ = as_of.isocalendar()
    return f"{year}-W{week:02d}"


def grid(cfg: ScoreConfig) -> dict[tuple[str, str], tuple[str, str]]:
    """``score.segments`` as (value tier, risk tier) -> (name, action)."""
    cells = {}
    for v in s.VALUE_TIERS:
        for r in seg.RISK_TIERS:
            cell = cfg.segments.cell(v, r)
            cells[(v, r)] = (cell.name, cell.action)
    return cells
