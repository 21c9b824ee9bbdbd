"""Stage ``snapshot``: every customer's features as of the scoring date ``score.as_of``, from the clean Parquet.

The same definitions as the ``features`` stage (``features.behaviour.feature_table``), for one cutoff, the last
day before ``score.as_of``, with no labels (``is_scoring`` true). It is the only stage that reads the scoring
date besides ``score``: a new week reruns these two and the report, and no training stage.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ibis.expr.types as ir

from features import schemas as s
from features.behaviour import feature_table, purchase_days, return_days
from features.cutoffs import scoring_cutoff
from pipeline import cli
from pipeline.config import BaseConfig, FeaturesConfig, scoring_as_of
from pipeline.engine import backend, open_transactions
from pipeline.features import batches, date_bounds, feature_options, featurise_main, memory_hint
from pipeline.io import write_batches, write_json
from pipeline.progress import Progress

log = logging.getLogger("snapshot")


def build_snapshot(
    tx: ir.Table, base: BaseConfig, cfg: FeaturesConfig, as_of: dt.date | None
) -> tuple[ir.Table, dt.date]:
    """The scoring snapshot's expression and its cutoff (the last day of history before ``as_of``)."""
    first, last = date_bounds(tx)
    cutoff = scoring_cutoff(first, last, horizon_days=cfg.horizon_days, as_of=as_of)
    expr = feature_table(purchase_days(tx), return_days(tx), [], cutoff, **feature_options(base, cfg))
    return expr, cutoff


def run(
    base: BaseConfig, cfg: FeaturesConfig, transactions: Path, snapshot: Path, metrics: Path, *, as_of: dt.date | None
) -> dict[str, Any]:
    """Featurise every customer as of ``as_of`` and write the snapshot and its metrics."""
    tx = open_transactions(backend(base), transactions)
    with memory_hint("snapshot", base):
        expr, cutoff = build_snapshot(tx, base, cfg, as_of)
        with Progress("snapshot: rows written", unit="rows") as shown:
            rows = write_batches(
                shown.batches(batches([expr])), snapshot, s.feature_schema(cfg.windows_days, cfg.trend_window_days)
            )
    out = {"scoring_cutoff": str(cutoff), "as_of": str(cutoff + dt.timedelta(days=1)), "customers": rows}
    write_json(out, metrics)
    log.info("%d customers as of %s", rows, out["as_of"])
    return out


def main(argv: Sequence[str]) -> None:
    featurise_main(argv, __doc__, "--snapshot", run, scoring_as_of)


if __name__ == "__main__":
    cli.run(main)
