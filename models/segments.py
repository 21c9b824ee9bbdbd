"""Value x risk segments, the retention action each gets, and the CRM KPIs of every segment.

A customer's *value tier* comes from the clv stage (CLV quantiles), the *risk tier* from the calibrated churn
probability against fixed thresholds: a calibrated 0.7 means about 7 in 10 such customers buy nothing in the
horizon, so a threshold keeps its meaning from one week to the next (a quantile would call 20% "at risk" in
every week, however the business is doing). ``value_at_risk`` = ``p_churn`` x ``clv``: the expected profit lost
if nothing is done.

KPIs follow CRM usage, over the scored population (customers with a purchase within the churn stage's
lookback):

* repeat-purchase rate: share of customers with more than one purchase day so far;
* retention rate over the last horizon: of the customers who had bought before the last ``horizon_days``, the
  share who bought again within them; churn rate = 1 - retention rate;
* revenue and profit contribution (revenue x ``margin_ratio``) over the last horizon, net of returns;
* average CLV, total value at risk and expected churners (the sum of ``p_churn``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import schemas as s

RISK_TIERS = s.RISK_TIER_VALUES
ALL = "all customers"


def risk_tier(p_churn: np.ndarray, *, high: float, medium: float) -> np.ndarray:
    """``high`` where ``p_churn >= high``, ``medium`` where it is ``>= medium``, else ``low``."""
    p = np.asarray(p_churn, dtype=np.float64)
    if np.isnan(p).any():
        raise ValueError(f"risk_tier: p_churn has {int(np.isnan(p).sum())} NaN value(s)")
    return np.where(p >= high, "high", np.where(p >= medium, "medium", "low")).astype(object)


def assign(
    frame: pd.DataFrame, grid: Mapping[tuple[str, str], tuple[str, str]], *, high: float, medium: float
) -> pd.DataFrame:
    """``frame`` (with ``value_tier``, ``p_churn`` and ``clv``) plus risk tier, segment, action and value at risk.

    Parameters
    ----------
    grid
        ``(value_tier, risk_tier) -> (segment name, recommended action)`` for all nine cells.
    high, medium
        The ``p_churn`` where the high and the medium risk tier start.
    """
    missing = [(v, r) for v in s.VALUE_TIERS for r in RISK_TIERS if (v, r) not in grid]
    if missing:
        raise ValueError(f"segment grid: no segment for (value tier, risk tier) {missing}")
    unknown = sorted(set(frame[s.VALUE_TIER].unique()) - set(s.VALUE_TIERS))
    if unknown:
        raise ValueError(f"value_tier: unknown tier(s) {unknown}; expected {list(s.VALUE_TIERS)}")
    risk = risk_tier(frame[s.P_CHURN].to_numpy(), high=high, medium=medium)
    # each customer's cell as a number (value tier x 3 + risk tier), then the cell's name and action by lookup
    # (text columns are built by taking from the few names: 10M Python strings would be converted one by one)
    tiers = frame[s.VALUE_TIER]
    value_code = np.select([(tiers == v).to_numpy(bool) for v in s.VALUE_TIERS], range(len(s.VALUE_TIERS)))
    risk_code = np.select([risk == r for r in RISK_TIERS], range(len(RISK_TIERS)))
    cell = value_code * len(RISK_TIERS) + risk_code
    cells = [(v, r) for v in s.VALUE_TIERS for r in RISK_TIERS]

    def named(names: Sequence[str], codes: np.ndarray) -> pd.api.extensions.ExtensionArray:
        return pd.array(list(names), dtype="str").take(codes)

    return frame.assign(  # a new frame; the input's columns are shared, not copied (copy on write)
        **{
            s.RISK_TIER: named(RISK_TIERS, risk_code),
            s.SEGMENT: named([grid[c][0] for c in cells], cell),
            s.RECOMMENDED_ACTION: named([grid[c][1] for c in cells], cell),
            s.VALUE_AT_RISK: frame[s.P_CHURN].to_numpy(np.float64) * frame[s.CLV].to_numpy(np.float64),
        }
    )


def id_ranks(ids: pd.Series | npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Each row's place (0 first) when the ids are sorted as text, byte by byte as Arrow and DuckDB sort them.

    An integer stands in for ``customer_id`` wherever ties are broken by it: sorted in Arrow once (at 10M
    customers about a second in id order, 8 s shuffled), it is compared as a number from then on.
    """
    order = pc.sort_indices(pa.array(ids, from_pandas=True)).to_numpy()
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order), dtype=np.int64)
    return ranks


def ranked(keys: Sequence[tuple[npt.ArrayLike, bool]], ties: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Row positions sorted by each ``(values, ascending?)`` of ``keys`` in turn, then by ``ties`` (ascending, e.g.
    ``id_ranks``); missing values (NaN) last whichever the direction."""
    # Arrow's sort of numeric keys: at 10M rows several times faster than np.lexsort, same order (NaN last)
    columns = {f"k{i}": np.asarray(v, dtype=np.float64) for i, (v, _) in enumerate(keys)}
    table = pa.table({**columns, "ties": np.asarray(ties, dtype=np.int64)})
    # each key's NaN (and null) last: per key, as pyarrow 25 asks (the table-wide null_placement is deprecated)
    sort_keys = [(f"k{i}", "ascending" if up else "descending", "at_end") for i, (_, up) in enumerate(keys)]
    order = pc.sort_indices(table, sort_keys=[*sort_keys, ("ties", "ascending", "at_end")])
    return order.to_numpy().astype(np.int64, copy=False)


def sort_order(
    frame: pd.DataFrame, keys: Sequence[tuple[str, bool]], *, ties: npt.ArrayLike | None = None
) -> npt.NDArray[np.int64]:
    """The row positions of ``frame`` sorted by the numeric ``keys`` (column, ascending?), missing values last, then
    by ``customer_id``; ``ties`` are the rows' ``id_ranks`` where the caller has them already."""
    return ranked(
        [(frame[c].to_numpy(np.float64), up) for c, up in keys],
        id_ranks(frame[s.CUSTOMER_ID]) if ties is None else ties,
    )


def sort_rows(
    frame: pd.DataFrame, keys: Sequence[tuple[str, bool]], *, ties: npt.ArrayLike | None = None
) -> pd.DataFrame:
    """``frame`` sorted by ``keys`` and then ``customer_id`` (``sort_order``), with a fresh 0..n-1 index."""
    return frame.take(sort_order(frame, keys, ties=ties)).reset_index(drop=True)


LIST_KEYS = ((s.VALUE_AT_RISK, False), (s.P_CHURN, False))


def list_order(frame: pd.DataFrame, *, ties: npt.ArrayLike | None = None) -> pd.DataFrame:
    """``frame`` in the weekly list's order: highest ``value_at_risk`` first, then highest ``p_churn``, then
    ``customer_id``."""
    return sort_rows(frame, LIST_KEYS, ties=ties)


def segment_order(grid: Mapping[tuple[str, str], tuple[str, str]]) -> list[str]:
    """Segment names from the most to the least valuable tier, riskiest first within a tier."""
    return [grid[(v, r)][0] for v in s.VALUE_TIERS for r in RISK_TIERS]


def _kpis(group: pd.DataFrame, margin_ratio: float) -> dict[str, float]:
    n = len(group)
    base = group[s.ACTIVE_AT_HORIZON_START].to_numpy(bool)
    retained = group[s.BOUGHT_IN_LAST_HORIZON].to_numpy(bool) & base
    revenue = float(group[s.REVENUE_LAST_HORIZON].sum())
    retention = float(retained.sum() / base.sum()) if base.any() else float("nan")
    return {
        "customers": float(n),
        "repeat_purchase_rate": float((group[s.PURCHASE_DAYS] > 1).mean()) if n else float("nan"),
        "retention_base": float(base.sum()),
        "retention_rate": retention,
        "churn_rate": 1.0 - retention,
        "revenue_last_horizon": revenue,
        "profit_last_horizon": revenue * margin_ratio,
        "avg_clv": float(group[s.CLV].mean()) if n else float("nan"),
        "total_clv": float(group[s.CLV].sum()),
        "value_at_risk": float(group[s.VALUE_AT_RISK].sum()),
        "expected_churners": float(group[s.P_CHURN].sum()),
        "mean_p_churn": float(group[s.P_CHURN].mean()) if n else float("nan"),
    }


KPI_COLUMNS: tuple[str, ...] = (
    "customers",
    "repeat_purchase_rate",
    "retention_base",
    "retention_rate",
    "churn_rate",
    "revenue_last_horizon",
    "profit_last_horizon",
    "avg_clv",
    "total_clv",
    "value_at_risk",
    "expected_churners",
    "mean_p_churn",
)
# The columns of ``kpi_table`` after the segment name (segments.csv).
KPI_TABLE_COLUMNS: tuple[str, ...] = (KPI_COLUMNS[0], "customer_share", *KPI_COLUMNS[1:])


# How segments.csv shows each KPI: whole customers, rates and probabilities to 4 places, money to the cent.
KPI_COUNTS = ("customers", "retention_base")
KPI_DECIMALS = {
    "customer_share": 4,
    "repeat_purchase_rate": 4,
    "retention_rate": 4,
    "churn_rate": 4,
    "mean_p_churn": 4,
    "revenue_last_horizon": 2,
    "profit_last_horizon": 2,
    "avg_clv": 2,
    "total_clv": 2,
    "value_at_risk": 2,
    "expected_churners": 1,
}


def for_csv(kpis: pd.DataFrame) -> pd.DataFrame:
    """``kpi_table``'s output as a person reads it in a spreadsheet: ``1398``, not ``1398.0``; ``0.0593``, not
    ``0.05931268561731014``. Undefined rates stay missing (an empty cell)."""
    out = kpis.copy()
    for c in KPI_COUNTS:
        if c in out:
            out[c] = out[c].round().astype("Int64")
    for c, places in KPI_DECIMALS.items():
        if c in out:
            out[c] = out[c].round(places)
    return out


# What a segment's KPIs are computed from (``_kpis``), and the segment itself.
KPI_INPUTS = (
    s.SEGMENT,
    s.PURCHASE_DAYS,
    s.ACTIVE_AT_HORIZON_START,
    s.BOUGHT_IN_LAST_HORIZON,
    s.REVENUE_LAST_HORIZON,
    s.CLV,
    s.VALUE_AT_RISK,
    s.P_CHURN,
)


def kpi_table(scores: pd.DataFrame, order: list[str], *, margin_ratio: float) -> pd.DataFrame:
    """One row of KPIs per segment in ``order`` (empty segments included, with zero customers) and a total row.

    ``scores`` needs the ``KPI_INPUTS`` columns: ``segment``, ``purchase_days``, ``active_at_horizon_start``,
    ``bought_in_last_horizon``, ``revenue_last_horizon``, ``clv``, ``value_at_risk`` and ``p_churn``.
    """
    scores = scores[list(KPI_INPUTS)]  # a segment's rows are copied below: only the columns its KPIs read
    rows = []
    for name in [*order, ALL]:
        group = scores if name == ALL else scores[scores[s.SEGMENT] == name]
        rows.append({s.SEGMENT: name, **_kpis(group, margin_ratio)})
    table = pd.DataFrame(rows)
    total = float(len(scores))
    table.insert(2, "customer_share", table["customers"] / total if total else np.nan)
    return table


def grid_table(scores: pd.DataFrame, value: str) -> pd.DataFrame:
    """A value tier (rows: high, mid, low) x risk tier (columns: high, medium, low) table of ``value``.

    ``value`` is ``"customers"`` (a count) or a column of ``scores`` to sum (e.g. ``value_at_risk``).
    """
    if value == "customers":
        cells = scores.groupby([s.VALUE_TIER, s.RISK_TIER]).size()
    else:
        cells = scores.groupby([s.VALUE_TIER, s.RISK_TIER])[value].sum()
    return (
        cells.unstack(s.RISK_TIER)
        .reindex(index=list(s.VALUE_TIERS), columns=list(RISK_TIERS))
        .fillna(0.0)
        .astype(np.float64)
    )
