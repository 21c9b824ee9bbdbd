"""Stage ``features``: per-customer features and labels at every training cutoff, from the clean Parquet.

The engine is ``base.engine``: DuckDB in process, or Spark for logs beyond one machine; the definitions in
``features/`` are the same Ibis expressions for both.

The cutoffs anchor on the training date ``train.as_of``: every label horizon ends before it, so no later
transaction reaches the models. One snapshot per training cutoff, with labels, stacked in one table with a
``cutoff`` column. The week's scoring snapshot is the ``snapshot`` stage's (the same columns, ``is_scoring``
true): moving the scoring date does not touch this table, so it does not retrain anything.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import ibis
import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa

from features import schemas as s
from features.behaviour import FIRST_DAY, feature_table, first_purchase_days, purchase_days, return_days
from features.cutoffs import Cutoffs, resolve_cutoffs, scoring_cutoff
from features.errors import InputError
from features.sampling import sample_customers
from pipeline import cli
from pipeline.config import BaseConfig, FeaturesConfig, load_params, section, training_as_of
from pipeline.engine import backend, duckdb_backend, open_transactions
from pipeline.io import write_batches, write_json
from pipeline.progress import Progress

log = logging.getLogger("features")

# Rows per batch between the engine and the Parquet writer: bounds memory whatever the number of customers.
BATCH_ROWS = 500_000


def date_bounds(tx: ir.Table) -> tuple[dt.date, dt.date]:
    """The first and last transaction day of ``tx``; an empty table is an error."""
    day = tx[s.TS].date()
    bounds = tx.aggregate(first=day.min(), last=day.max()).to_pyarrow().to_pylist()[0]
    if bounds["first"] is None:
        raise InputError("transactions: the table is empty; nothing to featurise")
    return bounds["first"], bounds["last"]


def history_end(transactions: Path, base: BaseConfig, cfg: FeaturesConfig, as_of: dt.date | None) -> dt.date:
    """The last day of history the models are fitted on: the day before the training date ``train.as_of``
    (null: the last transaction day), checked against the log."""
    first, last = date_bounds(open_transactions(backend(base), transactions))
    return scoring_cutoff(first, last, horizon_days=cfg.horizon_days, as_of=as_of, as_of_key="train.as_of")


def feature_options(base: BaseConfig, cfg: FeaturesConfig) -> dict[str, Any]:
    return {
        "time_unit": base.time_unit,
        "windows_days": cfg.windows_days,
        "trend_window_days": cfg.trend_window_days,
        "horizon_days": cfg.horizon_days,
    }


def build_features(
    tx: ir.Table, base: BaseConfig, cfg: FeaturesConfig, as_of: dt.date | None
) -> tuple[list[ir.Table], Cutoffs, dict[dt.date, int]]:
    """The feature + label expressions for ``tx``, one per training cutoff in date order, the cutoffs they are
    for (anchored on the training date ``as_of``), and how many customers each training cutoff that keeps a draw
    (``features.max_customers_per_training_cutoff``) drew from.

    Stacked in this order they are the table ``feature_table`` describes for all cutoffs at once (each is sorted
    by customer id). One cutoff at a time keeps the engine's working set to one snapshot: at 10M customers the
    all-cutoffs join outgrows a 1 GB DuckDB memory limit, a single cutoff does not.
    """
    first, last = date_bounds(tx)
    cut = resolve_cutoffs(
        first,
        last,
        explicit=cfg.cutoffs,
        every_days=cfg.cutoff_schedule.every_days,
        count=cfg.cutoff_schedule.count,
        horizon_days=cfg.horizon_days,
        as_of=as_of,
        as_of_key="train.as_of",
    )
    # Every snapshot and the labels read the purchase days: materialise them once in the engine.
    days = purchase_days(tx).cache()
    returns = return_days(tx).cache()  # read once per cutoff too
    options = feature_options(base, cfg)
    draws = training_draws(days, cut.training, cfg.max_customers_per_training_cutoff, base.seed)
    exprs = []
    for c in cut.training:
        if c not in draws:
            exprs.append(feature_table(days, returns, [c], None, **options))
            continue
        ids, _ = draws[c]
        kept = ibis.memtable(pa.table({s.CUSTOMER_ID: ids}))
        exprs.append(
            feature_table(
                days.semi_join(kept, s.CUSTOMER_ID), returns.semi_join(kept, s.CUSTOMER_ID), [c], None, **options
            )
        )
    return exprs, cut, {c: n for c, (_, n) in draws.items()}


def training_draws(
    days: ir.Table, cutoffs: Sequence[dt.date], max_customers: int, seed: int
) -> dict[dt.date, tuple[pa.Array, int]]:
    """The customer ids each training cutoff keeps, and how many it had, for the cutoffs with more than
    ``max_customers`` customers.

    Drawn before featurising (``features.sampling``), so a snapshot costs what the kept customers cost.
    """
    first = first_purchase_days(days)
    if not cutoffs or int(first.count().to_pyarrow().as_py()) <= max_customers:
        return {}
    table = first.order_by(s.CUSTOMER_ID).to_pyarrow()
    ids = table[s.CUSTOMER_ID].combine_chunks()
    first_days = table[FIRST_DAY].to_numpy().astype("datetime64[D]")
    draws = {}
    for c in cutoffs:
        drawn, eligible = sample_customers(ids, first_days, c, max_customers=max_customers, seed=seed)
        if drawn is not None:
            log.info("training cutoff %s: featurising %d of its %d customers (a seeded draw)", c, len(drawn), eligible)
            draws[c] = (drawn, eligible)
    return draws


def batches(exprs: Sequence[ir.Table]) -> Iterator[pa.RecordBatch]:
    for expr in exprs:
        yield from expr.to_pyarrow_batches(chunk_size=BATCH_ROWS)


def feature_metrics(by_cutoff: pd.DataFrame, cut: Cutoffs, drawn_from: dict[dt.date, int]) -> dict[str, Any]:
    """Stage metrics from per-cutoff counts (``cutoff``, ``customers``, ``churned``, ``repeat``) and the customer
    count of each cutoff that keeps a draw (its rates are then those of the draw)."""
    train = by_cutoff
    per_cutoff = {}
    for r in train.itertuples():
        day = pd.Timestamp(r.cutoff).date()
        per_cutoff[str(day)] = {
            "customers": int(r.customers),
            "customers_before_draw": int(drawn_from.get(day, r.customers)),
            "churn_rate": round(r.churned / r.customers, 6),
            "repeat_customer_share": round(r.repeat / r.customers, 6),
        }
    return {
        "training_cutoffs": len(cut.training),
        "training_rows": int(train["customers"].sum()),
        "training_cutoffs_drawn": len(drawn_from),
        "training_as_of": str(cut.scoring + dt.timedelta(days=1)),
        "cutoffs_skipped_before_data": [str(c) for c in cut.skipped_before_data],
        "by_cutoff": per_cutoff,
    }


def run(
    base: BaseConfig,
    cfg: FeaturesConfig,
    transactions: Path,
    features: Path,
    metrics: Path,
    *,
    as_of: dt.date | None = None,
) -> dict[str, Any]:
    """Featurise ``transactions`` at every training cutoff before ``as_of`` and write the table and its metrics."""
    con = backend(base)
    tx = open_transactions(con, transactions)
    schema = s.feature_schema(cfg.windows_days, cfg.trend_window_days)
    with memory_hint("features", base):
        exprs, cut, drawn_from = build_features(tx, base, cfg, as_of)
        with Progress("features: rows written", unit="rows") as shown:
            write_batches(shown.batches(batches(exprs)), features, schema)
    written = duckdb_backend(base.duckdb_memory_limit_mb).read_parquet(features)  # the local file just written
    by_cutoff = (
        written.group_by(written[s.CUTOFF].date().name(s.CUTOFF))
        .aggregate(
            customers=written.count(),
            churned=written[s.CHURNED].cast("int64").sum().coalesce(0),
            repeat=(written[s.FREQUENCY] > 0).cast("int64").sum(),
        )
        .order_by(s.CUTOFF)
        .to_pandas()
    )
    out = feature_metrics(by_cutoff, cut, drawn_from)
    write_json(out, metrics)
    if cut.skipped_before_data:
        log.info("skipped %d generated cutoffs before the first transaction day", len(cut.skipped_before_data))
    log.info(
        "%d training rows over %d cutoffs (%s .. %s), trained as of %s",
        out["training_rows"],
        len(cut.training),
        cut.training[0],
        cut.training[-1],
        out["training_as_of"],
    )
    return out


@contextlib.contextmanager
def memory_hint(stage: str, base: BaseConfig) -> Iterator[None]:
    """DuckDB running out of its memory limit, as a one-line error that names the setting to raise."""
    try:
        yield
    except duckdb.OutOfMemoryException as exc:
        first = (str(exc).strip().splitlines() or ["out of memory"])[0]
        raise InputError(
            f"{stage}: DuckDB needed more than base.duckdb_memory_limit_mb = {base.duckdb_memory_limit_mb} MB "
            f"({first}); raise it"
        ) from exc


def main(argv: Sequence[str]) -> None:
    featurise_main(argv, __doc__, "--features", run, training_as_of)


def featurise_main(
    argv: Sequence[str],
    doc: str | None,
    output_flag: str,
    stage_run: Callable[..., dict[str, Any]],
    as_of: Callable[[dict[str, Any]], dt.date | None],
) -> None:
    """The command line of a stage that featurises the transactions into one table (``features``, ``snapshot``)."""
    p = cli.parser((doc or "").splitlines()[0])
    cli.input_file(p, "--transactions")
    cli.output(p, output_flag)
    cli.output(p, "--metrics")
    args = p.parse_args(argv)
    params = load_params(args.params)
    base, cfg = section(params, "base", BaseConfig), section(params, "features", FeaturesConfig)
    stage_run(base, cfg, args.transactions, getattr(args, output_flag[2:]), args.metrics, as_of=as_of(params))


if __name__ == "__main__":
    cli.run(main)
