"""Work on Spark's executors (``base.engine: spark``): the ingest checks, and churn scoring.

Ingest: each executor runs the row checks of ``features.cleaning`` (the same DuckDB SQL the one-machine path runs)
on its slice of the log, Spark ranks the duplicates over the whole log and gives each row its reason, and the
executors write the classified rows as Parquet parts. Scoring: the trained models broadcast, applied per partition
with the same pure functions the DuckDB path calls on the whole table (``models.churn``). Either way the two
engines give the same outputs. The executors must be able to import this project (installed in their Python, or
shipped with ``--py-files``) and, for ingest, read and write the paths they are given (local[N], or shared storage).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from features import cleaning
from features import schemas as s
from features.errors import InputError
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


# What a slice of the log leaves the executors' row checks as (``cleaning.per_row_sql``), before the keys.
ROW_CHECKED = pa.schema(
    [
        ("_cid", pa.string()),
        ("_ts", pa.timestamp("us", tz="UTC")),
        ("_amount", pa.float64()),
        ("_order", pa.string()),
        ("_cancelled", pa.bool_()),
        ("_wall_time", pa.timestamp("us")),
        ("_early", pa.string()),
        ("_valid", pa.bool_()),
    ]
)
SPARK_TYPES = {pa.string(): "string", pa.int64(): "long", pa.float64(): "double", pa.bool_(): "boolean"}


def _checked_schema(columns: int, keys: int) -> pa.Schema:
    originals = [(cleaning.ORIGINAL.format(i), pa.string()) for i in range(columns)]
    key_values = [(cleaning.KEY.format(i), pa.string()) for i in range(keys)]
    return pa.schema([(s.SOURCE_ROW, pa.int64()), *originals, *ROW_CHECKED, *key_values])


def _ddl(schema: pa.Schema) -> str:
    def spark_type(t: pa.DataType) -> str:
        if pa.types.is_timestamp(t):
            return "timestamp" if t.tz else "timestamp_ntz"
        return SPARK_TYPES[t]

    return ", ".join(f"{f.name} {spark_type(f.type)}" for f in schema)


def _as_source_types(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A slice as Spark hands it over, in the source file's own types where Spark read them as others (an unsigned
    integer as a decimal, a nanosecond timestamp as its count): so each value is checked as it is on one machine."""
    columns = []
    for column, field in zip(table.columns, schema, strict=True):
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            columns.append(column)
    return pa.Table.from_arrays(columns, names=schema.names)


def classify_rows(
    cfg: SparkConfig,
    raw: Path,
    positional: bool,
    schema: pa.Schema,
    rules: cleaning.CleaningRules,
    source: str,
    out: Path,
) -> None:
    """Classify the raw log at ``raw`` (one Parquet file) on the executors, and write every row with its reason as
    Parquet parts in the folder ``out``: the source row, the originals as text (``cleaning.ORIGINAL``), the parsed
    values and ``_reason``, as ``cleaning.classified_view`` reads them.

    ``positional``: the file is ingest's staged copy of a CSV (``SOURCE_ROW`` and the columns as ``ORIGINAL``);
    otherwise it is the source itself, whose rows are numbered by their index in the file.
    """
    spark = spark_session(cfg)
    row = cleaning.row_checks(schema, rules, source)
    names = list(schema.names)
    sql = cleaning.per_row_sql(names, row, rules.timezone)
    checked = _checked_schema(len(names), len(row.keys))
    raw_schema = pa.schema([(s.SOURCE_ROW, pa.int64()), *schema])

    def check_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        for batch in batches:
            if batch.num_rows == 0:
                continue
            con.register(cleaning.RAW, _as_source_types(pa.Table.from_batches([batch]), raw_schema))
            yield from con.execute(sql).fetch_arrow_table().cast(checked).to_batches()
            con.unregister(cleaning.RAW)
        con.close()

    # a source's nanosecond timestamps (what pandas writes) are read as their count, and cast back per slice
    spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    from pyspark.errors import AnalysisException

    try:
        frame = spark.read.parquet(str(raw))
        if not positional:
            frame = frame.select("_metadata.row_index", "*")
        frame = frame.toDF(s.SOURCE_ROW, *(cleaning.ORIGINAL.format(i) for i in range(len(names))))
    except AnalysisException as exc:  # a column type Spark does not read, such as a time of day
        raise InputError(
            f"{source}: Spark cannot read this Parquet file ({str(exc).splitlines()[0]}); store that column as "
            "another type, or ingest it with base.engine: duckdb"
        ) from None
    rows = frame.mapInArrow(check_partition, _ddl(checked))
    keys = [cleaning.KEY.format(i) for i in range(len(row.keys))]
    if keys:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        # only rows that pass the earlier checks compete: a bad line does not make its good twin a duplicate
        first = Window.partitionBy("_valid", *keys).orderBy(s.SOURCE_ROW)
        rows = rows.withColumn("_dup", F.row_number().over(first))
    else:
        rows = rows.selectExpr("*", "1 AS _dup")
    rows = rows.selectExpr("*", f"{cleaning.reason_sql(rules)} AS _reason").drop(*keys, "_early", "_valid", "_dup")
    log.info("classifying %s on %d Spark partitions", source, frame.rdd.getNumPartitions())
    try:
        rows.write.mode("overwrite").parquet(str(out))
    except Exception as exc:  # an executor's DuckDB refusal arrives inside pages of Java and Python text
        refused = _duckdb_refusal(str(exc))
        if refused is None:
            raise
        raise cleaning.engine_error(refused, source) from None


_REFUSAL = re.compile(r"duckdb(?:\.duckdb)?\.(?:InvalidInputException|NotImplementedException): ([^\n]+)")


def _duckdb_refusal(text: str) -> str | None:
    """DuckDB's own message in an executor's failure, when DuckDB refused a zone or a format there."""
    found = _REFUSAL.search(text)
    return found.group(1).strip() if found else None
