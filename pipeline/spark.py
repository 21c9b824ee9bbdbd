"""Scoring on Spark's executors (``base.engine: spark``): the trained models broadcast, applied per partition.

The functions applied are the same pure ones the DuckDB path calls on the whole table (``models.churn``), so the
two engines give the same scores. The executors must be able to import this project (installed in their
Python, or shipped with ``--py-files``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pandas as pd

from features import schemas as s
from models import churn as cm
from pipeline.config import SparkConfig
from pipeline.engine import spark_session

log = logging.getLogger("spark")

CHURN_SCORES_DDL = ", ".join(
    [
        f"{s.CUSTOMER_ID} string",
        f"{s.CUTOFF} timestamp",
        f"{s.P_CHURN} double",
        f"{s.P_CHURN_RAW} double",
        *(f"{name} string" for name in s.REASONS),
    ]
)


def partitions_for(spark: Any, rows: int, rows_per_partition: int = 200_000) -> int:
    """Enough partitions to keep every executor core busy, and none much above ``rows_per_partition`` rows."""
    cores = int(spark.sparkContext.defaultParallelism)
    return max(cores, -(-rows // rows_per_partition))


def score_churn(
    cfg: SparkConfig, frame: pd.DataFrame, model: cm.ChurnModel, guide: cm.ReasonGuide, *, explain: bool
) -> pd.DataFrame:
    """``models.churn.score_customers`` over ``frame``'s rows on the executors; rows come back in any order."""
    spark = spark_session(cfg)
    payload = spark.sparkContext.broadcast((model, guide))

    def score_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        scorer, reference = payload.value
        for batch in batches:
            if len(batch):
                yield cm.score_customers(scorer, batch, reference, explain=explain)

    n = partitions_for(spark, len(frame))
    log.info("scoring %d customers on %d Spark partitions", len(frame), n)
    rows = spark.createDataFrame(frame).repartition(n)
    try:
        out = rows.mapInPandas(score_partition, CHURN_SCORES_DDL).toPandas()
    finally:
        payload.unpersist()
    out[s.CUTOFF] = out[s.CUTOFF].astype("datetime64[us]")
    return out
