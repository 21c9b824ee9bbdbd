"""Optional customer attributes (surveys, NPS, complaints, demographics) as features at each cutoff.

An attribute row is known from its timestamp on, so a cutoff sees only the rows dated on or before its day
(the same convention as transactions: the cutoff is the last day of history). Pure pandas: these tables are
small next to the transaction log.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from features import schemas as s
from features.errors import InputError

MISSING_CUSTOMER_ID = "missing_customer_id"
UNPARSEABLE_TIMESTAMP = "unparseable_timestamp"
_DAY = "_day"


def feature_name(table: str, column: str, how: str) -> str:
    return f"{table}_{column}_{how}"


def prepare(
    raw: pd.DataFrame, *, where: str, customer_id: str, timestamp: str, columns: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rename to ``customer_id`` and ``ts`` (UTC), make value columns numeric, and count the rows left out.

    Rows without a customer id or with an unparseable timestamp are left out and counted by reason; a value
    that is not a number is an error naming the column, since a silent NaN would change the model.
    """
    needed = [customer_id, timestamp, *columns]
    missing = [c for c in dict.fromkeys(needed) if c not in raw.columns]
    if missing:
        raise InputError(f"{where}: column(s) {missing} not found; it has {list(raw.columns)}")
    ids = raw[customer_id].astype("string").str.strip()
    ids = ids.str.replace(r"\.0$", "", regex=True)  # ids read as floats from CSV (12345.0)
    ts = pd.to_datetime(raw[timestamp], errors="coerce", utc=True, format="mixed")
    no_id = ids.isna() | (ids == "")
    no_ts = ts.isna() & ~no_id
    out = pd.DataFrame({s.CUSTOMER_ID: ids.astype(str), s.TS: ts})
    for column in dict.fromkeys(columns):
        values = pd.to_numeric(raw[column], errors="coerce")
        bad = values.isna() & raw[column].notna()
        if bad.any():
            example = raw.loc[bad, column].iloc[0]
            raise InputError(
                f"{where}: column '{column}' must be numeric; {int(bad.sum())} rows are not (e.g. {example!r}). "
                "Encode categories as numbers, e.g. one 0/1 column per value."
            )
        out[column] = values.astype("float64")
    keep = ~(no_id | no_ts)
    rejected = {MISSING_CUSTOMER_ID: int(no_id.sum()), UNPARSEABLE_TIMESTAMP: int(no_ts.sum())}
    return out[keep.to_numpy()].reset_index(drop=True), rejected


def as_of_features(
    table: pd.DataFrame,
    cutoffs: Sequence[pd.Timestamp],
    *,
    name: str,
    window_days: int | None,
    pairs: Sequence[tuple[str, str]],
) -> pd.DataFrame:
    """One row per (cutoff, customer) with rows on or before the cutoff: each ``(column, aggregate)`` pair.

    ``latest`` is the value of the customer's most recent row (file order breaks a tie in time); ``count`` counts
    the non-missing values. ``table`` comes from ``prepare``.
    """
    day = table[s.TS].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
    base = table.assign(**{_DAY: day}).reset_index(drop=True)
    base = base.iloc[np.argsort(base[_DAY].to_numpy(), kind="stable")]
    names = [feature_name(name, c, h) for c, h in pairs]
    frames = []
    for cutoff in cutoffs:
        c = pd.Timestamp(cutoff)
        seen = base[base[_DAY] <= c]
        if window_days is not None:
            seen = seen[seen[_DAY] > c - pd.Timedelta(days=window_days)]
        if seen.empty:
            continue
        grouped = seen.groupby(s.CUSTOMER_ID, sort=True)
        parts = {}
        for (column, how), out_name in zip(pairs, names, strict=True):
            col = grouped[column]
            parts[out_name] = col.last() if how == "latest" else col.count() if how == "count" else col.agg(how)
        frame = pd.DataFrame(parts).reset_index()
        frame.insert(0, s.CUTOFF, c)
        frames.append(frame)
    if not frames:
        return pd.DataFrame({s.CUTOFF: pd.Series(dtype="datetime64[us]"), s.CUSTOMER_ID: pd.Series(dtype=str)})
    out = pd.concat(frames, ignore_index=True)
    out[s.CUTOFF] = out[s.CUTOFF].astype("datetime64[us]")
    for n in names:
        out[n] = out[n].astype("float64")
    return out
