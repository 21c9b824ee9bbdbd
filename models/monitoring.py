"""Population stability index: how far the scoring week's customers have moved from a reference cutoff's, and
whether the move is one that changes the scores.

PSI = sum over bins of (q - p) * ln(q / p), where p is a bin's share at the reference cutoff and q its share now.
The bins are the reference's quantiles, so each holds about 1/bins of the reference; a feature with few distinct
values gets fewer bins (repeated edges merge), and so does a dense cluster of values: edges closer together than
1/(2 bins) of the span of the inner quantiles merge, because one-time buyers' silence share (or their p_churn) all
sit within 0.001 of each other, and quantile bins cut through that cluster call a move of 0.0004 a shift. Missing
values have a bin of their own. The usual reading: below 0.1 stable, 0.1 to 0.2 a moderate shift, above 0.2 a
shift worth checking before acting on the scores.

Which shifts count (``verdict``): that of the scores themselves (``p_churn``), and that of the inputs the model
leans on: the mean PSI of the comparable inputs, each weighted by its share of the model's mean |contribution| to
the score. Inputs bound to the calendar (``CALENDAR_BOUND``) are listed but not judged: a customer's age, the days
since the last purchase, cumulative counts and spend, and the BG/NBD outputs built from them grow week by week for
every silent customer, so in a log of one cohort (CDNOW) they move every week although nothing about the business
changed. Their forms relative to the customer's own history, which travel across time (silence as a share of the
customer's life, silence against the customer's usual gap, spend per purchase day, the recent windows, the
trends), are judged instead. A rank within the week is uniform every week by construction: it can show no shift,
so it is not judged either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from features import schemas as s
from models import churn as cm

# Inputs that grow with the calendar for a customer who does nothing (see the module docstring).
CALENDAR_BOUND = frozenset(
    {
        s.T,
        s.TENURE_DAYS,
        s.RECENCY,
        s.DAYS_SINCE_LAST_PURCHASE,
        s.FREQUENCY,
        s.PURCHASE_DAYS,
        s.TOTAL_SPEND,
        # purchase days / (tenure + 1): a one-time buyer's rate is 365 / age, pinned by the calendar
        cm.PURCHASE_DAYS_PER_YEAR,
        *cm.BTYD_COLUMNS,
    }
)
WEIGHT, COMPARED = s.DRIFT_WEIGHT, s.DRIFT_COMPARED

# What each input is, in the words of the summary page (a window, trend or rank is named by ``label``).
LABELS: dict[str, str] = {
    s.P_CHURN: "the churn scores",
    s.T: "customer age",
    s.TENURE_DAYS: "days as a customer",
    s.RECENCY: "customer age at the last purchase",
    s.DAYS_SINCE_LAST_PURCHASE: "days since the last purchase",
    s.FREQUENCY: "repeat purchase days",
    s.PURCHASE_DAYS: "purchase days in all",
    s.TOTAL_SPEND: "total spend",
    s.MONETARY_VALUE: "average repeat order value",
    s.AVG_SPEND_PER_DAY: "spend per purchase day",
    s.GAP_MEAN_DAYS: "usual gap between purchases",
    s.GAP_STD_DAYS: "regularity of the gaps between purchases",
    s.LAST_GAP_DAYS: "last gap between purchases",
    s.RETURNS_SHARE: "share of spend returned",
    cm.OVERDUE_RATIO: "silence against the customer's usual gap",
    cm.PURCHASE_DAYS_PER_YEAR: "purchase days a year",
    cm.SILENCE_SHARE: "share of the customer's life spent silent",
    cm.BTYD_P_ALIVE: "purchase model's chance the customer is still active",
    cm.BTYD_EXPECTED_PURCHASES: "purchase model's expected purchases",
    cm.BTYD_P_NO_PURCHASE: "purchase model's chance of no purchase",
}

# A share of zero would make ln(q / p) infinite; an empty bin counts as this share instead.
MIN_SHARE = 1e-4


def bin_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Interior cut points: the distinct inner quantiles of the finite reference values (bins ``(e[i-1], e[i]]``)."""
    finite = reference[np.isfinite(reference)]
    if finite.size == 0:
        return np.empty(0)
    # Quantiles that are data values (no interpolation): a count feature's edges stay on its counts.
    inner = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf"))
    if inner.size < 2:
        return inner
    # a bin narrower than this resolves moves nobody acts on (the module docstring): keep an edge only this far
    # from the last one kept
    gap = (inner[-1] - inner[0]) / (2 * bins)
    kept = [inner[0]]
    for edge in inner[1:]:
        if edge - kept[-1] >= gap:
            kept.append(edge)
    return np.asarray(kept)


def shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin (``x <= edge`` goes left), then the share missing (NaN) as the last bin."""
    finite = np.isfinite(values)
    counts = np.bincount(np.searchsorted(edges, values[finite], side="left"), minlength=edges.size + 1)
    full = np.append(counts, (~finite).sum()).astype(np.float64)
    return full / max(values.size, 1)


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """The population stability index of ``current`` against ``reference`` (see the module docstring)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        raise ValueError(f"psi: need values on both sides, got {ref.size} reference and {cur.size} current")
    edges = bin_edges(ref, bins)
    ref_shares, cur_shares = shares(ref, edges), shares(cur, edges)
    p = np.maximum(ref_shares, MIN_SHARE)
    q = np.maximum(cur_shares, MIN_SHARE)
    both_empty = (ref_shares == 0) & (cur_shares == 0)
    return float(np.sum(np.where(both_empty, 0.0, (q - p) * np.log(q / p))))


def comparable(feature: str) -> bool:
    """Whether ``feature``'s shift is judged: not bound to the calendar, and not a rank within the week."""
    return feature not in CALENDAR_BOUND and not feature.endswith(cm.RANK_SUFFIX)


def label(feature: str) -> str:
    """``feature`` in the summary page's words: "spend in the last 90 days", not ``spend_90d``."""
    if feature.endswith(cm.RANK_SUFFIX):
        return f"{label(feature.removesuffix(cm.RANK_SUFFIX))} (rank within the week)"
    if feature in LABELS:
        return LABELS[feature]
    for prefix, what in (("purchase_days_", "purchase days"), ("spend_", "spend")):
        rest = feature.removeprefix(prefix)
        if rest != feature and rest.endswith("d") and rest[:-1].isdigit():
            return f"{what} in the last {rest[:-1]} days"
    for prefix, what in (("purchase_trend_", "purchase days"), ("spend_trend_", "spend")):
        rest = feature.removeprefix(prefix)
        if rest != feature and rest.endswith("d") and rest[:-1].isdigit():
            return f"trend of {what} (last {rest[:-1]} days against the {rest[:-1]} before)"
    return feature.replace("_", " ")  # a customer attribute (churn.attributes): its configured name


def drift_table(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    bins: int,
    weights: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """PSI, the weight the verdict gives it (``weights``: each input's share of the model's attention; missing
    for a column not in it) and whether it is judged, means and missing shares of each column, largest PSI first.
    ``p_churn`` is always judged: it is what the list is made of."""
    given = weights or {}
    rows = []
    for c in columns:
        ref = reference[c].to_numpy(np.float64)
        cur = current[c].to_numpy(np.float64)
        rows.append(
            {
                s.DRIFT_FEATURE: c,
                s.PSI: psi(ref, cur, bins),
                WEIGHT: float(given[c]) if c in given else np.nan,
                COMPARED: c == s.P_CHURN or comparable(c),
                "reference_mean": float(np.nanmean(ref)) if np.isfinite(ref).any() else np.nan,
                "scoring_mean": float(np.nanmean(cur)) if np.isfinite(cur).any() else np.nan,
                "reference_missing_share": float(np.mean(~np.isfinite(ref))),
                "scoring_missing_share": float(np.mean(~np.isfinite(cur))),
            }
        )
    return pd.DataFrame(rows).sort_values([s.PSI, s.DRIFT_FEATURE], ascending=[False, True], ignore_index=True)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether this week's scores rest on customers unlike the reference's, and where.

    ``score_psi`` is the PSI of ``p_churn`` (None without that row); ``input_psi`` the mean PSI of the judged
    inputs weighted by their share of the model's attention (None when none has a weight); ``movers`` the judged
    inputs whose own PSI is above ``warning_psi``, the largest weight x PSI first.
    """

    warning_psi: float
    score_psi: float | None
    input_psi: float | None
    movers: tuple[str, ...]

    @property
    def shifted(self) -> bool:
        return any(v is not None and v > self.warning_psi for v in (self.score_psi, self.input_psi))


def verdict(table: pd.DataFrame, warning_psi: float) -> Verdict:
    """The ``Verdict`` on a ``drift_table``: shifted when the scores' PSI or the weighted mean PSI of the judged
    inputs is above ``warning_psi``. A calendar-bound input or a rank is never the reason (the module docstring)."""
    score = table.loc[table[s.DRIFT_FEATURE] == s.P_CHURN, s.PSI]
    inputs = table[(table[s.DRIFT_FEATURE] != s.P_CHURN) & table[COMPARED].astype(bool)]
    weighted = inputs[inputs[WEIGHT].notna() & (inputs[WEIGHT] > 0)]
    total = float(weighted[WEIGHT].sum())
    input_psi = float((weighted[WEIGHT] * weighted[s.PSI]).sum() / total) if total > 0 else None
    moved = inputs[inputs[s.PSI] > warning_psi]
    order = (moved[WEIGHT].fillna(0.0) * moved[s.PSI]).sort_values(ascending=False, kind="mergesort").index
    return Verdict(
        warning_psi=warning_psi,
        score_psi=float(score.iloc[0]) if len(score) else None,
        input_psi=input_psi,
        movers=tuple(moved.loc[order, s.DRIFT_FEATURE]),
    )
