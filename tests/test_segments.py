"""Value x risk segments, their KPIs, and the population stability index, on frames checkable by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from features import schemas as s
from models import monitoring
from models import segments as seg
from pipeline.config import ConfigError, ScoreConfig, section
from pipeline.weeks import grid, iso_week


def _cfg(params: dict[str, Any]) -> ScoreConfig:
    return section(params, "score", ScoreConfig)


def test_risk_tier_thresholds_are_inclusive() -> None:
    tiers = seg.risk_tier(np.array([0.0, 0.39, 0.4, 0.69, 0.7, 1.0]), high=0.7, medium=0.4)
    assert list(tiers) == ["low", "low", "medium", "medium", "high", "high"]
    with pytest.raises(ValueError, match="1 NaN"):
        seg.risk_tier(np.array([0.5, np.nan]), high=0.7, medium=0.4)


def _customers() -> pd.DataFrame:
    """Six customers: two per value tier, one risky and one safe each; KPI inputs chosen to sum by hand."""
    return pd.DataFrame(
        {
            s.CUSTOMER_ID: ["a", "b", "c", "d", "e", "f"],
            s.VALUE_TIER: ["high", "high", "mid", "mid", "low", "low"],
            s.P_CHURN: [0.8, 0.1, 0.5, 0.2, 0.9, 0.3],
            s.CLV: [100.0, 200.0, 40.0, 50.0, 5.0, 10.0],
            s.PURCHASE_DAYS: [3, 5, 1, 2, 1, 1],
            s.ACTIVE_AT_HORIZON_START: [True, True, True, False, True, True],
            s.BOUGHT_IN_LAST_HORIZON: [False, True, True, True, False, False],
            s.REVENUE_LAST_HORIZON: [0.0, 120.0, 30.0, 20.0, 0.0, -5.0],
        }
    )


def test_assign_names_segments_actions_and_value_at_risk(params: dict[str, Any]) -> None:
    cfg = _cfg(params)
    out = seg.assign(_customers(), grid(cfg), high=0.7, medium=0.4)
    assert list(out[s.RISK_TIER]) == ["high", "low", "medium", "low", "high", "low"]
    assert out[s.SEGMENT].iloc[0] == "high value, at risk"
    assert out[s.RECOMMENDED_ACTION].iloc[0] == "priority retention call"
    assert out[s.SEGMENT].iloc[2] == "mid value, watch"
    assert out[s.RECOMMENDED_ACTION].iloc[4] == "low-cost reactivation email"
    np.testing.assert_allclose(out[s.VALUE_AT_RISK], [80.0, 20.0, 20.0, 10.0, 4.5, 3.0])
    assert s.SEGMENT not in _customers()  # the argument is not modified


def test_assign_rejects_an_unknown_tier(params: dict[str, Any]) -> None:
    frame = _customers().assign(**{s.VALUE_TIER: ["high", "gold", "mid", "mid", "low", "low"]})
    with pytest.raises(ValueError, match=r"unknown tier\(s\) \['gold'\]"):
        seg.assign(frame, grid(_cfg(params)), high=0.7, medium=0.4)


def test_kpis_by_hand(params: dict[str, Any]) -> None:
    cfg = _cfg(params)
    scored = seg.assign(_customers(), grid(cfg), high=0.7, medium=0.4)
    table = seg.kpi_table(scored, seg.segment_order(grid(cfg)), margin_ratio=0.3).set_index(s.SEGMENT)
    assert list(table.index[:3]) == ["high value, at risk", "high value, watch", "high value, loyal"]
    total = table.loc[seg.ALL]
    assert total["customers"] == 6 and total["customer_share"] == 1.0
    assert total["repeat_purchase_rate"] == pytest.approx(3 / 6)  # a, b and d bought on more than one day
    # retention base: everyone but d (first purchase inside the last horizon); retained among them: b and c
    assert total["retention_base"] == 5
    assert total["retention_rate"] == pytest.approx(2 / 5) and total["churn_rate"] == pytest.approx(3 / 5)
    assert total["revenue_last_horizon"] == pytest.approx(165.0)
    assert total["profit_last_horizon"] == pytest.approx(49.5)
    assert total["value_at_risk"] == pytest.approx(137.5)
    assert total["expected_churners"] == pytest.approx(2.8)
    assert total["avg_clv"] == pytest.approx(405 / 6)
    empty = table.loc["high value, watch"]
    assert empty["customers"] == 0 and np.isnan(empty["retention_rate"]) and empty["value_at_risk"] == 0
    mid_watch = table.loc["mid value, watch"]
    assert mid_watch["customers"] == 1 and mid_watch["retention_rate"] == 1.0
    assert mid_watch["customer_share"] == pytest.approx(1 / 6)


def test_grid_table(params: dict[str, Any]) -> None:
    scored = seg.assign(_customers(), grid(_cfg(params)), high=0.7, medium=0.4)
    counts = seg.grid_table(scored, "customers")
    assert counts.loc["high", "high"] == 1 and counts.loc["high", "medium"] == 0 and counts.to_numpy().sum() == 6
    at_risk = seg.grid_table(scored, s.VALUE_AT_RISK)
    assert at_risk.loc["low", "high"] == pytest.approx(4.5)


def test_score_config_is_checked(params: dict[str, Any]) -> None:
    params["score"]["risk_tier_thresholds"] = {"high": 0.3, "medium": 0.6}
    with pytest.raises(ConfigError, match="need 0 < medium < high < 1"):
        _cfg(params)


def test_segment_grid_needs_every_cell_and_distinct_names(params: dict[str, Any]) -> None:
    broken = {**params, "score": {**params["score"], "segments": {**params["score"]["segments"]}}}
    broken["score"]["segments"]["mid"] = {k: v for k, v in params["score"]["segments"]["mid"].items() if k != "low"}
    with pytest.raises(ConfigError, match=r"score\.segments\.mid: missing key\(s\) score\.segments\.mid\.low"):
        _cfg(broken)
    params["score"]["segments"]["low"]["low"]["name"] = "high value, at risk"
    with pytest.raises(ConfigError, match="nine segment names must be distinct"):
        _cfg(params)


def test_iso_week_folder_names() -> None:
    import datetime as dt

    assert iso_week(dt.date(1998, 3, 2)) == "1998-W10"
    assert iso_week(dt.date(2011, 9, 1)) == "2011-W35"
    assert iso_week(dt.date(2010, 1, 3)) == "2009-W53"  # ISO year, not calendar year


# --- population stability index ----------------------------------------------------------------------------------


def test_psi_of_the_same_sample_is_zero() -> None:
    x = np.random.default_rng(0).normal(size=5000)
    assert monitoring.psi(x, x) == 0.0


def test_psi_by_hand() -> None:
    # reference: quartile bins of 1..8 hold two values each; current puts 4, 2, 1, 1 of 8 values in them
    ref = np.arange(1.0, 9.0)
    cur = np.array([1.0, 1.5, 2.0, 2.0, 3.0, 4.0, 6.0, 8.0])
    p = np.array([0.25, 0.25, 0.25, 0.25])
    q = np.array([0.5, 0.25, 0.125, 0.125])
    expected = float(np.sum((q - p) * np.log(q / p)))
    assert monitoring.psi(ref, cur, bins=4) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.3466, abs=1e-4)  # a shift above the 0.2 warning


def test_psi_counts_missing_values_as_their_own_bin() -> None:
    ref = np.arange(100.0)
    cur = np.where(np.arange(100) < 30, np.nan, np.arange(100.0))
    value = monitoring.psi(ref, cur, bins=10)
    # 30% of the current values moved into the missing bin (reference share floored at 1e-4)
    assert value > 2.0
    assert monitoring.psi(np.full(50, np.nan), np.full(40, np.nan)) == 0.0


def test_psi_on_a_discrete_feature_merges_repeated_edges() -> None:
    ref = np.array([0] * 80 + [1] * 15 + [2] * 5, dtype=float)
    edges = monitoring.bin_edges(ref, 10)
    assert list(edges) == [0.0, 1.0]  # deciles 0.1..0.8 are all 0 and 0.9 is 1: bins {0}, {1}, {2}
    assert monitoring.psi(ref, ref[::-1].copy()) == 0.0
    shifted = np.array([0] * 50 + [1] * 30 + [2] * 20, dtype=float)
    assert monitoring.psi(ref, shifted) > 0.2


def test_drift_table_sorted_by_psi() -> None:
    rng = np.random.default_rng(1)
    ref = pd.DataFrame({"stable": rng.normal(size=2000), "moved": rng.normal(size=2000)})
    cur = pd.DataFrame({"stable": rng.normal(size=2000), "moved": rng.normal(1.0, 1.0, size=2000)})
    table = monitoring.drift_table(ref, cur, ["stable", "moved"], bins=10)
    assert list(table["feature"]) == ["moved", "stable"]
    assert table["psi"].iloc[0] > 0.2 > 0.05 > table["psi"].iloc[1]
    assert table["scoring_mean"].iloc[0] == pytest.approx(1.0, abs=0.1)


def test_the_arrow_sort_gives_pandas_order_with_ties_broken_by_text() -> None:
    rng = np.random.default_rng(3)
    ids = [f"{c}{i:03d}" for i, c in enumerate(rng.choice(list("abcÉé中z0"), 600))]
    frame = pd.DataFrame(
        {
            s.CUSTOMER_ID: pd.Series(ids, dtype="string[pyarrow]"),
            s.VALUE_AT_RISK: rng.integers(0, 5, 600).astype(float),  # many ties
            s.P_CHURN: rng.integers(0, 3, 600) / 2,
        }
    )
    expected = frame.sort_values(
        [s.VALUE_AT_RISK, s.P_CHURN, s.CUSTOMER_ID], ascending=[False, False, True], ignore_index=True
    )
    pd.testing.assert_frame_equal(seg.list_order(frame), expected)
    assert seg.list_order(frame.iloc[::-1])[s.CUSTOMER_ID].tolist() == expected[s.CUSTOMER_ID].tolist()


def test_ranks_stand_in_for_the_ids_and_missing_values_sort_last() -> None:
    ids = pd.Series(["b10", "a", "é", "b2", "B"], dtype=object)
    ranks = seg.id_ranks(ids)
    assert ranks.tolist() == [2, 1, 4, 3, 0]  # byte order: "B" < "a" < "b10" < "b2" < "é"
    values = np.array([1.0, np.nan, 2.0, 1.0, 2.0])
    # descending and ascending alike, NaN goes last; equal values in id order
    assert seg.ranked([(values, False)], ranks).tolist() == [4, 2, 0, 3, 1]
    assert seg.ranked([(values, True)], ranks).tolist() == [0, 3, 4, 2, 1]
    frame = pd.DataFrame({s.CUSTOMER_ID: ids, s.CLV: values})
    np.testing.assert_array_equal(seg.sort_order(frame, [(s.CLV, False)]), [4, 2, 0, 3, 1])
    np.testing.assert_array_equal(seg.sort_order(frame, [(s.CLV, False)], ties=ranks), [4, 2, 0, 3, 1])
