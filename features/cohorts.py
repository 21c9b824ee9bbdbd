"""Monthly acquisition cohorts, their retention curves, and the customer-base KPIs marketing reports.

Pure pandas, for exploring a log (``notebooks/01_explore.ipynb``): clean transactions or the features table in,
new frames out. The conventions are those of ``features.behaviour``:

* a *purchase* is a line with ``amount >= 0`` (a zero amount is a purchase with zero spend; a return is not);
* days and months are UTC calendar days and months;
* a customer's *cohort* is the calendar month of their first purchase, and *month k* of a cohort is the k-th
  calendar month after it (month 0 is the acquisition month itself, so its retention is 1 by definition);
* retention in month k is the share of the cohort's customers with at least one purchase in month k.

The KPIs per cutoff (``horizon_kpis``) use the definitions of the score stage and of ``models.segments``, over
every customer with a purchase on or before the cutoff (the weekly report counts only the churn stage's
population, customers who bought within ``churn.population_lookback_days``; on CDNOW that is everyone):

* repeat-purchase rate: share of customers with more than one purchase day so far;
* retention over the last horizon: of the customers whose first purchase was at least ``horizon_days`` before
  the cutoff, the share with a purchase in the ``horizon_days`` ending at the cutoff; churn rate = 1 - it;
* next-horizon churn rate: the share labelled ``churned`` (no purchase in the ``horizon_days`` after the
  cutoff), the churn model's target; missing at the scoring cutoff, whose future is unknown.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import schemas as s

# Columns of the cohort tables. They are in-memory tables for exploration, never files, so they have no schema;
# the names are defined here once.
MONTH = "month"
COHORT = "cohort"
MONTHS_SINCE_ACQUISITION = "months_since_acquisition"
CUSTOMERS = "customers"

# Columns of ``horizon_kpis``.
REPEAT_PURCHASE_RATE = "repeat_purchase_rate"
RETENTION_BASE = "retention_base"
RETENTION_RATE = "retention_rate"
CHURN_RATE = "churn_rate"
NEXT_HORIZON_CHURN_RATE = "next_horizon_churn_rate"
KPI_COLUMNS: tuple[str, ...] = (
    s.CUTOFF,
    s.IS_SCORING,
    CUSTOMERS,
    REPEAT_PURCHASE_RATE,
    RETENTION_BASE,
    RETENTION_RATE,
    CHURN_RATE,
    NEXT_HORIZON_CHURN_RATE,
)


def _require(frame: pd.DataFrame, columns: tuple[str, ...], where: str, hint: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: the table lacks column(s) {missing}; {hint}")


def _month_ordinals(ts: pd.Series) -> np.ndarray:
    """Months since January 1970 of UTC timestamps: the ordinals of monthly ``pd.Period`` values."""
    utc = ts.dt.tz_convert("UTC")
    return ((utc.dt.year.to_numpy(np.int64) - 1970) * 12 + utc.dt.month.to_numpy(np.int64) - 1).astype(np.int64)


def purchase_months(transactions: pd.DataFrame) -> pd.DataFrame:
    """One row per customer and calendar month with a purchase, with the customer's cohort and month index.

    Parameters
    ----------
    transactions
        Clean transactions (``schemas.TRANSACTIONS``: ``customer_id``, ``ts`` as UTC timestamps, ``amount``).
        Returns (negative amounts) are not purchases; a customer with nothing but returns has no cohort.

    Returns
    -------
    pandas.DataFrame
        ``customer_id``, ``month`` and ``cohort`` (monthly ``Period``: the month of the purchase and of the
        customer's first purchase) and ``months_since_acquisition`` (``month - cohort`` in months, 0 for the
        first), sorted by customer and month.

    Raises
    ------
    ValueError
        When a column is missing, ``ts`` is not time-zone aware, or no line is a purchase.
    """
    _require(
        transactions,
        (s.CUSTOMER_ID, s.TS, s.AMOUNT),
        "purchase_months",
        "pass clean transactions (data/transactions.parquet)",
    )
    if not isinstance(transactions[s.TS].dtype, pd.DatetimeTZDtype):
        raise ValueError(
            f"purchase_months: column '{s.TS}' must hold time-zone aware timestamps (UTC), got "
            f"{transactions[s.TS].dtype}; read the transactions with pipeline.io.read_table(path, TRANSACTIONS)"
        )
    bought = transactions[transactions[s.AMOUNT].to_numpy(np.float64) >= 0]
    if bought.empty:
        raise ValueError(
            f"purchase_months: none of the {len(transactions)} transaction lines is a purchase (amount >= 0); "
            "cohorts start at a customer's first purchase"
        )
    frame = pd.DataFrame(
        {s.CUSTOMER_ID: bought[s.CUSTOMER_ID].astype(str).to_numpy(), "_month": _month_ordinals(bought[s.TS])}
    ).drop_duplicates(ignore_index=True)
    first = frame.groupby(s.CUSTOMER_ID)["_month"].transform("min").to_numpy(np.int64)
    month = frame["_month"].to_numpy(np.int64)
    out = pd.DataFrame(
        {
            s.CUSTOMER_ID: frame[s.CUSTOMER_ID].to_numpy(),
            MONTH: pd.PeriodIndex.from_ordinals(month, freq="M"),
            COHORT: pd.PeriodIndex.from_ordinals(first, freq="M"),
            MONTHS_SINCE_ACQUISITION: month - first,
        }
    )
    return out.sort_values([s.CUSTOMER_ID, MONTH], ignore_index=True)


def cohort_sizes(months: pd.DataFrame) -> pd.Series:
    """Customers acquired in each cohort month (``purchase_months`` in), indexed by cohort, oldest first."""
    _require(months, (s.CUSTOMER_ID, COHORT), "cohort_sizes", "pass the output of purchase_months")
    sizes = months.drop_duplicates(s.CUSTOMER_ID).groupby(COHORT).size().astype(np.int64)
    return sizes.rename(CUSTOMERS).sort_index()


def retention_matrix(months: pd.DataFrame, *, through: pd.Period | None = None) -> pd.DataFrame:
    """Share of each cohort with a purchase in each month since acquisition: one row per cohort.

    Parameters
    ----------
    months
        ``purchase_months`` of the transactions.
    through
        The last calendar month observed (default: the month of the latest purchase). Purchases and cohorts after
        it are left out. Pass the month before the last when the log ends mid-month, else that month's retention
        looks low for want of days, not of customers.

    Returns
    -------
    pandas.DataFrame
        Index ``cohort`` (oldest first), columns ``months_since_acquisition`` 0, 1, ... up to the oldest cohort's
        last observed month; each cell is active customers / cohort size, and NaN where the cohort has not
        reached that month by ``through`` (a month not yet seen is unknown, not zero). Column 0 is 1.0.
    """
    _require(
        months,
        (s.CUSTOMER_ID, MONTH, COHORT, MONTHS_SINCE_ACQUISITION),
        "retention_matrix",
        "pass the output of purchase_months",
    )
    last = months[MONTH].max() if through is None else pd.Period(through, freq="M")
    seen = months[(months[COHORT] <= last) & (months[MONTH] <= last)]
    if seen.empty:
        raise ValueError(f"retention_matrix: no cohort starts on or before through={last}")
    sizes = cohort_sizes(seen)
    active = seen.groupby([COHORT, MONTHS_SINCE_ACQUISITION]).size().unstack(MONTHS_SINCE_ACQUISITION, fill_value=0)
    cohorts = sizes.index
    # ordinal differences: how many months after its acquisition month `through` is, per cohort
    reached = last.ordinal - cohorts.asi8
    ks = np.arange(int(reached.max()) + 1)
    active = active.reindex(index=cohorts, columns=ks, fill_value=0)
    rates = active.to_numpy(np.float64) / sizes.to_numpy(np.float64)[:, None]
    rates[ks[None, :] > reached[:, None]] = np.nan
    out = pd.DataFrame(rates, index=cohorts, columns=pd.Index(ks, name=MONTHS_SINCE_ACQUISITION))
    out.index.name = COHORT
    return out


def pooled_retention(matrix: pd.DataFrame, sizes: pd.Series) -> pd.Series:
    """The retention curve of all cohorts together: in month k, active customers over the customers of the
    cohorts that have reached month k (so a young cohort does not pull late months down).

    Parameters
    ----------
    matrix
        ``retention_matrix`` of the cohorts.
    sizes
        ``cohort_sizes`` of the same cohorts.

    Returns
    -------
    pandas.Series
        Indexed by ``months_since_acquisition``.
    """
    n = sizes.reindex(matrix.index).to_numpy(np.float64)
    if np.isnan(n).any():
        raise ValueError("pooled_retention: some cohorts of the matrix have no size; pass cohort_sizes of the same log")
    rates = matrix.to_numpy(np.float64)
    observed = ~np.isnan(rates)
    active = np.where(observed, rates, 0.0) * n[:, None]
    base = (observed * n[:, None]).sum(axis=0)
    return pd.Series(active.sum(axis=0) / base, index=matrix.columns, name=RETENTION_RATE)


def horizon_kpis(features: pd.DataFrame, *, horizon_days: int) -> pd.DataFrame:
    """Repeat-purchase, retention and churn rates at every cutoff of the features table (module docstring).

    Parameters
    ----------
    features
        The features stage's table (``data/features.parquet``): one row per cutoff and customer.
    horizon_days
        ``features.horizon_days``: the window of the retention and churn rates, before and after the cutoff.

    Returns
    -------
    pandas.DataFrame
        One row per cutoff, oldest first, with the columns of ``KPI_COLUMNS``. A rate whose base is empty is NaN.
    """
    if horizon_days < 1:
        raise ValueError(f"horizon_kpis: horizon_days must be >= 1, got {horizon_days}")
    needed = (s.CUTOFF, s.IS_SCORING, s.PURCHASE_DAYS, s.TENURE_DAYS, s.DAYS_SINCE_LAST_PURCHASE, s.CHURNED)
    _require(features, needed, "horizon_kpis", "pass the features table (data/features.parquet)")
    churned = features[s.CHURNED].astype("Float64")
    base = features[s.TENURE_DAYS].to_numpy(np.int64) >= horizon_days
    recent = features[s.DAYS_SINCE_LAST_PURCHASE].to_numpy(np.int64) < horizon_days
    parts = pd.DataFrame(
        {
            s.CUTOFF: features[s.CUTOFF].to_numpy(),
            s.IS_SCORING: features[s.IS_SCORING].to_numpy(bool),
            "_customers": 1.0,
            "_repeat": (features[s.PURCHASE_DAYS].to_numpy(np.int64) > 1).astype(np.float64),
            "_base": base.astype(np.float64),
            "_retained": (base & recent).astype(np.float64),
            "_churned": churned.fillna(0.0).to_numpy(np.float64),
            "_labelled": churned.notna().to_numpy(np.float64),
        }
    )
    g = parts.groupby(s.CUTOFF, sort=True)
    sums = g[["_customers", "_repeat", "_base", "_retained", "_churned", "_labelled"]].sum()
    retention = _share(sums["_retained"], sums["_base"])
    out = pd.DataFrame(
        {
            s.CUTOFF: sums.index.to_numpy(),
            s.IS_SCORING: g[s.IS_SCORING].any().to_numpy(bool),
            CUSTOMERS: sums["_customers"].to_numpy(np.int64),
            REPEAT_PURCHASE_RATE: _share(sums["_repeat"], sums["_customers"]),
            RETENTION_BASE: sums["_base"].to_numpy(np.int64),
            RETENTION_RATE: retention,
            CHURN_RATE: 1.0 - retention,
            NEXT_HORIZON_CHURN_RATE: _share(sums["_churned"], sums["_labelled"]),
        }
    )
    return out[list(KPI_COLUMNS)]


def _share(part: pd.Series, whole: pd.Series) -> np.ndarray:
    """``part / whole``, NaN where ``whole`` is 0 (a rate of nobody is unknown, not 0)."""
    den = whole.to_numpy(np.float64)
    return np.divide(part.to_numpy(np.float64), den, out=np.full(den.shape, np.nan), where=den > 0)
