"""Every stage in DAG order in a temporary folder, through the same entry points DVC calls."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from features import schemas as s
from pipeline import features as features_stage
from pipeline import ingest as ingest_stage

ROOT = Path(__file__).resolve().parents[1]


def test_stages_in_dag_order(tmp_path: Path, params: dict[str, Any]) -> None:
    params["ingest"]["source"] = "cdnow_sample"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    d = tmp_path
    ingest_stage.main(
        [
            "--params",
            str(params_file),
            "--transactions",
            f"{d}/tx.parquet",
            "--quarantine",
            f"{d}/q.parquet",
            "--metrics",
            f"{d}/ingest.json",
        ]
    )
    features_stage.main(
        [
            "--params",
            str(params_file),
            "--transactions",
            f"{d}/tx.parquet",
            "--features",
            f"{d}/f.parquet",
            "--metrics",
            f"{d}/features.json",
        ]
    )
    ingest_metrics = json.loads((d / "ingest.json").read_text())
    assert ingest_metrics["rows_in"] == 6919 and ingest_metrics["rows_kept"] == 6919
    assert ingest_metrics["customers"] == 2357
    f = pd.read_parquet(d / "f.parquet")
    scoring = f[f[s.IS_SCORING]]
    assert len(scoring) == 2357 and scoring[s.CHURNED].isna().all()
    assert str(scoring[s.CUTOFF].iloc[0].date()) == "1998-06-30"
    training = f[~f[s.IS_SCORING]]
    assert training[s.CHURNED].notna().all()
    # 1997-09-30 (explicit) plus 13 generated every 28 days back from 1998-04-01.
    assert training[s.CUTOFF].nunique() == 14
    m = json.loads((d / "features.json").read_text())
    assert m["training_rows"] == len(training)
    assert 0.5 < m["by_cutoff"]["1997-09-30"]["churn_rate"] < 0.9


def test_data_error_is_one_line(tmp_path: Path, params: dict[str, Any]) -> None:
    params["ingest"]["source"] = str(tmp_path / "missing.csv")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    args = [
        sys.executable,
        "-m",
        "pipeline.ingest",
        "--params",
        str(params_file),
        "--transactions",
        "t",
        "--quarantine",
        "q",
        "--metrics",
        "m",
    ]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path}/missing.csv: file not found; set ingest.source to an existing file or one of: "
        "cdnow, cdnow_sample"
    ]
    debug = subprocess.run([*args, "--debug"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert "Traceback" in debug.stderr
