"""Conformance: the pipeline on Spark (local[2]) gives the features and scores it gives on DuckDB, on CDNOW.

Both engines run ingest, features, clv, churn and score through the stages' entry points. With ``spark`` the
features and the clv stage's BTYD summary are Spark SQL compiled from the same Ibis definitions, and the churn
scores and reasons are computed on the executors. Every sum is exact on both engines (money in decimals, gaps in
integers; see ``features.behaviour``), and what follows is the same IEEE arithmetic, so every value, real numbers
included, must be equal to the bit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from features import schemas as s
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


def run_engine(folder: Path, params: dict[str, Any], transactions: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every stage after ingest in ``folder``, from ``transactions``; returns the folder.

    Each engine gets its own MLflow store: in a shared registry the second engine's models would tie with the
    first's, stay challengers, and be scored by the first engine's champion, hiding any difference.
    """
    (folder / "data").mkdir(parents=True)
    shutil.copy(transactions, folder / "data/transactions.parquet")
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    run_stages(folder, params_file, ("features", "train_clv", "train_churn", "snapshot", "score"))
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
    ingest_cfg = tmp_path / "params.yaml"
    ingest_cfg.write_text(yaml.safe_dump(params))
    run_stage("ingest", tmp_path, ingest_cfg)
    tx = tmp_path / "data/transactions.parquet"
    duck = run_engine(tmp_path / "duckdb", params, tx, monkeypatch)
    params["base"]["engine"] = "spark"
    params["base"]["spark"]["master"] = "local[2]"
    spark = run_engine(tmp_path / "spark", params, tx, monkeypatch)

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
