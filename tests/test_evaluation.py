"""models/evaluation.py: hand-checkable rankings and errors."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation import better, decile_table, holdout_metrics, normalized_gini, round_metrics, top_share


def test_gini_is_one_for_the_perfect_order_and_negative_for_the_reverse() -> None:
    actual = np.array([0.0, 0.0, 1.0, 3.0, 6.0])
    assert normalized_gini(actual, actual) == pytest.approx(1.0)
    assert normalized_gini(actual, -actual) < 0
    assert normalized_gini(actual, np.array([5.0, 4.0, 3.0, 2.0, 1.0])) < 0  # ranks the zeros first


def test_top_share_counts_the_top_decile() -> None:
    actual = np.arange(1.0, 21.0)  # 20 customers: top 10% = 2 customers (20 + 19 = 39 of 210)
    assert top_share(actual, actual, 0.1) == pytest.approx(39 / 210)


def test_holdout_metrics_by_hand() -> None:
    m = holdout_metrics(
        purchases_predicted=np.array([1.0, 2.0, 0.0]),
        purchases_actual=np.array([0.0, 2.0, 2.0]),
        spend_predicted=np.array([10.0, 20.0, 0.0]),
        spend_actual=np.array([0.0, 30.0, 10.0]),
        value_score=np.array([3.0, 2.0, 1.0]),
    )
    assert m["purchases_actual"] == 4 and m["purchases_predicted"] == 3
    assert m["purchases_pct_error"] == pytest.approx(-25.0)
    assert m["purchases_mae"] == pytest.approx(1.0)
    assert m["purchases_rmse"] == pytest.approx(np.sqrt(5 / 3))
    assert m["spend_mae"] == pytest.approx(10.0)  # (10 + 10 + 10) / 3
    assert m["spearman"] == pytest.approx(-0.5)
    assert m["top_decile_capture"] == 0.0  # the top-ranked customer spent nothing


def test_decile_table_sums_and_orders() -> None:
    score = np.arange(100.0)
    table = decile_table(score, predicted=score, actual=np.ones(100))
    assert list(table["decile"]) == list(range(1, 11))
    assert table["customers"].tolist() == [10] * 10
    assert table["predicted"].iloc[0] == sum(range(90, 100))
    assert table["actual_share"].sum() == pytest.approx(1.0)


def test_better_knows_the_direction_of_each_metric() -> None:
    assert better("purchases_rmse", 0.5, 0.6) and not better("purchases_rmse", 0.7, 0.6)
    assert better("gini", 0.7, 0.6) and not better("gini", float("nan"), 0.6)
    with pytest.raises(ValueError, match="unknown selection metric"):
        better("accuracy", 1.0, 0.0)


def test_round_metrics_turns_nan_into_null() -> None:
    assert round_metrics({"a": float("nan"), "b": {"c": 1.23456789}}) == {"a": None, "b": {"c": 1.234568}}
