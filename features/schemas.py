"""Column names and table schemas shared by every stage.

Each table that crosses a file boundary has a pandera schema here, and every column name is defined once as a
constant. The BTYD vocabulary follows lifetimes exactly: ``frequency`` is the number of repeat purchase days,
``recency`` the customer's age at the last purchase, ``T`` the age at the cutoff (both in ``base.time_unit``),
``monetary_value`` the mean spend of the repeat purchase days.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from features.errors import InputError

# --- transactions -------------------------------------------------------------------------------------------
CUSTOMER_ID = "customer_id"
TS = "ts"
AMOUNT = "amount"
ORDER_ID = "order_id"

# Amounts are summed as exact decimals (features.behaviour.MONEY): 18 digits, 6 of them after the point. A line's
# spend must stay below 10^12 in absolute value; ingest.max_abs_amount is checked against this bound.
MONEY_DIGITS = 18
MONEY_SCALE = 6
MAX_ABS_AMOUNT = 10.0 ** (MONEY_DIGITS - MONEY_SCALE) - 1

# --- quarantine ---------------------------------------------------------------------------------------------
SOURCE_ROW = "source_row"
REASON = "reason"

# Checked in this order; a row gets the first reason that applies.
MISSING_CUSTOMER_ID = "missing_customer_id"
INVALID_CUSTOMER_ID = "invalid_customer_id"
UNPARSEABLE_TIMESTAMP = "unparseable_timestamp"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
NON_NUMERIC_AMOUNT = "non_numeric_amount"
AMOUNT_OUT_OF_RANGE = "amount_out_of_range"
DUPLICATE = "duplicate"
CANCELLATION = "cancellation"
ZERO_AMOUNT = "zero_amount"
QUARANTINE_REASONS: tuple[str, ...] = (
    MISSING_CUSTOMER_ID,
    INVALID_CUSTOMER_ID,
    UNPARSEABLE_TIMESTAMP,
    TIMESTAMP_OUT_OF_RANGE,
    NON_NUMERIC_AMOUNT,
    AMOUNT_OUT_OF_RANGE,
    DUPLICATE,
    CANCELLATION,
    ZERO_AMOUNT,
)

# --- features -----------------------------------------------------------------------------------------------
CUTOFF = "cutoff"
IS_SCORING = "is_scoring"
FREQUENCY = "frequency"
RECENCY = "recency"
T = "T"
MONETARY_VALUE = "monetary_value"
DAYS_SINCE_LAST_PURCHASE = "days_since_last_purchase"
TENURE_DAYS = "tenure_days"
PURCHASE_DAYS = "purchase_days"
TOTAL_SPEND = "total_spend"
AVG_SPEND_PER_DAY = "avg_spend_per_purchase_day"
GAP_MEAN_DAYS = "gap_mean_days"
GAP_STD_DAYS = "gap_std_days"
LAST_GAP_DAYS = "last_gap_days"
RETURNS_SHARE = "returns_share"

# --- labels -------------------------------------------------------------------------------------------------
CHURNED = "churned"
FUTURE_PURCHASES = "future_purchases"
FUTURE_SPEND = "future_spend"
LABELS: tuple[str, ...] = (CHURNED, FUTURE_PURCHASES, FUTURE_SPEND)

# --- customer value (clv stage) ------------------------------------------------------------------------------
P_ALIVE = "p_alive"
EXPECTED_PURCHASES = "expected_purchases"
EXPECTED_ORDER_VALUE = "expected_order_value"
CLV = "clv"
CLV_P05 = "clv_p05"
CLV_P95 = "clv_p95"
CLV_NET = "clv_net"
VALUE_TIER = "value_tier"
VALUE_TIERS: tuple[str, ...] = ("high", "mid", "low")

# --- churn risk (churn stage) ---------------------------------------------------------------------------------
P_CHURN = "p_churn"
P_CHURN_RAW = "p_churn_uncalibrated"
REASONS: tuple[str, ...] = ("reason_1", "reason_2", "reason_3")

# --- scores and the weekly list (score stage) ------------------------------------------------------------------
AS_OF = "as_of"
RISK_TIER = "risk_tier"
RISK_TIER_VALUES: tuple[str, ...] = ("high", "medium", "low")
SEGMENT = "segment"
RECOMMENDED_ACTION = "recommended_action"
VALUE_AT_RISK = "value_at_risk"
LAST_PURCHASE_DATE = "last_purchase_date"
ACTIVE_AT_HORIZON_START = "active_at_horizon_start"
BOUGHT_IN_LAST_HORIZON = "bought_in_last_horizon"
REVENUE_LAST_HORIZON = "revenue_last_horizon"

# --- drift (churn stage) -----------------------------------------------------------------------------------------
DRIFT_FEATURE = "feature"
PSI = "psi"
DRIFT_WEIGHT = "weight"  # the input's share of the churn model's mean |contribution| at the reference
DRIFT_COMPARED = "compared"  # whether the shift counts towards the drift warning (models.monitoring)


def window_columns(windows_days: Sequence[int]) -> list[str]:
    """Names of the per-window activity columns, e.g. ``purchase_days_30d`` and ``spend_30d``."""
    cols: list[str] = []
    for w in windows_days:
        cols += [f"purchase_days_{w}d", f"spend_{w}d"]
    return cols


def trend_columns(trend_window_days: int) -> list[str]:
    """Names of the trend columns comparing the last window with the one before it."""
    return [f"purchase_trend_{trend_window_days}d", f"spend_trend_{trend_window_days}d"]


def _finite(s: pd.Series) -> bool | pd.Series:
    return ~np.isinf(s.astype("float64"))


def _float(*checks: pa.Check, nullable: bool = False) -> pa.Column:
    """A float column that is never infinite and, unless ``nullable``, never NaN."""
    return pa.Column("float64", [pa.Check(_finite, name="finite"), *checks], nullable=nullable, coerce=True)


TRANSACTIONS = pa.DataFrameSchema(
    {
        CUSTOMER_ID: pa.Column(str, pa.Check.str_length(min_value=1), coerce=True),
        TS: pa.Column(pd.DatetimeTZDtype(unit="us", tz="UTC"), coerce=True),
        AMOUNT: _float(),
        ORDER_ID: pa.Column(str, nullable=True, coerce=True),
    },
    strict=True,
    ordered=True,
    name="transactions",
)


def quarantine_schema(source_columns: Sequence[str]) -> pa.DataFrameSchema:
    """Rejected input rows: their position, their original values as text, and why they were rejected."""
    columns: dict[str, pa.Column] = {SOURCE_ROW: pa.Column("int64", pa.Check.ge(0), coerce=True)}
    for name in source_columns:
        columns[name] = pa.Column(str, nullable=True, coerce=True)
    columns[REASON] = pa.Column(str, pa.Check.isin(QUARANTINE_REASONS), coerce=True)
    return pa.DataFrameSchema(columns, strict=True, ordered=True, name="quarantine")


def feature_schema(windows_days: Sequence[int], trend_window_days: int) -> pa.DataFrameSchema:
    """The per-customer, per-cutoff feature and label table written by the features stage."""
    count = pa.Check.ge(0)
    columns: dict[str, pa.Column] = {
        CUTOFF: pa.Column("datetime64[us]", coerce=True),
        IS_SCORING: pa.Column(bool, coerce=True),
        CUSTOMER_ID: pa.Column(str, pa.Check.str_length(min_value=1), coerce=True),
        FREQUENCY: pa.Column("int64", pa.Check.ge(0), coerce=True),
        RECENCY: _float(count),
        T: _float(count),
        MONETARY_VALUE: _float(count),
        DAYS_SINCE_LAST_PURCHASE: pa.Column("int64", pa.Check.ge(0), coerce=True),
        TENURE_DAYS: pa.Column("int64", pa.Check.ge(0), coerce=True),
        PURCHASE_DAYS: pa.Column("int64", pa.Check.ge(1), coerce=True),
        TOTAL_SPEND: _float(count),
        AVG_SPEND_PER_DAY: _float(count),
    }
    for name in window_columns(windows_days):
        columns[name] = _float(count) if name.startswith("spend") else pa.Column("int64", coerce=True)
    for name in trend_columns(trend_window_days):
        columns[name] = _float(pa.Check.in_range(-1.0, 1.0))
    # Gaps need two purchase days (the std needs three): missing, not zero, for everyone else.
    columns[GAP_MEAN_DAYS] = _float(count, nullable=True)
    columns[GAP_STD_DAYS] = _float(count, nullable=True)
    columns[LAST_GAP_DAYS] = _float(count, nullable=True)
    columns[RETURNS_SHARE] = _float(count)
    # Labels exist only for cutoffs whose horizon is fully observed; scoring rows have none.
    columns[CHURNED] = pa.Column("boolean", nullable=True, coerce=True)
    columns[FUTURE_PURCHASES] = pa.Column("Int64", pa.Check.ge(0), nullable=True, coerce=True)
    columns[FUTURE_SPEND] = _float(count, nullable=True)
    return pa.DataFrameSchema(
        columns,
        strict=True,
        ordered=True,
        unique=[CUTOFF, CUSTOMER_ID],
        name="features",
    )


def clv_schema(with_net: bool) -> pa.DataFrameSchema:
    """Per-customer value as of the scoring cutoff, written by the clv stage (``clv_net`` with an acquisition cost).

    ``expected_purchases`` covers ``features.horizon_days``; ``clv`` is discounted profit over
    ``clv.clv_horizon_months``, with its bootstrap 5th and 95th percentiles.
    """
    count = pa.Check.ge(0)
    columns: dict[str, pa.Column] = {
        CUSTOMER_ID: pa.Column(str, pa.Check.str_length(min_value=1), coerce=True),
        CUTOFF: pa.Column("datetime64[us]", coerce=True),
        FREQUENCY: pa.Column("int64", count, coerce=True),
        RECENCY: _float(count),
        T: _float(count),
        MONETARY_VALUE: _float(),
        P_ALIVE: _float(pa.Check.in_range(0.0, 1.0)),
        EXPECTED_PURCHASES: _float(count),
        EXPECTED_ORDER_VALUE: _float(count),
        CLV: _float(count),
        # missing where the CLV challenger values customers: it has no interval
        CLV_P05: _float(count, nullable=True),
        CLV_P95: _float(count, nullable=True),
    }
    if with_net:
        columns[CLV_NET] = _float()
    columns[VALUE_TIER] = pa.Column(str, pa.Check.isin(VALUE_TIERS), coerce=True)
    return pa.DataFrameSchema(columns, strict=True, ordered=True, unique=[CUSTOMER_ID], name="clv")


def churn_schema() -> pa.DataFrameSchema:
    """Per-customer churn risk as of the scoring cutoff, written by the churn stage: the calibrated probability of
    no purchase over ``features.horizon_days`` and up to three reasons (None when fewer features push it up)."""
    columns: dict[str, pa.Column] = {
        CUSTOMER_ID: pa.Column(str, pa.Check.str_length(min_value=1), coerce=True),
        CUTOFF: pa.Column("datetime64[us]", coerce=True),
        P_CHURN: _float(pa.Check.in_range(0.0, 1.0)),
        P_CHURN_RAW: _float(pa.Check.in_range(0.0, 1.0)),
    }
    for name in REASONS:
        columns[name] = pa.Column(str, nullable=True, coerce=True)
    return pa.DataFrameSchema(columns, strict=True, ordered=True, unique=[CUSTOMER_ID], name="churn")


def segment_kpis_schema(kpi_columns: Sequence[str]) -> pa.DataFrameSchema:
    """The KPIs per segment (``segments.csv`` of the score stage and of each week folder): a segment name and
    each KPI, missing where it is undefined (a rate over no customers)."""
    columns: dict[str, pa.Column] = {SEGMENT: pa.Column(str, pa.Check.str_length(min_value=1), coerce=True)}
    columns.update({c: _float(nullable=True) for c in kpi_columns})
    return pa.DataFrameSchema(columns, strict=True, ordered=True, unique=[SEGMENT], name="segment_kpis")


def attribute_schema(columns: Sequence[str]) -> pa.DataFrameSchema:
    """A customer attribute table once prepared (``features.attributes.prepare``): an id, a UTC time, and each
    configured value column as a number (missing allowed: a survey answer left blank)."""
    checked: dict[str, pa.Column] = {
        CUSTOMER_ID: pa.Column(str, pa.Check.str_length(min_value=1), coerce=True),
        TS: pa.Column("datetime64[ns, UTC]", coerce=True),
    }
    checked.update({c: _float(nullable=True) for c in dict.fromkeys(columns)})
    return pa.DataFrameSchema(checked, strict=True, ordered=True, name="attributes")


def drift_schema() -> pa.DataFrameSchema:
    """Population stability of each churn feature (and of ``p_churn``) between the reference cutoff (the latest
    labelled one) and the scoring cutoff, written by the score stage, with each input's weight and whether it is
    judged (``models.monitoring``). Means are missing when a side has no finite value."""
    share = pa.Check.in_range(0.0, 1.0)
    columns: dict[str, pa.Column] = {
        DRIFT_FEATURE: pa.Column(str, pa.Check.str_length(min_value=1), coerce=True),
        PSI: _float(pa.Check.ge(0.0)),
        DRIFT_WEIGHT: _float(pa.Check.in_range(0.0, 1.0), nullable=True),
        DRIFT_COMPARED: pa.Column(bool, coerce=True),
        "reference_mean": _float(nullable=True),
        "scoring_mean": _float(nullable=True),
        "reference_missing_share": _float(share),
        "scoring_missing_share": _float(share),
        "reference_cutoff": pa.Column("datetime64[us]", coerce=True),
        "scoring_cutoff": pa.Column("datetime64[us]", coerce=True),
    }
    return pa.DataFrameSchema(columns, strict=True, ordered=True, unique=[DRIFT_FEATURE], name="drift")


def scores_schema(with_net: bool) -> pa.DataFrameSchema:
    """The scored population as of ``score.as_of``, written by the score stage, riskiest value first.

    One row per customer of the churn stage's population, with its churn risk and reasons, its value and
    interval, the value x risk segment and its action, and the recent behaviour the KPIs need.
    """
    count = pa.Check.ge(0)
    prob = pa.Check.in_range(0.0, 1.0)
    columns: dict[str, pa.Column] = {
        CUSTOMER_ID: pa.Column(str, pa.Check.str_length(min_value=1), coerce=True),
        AS_OF: pa.Column("datetime64[us]", coerce=True),
        SEGMENT: pa.Column(str, coerce=True),
        RECOMMENDED_ACTION: pa.Column(str, coerce=True),
        VALUE_AT_RISK: _float(count),
        P_CHURN: _float(prob),
        RISK_TIER: pa.Column(str, pa.Check.isin(RISK_TIER_VALUES), coerce=True),
        CLV: _float(count),
        CLV_P05: _float(count, nullable=True),
        CLV_P95: _float(count, nullable=True),
        VALUE_TIER: pa.Column(str, pa.Check.isin(VALUE_TIERS), coerce=True),
        P_ALIVE: _float(prob),
    }
    if with_net:
        columns[CLV_NET] = _float()
    for name in REASONS:
        columns[name] = pa.Column(str, nullable=True, coerce=True)
    columns.update(
        {
            DAYS_SINCE_LAST_PURCHASE: pa.Column("int64", count, coerce=True),
            LAST_PURCHASE_DATE: pa.Column("datetime64[us]", coerce=True),
            PURCHASE_DAYS: pa.Column("int64", pa.Check.ge(1), coerce=True),
            TOTAL_SPEND: _float(count),
            REVENUE_LAST_HORIZON: _float(),
            ACTIVE_AT_HORIZON_START: pa.Column(bool, coerce=True),
            BOUGHT_IN_LAST_HORIZON: pa.Column(bool, coerce=True),
        }
    )
    return pa.DataFrameSchema(columns, strict=True, ordered=True, unique=[CUSTOMER_ID], name="scores")


# --- the campaign loop ----------------------------------------------------------------------------------------
WEEK = "week"
ARM = "arm"
TARGET_ARM = "target"  # contacted
CONTROL_ARM = "control"  # held out: never on the list marketing gets
ARM_VALUES = (TARGET_ARM, CONTROL_ARM)
CONTACT_COST = "contact_cost"
EFFECT = "effect"  # the reduction in p_churn a contact is expected to bring (assumed, measured, or the uplift model's)
EFFECT_SOURCE = "effect_source"
EFFECT_SOURCES = ("assumed", "measured", "uplift model")
NET_VALUE = "expected_net_value"  # min(effect, p_churn) x clv - contact_cost
SCORED_BY = "scored_by"
RETAINED = "retained"  # any purchase in the horizon after the scoring date
HORIZON_REVENUE = "horizon_revenue"


def assignment_schema() -> pa.DataFrameSchema:
    """One week of the campaign's assignment log (``campaign/assignments/<week>.parquet``, and the assign stage's
    ``data/assignments.parquet``): every customer the week's list could contact, the arm drawn for them, and the
    scores and economics they had when assigned, best expected net value first."""
    count = pa.Check.ge(0)
    prob = pa.Check.in_range(0.0, 1.0)
    columns: dict[str, pa.Column] = {
        WEEK: pa.Column(str, pa.Check.str_matches(r"^\d{4}-W\d{2}$"), coerce=True),
        AS_OF: pa.Column("datetime64[us]", coerce=True),
        CUSTOMER_ID: pa.Column(str, pa.Check.str_length(min_value=1), coerce=True),
        SEGMENT: pa.Column(str, coerce=True),
        RECOMMENDED_ACTION: pa.Column(str, coerce=True),
        ARM: pa.Column(str, pa.Check.isin(ARM_VALUES), coerce=True),
        P_CHURN: _float(prob),
        CLV: _float(count),
        P_ALIVE: _float(prob),
        VALUE_AT_RISK: _float(count),
        DAYS_SINCE_LAST_PURCHASE: pa.Column("int64", count, coerce=True),
        PURCHASE_DAYS: pa.Column("int64", pa.Check.ge(1), coerce=True),
        TOTAL_SPEND: _float(count),
        REVENUE_LAST_HORIZON: _float(),
        CONTACT_COST: _float(count),
        EFFECT: _float(pa.Check.in_range(-1.0, 1.0)),
        EFFECT_SOURCE: pa.Column(str, pa.Check.isin(EFFECT_SOURCES), coerce=True),
        NET_VALUE: _float(),
        SCORED_BY: pa.Column(str, coerce=True),
    }
    return pa.DataFrameSchema(columns, strict=True, ordered=True, unique=[CUSTOMER_ID], name="assignments")


RANK = "rank"
# The weekly list's columns, in the order marketing sees them (the KPI helper columns stay in scores.parquet).
LIST_COLUMNS: tuple[str, ...] = (
    CUSTOMER_ID,
    SEGMENT,
    RECOMMENDED_ACTION,
    VALUE_AT_RISK,
    P_CHURN,
    RISK_TIER,
    CLV,
    CLV_P05,
    CLV_P95,
    CLV_NET,
    VALUE_TIER,
    P_ALIVE,
    *REASONS,
    DAYS_SINCE_LAST_PURCHASE,
    LAST_PURCHASE_DATE,
    PURCHASE_DAYS,
    TOTAL_SPEND,
    REVENUE_LAST_HORIZON,
)


GROUP = "group"  # on the weekly list: contact (this week's campaign) or no contact
CONTACT = "contact"
NO_CONTACT = "no contact"
CAMPAIGN_LIST_COLUMNS = (GROUP, NET_VALUE, CONTACT_COST)


def churn_risk_list_schema(with_net: bool, with_campaign: bool = False) -> pa.DataFrameSchema:
    """The weekly churn-risk list (``churn_risk.parquet``): a 1-based rank, then ``LIST_COLUMNS``; with the
    campaign, a group (contact | no contact), the expected net value and the cost of a contact after the id."""
    scores = scores_schema(with_net).columns
    columns: dict[str, pa.Column] = {RANK: pa.Column("int64", pa.Check.ge(1), coerce=True, unique=True)}
    for c in LIST_COLUMNS:
        if c in scores:
            columns[c] = scores[c]
        if c == CUSTOMER_ID and with_campaign:
            columns[GROUP] = pa.Column(str, pa.Check.isin((CONTACT, NO_CONTACT)), coerce=True)
            columns[NET_VALUE] = _float(nullable=True)
            columns[CONTACT_COST] = _float(pa.Check.ge(0), nullable=True)
    return pa.DataFrameSchema(columns, strict=True, ordered=True, unique=[CUSTOMER_ID], name="churn_risk_list")


def validate(df: pd.DataFrame, schema: pa.DataFrameSchema, where: str, *, copy: bool = True) -> pd.DataFrame:
    """Check ``df`` against ``schema`` and return the coerced copy, or raise one readable ``InputError``.

    Integer columns are checked for non-integral values *before* coercion, because a cast would silently
    truncate a frequency of 1.5 to 1. ``copy=False`` coerces ``df`` itself, for a frame nobody else holds
    (one just read from a file): at 10M rows the copy is seconds of a stage.
    """
    for name, column in schema.columns.items():
        if name not in df.columns or "int" not in str(column.dtype).lower():
            continue
        values = df[name]
        if pd.api.types.is_float_dtype(values):
            bad = values.notna() & (values != np.floor(values))
            if bad.any():
                example = values[bad].iloc[0]
                raise InputError(
                    f"{where}: column '{name}' must hold whole numbers; {int(bad.sum())} rows do not "
                    f"(e.g. {example!r}). Fix the producer of this file."
                )
    try:
        return schema.validate(df, lazy=True, inplace=not copy)
    except SchemaErrors as exc:
        cases = exc.failure_cases
        first = cases.iloc[0]
        column = first.get("column")
        check = first.get("check")
        value = first.get("failure_case")
        raise InputError(
            f"{where}: {len(cases)} schema violation(s); first: column '{column}' failed '{check}' "
            f"(e.g. {value!r}). The file does not match the '{schema.name}' schema."
        ) from exc
