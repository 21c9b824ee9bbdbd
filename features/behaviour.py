"""Per-customer behavioural features and time-based labels, as backend-neutral Ibis expressions.

The same expression runs on DuckDB (the embedded default) and on PySpark. To keep the engines in agreement:

* every day difference is taken between DATEs (timestamp differences round differently across engines);
* no order-sensitive aggregate: the first day's spend is ``argmin(spend, day)`` (or the spend of the one day
  without a gap before it), the last gap ``argmax``;
* every sum is exact, so neither the rows' order nor the engine's threads change a bit of the result. A float sum
  depends on the order it adds in (``0.1 + 0.2 + 0.3`` is not ``0.3 + 0.2 + 0.1``), and both engines add in
  whatever order their threads and partitions finish. Money is summed as ``DECIMAL(38, 6)`` from each line's
  amount rounded to ``MONEY`` and becomes a float once, at the end (differences such as total less first-day
  spend are taken before that); the gaps' standard deviation comes from sums of whole days, exact as floats;
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
import functools
import operator
from collections.abc import Sequence
from typing import Literal

import ibis
import ibis.expr.datatypes as dt_
import ibis.expr.types as ir
import pyarrow as pa

from features import schemas as s

DAYS_PER_UNIT = {"days": 1.0, "weeks": 7.0}

# A line's amount as an exact decimal: to a millionth of the currency unit (cents, and quantity x unit price with
# up to 6 decimals, are exact), below 10^12 (schemas.MAX_ABS_AMOUNT, which bounds ingest.max_abs_amount). Sums of
# it are DECIMAL(38, 6) on DuckDB and at least DECIMAL(28, 6) on Spark (which adds 10 digits per sum): 10^10 lines
# of the largest amount per customer before either overflows, and both raise rather than wrap if one ever does.
MONEY = dt_.Decimal(precision=s.MONEY_DIGITS, scale=s.MONEY_SCALE)

_DAY = "day"
_SPEND = "spend"
_GAP = "gap"
FIRST_DAY = "first_day"


def cutoff_table(cutoffs: Sequence[dt.date]) -> ir.Table:
    """An in-memory table of cutoff dates, the left side of every per-cutoff aggregation."""
    return ibis.memtable(pa.table({s.CUTOFF: pa.array(list(cutoffs), type=pa.date32())}))  # typed even when empty


def money_sum(amount: ir.NumericColumn, where: ir.BooleanValue | None = None) -> ir.DecimalScalar:
    """The exact sum of ``amount`` (float lines, or decimal sums of them), as a decimal: ``MONEY``'s scale."""
    value = amount if amount.type().is_decimal() else amount.cast(MONEY)
    return value.sum(where=where)


def as_float(money: ir.NumericValue) -> ir.FloatingValue:
    """A decimal sum as float64: rounded once, to the double nearest it."""
    return money.cast("float64")


def purchase_days(tx: ir.Table) -> ir.Table:
    """One row per customer and purchase day with that day's spend (a decimal) and the gap in whole days to the
    previous purchase day.

    The gap needs only earlier days, so filtering these rows to ``day <= cutoff`` later leaks nothing.
    """
    purchases = tx.filter(tx[s.AMOUNT] >= 0)
    daily = purchases.group_by([s.CUSTOMER_ID, _day_number(purchases[s.TS])]).aggregate(
        **{_DAY: purchases[s.TS].date().min(), _SPEND: money_sum(purchases[s.AMOUNT])}
    )
    previous = daily[_DAY_NUMBER].lag().over(ibis.window(group_by=s.CUSTOMER_ID, order_by=_DAY_NUMBER))
    gap = (daily[_DAY_NUMBER] - previous).cast("float64")
    return daily.mutate(**{_GAP: gap}).select(s.CUSTOMER_ID, _DAY, _SPEND, _GAP)


_DAY_NUMBER = "_day_number"


def _day_number(ts: ir.TimestampValue) -> ir.IntegerValue:
    """The (UTC) day of ``ts`` as a count of days since 1970-01-01: the key customer-days are grouped by.

    DuckDB keeps a group-by on (text id, 64-bit integer) within its memory limit by spilling, but at 30M customers
    (75M transactions) the same group-by keyed on (text id, date) outgrew a 1,024 MB limit; the date is the group's
    one value instead, and so did a key of ``date_diff`` over that date: the day number is taken from the epoch.
    ``floor(seconds / 86400)`` gives the right day: until 2100 the epoch in seconds is a double exact to 0.25 us and
    the division adds under 4e-12 of a day, so a time one microsecond (1.2e-11 of a day) before midnight stays
    short of it."""
    return (ts.epoch_seconds() / 86400).floor().cast("int64").name(_DAY_NUMBER)


def return_days(tx: ir.Table) -> ir.Table:
    """One row per customer and day with returns, holding the returned amount as a positive decimal."""
    returns = tx.filter(tx[s.AMOUNT] < 0)
    daily = returns.group_by([s.CUSTOMER_ID, _day_number(returns[s.TS])]).aggregate(
        **{_DAY: returns[s.TS].date().min(), "returned": money_sum(-returns[s.AMOUNT])}
    )
    return daily.select(s.CUSTOMER_ID, _DAY, "returned")


def _sample_std(gap: ir.FloatingColumn) -> dict[str, ir.Value]:
    """The sums from which ``_gap_std`` takes the sample standard deviation of the gaps exactly.

    Gaps are whole days, held as floats: a sum of whole numbers below 2^53 is exact in any order, and these stay
    far below it (a century of daily purchases: sum(g^2) <= 36,500^2, n sum(g^2) below 10^14).
    """
    return {"_n_gaps": gap.count().cast("float64"), "_sum_gaps": gap.sum(), "_sum_gaps_sq": (gap * gap).sum()}


def _gap_std(g: ir.Table) -> ir.FloatingValue:
    """sqrt((n sum(g^2) - sum(g)^2) / (n (n - 1))), null below two gaps: the numerator and denominator are exact
    whole numbers, so the division and the root each round once (no running mean whose rounding depends on order)."""
    n, total = g["_n_gaps"], g["_sum_gaps"]
    return ((n * g["_sum_gaps_sq"] - total * total) / (n * (n - 1.0)).nullif(0)).sqrt()


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
        "_total": money_sum(spend),
        "_first_spend": money_sum(spend, where=gap.isnull()),  # the first purchase day has no gap before it
        **_sample_std(gap),
        s.LAST_GAP_DAYS: gap.argmax(day),
    }
    # The activity windows and the trend's two windows end at the cutoff and nest (30 days inside 90 ...). Each
    # purchase day falls in one band between consecutive lengths, so it adds to one decimal sum, and a window is
    # the exact sum of the bands inside it. (A sum per window adds most days several times over: decimal sums cost
    # more than float ones, and that made the stage a fifth slower at 1M customers.)
    # the band of a day is found from its age in whole days (DATE minus DATE: an integer, cheaper than comparing it
    # with cutoff - INTERVAL, which DuckDB does in timestamps)
    tw = trend_window_days
    lengths = sorted({*windows_days, tw, 2 * tw})
    zero = ibis.literal(0, type=MONEY)
    age = cutoff.delta(day, unit="day")
    for i, length in enumerate(lengths):
        band = (age < length) & (age >= lengths[i - 1]) if i > 0 else age < length
        aggs[f"_days_band_{i}"] = day.count(where=band)
        aggs[f"_spend_band_{i}"] = money_sum(spend, where=band).coalesce(zero)
    g = h.group_by([s.CUTOFF, s.CUSTOMER_ID]).aggregate(**aggs)

    def within(length: int, what: Literal["days", "spend"]) -> ir.NumericValue:
        """Purchase days or spend (a decimal) in the ``length`` days ending at the cutoff."""
        return functools.reduce(operator.add, [g[f"_{what}_band_{i}"] for i in range(lengths.index(length) + 1)])

    rj = returns.cross_join(cutoff_table(cutoffs))
    rj = rj.filter(rj[_DAY] <= rj[s.CUTOFF])
    returned = rj.group_by([s.CUTOFF, s.CUSTOMER_ID]).aggregate(_returned=money_sum(rj["returned"]))
    g = g.left_join(returned, [s.CUTOFF, s.CUSTOMER_ID]).select(g, returned["_returned"])

    btyd = _btyd_columns(g, g[s.CUTOFF], unit)
    frequency = g[s.PURCHASE_DAYS] - 1
    span_days = g["_last"].delta(g["_first"], unit="day")
    age_days = g[s.CUTOFF].delta(g["_first"], unit="day")

    def trend(what: Literal["days", "spend"]) -> ir.NumericValue:
        # (recent - prior) / (recent + prior): the sum and difference exact (counts or decimals), one float division
        recent, both = within(tw, what), within(2 * tw, what)
        difference, total = as_float(recent - (both - recent)), as_float(both)
        return (difference / total.nullif(0)).coalesce(0.0)

    total_spend = as_float(g["_total"])
    out = g.mutate(
        **{
            **btyd,
            s.DAYS_SINCE_LAST_PURCHASE: g[s.CUTOFF].delta(g["_last"], unit="day"),
            s.TENURE_DAYS: age_days,
            s.TOTAL_SPEND: total_spend,
            s.AVG_SPEND_PER_DAY: total_spend / g[s.PURCHASE_DAYS],
            **{f"purchase_days_{w}d": within(w, "days") for w in windows_days},
            **{f"spend_{w}d": as_float(within(w, "spend")) for w in windows_days},
            f"purchase_trend_{tw}d": trend("days"),
            f"spend_trend_{tw}d": trend("spend"),
            s.GAP_MEAN_DAYS: span_days.cast("float64") / frequency.nullif(0).cast("float64"),
            s.GAP_STD_DAYS: _gap_std(g),
            s.RETURNS_SHARE: (as_float(g["_returned"]) / total_spend.nullif(0)).coalesce(0.0),
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

    ``g`` holds ``_first`` and ``_last`` (first and last purchase day), ``purchase_days``, and the decimal sums
    ``_total`` (all spend) and ``_first_spend`` (the first day's spend, which lifetimes leaves out of the
    repeat-purchase mean).
    """
    frequency = g[s.PURCHASE_DAYS] - 1
    repeat_spend = as_float(g["_total"] - g["_first_spend"])  # exact difference, then one rounding
    return {
        s.FREQUENCY: frequency,
        s.RECENCY: g["_last"].delta(g["_first"], unit="day").cast("float64") / unit,
        s.T: cutoff.delta(g["_first"], unit="day").cast("float64") / unit,
        s.MONETARY_VALUE: (repeat_spend / frequency.nullif(0).cast("float64")).coalesce(0.0),
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
    daily = bought.group_by([s.CUSTOMER_ID, _DAY]).aggregate(**{_SPEND: money_sum(bought[s.AMOUNT])})
    g = daily.group_by(s.CUSTOMER_ID).aggregate(
        **{
            "_first": daily[_DAY].min(),
            "_last": daily[_DAY].max(),
            s.PURCHASE_DAYS: daily[_DAY].count(),
            "_total": money_sum(daily[_SPEND]),
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
        **{s.FUTURE_PURCHASES: f[_DAY].count(), s.FUTURE_SPEND: as_float(money_sum(f[_SPEND]))}
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
    revenue = as_float(money_sum(window[s.AMOUNT]))
    return window.group_by(s.CUSTOMER_ID).aggregate(**{s.REVENUE_LAST_HORIZON: revenue})
