"""Features and labels on a tiny log computed by hand, the CDNOW summary, and leakage."""

from __future__ import annotations

import datetime as dt
import importlib.resources
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features import schemas as s
from features.behaviour import btyd_summary, feature_table, net_revenue, purchase_days, return_days
from pipeline import ingest
from pipeline.config import BaseConfig, IngestConfig, section
from pipeline.engine import duckdb_backend, open_transactions
from pipeline.io import write_table

CUTOFF = dt.date(2020, 1, 31)
WINDOWS = (30, 90)


def tx_frame(rows: Sequence[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            s.CUSTOMER_ID: [r[0] for r in rows],
            s.TS: pd.to_datetime([r[1] for r in rows], utc=True),
            s.AMOUNT: [r[2] for r in rows],
            s.ORDER_ID: pd.Series([None] * len(rows), dtype="str"),
        }
    )


# Customer a: two lines on Jan 1 (one purchase day), Jan 11, Jan 31 (the cutoff day), a return after the
# cutoff and a purchase exactly on cutoff + horizon. Customer b: a single purchase on the cutoff day and one the
# day after the horizon ends. Customer c: first purchase after the cutoff.
LOG = [
    ("a", "2020-01-01 09:00", 10.0),
    ("a", "2020-01-01 18:00", 5.0),
    ("a", "2020-01-11 12:00", 20.0),
    ("a", "2020-01-31 23:59", 30.0),
    ("a", "2020-02-01 10:00", -6.0),
    ("a", "2020-02-10 10:00", 12.0),
    ("b", "2020-01-31 00:00", 7.0),
    ("b", "2020-02-11 00:00", 8.0),
    ("c", "2020-02-05 00:00", 9.0),
]


def compute(
    rows: pd.DataFrame, cutoffs: Sequence[dt.date], time_unit: str = "days", horizon_days: int = 10
) -> pd.DataFrame:
    con = duckdb_backend()
    tx = con.create_table("tx", rows, overwrite=True)
    expr = feature_table(
        purchase_days(tx),
        return_days(tx),
        cutoffs,
        None,
        time_unit=time_unit,  # type: ignore[arg-type]
        windows_days=WINDOWS,
        trend_window_days=90,
        horizon_days=horizon_days,
    )
    return expr.drop(s.IS_SCORING).to_pyarrow().to_pandas().set_index(s.CUSTOMER_ID)


def test_hand_computed_features() -> None:
    f = compute(tx_frame(LOG), [CUTOFF])
    assert list(f.index) == ["a", "b"]  # c has no history yet
    a, b = f.loc["a"], f.loc["b"]
    assert a[s.FREQUENCY] == 2 and a[s.PURCHASE_DAYS] == 3
    assert a[s.RECENCY] == 30 and a[s.T] == 30 and a[s.TENURE_DAYS] == 30
    assert a[s.MONETARY_VALUE] == pytest.approx((20 + 30) / 2)  # repeat days only
    assert a[s.TOTAL_SPEND] == pytest.approx(65) and a[s.AVG_SPEND_PER_DAY] == pytest.approx(65 / 3)
    assert a[s.DAYS_SINCE_LAST_PURCHASE] == 0
    assert a["purchase_days_30d"] == 2 and a["spend_30d"] == pytest.approx(50)  # (Jan 1, Jan 31]
    assert a["purchase_days_90d"] == 3 and a["spend_90d"] == pytest.approx(65)
    assert a["purchase_trend_90d"] == 1.0 and a["spend_trend_90d"] == 1.0  # nothing in the 90 days before
    assert a[s.GAP_MEAN_DAYS] == 15 and a[s.LAST_GAP_DAYS] == 20
    assert a[s.GAP_STD_DAYS] == pytest.approx(np.std([10, 20], ddof=1))
    assert a[s.RETURNS_SHARE] == 0  # the return is after the cutoff
    assert b[s.FREQUENCY] == 0 and b[s.RECENCY] == 0 and b[s.T] == 0 and b[s.MONETARY_VALUE] == 0
    assert pd.isna(b[s.GAP_MEAN_DAYS]) and pd.isna(b[s.GAP_STD_DAYS]) and pd.isna(b[s.LAST_GAP_DAYS])


def test_label_boundaries() -> None:
    f = compute(tx_frame(LOG), [CUTOFF], horizon_days=10)
    # a buys on cutoff + 10 days exactly: inside (cutoff, cutoff + horizon]; the return is not a purchase.
    assert not f.loc["a", s.CHURNED] and f.loc["a", s.FUTURE_PURCHASES] == 1
    assert f.loc["a", s.FUTURE_SPEND] == pytest.approx(12)
    # b buys one day after the window ends.
    assert f.loc["b", s.CHURNED] and f.loc["b", s.FUTURE_PURCHASES] == 0 and f.loc["b", s.FUTURE_SPEND] == 0
    g = compute(tx_frame(LOG), [CUTOFF], horizon_days=11)
    assert not g.loc["b", s.CHURNED]


def test_returns_share_and_weeks() -> None:
    later = dt.date(2020, 2, 7)
    f = compute(tx_frame(LOG), [later], time_unit="weeks")
    a = f.loc["a"]
    assert a[s.RETURNS_SHARE] == pytest.approx(6 / 65)
    assert a[s.RECENCY] == pytest.approx(30 / 7) and a[s.T] == pytest.approx(37 / 7)


def test_stacked_cutoffs_match_single_cutoffs() -> None:
    cutoffs = [dt.date(2020, 1, 11), CUTOFF, dt.date(2020, 2, 6)]
    stacked = compute(tx_frame(LOG), cutoffs).reset_index()
    for c in cutoffs:
        alone = compute(tx_frame(LOG), [c]).reset_index()
        part = stacked[stacked[s.CUTOFF] == c].reset_index(drop=True)
        pd.testing.assert_frame_equal(part, alone)


def test_transactions_after_the_cutoff_change_no_feature() -> None:
    rng = np.random.default_rng(7)
    n = 400
    base = pd.Timestamp("2020-01-01", tz="UTC")
    rows = tx_frame(
        [
            (f"c{rng.integers(60)}", str(base + pd.Timedelta(minutes=int(m))), float(v))
            for m, v in zip(rng.integers(0, 200 * 24 * 60, n), rng.normal(20, 15, n), strict=True)
        ]
    )
    cutoff = dt.date(2020, 4, 1)
    feature_cols = [c for c in compute(rows, [cutoff]).columns if c not in s.LABELS]
    before = compute(rows[rows[s.TS].dt.date <= cutoff], [cutoff])[feature_cols]
    # Add purchases and returns after the cutoff, for old and new customers alike.
    extra = tx_frame(
        [
            ("c1", "2020-04-02 00:00", 100.0),
            ("c2", "2020-06-01 00:00", -50.0),
            ("new", "2020-04-05 00:00", 1.0),
        ]
    )
    after = compute(pd.concat([rows, extra], ignore_index=True), [cutoff])[feature_cols]
    pd.testing.assert_frame_equal(before, after)


def test_cdnow_sample_summary_matches_lifetimes(tmp_path: Path, params: dict[str, Any]) -> None:
    params["ingest"]["source"] = "cdnow_sample"
    cfg = section(params, "ingest", IngestConfig)
    ingest.run(
        section(params, "base", BaseConfig), cfg, tmp_path / "tx.parquet", tmp_path / "q.parquet", tmp_path / "m.json"
    )
    rows = pd.read_parquet(tmp_path / "tx.parquet")
    f = compute(rows, [dt.date(1997, 9, 30)], time_unit="weeks").reset_index()
    f["ID"] = f[s.CUSTOMER_ID].astype(int)
    datasets = importlib.resources.files("lifetimes") / "datasets"
    with importlib.resources.as_file(datasets / "cdnow_customers_summary_with_transactions.csv") as p:
        ref = pd.read_csv(p)
    ref = ref.rename(columns={"T": "T_ref"})
    m = ref.merge(f, on="ID", how="outer", validate="one_to_one", indicator=True)
    assert len(m) == 2357 and (m["_merge"] == "both").all()
    assert (m["x"] == m[s.FREQUENCY]).all()
    np.testing.assert_allclose(m[s.RECENCY], m["t_x"], atol=0.005 + 1e-9)
    np.testing.assert_allclose(m[s.T], m["T_ref"], atol=0.005 + 1e-9)
    np.testing.assert_allclose(m[s.MONETARY_VALUE], m["zbar"], atol=0.005 + 1e-9)


def test_btyd_summary_equals_the_feature_table_columns(tmp_path: Path, params: dict[str, Any]) -> None:
    """The CLV path's two group-bys give the features table's BTYD columns, from the Parquet the stages read."""
    params["ingest"]["source"] = "cdnow_sample"
    ingest.run(
        section(params, "base", BaseConfig),
        section(params, "ingest", IngestConfig),
        tmp_path / "tx.parquet",
        tmp_path / "q.parquet",
        tmp_path / "m.json",
    )
    cols = [s.FREQUENCY, s.RECENCY, s.T, s.MONETARY_VALUE]
    for cutoff, unit in [(dt.date(1997, 9, 30), "weeks"), (dt.date(1998, 3, 1), "days")]:
        con = duckdb_backend()
        tx = open_transactions(con, tmp_path / "tx.parquet")
        lean = btyd_summary(tx, cutoff, time_unit=unit).to_pyarrow().to_pandas()  # type: ignore[arg-type]
        lean = lean.set_index(s.CUSTOMER_ID).sort_index()
        full = compute(pd.read_parquet(tmp_path / "tx.parquet"), [cutoff], time_unit=unit)[cols].sort_index()
        assert list(lean.columns) == cols and list(lean.index) == list(full.index)
        assert (lean[s.FREQUENCY] == full[s.FREQUENCY]).all()
        np.testing.assert_allclose(lean[cols].to_numpy(float), full.to_numpy(float), rtol=1e-12, atol=1e-9)
    assert len(lean) == 2357 and (lean[s.FREQUENCY] > 0).sum() > 1000


def test_btyd_summary_hand_computed() -> None:
    con = duckdb_backend()
    tx = con.create_table("tx", tx_frame(LOG), overwrite=True)
    out = btyd_summary(tx, CUTOFF, time_unit="days").to_pyarrow().to_pandas().set_index(s.CUSTOMER_ID).sort_index()
    assert list(out.index) == ["a", "b"]
    assert out.loc["a"].tolist() == [2, 30.0, 30.0, 25.0]  # Jan 1 (15), Jan 11 (20), Jan 31 (30): (20 + 30) / 2
    assert out.loc["b"].tolist() == [0, 0.0, 0.0, 0.0]


def _engine_tables(path: Path, threads: int) -> dict[str, pd.DataFrame]:
    """Features with labels, the CLV path's BTYD summary and net revenue of the transactions in ``path``, sorted."""
    con = duckdb_backend()
    con.raw_sql(f"SET threads = {threads}")
    tx = open_transactions(con, path)
    days, returns = purchase_days(tx), return_days(tx)
    training = [dt.date(2020, 3, 31), dt.date(2020, 6, 30)]
    options: dict[str, Any] = {"time_unit": "weeks", "windows_days": WINDOWS, "trend_window_days": 90}
    keys = [s.CUTOFF, s.CUSTOMER_ID]
    out = {
        "features": feature_table(days, returns, training, dt.date(2020, 9, 30), horizon_days=90, **options),
        "btyd_summary": btyd_summary(tx, dt.date(2020, 9, 30), time_unit="weeks").mutate(**{s.CUTOFF: 0}),
        "net_revenue": net_revenue(tx, dt.date(2020, 6, 30), dt.date(2020, 9, 30)).mutate(**{s.CUTOFF: 0}),
    }
    return {k: v.to_pyarrow().to_pandas().sort_values(keys, ignore_index=True) for k, v in out.items()}


def test_sums_do_not_depend_on_row_order_or_threads(tmp_path: Path) -> None:
    """Money is summed exactly: the same lines in another order, or read by 4 threads from small row groups, give
    the same bits in every feature, label and summary (a float sum depends on the order it adds in)."""
    rng = np.random.default_rng(3)
    n = 40_000
    start = pd.Timestamp("2020-01-01", tz="UTC")
    rows = pd.DataFrame(
        {
            s.CUSTOMER_ID: [f"c{i}" for i in rng.integers(0, 300, n)],
            s.TS: start + pd.to_timedelta(rng.integers(0, 270 * 24, n), unit="h"),
            s.AMOUNT: np.round(rng.gamma(1.5, 40.0, n) * np.where(rng.random(n) < 0.05, -1, 1), 2),
            s.ORDER_ID: pd.Series([None] * n, dtype="str"),
        }
    )
    by_hand = tx_frame(  # x: 0.1 + 0.2 + 0.3 on one day; y: gaps of 1, 2 and 4 days
        [("x", "2020-02-01 09:00", 0.1), ("x", "2020-02-01 10:00", 0.2), ("x", "2020-02-01 11:00", 0.3)]
        + [("y", f"{day} 12:00", 1.0) for day in ("2020-02-01", "2020-02-02", "2020-02-04", "2020-02-08")]
    )
    rows = pd.concat([rows, by_hand], ignore_index=True)
    files = {"in order": rows, "reversed": rows[::-1], "shuffled": rows.sample(frac=1.0, random_state=5)}
    for name, frame in files.items():
        write_table(frame.reset_index(drop=True), tmp_path / f"{name}.parquet", s.TRANSACTIONS)
    shuffled = tmp_path / "shuffled.parquet"
    pd.read_parquet(shuffled).to_parquet(shuffled, row_group_size=1_000)  # parallel scans in DuckDB

    first = _engine_tables(tmp_path / "in order.parquet", threads=1)
    for other in (_engine_tables(tmp_path / "reversed.parquet", threads=1), _engine_tables(shuffled, threads=4)):
        for table, frame in first.items():
            pd.testing.assert_frame_equal(other[table], frame, check_exact=True, obj=table)

    features = first["features"]
    f = features[pd.to_datetime(features[s.CUTOFF]) == pd.Timestamp("2020-03-31")].set_index(s.CUSTOMER_ID)
    assert f.loc["x", s.TOTAL_SPEND] == 0.6  # the double nearest the exact sum, not 0.6000000000000001
    assert f.loc["y", s.GAP_STD_DAYS] == math.sqrt(statistics.variance([1, 2, 4]))  # exact variance, rounded once


def test_purchase_days_split_at_utc_midnight_to_the_microsecond() -> None:
    """The customer-days are grouped by a day number taken from the epoch: a microsecond before midnight is the
    day before, midnight the next, before 1970 too; each day's spend, date and gap are the ones the dates give."""
    rows = tx_frame(
        [
            ("a", "2099-12-30 23:59:59.999999", 1.0),
            ("a", "2099-12-31 00:00:00.000000", 2.0),
            ("a", "2099-12-31 23:59:59.999999", 4.0),
            ("b", "1969-12-30 23:59:59.999999", 8.0),
            ("b", "1969-12-31 00:00:00.000001", 16.0),
            ("b", "1970-01-01 00:00:00.000000", 32.0),
            ("b", "1969-12-31 12:00:00.000000", -5.0),
        ]
    )
    con = duckdb_backend()
    tx = con.create_table("tx", rows, overwrite=True)
    days = purchase_days(tx).to_pandas().sort_values([s.CUSTOMER_ID, "day"], ignore_index=True)
    assert [str(pd.Timestamp(d).date()) for d in days["day"]] == [
        "2099-12-30",
        "2099-12-31",
        "1969-12-30",
        "1969-12-31",
        "1970-01-01",
    ]
    assert days["spend"].astype(float).tolist() == [1.0, 6.0, 8.0, 16.0, 32.0]
    assert days["gap"].isna().tolist() == [True, False, True, False, False]
    assert days["gap"].dropna().tolist() == [1.0, 1.0, 1.0]
    returned = return_days(tx).to_pandas()
    assert [str(pd.Timestamp(d).date()) for d in returned["day"]] == ["1969-12-31"] and float(
        returned["returned"].iloc[0]
    ) == 5.0
