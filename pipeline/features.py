"""Stage ``features``: per-customer features and labels at every cutoff, computed by DuckDB from the Parquet.

Training rows (one snapshot per training cutoff, with labels) and scoring rows (as of ``features.as_of``, no
labels) are stacked in one table with a ``cutoff`` and an ``is_scoring`` column.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow.parquet as pq

from features import schemas as s
from features.behaviour import attach_labels, customer_features, labels
from features.cutoffs import Cutoffs, resolve_cutoffs
from features.errors import InputError
from pipeline import cli
from pipeline.config import BaseConfig, FeaturesConfig, load_params, section
from pipeline.io import write_json, write_table

log = logging.getLogger("features")


def connect(threads: int | None = None) -> ibis.BaseBackend:
    """An in-process DuckDB backend whose session time zone is UTC (dates are taken in UTC)."""
    con = ibis.duckdb.connect(threads=threads) if threads else ibis.duckdb.connect()
    con.raw_sql("SET TimeZone = 'UTC'")
    return con


def open_transactions(con: ibis.BaseBackend, path: Path) -> ir.Table:
    """Open the clean transactions Parquet lazily, after checking its columns match the schema."""
    if not path.is_file():
        raise InputError(f"{path}: file not found; run the ingest stage first (`dvc repro`)")
    names = pq.read_schema(path).names
    expected = list(s.TRANSACTIONS.columns)
    if names != expected:
        raise InputError(f"{path}: columns {names} do not match the transactions schema {expected}")
    return con.read_parquet(path)


def build_features(tx: ir.Table, base: BaseConfig, cfg: FeaturesConfig) -> tuple[ir.Table, Cutoffs]:
    """The stacked feature + label expression for ``tx`` and the cutoffs it was built for."""
    day = tx[s.TS].date()
    bounds = tx.aggregate(first=day.min(), last=day.max()).to_pyarrow().to_pylist()[0]
    if bounds["first"] is None:
        raise InputError("transactions: the table is empty; nothing to featurise")
    cut = resolve_cutoffs(
        bounds["first"],
        bounds["last"],
        explicit=cfg.cutoffs,
        every_days=cfg.cutoff_schedule.every_days,
        count=cfg.cutoff_schedule.count,
        horizon_days=cfg.horizon_days,
        as_of=cfg.as_of,
    )
    common: dict[str, Any] = {
        "time_unit": base.time_unit,
        "windows_days": cfg.windows_days,
        "trend_window_days": cfg.trend_window_days,
    }
    training = attach_labels(
        customer_features(tx, cut.training, **common),
        labels(tx, cut.training, horizon_days=cfg.horizon_days),
    ).mutate(**{s.IS_SCORING: ibis.literal(False)})
    scoring = customer_features(tx, [cut.scoring], **common).mutate(
        **{
            s.IS_SCORING: ibis.literal(True),
            s.FUTURE_PURCHASES: ibis.null("int64"),
            s.FUTURE_SPEND: ibis.null("float64"),
            s.CHURNED: ibis.null("boolean"),
        }
    )
    order = list(s.feature_schema(cfg.windows_days, cfg.trend_window_days).columns)
    stacked = training.select(order).union(scoring.select(order))
    return stacked.order_by([s.CUTOFF, s.CUSTOMER_ID]), cut


def feature_metrics(df: pd.DataFrame, cut: Cutoffs) -> dict[str, Any]:
    train = df[~df[s.IS_SCORING]]
    per_cutoff = {
        str(c.date()): {
            "customers": len(g),
            "churn_rate": round(float(g[s.CHURNED].astype(bool).mean()), 6),
            "repeat_customer_share": round(float((g[s.FREQUENCY] > 0).mean()), 6),
        }
        for c, g in train.groupby(s.CUTOFF)
    }
    return {
        "training_cutoffs": len(cut.training),
        "training_rows": len(train),
        "scoring_cutoff": str(cut.scoring),
        "scoring_customers": int(df[s.IS_SCORING].sum()),
        "cutoffs_skipped_before_data": [str(c) for c in cut.skipped_before_data],
        "by_cutoff": per_cutoff,
    }


def run(base: BaseConfig, cfg: FeaturesConfig, transactions: Path, features: Path, metrics: Path) -> dict[str, Any]:
    """Featurise ``transactions`` at every cutoff and write the table and its metrics."""
    con = connect()
    tx = open_transactions(con, transactions)
    expr, cut = build_features(tx, base, cfg)
    df = expr.to_pyarrow().to_pandas()
    df = write_table(df, features, s.feature_schema(cfg.windows_days, cfg.trend_window_days))
    out = feature_metrics(df, cut)
    write_json(out, metrics)
    if cut.skipped_before_data:
        log.info("skipped %d generated cutoffs before the first transaction day", len(cut.skipped_before_data))
    log.info(
        "%d training rows over %d cutoffs (%s .. %s); %d customers scored as of %s",
        out["training_rows"],
        len(cut.training),
        cut.training[0],
        cut.training[-1],
        out["scoring_customers"],
        cut.scoring + dt.timedelta(days=1),
    )
    return out


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--transactions", required=True, type=Path)
    p.add_argument("--features", required=True, type=Path)
    p.add_argument("--metrics", required=True, type=Path)
    args = p.parse_args(argv)
    params = load_params(args.params)
    run(
        section(params, "base", BaseConfig),
        section(params, "features", FeaturesConfig),
        args.transactions,
        args.features,
        args.metrics,
    )


if __name__ == "__main__":
    cli.run(main)
