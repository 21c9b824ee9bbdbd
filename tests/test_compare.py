"""make compare: runs side by side, only the params that differ, the best holdout figure in bold."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import compare, tracking


def log_churn_run(experiment: str, num_leaves: int, roc_auc: float, ece: float) -> str:
    params = {"churn": {"lightgbm": {"num_leaves": num_leaves, "learning_rate": 0.03}}, "base": {"seed": 42}}
    with tracking.stage_run(experiment, "churn", params, {}) as run_id:
        tracking.log_metrics({"model": {"roc_auc": roc_auc, "pr_auc": 0.9, "ece": ece}})
    return run_id


def test_compare_shows_changed_params_and_marks_the_best(
    tmp_path: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)  # MLflow writes run artifacts under ./mlruns
    experiment = params["base"]["mlflow_experiment"]
    first = log_churn_run(experiment, 15, 0.8403, 0.0045)
    monkeypatch.setenv("DVC_EXP_NAME", "wider-trees")  # what `dvc exp run` sets for its stages
    second = log_churn_run(experiment, 31, 0.8407, 0.0052)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    out = tmp_path / "compare.md"

    compare.main(["--params", str(params_file), "--stage", "churn", "--last", "5", "--out", str(out)])

    text = out.read_text()
    assert text.strip() in capsys.readouterr().out  # printed and written alike
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    header = next(line for line in text.splitlines() if line.startswith("|  |"))
    assert header.index(second[:8]) < header.index(first[:8])  # newest first
    assert "experiment" in rows and "wider-trees" in rows["experiment"]
    # only the param that differs, with each run's value
    assert [r for r in rows if r.startswith("param ")] == ["param `churn/lightgbm/num_leaves`"]
    assert rows["param `churn/lightgbm/num_leaves`"].endswith("| 31 | 15 |")
    # the best of each metric in bold: higher ROC-AUC, lower ECE; no bold where the runs agree
    assert rows["model/roc_auc (higher is better)"].endswith("| **0.8407** | 0.8403 |")
    assert rows["model/ece (lower is better)"].endswith("| 0.0052 | **0.0045** |")
    assert rows["model/pr_auc (higher is better)"].endswith("| 0.9000 | 0.9000 |")
    assert rows["model/brier (lower is better)"].endswith("| - | - |")


def test_best_indices() -> None:
    assert compare.best_indices([0.1, 0.3, 0.3], "higher") == {1, 2}
    assert compare.best_indices([-13.7, 2.0, None], "nearer 0") == {1}
    assert compare.best_indices([0.5, 0.5], "lower") == set()
    assert compare.best_indices([None, None], "lower") == set()


def test_decimals_grow_until_different_values_print_differently() -> None:
    assert compare.decimals([0.0880, 0.0890]) == 4 and compare.decimals([0.08805, 0.08814]) == 5
    assert compare.decimals([0.088052, 0.088054, None]) == 6
    assert compare.decimals([0.5, 0.5]) == 4


def test_no_runs_yet_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)  # MLflow writes run artifacts under ./mlruns
    assert "No finished `clv` runs in this store yet" in compare.report("nothing-here", 5, ["clv"])


def test_against_baselines_puts_the_model_beside_each_baseline_and_candidate() -> None:
    run = tracking.RunSummary(
        run_id="r1",
        started="2026-01-01 00:00",
        git_commit="abc",
        experiment="",
        params={},
        metrics={
            "model/purchases_rmse": 0.74,
            "model/spearman": 0.38,
            "baselines/historical_rate/purchases_rmse": 0.91,
            "candidates/pareto_nbd/purchases_rmse": 0.75,
            "candidates/bgnbd/spearman": 0.37,
            "scoring/clv_mean": 12.0,  # not a holdout figure: left out
        },
    )
    table = compare.against_baselines("clv", run)
    assert list(table.columns) == [
        "better",
        "model",
        "baseline historical_rate",
        "candidate bgnbd",
        "candidate pareto_nbd",
    ]
    assert list(table.index) == [name.split("/", 1)[1] for name, _ in compare.KEY_METRICS["clv"]]
    assert table.loc["purchases_rmse", "better"] == "lower"
    assert table.loc["purchases_rmse"].tolist()[1:3] == [0.74, 0.91]
    assert table.loc["spearman", "candidate bgnbd"] == 0.37
    assert math.isnan(table.loc["spearman", "baseline historical_rate"])  # not logged


def test_the_backtest_table_shows_each_pairs_interval_the_models_first() -> None:
    def run(run_id: str, gain: float) -> tracking.RunSummary:
        return tracking.RunSummary(
            run_id=run_id,
            started="2026-01-01 00:00",
            git_commit="abc1234",
            experiment="",
            params={},
            source="cdnow",
            metrics={
                "pooled/model/roc_auc": 0.8181,
                "pooled/rfm/roc_auc": 0.8099,
                "gain/roc_auc/model_vs_rfm/pooled": gain,
                "gain/roc_auc/model_vs_rfm/low": gain - 0.003,
                "gain/roc_auc/model_vs_rfm/high": gain + 0.002,
                "gain/roc_auc/btyd_vs_rfm/pooled": -0.0009,
                "gain/roc_auc/btyd_vs_rfm/low": -0.0056,
                "gain/roc_auc/btyd_vs_rfm/high": 0.0034,
            },
        )

    lines = compare.backtest_table([run("newer123", 0.0082), run("older456", 0.0010)]).splitlines()
    assert lines[0] == "## backtest on `cdnow`: the last 2 runs, newest first"
    unrecorded = dataclasses.replace(run("old00000", 0.0), source="")  # logged before runs recorded their source
    assert (
        compare.backtest_table([unrecorded]).splitlines()[0] == "## backtest (data source not recorded): the latest run"
    )
    body = [line for line in lines if line.startswith("| ") and "gain" in line]
    assert body == [
        "| roc_auc gain, model over rfm | +0.0082 [+0.0052, +0.0102] | +0.0010 [-0.0020, +0.0030] |",
        "| roc_auc gain, btyd over rfm | -0.0009 [-0.0056, +0.0034] | -0.0009 [-0.0056, +0.0034] |",
    ]
    assert "| pooled ROC-AUC, model | 0.8181 | 0.8181 |" in lines
    assert "No finished `backtest` runs" in compare.backtest_table([])


def test_runs_of_another_log_or_holdout_are_never_ranked_together(
    tmp_path: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    experiment = params["base"]["mlflow_experiment"]
    logged = []
    for source, holdout, roc_auc in (
        ("cdnow", "1998-04-01", 0.8301),
        ("online_retail.csv.gz", "2011-06-02", 0.9012),  # the best figure of all, on another log
        ("cdnow", "1998-04-01", 0.8312),
        ("cdnow", "1997-12-01", 0.8450),  # the same log on an earlier holdout
    ):
        with tracking.stage_run(experiment, "churn", {"base": {"seed": 42}}, {}, source=source, holdout=holdout) as r:
            tracking.log_metrics({"model": {"roc_auc": roc_auc}})
        logged.append(r)

    text = compare.report(experiment, 10, ["churn"])

    headings = [line for line in text.splitlines() if line.startswith("## churn")]
    assert headings == [
        "## churn on `cdnow`, holdout after 1997-12-01: the latest run",
        "## churn on `cdnow`, holdout after 1998-04-01: the last 2 runs, newest first",
        "## churn on `online_retail.csv.gz`, holdout after 2011-06-02: the latest run",
    ]
    rows = [line for line in text.splitlines() if line.startswith("| model/roc_auc")]
    # bold only inside the table of one log and holdout: 0.8312 beats 0.8301; the others stand alone
    assert [row.split(" | ", 1)[1] for row in rows] == ["0.8450 |", "**0.8312** | 0.8301 |", "0.9012 |"]
    # the source is a param too, so the MLflow UI can filter by it
    run = tracking.recent_stage_runs(experiment, "churn", 10)[-1]
    assert run.run_id == logged[0] and run.params["ingest/source"] == "cdnow" and run.holdout == "1998-04-01"
    with pytest.raises(ValueError, match="several data sources or holdouts"):
        compare.stage_table("churn", tracking.recent_stage_runs(experiment, "churn", 10))
