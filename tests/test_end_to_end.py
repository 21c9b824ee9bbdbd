"""Every stage in DAG order in a temporary folder, through the same entry points DVC calls."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from features import schemas as s
from models.bootstrap import Replicates, clv_band
from pipeline import report
from tests.stages import run_stage, run_stages
from tests.test_reasons import list_faults

ROOT = Path(__file__).resolve().parents[1]


def test_stages_in_dag_order(tmp_path: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    params["ingest"]["source"] = "cdnow_sample"
    params["clv"]["bootstrap_samples"] = 10
    params["clv"]["acquisition_cost"] = 5.0
    params["churn"]["max_explained_customers"] = 1000  # of 2,357: the rest get p_churn without reasons
    params["score"]["churn_scorer"] = "model"  # the model's path end to end; a rule serving: tests/test_backtest.py
    # a generated survey: NPS answers from 40% of customers, dated through the whole log
    survey = _survey(tmp_path / "survey.csv")
    params["churn"]["attributes"] = [
        {
            "name": "survey",
            "path": str(survey),
            "customer_id": "cust",
            "timestamp": "answered_at",
            "window_days": None,
            "features": ["nps:latest", "nps:count"],
        }
    ]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)  # MLflow writes run artifacts under ./mlruns
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    d = tmp_path
    run_stages(d, params_file, ("ingest", "features", "snapshot"))
    ingest_metrics = json.loads((d / "metrics/ingest.json").read_text())
    assert ingest_metrics["rows_in"] == 6919 and ingest_metrics["rows_kept"] == 6919
    assert ingest_metrics["customers"] == 2357
    # the week's snapshot (as of score.as_of) is its own file: moving the scoring date leaves training alone
    scoring = pd.read_parquet(d / "data/snapshot.parquet")
    assert len(scoring) == 2357 and scoring[s.CHURNED].isna().all() and scoring[s.IS_SCORING].all()
    assert str(scoring[s.CUTOFF].iloc[0].date()) == "1998-06-30"
    training = pd.read_parquet(d / "data/features.parquet")
    assert training[s.CHURNED].notna().all() and not training[s.IS_SCORING].any()
    # 1997-09-30 (explicit) plus 14 generated every 28 days back from 1998-04-01.
    assert training[s.CUTOFF].nunique() == 15
    m = json.loads((d / "metrics/features.json").read_text())
    assert m["training_rows"] == len(training) and m["training_as_of"] == "1998-07-01"
    assert 0.5 < m["by_cutoff"]["1997-09-30"]["churn_rate"] < 0.9

    run_stages(d, params_file, ("train_clv", "train_churn", "score"))
    value = pd.read_parquet(d / "data/clv.parquet")
    assert len(value) == 2357 and value[s.CUSTOMER_ID].is_unique
    assert value[s.CLV].is_monotonic_decreasing  # marketing reads it top down
    assert ((value[s.CLV_P05] <= value[s.CLV]) & (value[s.CLV] <= value[s.CLV_P95])).all()
    assert (value[s.CLV_NET] == value[s.CLV] - 5.0).all()
    shares = value[s.VALUE_TIER].value_counts(normalize=True)
    assert shares["high"] == pytest.approx(0.2, abs=0.01) and shares["mid"] == pytest.approx(0.3, abs=0.01)
    by_tier = value.groupby(s.VALUE_TIER)[s.CLV]
    assert by_tier.min()["high"] >= by_tier.max()["mid"] and by_tier.min()["mid"] >= by_tier.max()["low"]
    cm = json.loads((d / "metrics/clv.json").read_text())
    assert set(cm) >= {"chosen_model", "model", "candidates", "baselines"}
    assert cm["chosen_model"] in cm["candidates"] and set(cm["candidates"]) == {"bgnbd", "mbgnbd", "pareto_nbd"}
    names = {"purchases_actual", "purchases_predicted", "purchases_pct_error", "purchases_mae", "purchases_rmse"}
    names |= {"spend_mae", "spearman", "gini", "top_decile_capture"}
    assert names <= set(cm["model"]) and names <= set(cm["baselines"]["historical_rate"])
    # the 90-day horizon after 1997-09-30: the same label sum the features stage wrote
    assert cm["model"]["purchases_actual"] == training.loc[training[s.CUTOFF] == "1997-09-30", s.FUTURE_PURCHASES].sum()
    params_doc = json.loads((d / "artifacts/clv/params.json").read_text())
    assert params_doc["scoring"]["model"] == cm["chosen_model"]
    # the stored replicates alone give the table's band back (what a scoring run without refits will do)
    stored = params_doc["scoring"]["bootstrap"]["replicates"]
    assert stored["model"] == cm["chosen_model"] and len(stored["params"]) == 10
    fit = params_doc["scoring"]["settings"]
    low, high = clv_band(
        Replicates.from_dict(stored),
        *(value[c].to_numpy(np.float64) for c in (s.FREQUENCY, s.RECENCY, s.T, s.MONETARY_VALUE)),
        **{k: fit[k] for k in ("months", "discount_rate_monthly", "units_per_month", "margin_ratio")},
    )
    np.testing.assert_array_equal(np.minimum(low, value[s.CLV]), value[s.CLV_P05])
    np.testing.assert_array_equal(np.maximum(high, value[s.CLV]), value[s.CLV_P95])
    cumulative = pd.read_csv(d / "plots/clv/cumulative.csv")
    assert cumulative["actual"].iloc[-1] == cm["model"]["purchases_actual"]
    assert cumulative["predicted"].iloc[-1] == pytest.approx(cm["model"]["purchases_predicted"], rel=1e-6)
    for png in ("by_frequency", "cumulative", "deciles", "p_alive"):
        assert (d / f"artifacts/clv/plots/{png}.png").stat().st_size > 10_000

    # the MLflow run: tags, metrics, plots, and a pyfunc that reproduces the table from features
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = mlflow.search_runs(
        experiment_names=[params["base"]["mlflow_experiment"]], filter_string="tags.stage = 'clv'", output_format="list"
    )
    assert run.data.tags["stage"] == "clv" and run.data.tags["data.rows"] == "6919"
    assert len(run.data.tags["data.sha256"]) == 64 and run.data.tags["git_commit"]
    assert run.data.metrics["model/purchases_rmse"] == cm["model"]["purchases_rmse"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert "plots/p_alive.png" in artifacts
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string="name = 'clv_model'", output_format="list"
    )
    model = mlflow.pyfunc.load_model(logged.model_uri)
    scored = model.predict(value[[s.FREQUENCY, s.RECENCY, s.T, s.MONETARY_VALUE]].astype("float64"))
    np.testing.assert_allclose(scored["clv"], value[s.CLV], rtol=1e-9)
    np.testing.assert_allclose(scored["p_alive"], value[s.P_ALIVE], rtol=1e-9)

    _check_churn(d, params_file, params, training)


def _survey(path: Path) -> Path:
    ids = [f"{i:05d}" for i in range(1, 2358)]
    rng = np.random.default_rng(5)
    chosen = rng.choice(ids, size=943, replace=False)
    days = pd.Timestamp("1997-01-15") + pd.to_timedelta(rng.integers(0, 520, size=chosen.size), unit="D")
    frame = pd.DataFrame(
        {"cust": chosen, "answered_at": days.strftime("%Y-%m-%d"), "nps": rng.integers(0, 11, chosen.size)}
    )
    frame.to_csv(path, index=False)
    return path


def _check_churn(d: Path, params_file: Path, params: dict[str, Any], training: pd.DataFrame) -> None:
    m = json.loads((d / "metrics/churn.json").read_text())
    names = {"roc_auc", "pr_auc", "brier", "log_loss", "ece", "top_decile_lift", "precision_at_k", "recall_at_k"}
    assert names | {"n_train", "n_valid", "positive_rate"} <= set(m["model"])
    assert set(m["baselines"]) == {"btyd", "recency", "rfm"}
    assert all(names <= set(b) for b in m["baselines"].values())
    valid = training[training[s.CUTOFF] == m["training"]["validation_cutoff"]]
    assert m["model"]["n_valid"] == len(valid)  # the 730-day lookback keeps all of CDNOW's 18 months
    assert m["model"]["positive_rate"] == pytest.approx(valid[s.CHURNED].mean(), abs=1e-6)
    assert m["model"]["roc_auc"] > 0.75 and m["model"]["ece"] < 0.05
    assert (
        m["btyd_fits"]["failed"] == 0 and m["btyd_fits"]["fitted"] == m["training"]["training_cutoffs"] + 1
    )  # + validation
    assert m["attributes"]["survey"] == {"rows": 943, "used": 943, "missing_customer_id": 0, "unparseable_timestamp": 0}
    card = json.loads((d / "artifacts/churn/model_card.json").read_text())
    assert {"survey_nps_latest", "survey_nps_count", "btyd_p_no_purchase"} <= set(card["features"])
    scored = pd.read_parquet(d / "data/churn.parquet")
    assert len(scored) == 2357 and scored[s.P_CHURN].is_monotonic_decreasing
    week = json.loads((d / "metrics/score.json").read_text())
    assert week["risk"]["customers_explained"] == 1000 and scored["reason_1"].notna().sum() > 900
    # a training run scores nobody; the weekly run says which models scored
    assert "scoring" not in m and week["served"]["churn"]["source"] == "champion"
    for name in ("roc", "pr", "calibration", "lift"):
        assert len(pd.read_csv(d / f"plots/churn/{name}.csv")) > 5
        assert (d / f"artifacts/churn/plots/{name}.png").stat().st_size > 10_000

    import lightgbm as lgb
    import mlflow

    booster = lgb.Booster(model_file=str(d / "artifacts/churn/model.txt"))
    assert booster.num_trees() == card["best_iteration"]
    (run,) = mlflow.search_runs(
        experiment_names=[params["base"]["mlflow_experiment"]],
        filter_string="tags.stage = 'churn'",
        output_format="list",
    )
    assert run.data.metrics["model/roc_auc"] == m["model"]["roc_auc"]
    assert run.data.metrics["baselines/rfm/roc_auc"] == m["baselines"]["rfm"]["roc_auc"]
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string="name = 'churn_model'", output_format="list"
    )
    flavour = mlflow.lightgbm.load_model(logged.model_uri)
    # the logged flavour reproduces the saved trees on its own input example
    example = mlflow.models.Model.load(logged.model_uri).load_input_example(
        mlflow.artifacts.download_artifacts(logged.model_uri)
    )
    assert list(example.columns) == card["features"]
    np.testing.assert_allclose(flavour.predict(example), booster.predict(example), rtol=1e-12)

    drift = pd.read_parquet(d / "data/drift.parquet")
    assert set(drift["feature"]) == {s.P_CHURN, *card["features"]} and (drift["psi"] >= 0).all()
    assert week["drift"]["reference_cutoff"] == m["training"]["validation_cutoff"]
    _check_score_and_report(d, params_file, params, scored)


def _check_score_and_report(d: Path, params_file: Path, params: dict[str, Any], churn: pd.DataFrame) -> None:
    scores = pd.read_parquet(d / "data/scores.parquet")
    assert len(scores) == len(churn) and set(scores[s.CUSTOMER_ID]) == set(churn[s.CUSTOMER_ID])
    assert scores[s.VALUE_AT_RISK].is_monotonic_decreasing
    # the reasons went to the first 1,000 of the list: its head is explained, the rest is not
    explained = scores[list(s.REASONS)].notna().any(axis=1)
    assert explained.iloc[:100].all() and not explained.iloc[1000:].any()
    np.testing.assert_allclose(scores[s.VALUE_AT_RISK], scores[s.P_CHURN] * scores[s.CLV], rtol=1e-12)
    assert (scores[s.CLV_NET] == scores[s.CLV] - 5.0).all()
    assert str(scores[s.AS_OF].iloc[0].date()) == "1998-07-01"
    high = scores[(scores[s.VALUE_TIER] == "high") & (scores[s.P_CHURN] >= 0.7)]
    assert (high[s.SEGMENT] == "high value, at risk").all() and len(high) > 0
    assert (high[s.RECOMMENDED_ACTION] == "priority retention call").all()
    m = json.loads((d / "metrics/score.json").read_text())
    assert m["week"] == "1998-W27" and m["overall"]["customers"] == len(scores)
    assert m["overall"]["value_at_risk"] == pytest.approx(scores[s.VALUE_AT_RISK].sum(), rel=1e-6)
    # retention over the last 90 days from the raw log: who bought in (cutoff - 90, cutoff] among earlier buyers
    tx = pd.read_parquet(d / "data/transactions.parquet")
    day = tx[s.TS].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
    cutoff = pd.Timestamp("1998-06-30")
    start = cutoff - pd.Timedelta(days=90)
    before = set(tx.loc[day <= start, s.CUSTOMER_ID])
    recent = set(tx.loc[(day > start) & (day <= cutoff) & (tx[s.AMOUNT] >= 0), s.CUSTOMER_ID])
    assert m["overall"]["retention_base"] == len(before)
    assert m["overall"]["retention_rate"] == pytest.approx(len(before & recent) / len(before), abs=1e-6)
    revenue = tx.loc[(day > start) & (day <= cutoff), s.AMOUNT].sum()
    assert m["overall"]["revenue_last_horizon"] == pytest.approx(revenue, rel=1e-6)
    assert sum(v["customers"] for v in m["segments"].values()) == len(scores)

    run_stage("measure", d, params_file)
    run_stage("assign", d, params_file)
    assert [p.name for p in (d / "campaign/assignments").iterdir()] == ["1998-W27.parquet"]
    run_stage("report", d, params_file)
    folder = d / "reports/weekly" / "1998-W27"
    words = report.list_headers(
        params["features"]["horizon_days"], params["clv"]["clv_horizon_months"], params["base"]["currency"]
    )
    listed = pd.read_csv(folder / "churn_risk.csv", encoding="utf-8-sig", dtype=str)
    assert set(listed.columns) <= set(words.values())  # the header row in words, for a spreadsheet
    listed = listed.rename(columns={v: k for k, v in words.items()})
    arms = pd.read_parquet(d / "data/assignments.parquet")
    control = arms.loc[arms[s.ARM] == s.CONTROL_ARM, s.CUSTOMER_ID]
    # every scored customer but the control arm: the contacts first, then the others in the scores' order
    assert len(listed) == len(scores) - len(control) and not set(control) & set(listed[s.CUSTOMER_ID])
    others = listed.loc[listed[s.GROUP] == s.NO_CONTACT, s.CUSTOMER_ID].tolist()
    assert others == [c for c in scores[s.CUSTOMER_ID] if c in set(others)]
    # every reason a risk, against a typical value that says something, with its unit (tests/test_reasons.py)
    medium, currency = params["score"]["risk_tier_thresholds"]["medium"], params["base"]["currency"]
    faults = list_faults(listed, medium, currency, no_unit=["survey "])
    assert faults == {"equal_to_typical": 0, "below_medium_risk": 0, "without_unit": 0}
    assert (folder / "summary.html").stat().st_size > 20_000

    import mlflow

    (run,) = mlflow.search_runs(
        experiment_names=[params["base"]["mlflow_experiment"]],
        filter_string="tags.stage = 'score'",
        output_format="list",
    )
    assert run.data.tags["score.week"] == "1998-W27"
    assert run.data.metrics["overall/customers"] == len(scores)


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
