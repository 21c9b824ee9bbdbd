"""Per-customer behavioural features and time-based labels, as backend-neutral Ibis expressions.

The same expression runs on DuckDB (the embedded default) and on PySpark. To keep the engines in agreement:

* every day difference is taken between DATEs (timestamp differences round differently across engines);
* no order-sensitive aggregate: the first day's spend is ``argmin(spend, day)``, the last gap ``argmax``;
* every division is guarded with ``nullif(0)``;
* timestamps are UTC and become dates in UTC (the caller's connection must use UTC as its session zone).

Conventions
-----------
A *cutoff* is the last day of history: a row for cutoff ``c`` sees transactions on days ``<= c`` and nothing
later, and its labels look at days in ``(c, c + horizon_days]``. Purchases are aggregated per calendar day (a
*purchase day*); a day with only returns is not a purchase day. A zero amount is a purchase with zero spend.
``frequency`` is the number of repeat purchase days, ``recency`` and ``T`` are in ``time_unit`` (weeks are
days / 7, as in lifetimes' CDNOW summary), and ``monetary_value`` is the mean spend of the repeat purchase days
(0 when there are none), as in lifetimes' ``summary_data_from_transaction_data``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Literal

import ibis
import ibis.expr.types as ir
import pyarrow as pa

from features import schemas as s

DAYS_PER_UNIT = {"days": 1.0, "weeks": 7.0}

_DAY = "day"
_SPEND = "spend"
_GAP = "gap"
FIRST_DAY = "first_day"


def cutoff_table(cutoffs: Sequence[dt.date]) -> ir.Table:
    """An in-memory table of cutoff dates, the left side of every per-cutoff aggregation."""
    return ibis.memtable(pa.table({s.CUTOFF: pa.array(list(cutoffs), type=pa.date32())}))  # typed even when empty


def purchase_days(tx: ir.Table) -> ir.Table:
    """One row per customer and purchase day with that day's spend and the gap to the previous purchase day.

    The gap needs only earlier days, so filtering these rows to ``day <= cutoff`` later leaks nothing.
    """
    day = tx[s.TS].date()
    purchases = tx.filter(tx[s.AMOUNT] >= 0).mutate(**{_DAY: day})
    daily = purchases.group_by([s.CUSTOMER_ID, _DAY]).aggregate(**{_SPEND: purchases[s.AMOUNT].sum()})
    previous = daily[_DAY].lag().over(ibis.window(group_by=s.CUSTOMER_ID, order_by=_DAY))
    return daily.mutate(**{_GAP: daily[_DAY].delta(previous, unit="day").cast("float64")})


def return_days(tx: ir.Table) -> ir.Table:
    """One row per customer and day with returns, holding the returned amount as a positive number."""
    returns = tx.filter(tx[s.AMOUNT] < 0).mutate(**{_DAY: tx[s.TS].date()})
    return returns.group_by([s.CUSTOMER_ID, _DAY]).aggregate(returned=(-returns[s.AMOUNT]).sum())


def _days_before(cutoff: ir.DateValue, days: int) -> ir.DateValue:
    return cutoff - ibis.interval(days=days)


def customer_features(
    days: ir.Table,
    returns: ir.Table,
    cutoffs: Sequence[dt.date],
    *,
    time_unit: Literal["days", "weeks"],
    windows_days: Sequence[int],
    trend_window_days: int,
) -> ir.Table:
    """Features of every customer with a purchase day on or before each cutoff, one row per (cutoff, customer).

    Parameters
    ----------
    days
        ``purchase_days`` of the clean transactions (compute it once and cache it: every snapshot and the labels
        read it).
    returns
        ``return_days`` of the clean transactions.
    cutoffs
        Last days of history, one stacked snapshot each.
    time_unit
        Unit of ``recency`` and ``T``.
    windows_days
        Lengths of the activity windows ending at the cutoff (``purchase_days_30d``, ``spend_30d`` ...).
    trend_window_days
        Length of the two adjacent windows compared by the trend features, in [-1, 1]:
        (recent - previous) / (recent + previous), 0 when both are empty.

    Returns
    -------
    ibis Table
        Columns as in ``schemas.feature_schema`` without ``is_scoring`` and the labels.
    """
    unit = DAYS_PER_UNIT[time_unit]
    j = days.cross_join(cutoff_table(cutoffs))
    h = j.filter(j[_DAY] <= j[s.CUTOFF])
    cutoff, day, spend, gap = h[s.CUTOFF], h[_DAY], h[_SPEND], h[_GAP]

    aggs: dict[str, ir.Value] = {
        "_first": day.min(),
        "_last": day.max(),
        s.PURCHASE_DAYS: day.count(),
        s.TOTAL_SPEND: spend.sum(),
        "_first_spend": spend.argmin(day),
        s.GAP_STD_DAYS: gap.std(how="sample"),
        s.LAST_GAP_DAYS: gap.argmax(day),
    }
    for w in windows_days:
        recent = day > _days_before(cutoff, w)
        aggs[f"purchase_days_{w}d"] = day.count(where=recent)
        aggs[f"spend_{w}d"] = spend.sum(where=recent).coalesce(0.0)
    tw = trend_window_days
    recent = day > _days_before(cutoff, tw)
    prior = (day > _days_before(cutoff, 2 * tw)) & ~recent
    aggs["_n_recent"] = day.count(where=recent).cast("float64")
    aggs["_n_prior"] = day.count(where=prior).cast("float64")
    aggs["_spend_recent"] = spend.sum(where=recent).coalesce(0.0)
    aggs["_spend_prior"] = spend.sum(where=prior).coalesce(0.0)
    g = h.group_by([s.CUTOFF, s.CUSTOMER_ID]).aggregate(**aggs)

    rj = returns.cross_join(cutoff_table(cutoffs))
    rj = rj.filter(rj[_DAY] <= rj[s.CUTOFF])
    returned = rj.group_by([s.CUTOFF, s.CUSTOMER_ID]).aggregate(_returned=rj["returned"].sum())
    g = g.left_join(returned, [s.CUTOFF, s.CUSTOMER_ID]).select(g, returned["_returned"])

    btyd = _btyd_columns(g, g[s.CUTOFF], unit)
    frequency = g[s.PURCHASE_DAYS] - 1
    span_days = g["_last"].delta(g["_first"], unit="day")
    age_days = g[s.CUTOFF].delta(g["_first"], unit="day")

    def trend(recent_value: ir.NumericValue, prior_value: ir.NumericValue) -> ir.NumericValue:
        return ((recent_value - prior_value) / (recent_value + prior_value).nullif(0)).coalesce(0.0)

    out = g.mutate(
        **{
            **btyd,
            s.DAYS_SINCE_LAST_PURCHASE: g[s.CUTOFF].delta(g["_last"], unit="day"),
            s.TENURE_DAYS: age_days,
            s.AVG_SPEND_PER_DAY: g[s.TOTAL_SPEND] / g[s.PURCHASE_DAYS],
            f"purchase_trend_{tw}d": trend(g["_n_recent"], g["_n_prior"]),
            f"spend_trend_{tw}d": trend(g["_spend_recent"], g["_spend_prior"]),
            s.GAP_MEAN_DAYS: span_days.cast("float64") / frequency.nullif(0).cast("float64"),
            s.RETURNS_SHARE: (g["_returned"] / g[s.TOTAL_SPEND].nullif(0)).coalesce(0.0),
        }
    )
    columns = [
        s.CUTOFF,
        s.CUSTOMER_ID,
        s.FREQUENCY,
        s.RECENCY,
        s.T,
        s.MONETARY_VALUE,
        s.DAYS_SINCE_LAST_PURCHASE,
        s.TENURE_DAYS,
        s.PURCHASE_DAYS,
        s.TOTAL_SPEND,
        s.AVG_SPEND_PER_DAY,
        *s.window_columns(windows_days),
        *s.trend_columns(tw),
        s.GAP_MEAN_DAYS,
        s.GAP_STD_DAYS,
        s.LAST_GAP_DAYS,
        s.RETURNS_SHARE,
    ]
    return out.select(columns)


def _btyd_columns(g: ir.Table, cutoff: ir.DateValue, unit: float) -> dict[str, ir.Value]:
    """frequency, recency, T and monetary_value from a per-customer aggregate of purchase days.

    ``g`` holds ``_first`` and ``_last`` (first and last purchase day), ``purchase_days``, ``total_spend`` and
    ``_first_spend`` (the first day's spend, which lifetimes leaves out of the repeat-purchase mean).
    """
    frequency = g[s.PURCHASE_DAYS] - 1
    return {
        s.FREQUENCY: frequency,
        s.RECENCY: g["_last"].delta(g["_first"], unit="day").cast("float64") / unit,
        s.T: cutoff.delta(g["_first"], unit="day").cast("float64") / unit,
        s.MONETARY_VALUE: ((g[s.TOTAL_SPEND] - g["_first_spend"]) / frequency.nullif(0)).coalesce(0.0),
    }


def btyd_summary(tx: ir.Table, cutoff: dt.date, *, time_unit: Literal["days", "weeks"]) -> ir.Table:
    """The BTYD columns of every customer with a purchase day on or before ``cutoff``: the CLV path alone.

    ``customer_id``, ``frequency``, ``recency``, ``T`` and ``monetary_value``, equal to those columns of
    ``customer_features`` at that cutoff, but from two plain group-bys of the clean transactions ``tx`` (customer
    and day, then customer): no window, no cross join with cutoffs, no other feature. This is what scoring CLV for
    every customer needs, and it is what keeps that path fast at tens of millions of customers. Rows are unordered.
    """
    unit = DAYS_PER_UNIT[time_unit]
    c = ibis.literal(cutoff)
    day = tx[s.TS].date()
    bought = tx.filter((tx[s.AMOUNT] >= 0) & (day <= c)).mutate(**{_DAY: day})
    daily = bought.group_by([s.CUSTOMER_ID, _DAY]).aggregate(**{_SPEND: bought[s.AMOUNT].sum()})
    g = daily.group_by(s.CUSTOMER_ID).aggregate(
        **{
            "_first": daily[_DAY].min(),
            "_last": daily[_DAY].max(),
            s.PURCHASE_DAYS: daily[_DAY].count(),
            s.TOTAL_SPEND: daily[_SPEND].sum(),
            "_first_spend": daily[_SPEND].argmin(daily[_DAY]),
        }
    )
    return g.select(s.CUSTOMER_ID, **_btyd_columns(g, c, unit))


def labels(days: ir.Table, cutoffs: Sequence[dt.date], *, horizon_days: int) -> ir.Table:
    """Purchase days and spend in ``(cutoff, cutoff + horizon_days]``, per cutoff and customer who bought then.

    Customers absent from the result made no purchase in the window: their ``future_purchases`` is 0 and they
    churned. Join with ``how="left"`` onto the features and fill (``attach_labels``). ``days`` is
    ``purchase_days`` of the clean transactions.
    """
    j = days.cross_join(cutoff_table(cutoffs))
    f = j.filter((j[_DAY] > j[s.CUTOFF]) & (j[_DAY] <= j[s.CUTOFF] + ibis.interval(days=horizon_days)))
    return f.group_by([s.CUTOFF, s.CUSTOMER_ID]).aggregate(
        **{s.FUTURE_PURCHASES: f[_DAY].count(), s.FUTURE_SPEND: f[_SPEND].sum()}
    )


def attach_labels(features: ir.Table, future: ir.Table, unlabelled: dt.date | None = None) -> ir.Table:
    """Left-join ``labels`` onto ``features``; a customer with no purchase in the window has churned.

    Rows at the ``unlabelled`` cutoff (the scoring snapshot, whose future is unknown) get null labels.
    """
    joined = features.left_join(future, [s.CUTOFF, s.CUSTOMER_ID]).select(
        features, future[s.FUTURE_PURCHASES], future[s.FUTURE_SPEND]
    )
    purchases = joined[s.FUTURE_PURCHASES].coalesce(0)
    values: dict[str, ir.Value] = {
        s.FUTURE_PURCHASES: purchases,
        s.FUTURE_SPEND: joined[s.FUTURE_SPEND].coalesce(0.0),
        s.CHURNED: purchases == 0,
    }
    if unlabelled is not None:
        known = joined[s.CUTOFF] != ibis.literal(unlabelled)
        values = {k: ibis.ifelse(known, v, ibis.null(v.type())) for k, v in values.items()}
    return joined.mutate(**values)


def feature_table(
    days: ir.Table,
    returns: ir.Table,
    training: Sequence[dt.date],
    scoring: dt.date | None,
    *,
    time_unit: Literal["days", "weeks"],
    windows_days: Sequence[int],
    trend_window_days: int,
    horizon_days: int,
) -> ir.Table:
    """The stacked table of ``schemas.feature_schema``: labelled training snapshots plus the scoring snapshot.

    ``days`` and ``returns`` are ``purchase_days`` and ``return_days`` of the clean transactions. Rows are
    ordered by cutoff and customer id, so the output is the same from run to run.
    """
    cutoffs = [*training, scoring] if scoring is not None else list(training)
    feats = customer_features(
        days,
        returns,
        cutoffs,
        time_unit=time_unit,
        windows_days=windows_days,
        trend_window_days=trend_window_days,
    )
    table = attach_labels(feats, labels(days, training, horizon_days=horizon_days), unlabelled=scoring)
    is_scoring = table[s.CUTOFF] == ibis.literal(scoring) if scoring is not None else ibis.literal(False)
    order = list(s.feature_schema(windows_days, trend_window_days).columns)
    return table.mutate(**{s.IS_SCORING: is_scoring}).select(order).order_by([s.CUTOFF, s.CUSTOMER_ID])


def first_purchase_days(days: ir.Table) -> ir.Table:
    """Each customer's first purchase day (``customer_id``, ``first_day``) from ``purchase_days``."""
    return days.group_by(s.CUSTOMER_ID).aggregate(**{FIRST_DAY: days[_DAY].min()})


def daily_repeat_purchases(days: ir.Table, cutoff: dt.date, *, horizon_days: int) -> ir.Table:
    """Purchase days per calendar day in ``(cutoff, cutoff + horizon_days]`` by customers who bought by ``cutoff``.

    Summed over the horizon this equals the ``future_purchases`` label summed over the cutoff's snapshot; day by
    day it is the actual curve a BTYD model's cumulative forecast is tracked against.
    """
    first = first_purchase_days(days)
    known = first.filter(first[FIRST_DAY] <= ibis.literal(cutoff))
    joined = days.join(known, s.CUSTOMER_ID)
    end = ibis.literal(cutoff + dt.timedelta(days=horizon_days))
    window = joined.filter((joined[_DAY] > ibis.literal(cutoff)) & (joined[_DAY] <= end))
    return window.group_by(_DAY).aggregate(purchases=window.count()).order_by(_DAY)


def net_revenue(tx: ir.Table, after: dt.date, through: dt.date) -> ir.Table:
    """Net spend (purchases less returns) per customer over the days in ``(after, through]``.

    Customers with no transaction in the window have no row: their revenue is zero.
    """
    day = tx[s.TS].date()
    window = tx.filter((day > ibis.literal(after)) & (day <= ibis.literal(through)))
    return window.group_by(s.CUSTOMER_ID).aggregate(**{s.REVENUE_LAST_HORIZON: window[s.AMOUNT].sum()})
