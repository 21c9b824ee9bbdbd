"""Conformance: the pipeline on Spark (local[2]) gives the outputs it gives on DuckDB.

Ingest on both engines, over every case of the bad-input catalogue that ingest decides: the same transactions,
quarantine and metrics, or the same one-line error. Then the pipeline on CDNOW: both engines run ingest, features,
clv, churn and score through the stages' entry points. With ``spark`` the ingest checks run on the executors, the
features and the clv stage's BTYD summary are Spark SQL compiled from the same Ibis definitions, and the churn
scores and reasons are computed on the executors. Every sum is exact on both engines (money in decimals, gaps in
integers; see ``features.behaviour``), and what follows is the same IEEE arithmetic, so every value, real numbers
included, must be equal to the bit.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from features import schemas as s
from features.errors import InputError
from tests.conftest import ROOT
from tests.robustness.catalogue import CASES, Case, Folder, Quarantines
from tests.robustness.test_catalogue import case_params
from tests.stages import run_stage, run_stages

pytest.importorskip("pyspark", reason="pyspark is installed by `make install` (the project's spark extra)")


def java_major() -> int | None:
    """The major version of the Java runtime Spark would start (JAVA_HOME's, else the one on PATH), or None."""
    home = Path(os.environ.get("JAVA_HOME", "/nonexistent")) / "bin" / "java"
    java = str(home) if home.is_file() else shutil.which("java")
    if java is None:
        return None
    shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=120)
    found = re.search(r'version "(?:1\.)?(\d+)', shown.stderr + shown.stdout)
    return int(found.group(1)) if found else None


JAVA = java_major()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(JAVA is None, reason="no Java runtime: `make install` installs one with apt-get where it can"),
    pytest.mark.skipif(JAVA is not None and JAVA < 17, reason=f"Java {JAVA} found; Spark 4 needs Java 17 or later"),
]


INGEST_CASES = [c for c in CASES if c.last_stage == "ingest" and not isinstance(c.data, Folder)]


def ingest_on(engine: str, case: Case, source: Path, folder: Path) -> dict[str, Any] | str:
    """The ingest stage's outputs read back, or its one-line error, with ``base.engine`` set to ``engine``."""
    folder.mkdir()
    params = case_params(case, source)
    params["base"]["engine"] = engine
    params["base"]["spark"]["master"] = "local[2]"
    params_file = folder / "params.yaml"
    text = yaml.safe_dump(params)
    params_file.write_text(case.params_text(text) if case.params_text else text)
    try:
        run_stage("ingest", folder, params_file)
    except InputError as exc:  # the engine's own folder aside, the same words
        return str(exc).replace(str(folder), "{folder}")
    return {
        "metrics": json.loads((folder / "metrics/ingest.json").read_text()),
        "transactions": pq.read_table(folder / "data/transactions.parquet"),
        "quarantine": pq.read_table(folder / "data/quarantine.parquet"),
    }


@pytest.mark.parametrize("case", INGEST_CASES, ids=[c.name for c in INGEST_CASES])
def test_ingest_on_spark_matches_duckdb(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPARK_MASTER", raising=False)
    source = tmp_path / f"source{case.suffix}"
    if case.data is not None:
        assert not isinstance(case.data, Folder)
        source.write_bytes(case.data())
    duck = ingest_on("duckdb", case, source, tmp_path / "duckdb")
    spark = ingest_on("spark", case, source, tmp_path / "spark")
    if isinstance(duck, str) or isinstance(spark, str):
        assert spark == duck
        return
    assert spark["metrics"] == duck["metrics"]
    for name in ("transactions", "quarantine"):
        assert spark[name].schema == duck[name].schema, name
        assert spark[name].equals(duck[name]), name


def test_a_parquet_column_spark_cannot_read_is_one_line(tmp_path: Path, params: dict[str, Any]) -> None:
    """A time of day is read on one machine (an unmapped column, kept as text in the quarantine) but not by Spark."""
    source = tmp_path / "log.parquet"
    times = pa.array([dt.time(9, 30), dt.time(17, 5)], pa.time64("us"))
    pq.write_table(
        pa.table({"customer_id": ["1", "2"], "date": ["2020-01-05", "2020-01-06"], "amount": [1.0, 2.0], "at": times}),
        source,
    )
    case = Case("time_of_day_column", lambda: source.read_bytes(), Quarantines(kept=2, reasons={}), suffix=".parquet")
    assert isinstance(ingest_on("duckdb", case, source, tmp_path / "duckdb"), dict)
    error = ingest_on("spark", case, source, tmp_path / "spark")
    assert isinstance(error, str) and "\n" not in error
    # Spark's own words name the type; the rest is the stage's
    assert re.fullmatch(
        re.escape(f"{source}: Spark cannot read this Parquet file (")
        + r".*\bTIME\b.*"
        + re.escape("); store that column as another type, or ingest it with base.engine: duckdb"),
        error,
    ), error


def shuffled_log(rows: int, seed: int) -> pd.DataFrame:
    """A log in Athens wall-clock time with every kind of row: repeats far from their first line, returns, a zero,
    bad ids, times and amounts, and times that the clock changes of 2020 repeat (25 October) or skip (29 March)."""
    rng = np.random.default_rng(seed)
    day = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 365 * 24 * 60, rows), unit="min")
    log = pd.DataFrame(
        {
            "order": [f"C{i}" if i % 97 == 0 else f"O{i}" for i in range(rows)],
            "customer": rng.integers(1, rows // 5, rows).astype(str),
            "when": day.strftime("%Y-%m-%d %H:%M:%S"),
            "spend": np.round(rng.gamma(2.0, 15.0, rows), 2).astype(str),
        }
    )
    bad = rng.choice(rows, 60, replace=False)
    log.loc[bad[:10], "customer"] = ""
    log.loc[bad[10:20], "when"] = "not a time"
    log.loc[bad[20:30], "spend"] = "12,5"
    log.loc[bad[30:40], "when"] = "2020-10-25 03:30:00"  # happens twice in Athens
    log.loc[bad[40:50], "when"] = "2020-03-29 03:30:00"  # never happens in Athens
    log.loc[bad[50:], "spend"] = "0"
    repeats = log.sample(200, random_state=seed)  # appended at the end: their first lines are in other partitions
    return pd.concat([log, repeats], ignore_index=True)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_ingest_on_spark_matches_duckdb_across_many_partitions(
    suffix: str,
    tmp_path: Path,
    params: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pipeline import ingest
    from pipeline.config import SparkConfig
    from pipeline.engine import spark_session

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPARK_MASTER", raising=False)
    log = shuffled_log(20_000, seed=3)
    source = tmp_path / f"log{suffix}"
    if suffix == ".csv":
        log.to_csv(source, index=False)
        monkeypatch.setattr(ingest, "STAGED_ROW_GROUP_ROWS", 1000)  # the staged copy in 21 row groups
    else:
        typed = log.assign(spend=pd.to_numeric(log["spend"], errors="coerce"))
        pq.write_table(pa.Table.from_pandas(typed, preserve_index=False), source, row_group_size=1000)
    params["ingest"].update(
        source=str(source),
        columns={
            "customer_id": "customer",
            "timestamp": "when",
            "amount": "spend",
            "quantity": None,
            "unit_price": None,
            "order_id": "order",
        },
        timestamp_format="%Y-%m-%d %H:%M:%S",
        timezone="Europe/Athens",
        duplicate_key=["order", "customer", "when", "spend"],
        cancellation_prefix="C",
        returns="net",
        zero_amount="quarantine",
    )
    params["base"]["spark"]["master"] = "local[2]"
    spark = spark_session(SparkConfig("local[2]", 8, params["base"]["spark"]["driver_memory_mb"]))
    monkeypatch.setattr(ingest, "PARQUET_BATCH_ROWS", 1000)
    spark.conf.set("spark.sql.files.maxPartitionBytes", "16384")  # a partition per row group or two
    caplog.set_level(logging.INFO, logger="spark")
    try:
        outputs = {}
        for engine in ("duckdb", "spark"):
            params["base"]["engine"] = engine
            (tmp_path / engine).mkdir()
            params_file = tmp_path / engine / "params.yaml"
            params_file.write_text(yaml.safe_dump(params))
            run_stage("ingest", tmp_path / engine, params_file)
            outputs[engine] = [
                json.loads((tmp_path / engine / "metrics/ingest.json").read_text()),
                pq.read_table(tmp_path / engine / "data/transactions.parquet"),
                pq.read_table(tmp_path / engine / "data/quarantine.parquet"),
            ]
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    partitions = re.search(r"on (\d+) Spark partitions", caplog.text)
    assert partitions and int(partitions.group(1)) >= 8, caplog.text
    metrics = outputs["spark"][0]
    assert metrics == outputs["duckdb"][0]
    assert metrics["rows_in"] == 20_200
    assert metrics["quarantined_by_reason"]["duplicate"] >= 200
    assert metrics["local_times_ambiguous"] >= 10 and metrics["local_times_nonexistent"] >= 10  # and chance hits
    assert metrics["returns_kept"] > 0 and metrics["quarantined_by_reason"]["zero_amount"] == 10
    for spark_table, duck_table in zip(outputs["spark"][1:], outputs["duckdb"][1:], strict=True):
        assert spark_table.equals(duck_table)


def run_engine(folder: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every stage from ingest to score in ``folder``; returns the folder.

    Each engine gets its own MLflow store: in a shared registry the second engine's models would tie with the
    first's, stay challengers, and be scored by the first engine's champion, hiding any difference.
    """
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    run_stages(folder, params_file, ("ingest", "features", "train_clv", "train_churn", "snapshot", "score"))
    return folder


def assert_same(spark: pd.DataFrame, duck: pd.DataFrame, keys: list[str], what: str) -> None:
    assert list(spark.columns) == list(duck.columns), what
    assert len(spark) == len(duck) > 0, what
    a = spark.sort_values(keys, ignore_index=True)
    b = duck.sort_values(keys, ignore_index=True)
    for column in a.columns:
        x, y = a[column], b[column]
        if x.dtype.kind == "f" or y.dtype.kind == "f":  # NaN where the other has NaN; otherwise the same bits
            np.testing.assert_array_equal(x.to_numpy(np.float64), y.to_numpy(np.float64), err_msg=f"{what}.{column}")
        else:
            assert x.astype(str).tolist() == y.astype(str).tolist(), f"{what}.{column}"


def test_duckdb_and_spark_give_the_same_features_and_scores(
    tmp_path: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPARK_MASTER", raising=False)
    params["clv"]["bootstrap_samples"] = 10
    params["score"]["churn_scorer"] = "model"  # the model's scores and reasons are what the executors compute
    params["features"]["cutoff_schedule"]["count"] = 3  # 4 of the 15 training cutoffs: the same code, less work
    duck = run_engine(tmp_path / "duckdb", params, monkeypatch)
    params["base"]["engine"] = "spark"
    params["base"]["spark"]["master"] = "local[2]"
    spark = run_engine(tmp_path / "spark", params, monkeypatch)

    tx = pq.read_table(spark / "data/transactions.parquet")
    assert tx.num_rows == 69659 and tx.equals(pq.read_table(duck / "data/transactions.parquet"))
    assert (spark / "metrics/ingest.json").read_text() == (duck / "metrics/ingest.json").read_text()

    features = pd.read_parquet(spark / "data/features.parquet")
    assert features[s.CUSTOMER_ID].nunique() == 23570 and features[s.CUTOFF].nunique() == 4
    keys = [s.CUTOFF, s.CUSTOMER_ID]
    assert_same(features, pd.read_parquet(duck / "data/features.parquet"), keys, "features")
    snapshot = pd.read_parquet(spark / "data/snapshot.parquet")
    assert_same(snapshot, pd.read_parquet(duck / "data/snapshot.parquet"), keys, "snapshot")
    for name in ("clv", "churn", "scores"):
        table = pd.read_parquet(spark / f"data/{name}.parquet")
        assert_same(table, pd.read_parquet(duck / f"data/{name}.parquet"), [s.CUSTOMER_ID], name)
    drift = pd.read_parquet(spark / "data/drift.parquet")
    assert_same(drift, pd.read_parquet(duck / "data/drift.parquet"), ["feature"], "drift")
    segments = pd.read_csv(spark / "data/segments.csv")
    assert_same(segments, pd.read_csv(duck / "data/segments.csv"), ["segment"], "segments")


def test_ingest_bench_runs_both_engines_and_finds_the_same_outputs(tmp_path: Path) -> None:
    report = tmp_path / "ingest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--customers", "2000", "--csv", "--report", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads(report.read_text())["runs"]
    for kind in ("parquet", "csv"):
        assert runs[f"{kind}/same_outputs"] == {
            "transactions": True,
            "quarantine": True,
            "metrics": True,
            "rows_in": runs["parquet/same_outputs"]["rows_in"],
        }
        for engine in ("duckdb", "spark"):
            assert runs[f"{kind}/{engine}"]["wall_s"] > 0 and runs[f"{kind}/{engine}"]["python_peak_mb"] > 50
        # Spark's JVM is a child of the stage: the sampled tree holds it beside the stage's own Python
        assert runs[f"{kind}/spark"]["tree_peak_mb"] > runs[f"{kind}/spark"]["python_peak_mb"] + 200
    assert runs["parquet/same_outputs"]["rows_in"] > 2000
    assert "spark/duckdb wall" in done.stdout
