"""The score stage's scores table: one row per churn-population customer, and one-line errors for inputs out of step."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from features import schemas as s
from features.errors import InputError
from models import churn as cm
from pipeline.config import FeaturesConfig, ScoreConfig, section
from pipeline.score import SNAPSHOT_READ, build_scores, scores_in_chunks, snapshot_columns

CUTOFF = pd.Timestamp("1998-03-01")


def _inputs(cutoff_clv: pd.Timestamp = CUTOFF) -> tuple[pd.DataFrame, ...]:
    churn = pd.DataFrame(
        {
            s.CUSTOMER_ID: ["a", "b"],
            s.CUTOFF: CUTOFF,
            s.P_CHURN: [0.9, 0.2],
            s.P_CHURN_RAW: [0.8, 0.3],
            "reason_1": ["no purchase for 200 days (typical: 40)", None],
            "reason_2": None,
            "reason_3": None,
        }
    )
    # the population's rows in the same order in all three (the stage takes them from the snapshot by position)
    value = pd.DataFrame(
        {
            s.CUSTOMER_ID: ["a", "b"],
            s.CUTOFF: cutoff_clv,
            s.CLV: [100.0, 50.0],
            s.CLV_P05: [80.0, 40.0],
            s.CLV_P95: [120.0, 60.0],
            s.VALUE_TIER: ["high", "mid"],
            s.P_ALIVE: [0.6, 0.95],
        }
    )
    snapshot = pd.DataFrame(
        {
            s.CUSTOMER_ID: ["a", "b"],
            s.CUTOFF: CUTOFF,
            s.DAYS_SINCE_LAST_PURCHASE: [200, 10],
            s.TENURE_DAYS: [300, 60],
            s.PURCHASE_DAYS: [3, 2],
            s.TOTAL_SPEND: [150.0, 40.0],
        }
    )
    # "c" bought in the horizon but is not in the population: its revenue is not anyone else's
    revenue = pd.DataFrame({s.CUSTOMER_ID: ["c", "b"], s.REVENUE_LAST_HORIZON: [7.0, 25.0]})
    return churn, value, snapshot, revenue


def test_scores_join_by_hand(params: dict[str, Any]) -> None:
    cfg = section(params, "score", ScoreConfig)
    churn, value, snapshot, revenue = _inputs()
    out = build_scores(churn, value, snapshot, revenue, cfg, horizon_days=90)
    assert list(out[s.CUSTOMER_ID]) == ["a", "b"]
    flipped = build_scores(*(f.iloc[::-1] for f in (churn, value, snapshot)), revenue, cfg, horizon_days=90)
    pd.testing.assert_frame_equal(flipped, out)  # the list's order, whatever the population's row order
    a, b = out.iloc[0], out.iloc[1]
    assert a[s.VALUE_AT_RISK] == pytest.approx(90.0) and b[s.VALUE_AT_RISK] == pytest.approx(10.0)
    assert a[s.SEGMENT] == "high value, at risk" and b[s.SEGMENT] == "mid value, loyal"
    assert a[s.LAST_PURCHASE_DATE] == pd.Timestamp("1997-08-13") and a[s.AS_OF] == pd.Timestamp("1998-03-02")
    assert a[s.REVENUE_LAST_HORIZON] == 0.0 and b[s.REVENUE_LAST_HORIZON] == 25.0
    # b's first purchase was 60 days ago: inside the last 90, so not in the retention base
    assert bool(a[s.ACTIVE_AT_HORIZON_START]) and not bool(b[s.ACTIVE_AT_HORIZON_START])
    assert not bool(a[s.BOUGHT_IN_LAST_HORIZON]) and bool(b[s.BOUGHT_IN_LAST_HORIZON])
    assert list(out.columns) == list(s.scores_schema(False).columns)
    # a chunk per customer: the same rows in the same order
    parts = list(scores_in_chunks(churn, value, snapshot, revenue, cfg, horizon_days=90, chunk_rows=1))
    assert [len(part) for part in parts] == [1, 1]
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), out)


def test_inputs_from_different_runs_are_named(params: dict[str, Any]) -> None:
    cfg = section(params, "score", ScoreConfig)
    with pytest.raises(InputError, match=r"scored at different cutoffs \(churn: 1998-03-01; clv: 1998-06-30"):
        build_scores(*_inputs(pd.Timestamp("1998-06-30")), cfg, horizon_days=90)


def test_inputs_out_of_step_are_an_error(params: dict[str, Any]) -> None:
    churn, value, snapshot, revenue = _inputs()
    cfg = section(params, "score", ScoreConfig)
    with pytest.raises(InputError, match="the clv rows are not the churn rows in the same order"):
        build_scores(churn, value[value[s.CUSTOMER_ID] != "b"], snapshot, revenue, cfg, horizon_days=90)
    with pytest.raises(InputError, match="the scoring features rows are not the churn rows in the same order"):
        build_scores(churn, value, snapshot.iloc[::-1], revenue, cfg, horizon_days=90)
    twice = pd.concat([revenue, revenue], ignore_index=True)
    with pytest.raises(InputError, match="more than one row for a customer"):
        build_scores(churn, value, snapshot, twice, cfg, horizon_days=90)


def test_the_snapshot_is_read_for_what_serves(params: dict[str, Any]) -> None:
    """A rule reads the ids, the values' inputs and what the BTYD and derived features are made of; never the
    labels (empty at a scoring cutoff) nor the windows it does not use. The CLV challenger reads every feature."""
    fcfg = section(params, "features", FeaturesConfig)
    every = list(s.feature_schema(fcfg.windows_days, fcfg.trend_window_days).columns)
    rule = cm.RuleScorer("btyd", cm.Calibrator("sigmoid"))
    read = snapshot_columns(fcfg, rule, challenger=False)
    assert read == [c for c in every if c in SNAPSHOT_READ]  # in the file's order
    assert len(read) == 12 < len(every) and not set(read) & set(s.LABELS)
    window = f"spend_{fcfg.windows_days[0]}d"
    assert window not in read
    rule.features_ = [*rule.features_, window]  # a scorer that reads a window gets it
    assert window in snapshot_columns(fcfg, rule, challenger=False)
    assert snapshot_columns(fcfg, rule, challenger=True) == [c for c in every if c not in s.LABELS]
