"""Acquisition cohorts, retention curves and the per-cutoff KPIs on logs small enough to count by hand."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from features import cohorts
from features import schemas as s
from tests.test_behaviour import LOG, compute, tx_frame

# a: two purchases in January (one month), then February and the last minute of April.
# b: the last half hour of January (UTC), then a zero-amount purchase in March (zero spend is still a purchase).
# c: a return comes first (not a purchase: c's cohort is February), a March with only a return, then April.
# d: a single purchase. e: nothing but a return, so no cohort at all.
# f: 01:00 on 1 March at UTC+2 is 23:00 on 29 February in UTC: a February customer, who buys again in March.
COHORT_LOG = [
    ("a", "2020-01-05 10:00", 10.0),
    ("a", "2020-01-20 10:00", 5.0),
    ("a", "2020-02-03 10:00", 7.0),
    ("a", "2020-04-30 23:59", 3.0),
    ("b", "2020-01-31 23:30", 8.0),
    ("b", "2020-03-01 00:00", 0.0),
    ("c", "2020-02-10 12:00", -5.0),
    ("c", "2020-02-15 12:00", 4.0),
    ("c", "2020-03-05 12:00", -2.0),
    ("c", "2020-04-02 12:00", 6.0),
    ("d", "2020-02-28 12:00", 9.0),
    ("e", "2020-03-10 12:00", -4.0),
    ("f", "2020-03-01 01:00+02:00", 2.0),
    ("f", "2020-03-20 12:00", 2.0),
]


def log_frame(rows: Sequence[tuple[str, str, float]]) -> pd.DataFrame:
    """``test_behaviour.tx_frame``, but timestamps may carry their own UTC offset."""
    frame = tx_frame([(c, "2020-01-01", a) for c, _, a in rows])
    ts = pd.to_datetime([r[1] for r in rows], utc=True, format="mixed")
    return frame.assign(**{s.TS: ts})


def months() -> pd.DataFrame:
    return cohorts.purchase_months(log_frame(COHORT_LOG))


def test_purchase_months_by_customer() -> None:
    log = log_frame(COHORT_LOG)
    before = log.copy()
    m = cohorts.purchase_months(log)
    pd.testing.assert_frame_equal(log, before)  # the argument is not modified
    got = {(r.customer_id, str(r.month), str(r.cohort), r.months_since_acquisition) for r in m.itertuples(index=False)}
    assert got == {
        ("a", "2020-01", "2020-01", 0),
        ("a", "2020-02", "2020-01", 1),
        ("a", "2020-04", "2020-01", 3),
        ("b", "2020-01", "2020-01", 0),
        ("b", "2020-03", "2020-01", 2),
        ("c", "2020-02", "2020-02", 0),
        ("c", "2020-04", "2020-02", 2),
        ("d", "2020-02", "2020-02", 0),
        ("f", "2020-02", "2020-02", 0),
        ("f", "2020-03", "2020-02", 1),
    }
    assert len(m) == len(got)  # a's two January purchases are one month
    assert list(m[s.CUSTOMER_ID]) == sorted(m[s.CUSTOMER_ID])


def test_cohort_sizes() -> None:
    sizes = cohorts.cohort_sizes(months())
    assert sizes.to_dict() == {pd.Period("2020-01", "M"): 2, pd.Period("2020-02", "M"): 3}


def test_retention_matrix_by_hand() -> None:
    matrix = cohorts.retention_matrix(months())
    assert matrix.shape == (2, 4)
    assert [str(c) for c in matrix.index] == ["2020-01", "2020-02"]
    assert list(matrix.columns) == [0, 1, 2, 3]
    # January (a, b): a buys in Feb (k=1) and Apr (k=3), b in Mar (k=2).
    np.testing.assert_allclose(matrix.iloc[0], [1.0, 1 / 2, 1 / 2, 1 / 2])
    # February (c, d, f): f in Mar (k=1; c's March is only a return), c in Apr (k=2); May is not observed yet.
    np.testing.assert_allclose(matrix.iloc[1], [1.0, 1 / 3, 1 / 3, np.nan])


def test_retention_matrix_through_an_earlier_month() -> None:
    matrix = cohorts.retention_matrix(months(), through=pd.Period("2020-03", "M"))
    assert matrix.shape == (2, 3)
    np.testing.assert_allclose(matrix.to_numpy(), [[1.0, 1 / 2, 1 / 2], [1.0, 1 / 3, np.nan]])
    only_january = cohorts.retention_matrix(months(), through=pd.Period("2020-01", "M"))
    assert only_january.shape == (1, 1) and only_january.iloc[0, 0] == 1.0  # b's 23:30 UTC is still January
    with pytest.raises(ValueError, match="no cohort starts on or before through=2019-12"):
        cohorts.retention_matrix(months(), through=pd.Period("2019-12", "M"))


def test_pooled_retention_counts_only_cohorts_that_reached_the_month() -> None:
    m = months()
    pooled = cohorts.pooled_retention(cohorts.retention_matrix(m), cohorts.cohort_sizes(m))
    # k=1: a and f of 5 customers; k=2: b and c of 5; k=3: a of January's 2 (February has not reached it)
    np.testing.assert_allclose(pooled.to_numpy(), [1.0, 2 / 5, 2 / 5, 1 / 2])
    assert list(pooled.index) == [0, 1, 2, 3]


def test_bad_input_is_named() -> None:
    log = log_frame(COHORT_LOG)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['amount'\]"):
        cohorts.purchase_months(log.drop(columns=[s.AMOUNT]))
    with pytest.raises(ValueError, match="time-zone aware"):
        cohorts.purchase_months(log.assign(**{s.TS: log[s.TS].dt.tz_localize(None)}))
    with pytest.raises(ValueError, match="none of the 1 transaction lines is a purchase"):
        cohorts.purchase_months(log_frame([("e", "2020-03-10 12:00", -4.0)]))
    with pytest.raises(ValueError, match="pass the output of purchase_months"):
        cohorts.retention_matrix(log)


def kpi_features() -> pd.DataFrame:
    """Three cutoffs of a features table, horizon 10 days.

    2020-01-10: one customer of 3 days' tenure: nobody is in the retention base.
    2020-01-31: a (3 purchase days, first 30 days ago, bought today, stays), b (first purchase today, stays),
    x (first exactly 10 days ago, so in the base; last purchase 10 days ago, just outside the window; churns),
    y (one purchase 20 days ago; churns).
    2020-02-29, the scoring cutoff (no labels): a bought 5 days ago, b 29 days ago.
    """
    rows = [
        ("2020-01-10", False, "a", 1, 3, 3, False),
        ("2020-01-31", False, "a", 3, 30, 0, False),
        ("2020-01-31", False, "b", 1, 0, 0, False),
        ("2020-01-31", False, "x", 2, 10, 10, True),
        ("2020-01-31", False, "y", 1, 20, 20, True),
        ("2020-02-29", True, "a", 4, 59, 5, None),
        ("2020-02-29", True, "b", 1, 29, 29, None),
    ]
    return pd.DataFrame(
        {
            s.CUTOFF: pd.to_datetime([r[0] for r in rows]),
            s.IS_SCORING: [r[1] for r in rows],
            s.CUSTOMER_ID: [r[2] for r in rows],
            s.PURCHASE_DAYS: [r[3] for r in rows],
            s.TENURE_DAYS: [r[4] for r in rows],
            s.DAYS_SINCE_LAST_PURCHASE: [r[5] for r in rows],
            s.CHURNED: pd.array([r[6] for r in rows], dtype="boolean"),
        }
    )


def test_horizon_kpis_by_hand() -> None:
    features = kpi_features()
    kpis = cohorts.horizon_kpis(features, horizon_days=10)
    assert list(kpis.columns) == list(cohorts.KPI_COLUMNS)
    assert [str(c.date()) for c in kpis[s.CUTOFF]] == ["2020-01-10", "2020-01-31", "2020-02-29"]
    assert list(kpis[s.IS_SCORING]) == [False, False, True]
    assert list(kpis[cohorts.CUSTOMERS]) == [1, 4, 2]
    np.testing.assert_allclose(kpis[cohorts.REPEAT_PURCHASE_RATE], [0.0, 2 / 4, 1 / 2])
    assert list(kpis[cohorts.RETENTION_BASE]) == [0, 3, 2]
    np.testing.assert_allclose(kpis[cohorts.RETENTION_RATE], [np.nan, 1 / 3, 1 / 2])
    np.testing.assert_allclose(kpis[cohorts.CHURN_RATE], [np.nan, 2 / 3, 1 / 2])
    np.testing.assert_allclose(kpis[cohorts.NEXT_HORIZON_CHURN_RATE], [0.0, 2 / 4, np.nan])
    pd.testing.assert_frame_equal(features, kpi_features())  # the argument is not modified
    with pytest.raises(ValueError, match="horizon_days must be >= 1, got 0"):
        cohorts.horizon_kpis(features, horizon_days=0)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['churned'\]"):
        cohorts.horizon_kpis(features.drop(columns=[s.CHURNED]), horizon_days=10)


def test_horizon_kpis_on_the_features_stage_output() -> None:
    # test_behaviour's log at 2020-01-31, horizon 10: a (first purchase 30 days ago, bought on the cutoff day, buys
    # again on cutoff + 10) and b (first purchase on the cutoff day, next one on cutoff + 11: churned).
    f = compute(tx_frame(LOG), [pd.Timestamp("2020-01-31").date()]).reset_index().assign(**{s.IS_SCORING: False})
    (row,) = cohorts.horizon_kpis(f, horizon_days=10).itertuples(index=False)
    assert row.customers == 2 and row.repeat_purchase_rate == 0.5
    assert row.retention_base == 1 and row.retention_rate == 1.0 and row.churn_rate == 0.0
    assert row.next_horizon_churn_rate == 0.5
