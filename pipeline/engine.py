"""The engine that runs the feature definitions: DuckDB in process (default) or Spark (``base.engine``).

The definitions in ``features/`` are Ibis expressions; this module only opens a backend and the clean
transactions on it. With ``spark`` the same expressions compile to Spark SQL and run on ``base.spark.master``
(or the ``SPARK_MASTER`` environment variable, which wins, so one params.yaml serves a laptop and a cluster).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import pyarrow.parquet as pq

from features import schemas as s
from features.errors import InputError
from pipeline import progress
from pipeline.config import BaseConfig, SparkConfig

log = logging.getLogger("engine")

SPARK_MASTER_ENV = "SPARK_MASTER"


def duckdb_backend(memory_limit_mb: int | None = None) -> ibis.BaseBackend:
    """An in-process DuckDB backend whose session time zone is UTC (dates are taken in UTC).

    With ``memory_limit_mb``, DuckDB spills sorts and joins to a temporary folder instead of growing past it.
    """
    con = ibis.duckdb.connect()
    con.raw_sql("SET TimeZone = 'UTC'")
    if memory_limit_mb is not None:
        con.raw_sql(f"SET memory_limit = '{int(memory_limit_mb)}MB'")
        con.raw_sql("SET preserve_insertion_order = false")  # the result is explicitly ordered
    return con


def spark_session(cfg: SparkConfig) -> Any:
    """The SparkSession for ``cfg`` (created once per process): UTC session zone, Arrow transfers, no UI."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise InputError(
            "base.engine is spark but pyspark is not installed; install the project with its spark extra "
            "(pip install -e '.[spark]') and a Java 17 runtime"
        ) from exc
    master = os.environ.get(SPARK_MASTER_ENV) or cfg.master
    builder = (
        SparkSession.builder.master(master)
        .appName("churn-clv")
        .config("spark.sql.session.timeZone", "UTC")
        # a decimal sum that overflows (features.behaviour.MONEY) raises instead of becoming null, whatever the
        # cluster's defaults (ANSI mode is the default since Spark 4, not before)
        .config("spark.sql.ansi.enabled", "true")
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.driver.memory", f"{cfg.driver_memory_mb}m")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "true" if progress.enabled() else "false")
    )
    if master.startswith("local"):
        # local workers run this interpreter (the one with the project installed), not whatever `python3` is first
        # on PATH; PySpark reads only the variable. A cluster's executors bring their own (set PYSPARK_PYTHON).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # py4j/JVM start-up failures carry pages of Java text
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"Spark at master {master!r} could not start: {first}; is Java 17 installed?") from exc
    spark.sparkContext.setLogLevel("ERROR")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    log.info("Spark %s at master %s", spark.version, master)
    return spark


def backend(base: BaseConfig) -> ibis.BaseBackend:
    """The Ibis backend ``base.engine`` names."""
    if base.engine == "spark":
        return ibis.pyspark.connect(spark_session(base.spark))
    return duckdb_backend(base.duckdb_memory_limit_mb)


def check_transactions(path: Path) -> None:
    """One-line errors for a missing clean transactions file or one not written by the ingest stage."""
    if not path.is_file():
        raise InputError(f"{path}: file not found; run the ingest stage first (`dvc repro`)")
    schema = pq.read_schema(path)
    expected = list(s.TRANSACTIONS.columns)
    if schema.names != expected:
        raise InputError(f"{path}: columns {schema.names} do not match the transactions schema {expected}")
    ts_type = schema.field(s.TS).type
    if str(ts_type) != "timestamp[us, tz=UTC]":
        raise InputError(f"{path}: column '{s.TS}' is {ts_type}, expected timestamp[us, tz=UTC]; write it with ingest")


def open_transactions(con: ibis.BaseBackend, path: Path) -> ir.Table:
    """Open the clean transactions Parquet lazily on ``con``, after checking its columns match the schema.

    ``ts`` holds UTC instants; the feature definitions only take its date in UTC (both engines run in UTC).
    """
    check_transactions(path)
    if con.name != "duckdb":
        return con.read_parquet(str(path.resolve()))
    # DuckDB turns a time-zone-aware timestamp into a date through its ICU calendar code, about 1.6 s per 25M rows.
    # The same instants as plain (UTC wall-clock) timestamps become the same dates in a fraction of that.
    quoted = str(path).replace("'", "''")
    columns = ", ".join(f"make_timestamp(epoch_us({c})) AS {c}" if c == s.TS else c for c in s.TRANSACTIONS.columns)
    return con.sql(f"SELECT {columns} FROM read_parquet('{quoted}')")
